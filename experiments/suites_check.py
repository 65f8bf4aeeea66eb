"""``make suites-check``: every job of the paper's suites checked as configured, offline, on a CPU, in minutes, before
GPU hours are spent; exit status 1 when a job cannot run.

    python -m experiments.suites_check [--device cuda] [--device-memory-gb 80] [--require-data] [--out FILE]
        [KEY=VALUE ...]

Each suite's jobs (conf/experiment/suite1.yaml, suite2.yaml) are composed as its sweep composes them
(experiments/sweep.py ``sweep_jobs``: the experiment's ``hydra.sweeper.params``, the variants from the core
registry), and each goes through the sweep's own pre-run checks (experiments/jobs.py): every value, no key that
nothing reads, the positions the checkpoint has (its kept config.json, conf/checkpoints/), the variant runs on the
device, the run directory can be written. Then per workload and variant (the seeds of a job share its shapes):

* the checkpoint's architecture, from its kept config.json (a model built from config: the config's);
* the data: its source and format, and whether the local copy is given (``--require-data``: a copy the hub does not
  hold must be given);
* the peak memory of one steady training step planned on the meta device with CUDA's semantics
  (experiments/memory_plan.py) at the job's real shape: the model built from the checkpoint's architecture, a batch of
  the configured size filling ``dataset.seq_len`` (or of ``dataset.image_size`` images). A planned figure, against
  the device memory; a job planned above it is listed (the sweep records such a run as failed, out of memory, and
  goes on: suite2's ListOps lengths are swept until the baseline runs out), not counted as unable to run;
* the steps and batch size. No step time is known without running the step on the GPU: the time is "not known".

Every workload of conf/workload/ has a row; one that no suite sweeps is checked with the baseline variant, seed 0.
``KEY=VALUE`` overrides (e.g. ``dataset.data_files=...``) go to every job, as on a sweep's command line.
"""

from __future__ import annotations

import argparse
import copy
import importlib.metadata
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode
from omegaconf import DictConfig, open_dict, read_write
from tqdm import tqdm

from . import jobs
from .data import TaskData
from .memory_plan import PlanSchema, step_memory
from .models import MODELS, checkpoint_architecture, checkpoint_config
from .sweep import sweep_jobs

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
SUITES = ("suite1", "suite2")
GB = 10**9
# Per dataset kind: the key naming its local copy, what is expected there, and the hub copy used when it is not given
# (None: there is none, the copy must be given).
DATA_SOURCES = {
    "glue": ("data_files", "GLUE TSVs {train, validation}", "nyu-mll/glue"),
    "wikitext": ("data_files", "raw text {train: .txt, validation: .txt}", "Salesforce/wikitext"),
    "listops": ("data_files", "LRA ListOps TSVs {train: basic_train.tsv, validation: basic_val.tsv}", None),
    "imagefolder": ("path", "a folder of train/ and val/, a folder of JPEGs per class", None),
}
NOT_KNOWN = "not known"


@dataclass
class Row:
    """One workload x variant of a suite (its seeds share the shapes), and what the check found."""

    suite: str
    workload: str
    variant: str
    configs: list[DictConfig] = field(default_factory=list)
    architecture: str = ""
    positions: str = ""
    data: str = ""
    parameters: int | None = None
    planned_bytes: int | None = None
    problem: str | None = None

    @property
    def seeds(self) -> str:
        seeds = sorted(cfg.seed for cfg in self.configs)
        contiguous = seeds == list(range(seeds[0], seeds[-1] + 1))
        return f"{seeds[0]}-{seeds[-1]}" if contiguous and len(seeds) > 1 else ",".join(map(str, seeds))


def _override(overrides: Sequence[str], key: str) -> str:
    return next(item.split("=", 1)[1] for item in overrides if item.split("=", 1)[0].lstrip("+") == key)


def suite_rows(suite: str, extra: Sequence[str]) -> list[Row]:
    """The suite's jobs as its sweep composes them, grouped by workload and variant (in sweep order)."""
    loader = GlobalHydra.instance().config_loader()
    master = loader.load_configuration("config", [f"experiment={suite}", *extra], run_mode=RunMode.MULTIRUN)
    rows: dict[tuple[str, str], Row] = {}
    for overrides, cfg in sweep_jobs(master):
        key = (_override(overrides, "workload"), cfg.variant.name)
        rows.setdefault(key, Row(suite, *key)).configs.append(cfg)
    return list(rows.values())


def unswept_rows(swept: set[str], extra: Sequence[str]) -> list[Row]:
    """A row for each workload of conf/workload/ that no suite sweeps: baseline, seed 0."""
    rows = []
    for name in sorted(path.stem for path in (CONF / "workload").glob("*.yaml")):
        if name not in swept:
            cfg = compose(config_name="config", overrides=[f"+workload={name}", *extra])
            rows.append(Row("(none)", name, cfg.variant.name, [cfg]))
    return rows


