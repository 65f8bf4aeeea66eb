"""Read a runs tree into one table: a row per ``results.json``, the contract's fields as columns.

Layout (written by ``run.py``): ``<root>/<experiment>/<model>/<dataset>/<variant>/seed<k>/`` with
``results.json`` (one run's record) and ``metrics.jsonl`` (one JSON object per logged step). Both are read through
the run contract, ``experiments/record.py``: the only module of the harness the analysis imports.

A run whose files cannot be read as a record (an empty, truncated or non-object results.json, a metrics.jsonl line
that is not JSON) is damaged: ``read_runs`` names it in one line and leaves it out of the table; the sweep runs it
again. A record that says ``ok`` but holds non-finite numbers (written before divergence was detected as it happens)
is read as ``diverged``: such runs enter no statistic and no claim.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from experiments import record

# A run is a configuration (experiment, model, dataset), a variant and a seed; runs of one configuration are compared
# across variants.
RUN_KEY = record.IDENTITY_FIELDS
CONFIG_KEY = RUN_KEY[:3]
# Fields of the record copied as they are (experiments/record.py marks them); missing ones (failed runs) become NaN.
NUMERIC_FIELDS = record.columns("number")
TEXT_FIELDS = record.columns("text")


def find_results(roots: Iterable[Path]) -> list[Path]:
    """Every ``results.json`` under the given roots, in a stable order."""
    files: list[Path] = []
    for root in map(Path, roots):
        if not root.is_dir():
            raise FileNotFoundError(f"runs root {str(root)!r} is not a directory")
        files.extend(sorted(root.rglob(record.RESULTS_FILE)))
    return files


def find_incomplete(roots: Iterable[Path]) -> list[Path]:
    """Run directories (``seed<k>/`` holding a config or metrics) without ``results.json``: killed or still running."""
    names = (record.CONFIG_FILE, record.METRICS_FILE)
    dirs = {p.parent for root in map(Path, roots) for name in names for p in root.rglob(name)}
    return sorted(d for d in dirs if re.fullmatch(r"seed\d+", d.name) and not (d / record.RESULTS_FILE).exists())


def read_results(path: Path) -> record.RunRecord:
    """The run's record (any readable schema version); ValueError naming the file when it is not one, or when the
    run's metrics.jsonl is damaged."""
    run = record.read_record(path)
    metrics = Path(path).with_name(record.METRICS_FILE)
    if metrics.exists():
        record.read_metrics(metrics)
    if run.status == record.Status.OK and run.nonfinite:  # an older record of a diverged run
        run.status = record.Status.DIVERGED
        run.error = "non-finite " + ", ".join(f"{key}={value}" for key, value in run.nonfinite.items())
    return run


def _as_float(value: object) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else np.nan


def _grad_cosine_values(run: record.RunRecord) -> list[float]:
    return [np.nan if value is None else float(value) for _, value in run.get("grad_cosine") or []]


def _row(path: Path, run: record.RunRecord) -> dict:
    row = {key: getattr(run, key) for key in RUN_KEY}
    row["seed"] = int(run.seed)
    row["status"] = str(run.status)
    row["run_dir"] = str(path.parent)
    row.update({key: _as_float(run.get(key)) for key in NUMERIC_FIELDS})
    row.update({key: run.get(key) for key in TEXT_FIELDS})
    metrics = run.get("metrics") or {}
    row["task_value"] = _as_float(metrics.get(run.get("task_metric")))
    cosines = _grad_cosine_values(run)
    row["grad_cosine_mean"] = float(np.mean(cosines)) if cosines else np.nan
    row["grad_cosine_min"] = float(np.min(cosines)) if cosines else np.nan
    row["results"] = run.to_json()  # the whole record as results.json holds it, for readers that need the config
    return row


def load_runs(roots: Iterable[Path]) -> pd.DataFrame:
    """One row per run found under ``roots``; raises on a damaged run (``read_runs`` names them instead) and on a run
    found twice."""
    runs, damaged = read_runs(roots)
    if damaged:
        raise ValueError(damaged[0])
    return runs


def read_runs(roots: Iterable[Path]) -> tuple[pd.DataFrame, list[str]]:
    """One row per readable run found under ``roots``, and one line per damaged run (its file and fault); raises on a
    run found twice."""
    rows, damaged = [], []
    for path in find_results(roots):
        try:
            rows.append(_row(path, read_results(path)))
        except (record.DamagedFile, record.RecordError) as damage:
            damaged.append(str(damage))
        except OSError as error:
            damaged.append(f"{error.filename or path}: cannot be read ({error.strerror})")
    columns = [*RUN_KEY, "status", "run_dir", *NUMERIC_FIELDS, *TEXT_FIELDS, "task_value", "grad_cosine_mean",
               "grad_cosine_min", "results"]
    runs = pd.DataFrame(rows, columns=columns)
    duplicated = runs[runs.duplicated(list(RUN_KEY), keep=False)]
    if not duplicated.empty:
        raise ValueError(f"the same run was found more than once: {sorted(duplicated['run_dir'])}")
    return runs.sort_values(list(RUN_KEY), ignore_index=True), damaged


def read_history(run_dir: str | Path) -> pd.DataFrame:
    """The run's ``metrics.jsonl`` as a table (a row per logged step); empty when the file is absent."""
    path = Path(run_dir) / record.METRICS_FILE
    if not path.exists():
        return pd.DataFrame()
    return pd.DataFrame.from_records(record.read_metrics(path))
