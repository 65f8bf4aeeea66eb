"""Planned peak memory (``experiment=memory_plan*`` runs: meta device, CUDA semantics): tables and figures.

    python -m scripts.planned_memory RUNS_ROOT [RUNS_ROOT ...] --out results

``python -m scripts.report`` writes the same files whenever the runs it reads include planned ones.

Writes ``memory_plan.csv`` and ``memory_plan.md`` (per shape and variant: the planned peak, its change against the
baseline of the same shape, what held the bytes at the peak, the saved masks beside the analytic model's
(scripts/memory_model.py) and Korthikanti et al.'s closed form, BERT-Large b32 s512 beside ONNX Runtime's measured
BitmaskDropout figures, the planned largest batch/context within the budget), and ``memory_plan_seq_len.png`` /
``memory_plan_batch.png`` (planned peak against sequence length and batch size, per variant). Every figure here is
planned, not measured: the status of each row says so.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from .load import load_runs
from .memory_check import NotModelled, shapes_from_results, storage_from_results
from .memory_model import predict
from .provenance import Provenance
from .tables import markdown_table

PLANNED_KIND = "planned"
STATUS = "planned (meta, CUDA semantics)"
GB = 1e9
SPLIT = ("parameters", "parameter_casts", "gradients", "optimizer_state", "saved_masks", "saved_activations",
         "inputs_and_buffers", "temporaries")
# ONNX Runtime's BitmaskDropout (1-bit masks) PR: BERT-Large, 24 layers, batch 32, seq 512, V100-32G, measured.
ONNX_RUNTIME = {"baseline_mb": 29291.6, "bitmask_mb": 26788.3, "device": "V100-32G (measured)"}


def _int(value: float) -> int | None:
    return None if pd.isna(value) else int(value)


def _plan(results: dict) -> dict:
    return results.get("memory_plan") or {}


def planned_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished planned runs; a search's run (``maxfit`` set) is kept too, its batch/length the largest that fit."""
    planned = runs[(runs["status"] == "ok") & (runs["peak_memory_kind"] == PLANNED_KIND)].copy()
    planned["semantics"] = [_plan(r).get("semantics") for r in planned["results"]]
    planned["search"] = [r.get("maxfit") is not None for r in planned["results"]]
    return planned