def _architecture(model: DictConfig) -> str:
    """The architecture the job trains, and where it comes from."""
    if model.pretrained:
        config, path = checkpoint_config(str(model.checkpoint))
        source = f"{model.checkpoint} ({path.relative_to(ROOT) if path.is_relative_to(ROOT) else path})"
    else:
        config, source = dict(model), f"from config ({model.name}, pretrained: false)"
    if model.family == "vit":
        return f"{model.arch}, {source}"
    return (f"{config['num_hidden_layers']}L H{config['hidden_size']} A{config['num_attention_heads']} "
            f"I{config['intermediate_size']}, {source}")


def _positions(model: DictConfig, seq_len: int | None) -> str:
    positions = MODELS[model.family].positions
    if positions is None or not seq_len:
        return "-"
    needed = positions(model, seq_len)
    if not model.pretrained:
        return f"{needed} (table sized from seq_len {seq_len})"
    available = checkpoint_config(str(model.checkpoint))[0]["max_position_embeddings"]
    if needed > available:
        return f"{needed} of {available}: table copied to {needed} (model.extend_positions)"
    return f"{needed} of {available}"


def _data(dataset: DictConfig, require: bool) -> tuple[str, str | None]:
    """The data source and format, and the problem when a copy the hub lacks is not given (``require``)."""
    if dataset.kind not in DATA_SOURCES:
        return f"{dataset.kind} (generated offline)", None
    key, expected, hub = DATA_SOURCES[dataset.kind]
    given = dataset.get(key)
    if given:
        return f"{dataset.kind}: dataset.{key} given, checked ({expected})", None
    if hub is not None:
        return f"{dataset.kind}: hub {hub} at run time, or dataset.{key}={expected}", None
    needed = f"{dataset.kind}: not given; set dataset.{key}={expected} (not on the hub)"
    return needed, (needed if require else None)


def stand_in_data(cfg: DictConfig, vocab_size: int | None) -> TaskData:
    """One batch of the job's shape for the plan: ``trainer.batch_size`` sequences filling ``dataset.seq_len`` (the
    longest a batch gets) or images of ``dataset.image_size``, and labels of the task."""
    dataset, batch = cfg.dataset, cfg.trainer.batch_size
    generator = torch.Generator().manual_seed(cfg.seed)
    num_labels = 0 if dataset.task == "mlm" else dataset.num_labels
    if dataset.task == "image_classification":
        size = dataset.image_size
        samples = {"pixel_values": torch.randn(batch, 3, size, size, generator=generator)}
    else:
        ids = torch.randint(5, vocab_size, (batch, dataset.seq_len), generator=generator)
        samples = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if cfg.model.get("type_vocab_size", 1) > 1 and dataset.task != "mlm":
            samples["token_type_ids"] = torch.zeros_like(ids)
    if dataset.task == "mlm":
        masked = torch.rand(ids.shape, generator=generator) < 0.15
        samples["labels"] = torch.where(masked, ids, torch.full_like(ids, -100))
    else:
        samples["labels"] = torch.randint(0, num_labels, (batch,), generator=generator)
    return TaskData(dataset.task, samples, samples, num_labels, vocab_size=vocab_size, seq_len=dataset.seq_len,
                    image_size=dataset.get("image_size"))


def plan(cfg: DictConfig) -> tuple[int, int]:
    """The planned peak bytes of one steady training step of the job at its real shape (CUDA semantics) and the
    model's parameter count."""
    planned = copy.deepcopy(cfg)
    model = checkpoint_architecture(cfg.model) if cfg.model.pretrained else cfg.model
    with read_write(planned), open_dict(planned):
        planned.model = model
    vocab_size = model.get("vocab_size") or cfg.dataset.get("vocab_size")
    if cfg.model.pretrained and cfg.model.family != "vit":
        vocab_size = checkpoint_config(str(cfg.model.checkpoint))[0]["vocab_size"]
    peak, facts = step_memory(planned, "meta", "cuda", data=stand_in_data(planned, vocab_size))
    return peak.peak_bytes, facts["num_params"]


def check_row(row: Row, device: torch.device, require_data: bool) -> None:
    """The sweep's checks on every job of the row, then its description and plan; the first problem is kept."""
    try:
        for cfg in row.configs:
            jobs.check_job_config(cfg, device)
            jobs.check_output_path(cfg)
    except (jobs.InvalidConfig, ValueError) as error:
        row.problem = f"seed {cfg.seed}: {error}"
        return
    cfg = row.configs[0]
    row.data, row.problem = _data(cfg.dataset, require_data)
    try:
        row.architecture = _architecture(cfg.model)
        row.positions = _positions(cfg.model, cfg.dataset.seq_len)
        row.planned_bytes, row.parameters = plan(cfg)
    except Exception as error:  # any failure of the plan is this job's finding, reported in its row
        row.problem = row.problem or f"the plan failed: {type(error).__name__}: {str(error).splitlines()[0]}"


