"""The run contract between the harness and the analysis: a run's identity, its results record, its files.

The runner writes one :class:`RunRecord` per run as ``results.json`` (:func:`write_record`); the analysis
(``scripts/``) reads it back with :func:`read_record` and imports nothing else of the harness. This module is the one
place where the record's fields are named, with their units, so it stays free of torch, Hydra and pandas.

On disk the record is one flat JSON object (the fields of :class:`RunRecord` and of its :class:`Measurement`, the
latter absent when the run failed before measuring) with ``schema_version``. Files written before the version field
existed are version 1: they read as the same record, their ``axes`` taken from their config. A file of a version this
code does not know fails with one sentence naming it.

Extending the contract: a new measured field is one ``field`` in :class:`Measurement` (with its unit, and
``column=`` if the analysis' runs table should carry it); a new run status is one member of :class:`Status`; a new
axis of a run's identity that is not part of its directory name is one :class:`Axis` in :data:`AXES`. A change that
old readers would misread (a field renamed, a unit changed) also raises :data:`SCHEMA_VERSION` and teaches
:func:`from_json` to read the older version.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from experiments import jsonfiles
from experiments.jsonfiles import DamagedFile  # what read_record raises for a file that is not a JSON object

__all__ = ["DamagedFile"]  # re-exported: the analysis reads run files through this module only

# Version 1: the unversioned files written before this module (e.g. those behind the committed results/runs.csv).
# Version 2: ``schema_version`` and ``axes`` added; every field of version 1 kept with its name and unit.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)

# The files of a run directory ``<runs_root>/<experiment>/<model>/<dataset>/<variant>/seed<k>/``.
RESULTS_FILE = "results.json"  # the RunRecord, written last (atomically) when the run has ended
METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step: {"step": k, <metric>: value, ...}
CONFIG_FILE = "config.yaml"  # the run's resolved config, written before it starts

# Root config keys that only file a run (where it goes, whether it reruns, where it logs): two runs whose configs
# differ only in these compute the same thing.
FILING_KEYS = ("experiment_name", "force", "logger", "runs_root")


class Status(enum.StrEnum):
    """How a run ended. Only ``ok`` runs enter the analysis' statistics; the others are counted and named."""

    OK = "ok"
    FAILED = "failed"  # raised (on any rank): ``error`` says what, ``traceback`` where
    DIVERGED = "diverged"  # a loss or metric became NaN or infinite: ``error`` names it, ``diverged_step`` when
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM stopped it: the next sweep runs it again


class RecordError(ValueError):
    """A results file that is not a readable record; ``str()`` is one sentence naming the file and the fault."""


class RecordVersionError(RecordError):
    """A results file of a schema version this code does not read (written by newer code)."""


@dataclass(frozen=True)
class Axis:
    """An axis of a run's identity beyond its directory names, read from the run's resolved config."""

    name: str
    config_key: str  # dotted key in the resolved config; runs whose config lacks it do not have the axis
    doc: str


AXES = (
    Axis("composability", "composability.setting", "the conf/composability/ setting the run trained under"),
    Axis("ranks", "composability.ranks", "the DDP world size of a composability run"),
    Axis("bitflip_fraction", "trainer.bitflip_fraction", "the fraction of saved packed-mask bits flipped"),
)


