"""The composability table (``experiment=composability``): every variant against the baseline, one setting at a time.

    python -m experiments.composability runs/        # prints the table and writes runs/composability.{md,csv}

A row per setting (the experiment ``composability-<setting>-ws<ranks>``), variant and seed: whether the run ended with
parameters bit-identical to the baseline's (``param_sha256``), its final loss, the bytes saved for backward (masks,
and masks plus activations) and their change from the baseline. A failed run is listed with its error. Under
torch.compile the mask/activation split is not seen (Inductor's own dropout is not a dropout call): compare totals.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

EXPERIMENT = re.compile(r"composability-(?P<setting>.+)-ws(?P<ranks>\d+)")
COLUMNS = ("setting", "ranks", "model", "variant", "seed", "status", "identical_to_baseline", "final_loss",
           "saved_mask_bytes", "saved_bytes", "saved_bytes_change")


def _saved(results: dict) -> int | None:
    if results.get("saved_mask_bytes") is None:
        return None
    return results["saved_mask_bytes"] + results["saved_activation_bytes"]


def composability_rows(runs_root: Path) -> list[dict]:
    """One row per composability run under ``runs_root``, compared with the baseline of its setting and seed."""
    runs = []
    for path in sorted(Path(runs_root).glob("composability-*/*/*/*/seed*/results.json")):
        results = json.loads(path.read_text())
        match = EXPERIMENT.fullmatch(results["experiment"])
        if match:
            runs.append((match["setting"], int(match["ranks"]), results))
    baselines = {(setting, ranks, r["model"], r["dataset"], r["seed"]): r for setting, ranks, r in runs
                 if r["variant"] == "baseline" and r["status"] == "ok"}
    rows = []
    for setting, ranks, results in runs:
        baseline = baselines.get((setting, ranks, results["model"], results["dataset"], results["seed"]))
        compared = results["status"] == "ok" and baseline is not None
        rows.append({
            "setting": setting, "ranks": ranks, "model": results["model"], "variant": results["variant"],
            "seed": results["seed"],
            "status": "ok" if results["status"] == "ok" else f"failed: {results['error']}",
            "identical_to_baseline": results["param_sha256"] == baseline["param_sha256"] if compared else None,
            "final_loss": results.get("final_loss"),
            "saved_mask_bytes": results.get("saved_mask_bytes"),
            "saved_bytes": _saved(results),
            "saved_bytes_change": _saved(results) - _saved(baseline) if compared else None,
        })
    return rows


def _cell(column: str, value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, float):
        return repr(value)
    if column.startswith("saved"):
        scale, unit = (2**20, "MiB") if abs(value) >= 2**20 else (2**10, "KiB")
        return f"{value / scale:{'+' if column.endswith('change') else ''}.1f} {unit}"
    return str(value)


def to_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(column, row[column]) for column in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs_root", type=Path, help="the runs root of the composability sweep")
    args = parser.parse_args(argv)
    if not args.runs_root.is_dir():
        parser.error(f"runs root {str(args.runs_root)!r} is not a directory")
    rows = composability_rows(args.runs_root)
    if not rows:
        parser.error(f"no composability-* runs under {str(args.runs_root)!r}; run: python run.py -m "
                     "experiment=composability")
    table = to_markdown(rows)
    (args.runs_root / "composability.md").write_text(table)
    with (args.runs_root / "composability.csv").open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    print(table, end="")


if __name__ == "__main__":
    main()
