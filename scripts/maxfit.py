"""The max-feasible-size table: per searched configuration, the largest batch or context that fit each variant.

Reads the runs that carry a ``maxfit`` block in results.json (``experiment=maxfit`` / ``maxfit_gpu``, see
experiments/maxfit.py). The gain is the variant's largest size over the baseline's, searched under the same budget
and seed. A ``cuda_memory`` budget is the GPU's memory (real training steps, out-of-memory caught); ``saved_bytes``
is the CPU stand-in: bytes saved for backward by one training forward against a fixed budget.
"""

from __future__ import annotations

import pandas as pd

from .analysis import METRICS
from .tables import markdown_table

COLUMNS = ("experiment", "model", "dataset", "axis", "budget", "budget_bytes", "variant", "seed", "largest",
           "gain_over_baseline", "probes", "device")


def searches(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per finished maxfit run: its search's axis, budget, largest size and probes."""
    rows = []
    for run in runs[runs["status"] == "ok"].itertuples():
        found = run.results.get("maxfit")
        if found:
            rows.append({"experiment": run.experiment, "model": run.model, "dataset": run.dataset,
                         "axis": found["axis"], "budget": found["budget"], "budget_bytes": found["budget_bytes"],
                         "variant": run.variant, "seed": run.seed, "largest": found["largest"],
                         "probes": found["probes"], "device": run.device})
    return pd.DataFrame(rows, columns=[c for c in COLUMNS if c != "gain_over_baseline"])


def maxfit_table(runs: pd.DataFrame, baseline: str = "baseline") -> pd.DataFrame:
    """The searches with ``gain_over_baseline`` (largest / the baseline's largest; NaN without a baseline search)."""
    found = searches(runs)
    key = ["experiment", "model", "dataset", "axis", "budget", "seed"]
    reference = found[found["variant"] == baseline][[*key, "largest"]]
    table = found.merge(reference, on=key, how="left", suffixes=("", "_baseline"))
    table["gain_over_baseline"] = table["largest"] / table["largest_baseline"].where(table["largest_baseline"] > 0)
    table["probes"] = table["probes"].map(len)
    return table.sort_values(["experiment", "model", "dataset", "axis", "variant", "seed"])[list(COLUMNS)].reset_index(
        drop=True)


def _budget(row: object) -> str:
    limit = METRICS["saved_mask_bytes"].with_unit(float(row.budget_bytes))
    return f"{limit} of CUDA memory" if row.budget == "cuda_memory" else f"{limit} saved for backward"


def maxfit_markdown(table: pd.DataFrame) -> str:
    intro = (
        "Largest size whose training step fits the budget, found by exponential then binary search (each probe a "
        "fresh step at that size; `results.json` lists every probe). `cuda_memory`: GPU memory with real training "
        "steps, out-of-memory caught. `saved_bytes`: the CPU stand-in, bytes one training forward saves for "
        "backward (torch keeps a 4-byte mask per element on a CPU, 1 byte on a GPU, so CPU gains overstate GPU "
        "ones). Gain: largest over the baseline's under the same budget.\n\n"
    )
    header = ["model/dataset", "searched", "budget", "variant", "seed", "largest", "gain over baseline", "probes",
              "device"]
    rows = [[f"{r.model}/{r.dataset}", r.axis, _budget(r), r.variant, str(r.seed), str(r.largest),
             "—" if pd.isna(r.gain_over_baseline) else f"{r.gain_over_baseline:.3g}×", str(r.probes), str(r.device)]
            for r in table.itertuples()]
    return intro + markdown_table(header, rows)