def _lookup(config: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = config
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return False, None
        node = node[key]
    return True, node


def axes_of(config: Mapping[str, Any]) -> dict[str, Any]:
    """The declared axes that ``config`` (a resolved run config) has, with their values."""
    found = {axis.name: _lookup(config, axis.config_key) for axis in AXES}
    return {name: value for name, (present, value) in found.items() if present}


def _axes_of_version_1(data: Mapping[str, Any]) -> dict[str, Any]:
    """Version 1 configs had no ``composability.ranks``: the world size of a composability run was only in its
    experiment name (``composability-<setting>-ws<ranks>``)."""
    axes = axes_of(data.get("config") or {})
    named = re.fullmatch(r"composability-.+-ws(\d+)", str(data.get("experiment")))
    if "composability" in axes and "ranks" not in axes and named:
        axes["ranks"] = int(named[1])
    return axes


def run_defining(config: Mapping[str, Any], leave_out: tuple[str, ...] = ()) -> dict[str, Any]:
    """``config`` without :data:`FILING_KEYS` and without the dotted keys ``leave_out``: what two runs must share to
    compute the same thing (apart from what ``leave_out`` names, e.g. an axis they are compared along)."""
    kept = {key: value for key, value in config.items() if key not in FILING_KEYS}
    for dotted in leave_out:
        *parents, last = dotted.split(".")
        node = kept
        for key in parents:
            if not isinstance(node.get(key), Mapping):
                break
            node[key] = node = dict(node[key])
        else:
            node.pop(last, None)
    return kept


def _about(unit: str = "", column: str | None = None) -> dict[str, str | None]:
    """A field's metadata: its unit, and whether the analysis' runs table has it as a ``number`` or ``text`` column."""
    return {"unit": unit, "column": column}


@dataclass
class MaxfitSearch:
    """What a largest-feasible-size search (experiments/maxfit.py) found; the search writes every field."""

    axis: str  # "batch_size" or "seq_len"
    largest: int | None = None  # the largest size that fit (0: none did)
    budget: str | None = None  # "saved_bytes", "cuda_memory" or "planned" (memory_plan.search)
    budget_bytes: int | None = None  # bytes
    memory_fraction: float | None = None  # of the GPU's memory, for cuda_memory (None: all of it)
    multiple_of: int = 1
    # [[size, fits, bytes used or None when out of memory], ...] in the order probed
    probes: list[list[Any]] = field(default_factory=list)


@dataclass
class Measurement:
    """What a job measured: a training run (experiments/train.py) or a size search (``maxfit`` set)."""

    device: str | None = field(default=None, metadata=_about(column="text"))  # "cpu" or the CUDA device's name
    world_size: int | None = field(default=None, metadata=_about("ranks"))
    steps: int | None = field(default=None, metadata=_about("steps", "number"))
    # a search: the largest that fit
    batch_size: int | None = field(default=None, metadata=_about("samples per rank", "number"))
    global_batch_size: int | None = field(default=None, metadata=_about("samples"))
    seq_len: int | None = field(default=None, metadata=_about("tokens", "number"))  # None for images
    num_params: int | None = field(default=None, metadata=_about("parameters", "number"))
    precision: str | None = field(default=None, metadata=_about(column="text"))  # "fp32", "bf16" or "fp16"
    peak_memory_bytes: int | None = field(default=None, metadata=_about("bytes", "number"))  # the largest rank's
    peak_memory_bytes_per_rank: list[int] | None = field(default=None, metadata=_about("bytes"))
    # "cpu_tensor_peak" (the live-tensor peak of measure_step), "cuda_max_memory_allocated", "planned" (a plan on
    # the meta device, experiments/memory_plan.py: never a measurement), or "cpu_peak_rss" (older runs, compiled runs)
    peak_memory_kind: str | None = field(default=None, metadata=_about(column="text"))
    # what was held when the measurement began: for cpu_tensor_peak the live tensor bytes as measure_step began
    # (parameters, optimizer state, the batch); otherwise what the process held when the run began (on CPU: the
    # interpreter and libraries, growing over a sweep's jobs). peak_memory_bytes minus this is the run's own growth
    memory_at_start_bytes: int | None = field(default=None, metadata=_about("bytes"))
    # the peak of bytes held by live tensors over step measure_step (forward, backward, optimizer step; 512-byte
    # blocks on CUDA), the largest rank's, by experiments/memory.py; what held them at that peak (parameters,
    # parameter_casts, gradients, optimizer_state, saved_masks, saved_activations, inputs_and_buffers,
    # temporaries), and the part of the step it fell in (forward, backward, optimizer)
    tensor_peak_bytes: int | None = field(default=None, metadata=_about("bytes", "number"))
    tensor_peak_split: dict[str, int] | None = field(default=None, metadata=_about("bytes"))
    tensor_peak_phase: str | None = field(default=None, metadata=_about(column="text"))
    # CPU: the process's peak RSS (interpreter, libraries, a paired model and earlier jobs of a sweep included)
    process_peak_rss_bytes: int | None = field(default=None, metadata=_about("bytes", "number"))
    # a planned run: {semantics, tensor_bytes, split, phase, block_bytes, attention, grad_checkpointing,
    # budget_bytes, fits_budget}
    memory_plan: dict[str, Any] | None = field(default=None, metadata=_about())
    # saved for backward by one training forward
    saved_mask_bytes: int | None = field(default=None, metadata=_about("bytes", "number"))
    saved_activation_bytes: int | None = field(default=None, metadata=_about("bytes", "number"))
    saved_parameter_bytes: int | None = field(default=None, metadata=_about("bytes", "number"))
    # per kind ("torch", "pmdrop", ...) in that forward
    dropout_calls: dict[str, int] | None = field(default=None, metadata=_about("calls"))
    # summed over ranks
    throughput_samples_per_s: float | None = field(default=None, metadata=_about("samples/s", "number"))
    tokens_per_s: float | None = field(default=None, metadata=_about("tokens/s", "number"))
    # mean over ranks of the steady steps' mean
    step_time_s: float | None = field(default=None, metadata=_about("s", "number"))
    # the key of ``metrics`` that is the task's headline
    task_metric: str | None = field(default=None, metadata=_about(column="text"))
    # eval metrics: f1/accuracy (fractions), perplexity, eval_loss, ...
    metrics: dict[str, float] | None = field(default=None, metadata=_about())
    # the last step's training loss, mean over ranks
    final_loss: float | None = field(default=None, metadata=_about("loss", "number"))
    # paired runs: [[step, cosine with the baseline copy], ...]
    grad_cosine: list[list[float]] | None = field(default=None, metadata=_about())
    # of the final parameters: equal digests, bit-identical parameters
    param_sha256: str | None = field(default=None, metadata=_about())
    # {"fraction", "bits", "masks"} when masks had bits flipped
    bitflips: dict[str, Any] | None = field(default=None, metadata=_about())
    # what the data builder substituted (e.g. a synthetic stand-in)
    notes: list[str] | None = field(default=None, metadata=_about())
    # a size search's result (then there are no training fields)
    maxfit: MaxfitSearch | None = field(default=None, metadata=_about())

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Measurement:
        values = {f.name: data.get(f.name) for f in dataclasses.fields(cls)}
        if values["maxfit"] is not None:
            values["maxfit"] = MaxfitSearch(**values["maxfit"])
        return cls(**values)


@dataclass
class RunRecord:
    """One run's results.json: identity, how it ended, where and with what it ran, and its measurement."""

    # identity: the run directory's names, and the declared axes (AXES) of its config
    experiment: str
    model: str
    dataset: str
    variant: str
    seed: int
    axes: dict[str, Any] = field(default_factory=dict, metadata=_about())
    # where and with what it ran
    # HEAD, "-dirty" when code differs from it
    git_commit: str | None = field(default=None, metadata=_about(column="text"))
    command: str | None = field(default=None, metadata=_about(column="text"))
    started_at: str | None = field(default=None, metadata=_about(column="text"))  # ISO 8601, UTC
    finished_at: str | None = field(default=None, metadata=_about(column="text"))
    # the job's, setup and evaluation included
    wall_time_s: float | None = field(default=None, metadata=_about("s", "number"))
    hostname: str | None = field(default=None, metadata=_about(column="text"))
    torch_version: str | None = field(default=None, metadata=_about(column="text"))  # with its build tag, e.g. +cu130
    transformers_version: str | None = field(default=None, metadata=_about())
    timm_version: str | None = field(default=None, metadata=_about())
    overrides: list[str] | None = field(default=None, metadata=_about())  # the Hydra overrides of the job
    config: dict[str, Any] = field(default_factory=dict, metadata=_about())  # resolved
    run_dir: str | None = field(default=None, metadata=_about())  # absolute, at the time of the run
    # how it ended
    status: Status | None = field(default=None, metadata=_about())  # None only while the run is going
    # one line: "<ExceptionType>: message" (per rank under DDP)
    error: str | None = field(default=None, metadata=_about(column="text"))
    traceback: str | None = field(default=None, metadata=_about())
    # the training step whose loss (or gradient cosine) was not finite; None for a diverged evaluation
    diverged_step: int | None = field(default=None, metadata=_about("steps"))
    # fields whose non-finite value was written as null: {"a.b": "nan"}
    nonfinite: dict[str, str] | None = field(default=None, metadata=_about())
    measurement: Measurement | None = None  # None when the run failed before measuring
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        """The flat JSON object of results.json (measured fields beside the run's; absent ones left out)."""
        data = {"schema_version": self.schema_version}
        data |= {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if f.name not in ("schema_version", "measurement", *_OPTIONAL)}
        data["status"] = None if self.status is None else str(self.status)
        if self.measurement is not None:
            data |= dataclasses.asdict(self.measurement)
        for optional in _OPTIONAL:
            if getattr(self, optional) is not None:
                data[optional] = getattr(self, optional)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any], source: str = "results") -> RunRecord:
        """The record of a results.json object, of any readable version; RecordError (one sentence) otherwise."""
        version = data.get("schema_version", 1)
        if version not in READABLE_VERSIONS:
            raise RecordVersionError(f"{source}: schema_version {version!r} is not one this code reads (versions "
                              f"{', '.join(map(str, READABLE_VERSIONS))}); read it with the code that wrote it")
        missing = [name for name in (*IDENTITY_FIELDS, "status") if name not in data]
        if missing:
            raise RecordError(f"{source}: results lack required field(s) {missing}; required: "
                              f"{[*IDENTITY_FIELDS, 'status']}")
        try:
            status = Status(data["status"])
        except ValueError:
            raise RecordError(f"{source}: status {data['status']!r} is not one of "
                              f"{', '.join(repr(str(s)) for s in Status)}") from None
        run_fields = {f.name for f in dataclasses.fields(cls)} - {"measurement", "schema_version", "status", "axes"}
        values = {name: data[name] for name in run_fields if name in data}
        axes = data["axes"] if version >= 2 else _axes_of_version_1(data)
        measured = {f.name for f in dataclasses.fields(Measurement)} & data.keys()
        measurement = Measurement.from_json(data) if measured else None
        return cls(**values, axes=axes, status=status, measurement=measurement, schema_version=SCHEMA_VERSION)

    def get(self, name: str, default: Any = None) -> Any:
        """A field of the record or its measurement by name (``default`` when it has no such value)."""
        if name in _RUN_FIELD_NAMES:
            value = getattr(self, name)
        elif name in _MEASURED_FIELD_NAMES and self.measurement is not None:
            value = getattr(self.measurement, name)
        else:
            return default
        return default if value is None else value