def _gb(num_bytes: int) -> str:
    return f"{num_bytes / GB:.2f} GB"


def _share(num_bytes: int, device_memory: int) -> str:
    return f"{_gb(num_bytes)} ({num_bytes / device_memory:.0%})"


def _status(row: Row, device_memory: int) -> str:
    if row.problem is not None:
        return f"CANNOT RUN: {row.problem}"
    if row.planned_bytes > device_memory:
        return "over the device memory (planned): the run will fail out of memory"
    return "ok"


def _provenance(argv: Sequence[str], device: torch.device, device_memory: int) -> list[str]:
    def version(name: str) -> str:
        try:
            return importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            return "absent"

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return [
        f"- command: `python -m experiments.suites_check {shlex.join(argv)}`",
        f"- checked on: {cpu or platform.machine()} ({platform.system()}), "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- versions: Python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{version('transformers')}, timm {version('timm')}, hydra-core {version('hydra-core')}",
        f"- commit: {commit}{' (with uncommitted changes)' if dirty else ''}",
        f"- target device: {device.type}, {_gb(device_memory)} of memory (--device, --device-memory-gb)",
        "- planned peak: one steady training step (forward, backward, AdamW) on the meta device with CUDA's semantics "
        "(experiments/memory_plan.py), the model at the checkpoint's real architecture, a batch of the configured size "
        "filling dataset.seq_len; a plan, not a measurement (no kernel workspaces, CUDA context or fragmentation)",
        f"- planned time: {NOT_KNOWN} for every job (no step time at these shapes has been measured on a GPU)",
    ]


def table(rows: list[Row], device_memory: int) -> list[str]:
    lines = ["| suite | workload | variant | seeds | architecture | positions | data | steps x batch | parameters | "
             "planned peak | planned time | status |", "|" + "---|" * 12]
    for row in rows:
        cfg = row.configs[0]
        peak = "-" if row.planned_bytes is None else _share(row.planned_bytes, device_memory)

        parameters = "-" if row.parameters is None else f"{row.parameters / 1e6:.1f} M"
        lines.append(f"| {row.suite} | {row.workload} | {row.variant} | {row.seeds} | {row.architecture or '-'} | "
                     f"{row.positions or '-'} | {row.data or '-'} | {cfg.trainer.steps} x {cfg.trainer.batch_size} | "
                     f"{parameters} | {peak} | {NOT_KNOWN} | {_status(row, device_memory)} |")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m experiments.suites_check", description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda", help="the device type the suites will run on (default: cuda)")
    parser.add_argument("--device-memory-gb", type=float, default=PlanSchema.budget_bytes / GB,
                        help="its memory in GB (default: 80, an 80 GB H100 or A100)")
    parser.add_argument("--require-data", action="store_true",
                        help="a data set the hub does not hold must be given (dataset.data_files / dataset.path)")
    parser.add_argument("--out", type=Path, help="also write the table to this Markdown file")
    parser.add_argument("overrides", nargs="*", help="KEY=VALUE overrides for every job")
    args = parser.parse_intermixed_args(argv)
    device, device_memory = torch.device(args.device), int(args.device_memory_gb * GB)

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        rows = [row for suite in SUITES for row in suite_rows(suite, args.overrides)]
        rows += unswept_rows({row.workload for row in rows}, args.overrides)
    text, code = check(rows, device, device_memory, args.require_data, argv)
    print(text, end="")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return code


def check(rows: list[Row], device: torch.device, device_memory: int, require_data: bool,
          argv: Sequence[str]) -> tuple[str, int]:
    """Check and plan every row; the report (Markdown) and the exit status (1 when a job cannot run)."""
    for row in tqdm(rows, desc="suites-check", unit="job", file=sys.stderr):
        check_row(row, device, require_data)
    cannot = [row for row in rows if row.problem is not None]
    over = [row for row in rows if row.problem is None and row.planned_bytes > device_memory]
    runs = sum(len(row.configs) for row in rows)
    summary = (f"{runs} jobs in {len(rows)} rows (workload x variant; a workload no suite sweeps: baseline, seed 0): "
               f"{len(cannot)} cannot run, {len(over)} planned over {_gb(device_memory)}")
    lines = ["# suites-check", "", *_provenance(argv, device, device_memory), "", *table(rows, device_memory), "",
             summary]
    return "\n".join(lines) + "\n", 1 if cannot else 0

if __name__ == "__main__":
    sys.exit(main())
