"""Read a runs tree into one table: a row per ``results.json``, the contract's fields as columns.

Layout (written by ``run.py``): ``<root>/<experiment>/<model>/<dataset>/<variant>/seed<k>/`` with
``results.json`` (one run's fields) and ``metrics.jsonl`` (one JSON object per logged step).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.jsonl"

# Runs of one configuration, compared across variants; a run is that plus variant and seed.
CONFIG_KEY = ("experiment", "model", "dataset")
RUN_KEY = (*CONFIG_KEY, "variant", "seed")
REQUIRED_FIELDS = (*RUN_KEY, "status")

# Numeric fields copied as they are; missing ones (failed runs) become NaN.
NUMERIC_FIELDS = (
    "steps",
    "batch_size",
    "seq_len",
    "num_params",
    "peak_memory_bytes",
    "saved_mask_bytes",
    "saved_activation_bytes",
    "saved_parameter_bytes",
    "throughput_samples_per_s",
    "tokens_per_s",
    "step_time_s",
    "final_loss",
    "wall_time_s",
)
TEXT_FIELDS = (
    "device",
    "precision",
    "peak_memory_kind",
    "task_metric",
    "git_commit",
    "command",
    "started_at",
    "finished_at",
    "hostname",
    "torch_version",
    "error",
)


def find_results(roots: Iterable[Path]) -> list[Path]:
    """Every ``results.json`` under the given roots, in a stable order."""
    files: list[Path] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"runs root {str(root)!r} is not a directory")
        files.extend(sorted(root.rglob(RESULTS_FILE)))
    return files


def find_incomplete(roots: Iterable[Path]) -> list[Path]:
    """Run directories (``seed<k>/`` holding a config or metrics) without ``results.json``: killed or still running."""
    dirs = {p.parent for root in map(Path, roots) for name in ("config.yaml", METRICS_FILE) for p in root.rglob(name)}
    return sorted(d for d in dirs if re.fullmatch(r"seed\d+", d.name) and not (d / RESULTS_FILE).exists())


def read_results(path: Path) -> dict:
    try:
        results = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    missing = [key for key in REQUIRED_FIELDS if key not in results]
    if missing:
        raise ValueError(f"{path}: results lack required field(s) {missing}; required: {list(REQUIRED_FIELDS)}")
    if results["status"] not in ("ok", "failed"):
        raise ValueError(f"{path}: status {results['status']!r} is not one of 'ok', 'failed'")
    return results


def _as_float(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else np.nan


def _grad_cosine_values(results: dict) -> list[float]:
    return [float(value) for _, value in results.get("grad_cosine") or []]


def _row(path: Path, results: dict) -> dict:
    row = {key: results[key] for key in RUN_KEY}
    row["seed"] = int(results["seed"])
    row["status"] = results["status"]
    row["run_dir"] = str(path.parent)
    row.update({key: _as_float(results.get(key)) for key in NUMERIC_FIELDS})
    row.update({key: results.get(key) for key in TEXT_FIELDS})
    metrics = results.get("metrics") or {}
    row["task_value"] = _as_float(metrics.get(results.get("task_metric")))
    cosines = _grad_cosine_values(results)
    row["grad_cosine_mean"] = float(np.mean(cosines)) if cosines else np.nan
    row["grad_cosine_min"] = float(np.min(cosines)) if cosines else np.nan
    row["results"] = results  # the whole record, for readers that need the config
    return row


def load_runs(roots: Iterable[Path]) -> pd.DataFrame:
    """One row per run found under ``roots``; raises on unreadable files and on a run found twice."""
    rows = [_row(path, read_results(path)) for path in find_results(roots)]
    columns = [*RUN_KEY, "status", "run_dir", *NUMERIC_FIELDS, *TEXT_FIELDS, "task_value", "grad_cosine_mean",
               "grad_cosine_min", "results"]
    runs = pd.DataFrame(rows, columns=columns)
    duplicated = runs[runs.duplicated(list(RUN_KEY), keep=False)]
    if not duplicated.empty:
        raise ValueError(f"the same run was found more than once: {sorted(duplicated['run_dir'])}")
    return runs.sort_values(list(RUN_KEY), ignore_index=True)


def read_history(run_dir: str | Path) -> pd.DataFrame:
    """The run's ``metrics.jsonl`` as a table (a row per logged step); empty when the file is absent."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return pd.DataFrame()
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: not valid JSON ({err})") from None
    return pd.DataFrame.from_records(records)