IDENTITY_FIELDS = ("experiment", "model", "dataset", "variant", "seed")
_OPTIONAL = ("traceback", "diverged_step", "nonfinite")  # written only when set
_RUN_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(RunRecord)) - {"measurement"}
_MEASURED_FIELD_NAMES = frozenset(f.name for f in dataclasses.fields(Measurement))


def columns(kind: str) -> tuple[str, ...]:
    """The fields the analysis' runs table carries as ``kind`` ("number" or "text") columns, measured ones first."""
    fields = (*dataclasses.fields(Measurement), *dataclasses.fields(RunRecord))
    return tuple(f.name for f in fields if f.metadata.get("column") == kind)


def write_record(run_dir: Path, record: RunRecord) -> None:
    """results.json, strict JSON (non-finite numbers as null, named under ``nonfinite``), whole or not at all."""
    jsonfiles.write_json_atomic(Path(run_dir) / RESULTS_FILE, record.to_json())


def read_record(path: Path) -> RunRecord:
    """A results.json as a RunRecord. FileNotFoundError when absent; ``jsonfiles.DamagedFile`` when it is not a JSON
    object; RecordError when it is one but not a record this code reads."""
    return RunRecord.from_json(jsonfiles.read_json_object(Path(path)), str(path))


def append_metrics(file: Any, step: int, metrics: Mapping[str, Any]) -> None:
    """One line of metrics.jsonl, flushed."""
    jsonfiles.append_jsonl(file, {"step": step, **metrics})


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl (``jsonfiles.DamagedFile`` naming the first bad one)."""
    return jsonfiles.read_jsonl(Path(path))


# What the project writes into its own tree (``make demo`` puts the report in ``results/``): not code, so changes
# there do not make the runs that follow "dirty".
OUTPUT_DIRS = ("results",)
REPO_ROOT = Path(__file__).resolve().parent.parent


@cache
def git_commit(repo: Path = REPO_ROOT) -> str | None:
    """The ``git_commit`` of a record (and of a report): HEAD's hash, with ``-dirty`` when tracked files outside
    ``OUTPUT_DIRS`` differ from it; None outside a git checkout."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                      *(f":(exclude){path}" for path in OUTPUT_DIRS))
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if changed.stdout.strip() else "")