def korthikanti_bytes(results: dict) -> tuple[float | None, float | None]:
    """Korthikanti et al. (2022): ``L·sbh(34 + 5as/h)`` activation bytes with 16-bit activations and 1-byte masks,
    of which ``L·(2sbh + as²b)`` are masks. Full attention only (None for Longformer's windowed attention)."""
    try:
        shapes = shapes_from_results(results)
    except NotModelled:
        return None, None
    if shapes.family == "longformer":
        return None, None
    s = shapes.seq if shapes.family != "vit" else (shapes.image_size // shapes.patch_size) ** 2 + 1
    b, h, a, layers = shapes.batch, shapes.hidden, shapes.heads, shapes.layers
    return layers * s * b * h * (34 + 5 * a * s / h), layers * (2 * s * b * h + a * s * s * b)


def _predicted_masks(results: dict) -> float | None:
    try:
        return float(predict(shapes_from_results(results), storage_from_results(results)).mask_bytes)
    except (NotModelled, ValueError):
        return None


MEASURED_ON_CUDA = "cuda_max_memory_allocated"


def _shape_key(run: pd.Series) -> tuple:
    return (run["model"], run["dataset"], run["variant"], _int(run["batch_size"]), _int(run["seq_len"]),
            run["results"].get("precision"))


def measured_on_cuda(runs: pd.DataFrame) -> dict[tuple, float]:
    """``torch.cuda.max_memory_allocated`` of finished GPU runs, by model, dataset, variant, batch, length, precision
    (the same names a plan of the same shape has: both come from conf/campaign/shape/); the last run read wins."""
    cuda = runs[(runs["status"] == "ok") & (runs["peak_memory_kind"] == MEASURED_ON_CUDA)]
    return {_shape_key(run): float(run["peak_memory_bytes"]) for _, run in cuda.iterrows()}


def plan_table(runs: pd.DataFrame, baseline: str = "baseline") -> pd.DataFrame:
    """One row per planned shape and variant (searches left out), with the peak a GPU run of the same shape measured,
    where one exists."""
    rows = []
    measured = measured_on_cuda(runs)
    for _, run in planned_runs(runs)[lambda r: ~r["search"]].iterrows():
        results, plan = run["results"], _plan(run["results"])
        activations, masks = korthikanti_bytes(results)
        rows.append({
            "model": run["model"], "dataset": run["dataset"], "variant": run["variant"],
            "batch_size": _int(run["batch_size"]), "seq_len": _int(run["seq_len"]),
            "precision": results.get("precision"),
            "attention": plan.get("attention"), "semantics": plan.get("semantics"),
            "peak_gb": run["peak_memory_bytes"] / GB, "phase": plan.get("phase"),
            **{f"{key}_gb": (plan.get("split") or {}).get(key, 0) / GB for key in SPLIT},
            "saved_mask_gb": results.get("saved_mask_bytes", 0) / GB,
            "model_mask_gb": None if (p := _predicted_masks(results)) is None else p / GB,
            "korthikanti_activation_gb": None if activations is None else activations / GB,
            "korthikanti_mask_gb": None if masks is None else masks / GB,
            "fits_budget": plan.get("fits_budget"), "status": STATUS,
            "measured_cuda_gb": None if (m := measured.get(_shape_key(run))) is None else m / GB,
        })
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    keys = ["model", "dataset", "batch_size", "seq_len", "precision", "semantics"]
    # A plan depends on its shape alone: the same shape planned by two experiments (memory_plan and memory_plan_batch
    # both plan BERT-Large b32) is one row.
    table = table.drop_duplicates(subset=[*keys, "variant"], keep="first")
    base = table[table["variant"] == baseline].set_index(keys)["peak_gb"]
    table["delta_pct"] = [100 * (row.peak_gb / base[key] - 1) if key in base.index else None
                          for key, row in zip(table[keys].itertuples(index=False, name=None),
                                              table.itertuples(), strict=True)]
    table["planned_vs_measured"] = table["peak_gb"] / table["measured_cuda_gb"].astype(float)
    return table.sort_values([*keys, "variant"], na_position="first").reset_index(drop=True)


def onnx_runtime_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Our plan of BERT-Large (24 layers) b32 s512 beside ONNX Runtime's measured BitmaskDropout."""
    rows = [{"source": "ONNX Runtime BitmaskDropout", "attention": "ORT (fused graph)", "baseline_gb":
             ONNX_RUNTIME["baseline_mb"] / 1e3, "packed_gb": ONNX_RUNTIME["bitmask_mb"] / 1e3,
             "delta_pct": 100 * (ONNX_RUNTIME["bitmask_mb"] / ONNX_RUNTIME["baseline_mb"] - 1),
             "status": ONNX_RUNTIME["device"]}]
    large = table[table["model"].str.startswith("bert_large") & (table["batch_size"] == 32)
                  & (table["seq_len"] == 512)] if not table.empty else table
    for attention, group in (large.groupby("attention") if not large.empty else []):
        by_variant = group.set_index("variant")["peak_gb"]
        if {"baseline", "pmdrop"} <= set(by_variant.index):
            rows.append({"source": "pmdrop plan (this repo)", "attention": attention,
                         "baseline_gb": by_variant["baseline"], "packed_gb": by_variant["pmdrop"],
                         "delta_pct": 100 * (by_variant["pmdrop"] / by_variant["baseline"] - 1), "status": STATUS})
    return pd.DataFrame(rows)


def search_table(runs: pd.DataFrame, baseline: str = "baseline") -> pd.DataFrame:
    """Planned largest batch or context within the budget, per search and variant, and the ratio to the baseline."""
    rows = []
    for _, run in planned_runs(runs)[lambda r: r["search"]].iterrows():
        search = run["results"]["maxfit"]
        rows.append({"model": run["model"], "dataset": run["dataset"], "variant": run["variant"],
                     "axis": search["axis"], "largest": search["largest"],
                     "budget_gb": search["budget_bytes"] / GB, "probes": len(search["probes"]), "status": STATUS})
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    base = table[table["variant"] == baseline].set_index(["model", "dataset", "axis"])["largest"]
    table["vs_baseline"] = [row.largest / base[key] if key in base.index and base[key] else None
                            for key, row in zip(table[["model", "dataset", "axis"]].itertuples(index=False,
                                                                                               name=None),
                                                table.itertuples(), strict=True)]
    return table.sort_values(["model", "dataset", "axis", "variant"]).reset_index(drop=True)


def _plot(table: pd.DataFrame, x: str, title: str, path: Path) -> bool:
    """Planned peak against ``x``, a line per model and variant planned at two or more values of ``x``."""
    if not table.empty:
        table = table.groupby(["model", "variant"]).filter(lambda group: group[x].nunique() >= 2)
    if table.empty:
        return False
    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.subplots()
    for (model, variant), group in table.groupby(["model", "variant"]):
        group = group.sort_values(x)
        axes.plot(group[x], group["peak_gb"], marker="o", label=f"{model} {variant}")
    axes.axhline(80, color="grey", linestyle=":", label="80 GB budget")
    axes.set_xscale("log", base=2)
    axes.set_xlabel(x.replace("_", " "))
    axes.set_ylabel("planned peak memory (GB)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return True


def _cell(value: object, digits: int) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _markdown(frame: pd.DataFrame, digits: int = 2) -> str:
    if frame.empty:
        return "(no planned runs)\n"
    return markdown_table(list(frame.columns), [[_cell(v, digits) for v in row] for row in frame.itertuples(
        index=False, name=None)])


def write_tables(runs: pd.DataFrame, out: Path, provenance: Provenance) -> list[tuple[Path, str]]:
    """The planned tables and figures of ``runs`` (the planned ones among them) into ``out``, each with a line saying
    what it holds; nothing when no run was planned."""
    if planned_runs(runs).empty:
        return []
    table, searches = plan_table(runs), search_table(runs)
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "memory_plan.csv", out / "memory_plan.md"
    csv_path.write_text(provenance.csv_header())
    with csv_path.open("a") as csv:
        table.to_csv(csv, index=False)
    written = [(csv_path, f"planned peak memory per shape and variant: {STATUS} (CSV, raw units)"),
               (md_path, f"planned peak memory per shape and variant, beside the analytic models and ONNX Runtime's "
                         f"measured BitmaskDropout; planned largest batch/context within the budget: {STATUS}")]
    longformer = table[table["model"].str.startswith("longformer") & (table["batch_size"] == 2)] if not table.empty \
        else table
    shown = ["model", "dataset", "variant", "batch_size", "seq_len", "attention", "peak_gb", "delta_pct", "phase",
             "saved_mask_gb", "model_mask_gb", "saved_activations_gb", "parameter_casts_gb", "temporaries_gb",
             "korthikanti_activation_gb", "korthikanti_mask_gb", "fits_budget", "measured_cuda_gb",
             "planned_vs_measured"]
    lines = ["# Planned peak memory (meta device, CUDA semantics)", "",
             f"Status of every figure below: **{STATUS}** — one steady training step (forward, backward, AdamW) run "
             "on the meta device by experiments/memory_plan.py; not a measurement. Command: `make memory-plan` "
             "(`python run.py -m experiment=memory_plan`, `experiment=memory_plan_batch`, "
             "`experiment=memory_plan_maxfit`, `experiment=memory_plan_context`), then the report. Where a GPU run of "
             "the same shape exists (`make gpu-check`, `make gpu-campaign`), `measured_cuda_gb` is its "
             "`torch.cuda.max_memory_allocated` and `planned_vs_measured` the plan's ratio to it.",
             "", provenance.markdown(),
             "## Peak per shape and variant (GB = 1e9 bytes)", "",
             _markdown(table[[c for c in shown if c in table.columns]] if not table.empty else table),
             "## BERT-Large (24 layers) b32 s512 beside ONNX Runtime's BitmaskDropout", "",
             _markdown(onnx_runtime_rows(table)),
             "## Largest batch / context within the budget (planned)", "", _markdown(searches)]
    md_path.write_text("\n".join(lines))
    for path, frame, x, title in (
            (out / "memory_plan_seq_len.png", longformer, "seq_len", f"Longformer-Base, batch 2: {STATUS}"),
            (out / "memory_plan_batch.png", table[table["seq_len"].isin([512]) | table["seq_len"].isna()]
             if not table.empty else table, "batch_size", f"batch size: {STATUS}")):
        if _plot(frame, x, title, path):
            written.append((path, f"{title}: planned peak against {x.replace('_', ' ')} per variant"))
    return written


def write_report(roots: list[Path], out: Path, command: str) -> list[Path]:
    runs = load_runs(roots)
    return [path for path, _ in write_tables(runs, out, Provenance.of(planned_runs(runs), command))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("roots", nargs="+", type=Path, help="runs roots holding memory_plan runs")
    parser.add_argument("--out", type=Path, default=Path("results"))
    args = parser.parse_args(argv)
    command = shlex.join(["python", "-m", "scripts.planned_memory", *(argv if argv is not None else sys.argv[1:])])
    for path in write_report(args.roots, args.out, command):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
