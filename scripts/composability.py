"""The composability table: each variant against the baseline under one technique at a time.

Reads the runs of ``experiment=composability``: those whose record has the ``composability`` axis (the
``conf/composability/`` setting, among them the sharded ``zero1`` and ``fsdp2``) and the ``ranks`` axis (the DDP world
size). A row per setting, ranks, model,
variant and seed: whether the run ended with parameters bit-identical to the baseline's (``param_sha256``), its
final loss, the bytes saved for backward (masks, and masks plus activations) and their change from the baseline. A
failed run is listed with its error. Under torch.compile the mask/activation split is not seen (Inductor's own
dropout is not a dropout call): compare the totals there.
"""

from __future__ import annotations

import pandas as pd

from .analysis import METRICS
from .tables import markdown_table

# How each setting spreads training over its ranks when it runs on several (any other setting: DDP, whole replicas).
SHARDED = {"zero1": "ZeRO-1: ZeroRedundancyOptimizer under DDP", "fsdp2": "ZeRO-2: FSDP2 fully_shard"}

COLUMNS = ("setting", "ranks", "model", "dataset", "variant", "seed", "status", "identical_to_baseline", "final_loss",
           "saved_mask_bytes", "saved_bytes", "saved_bytes_change")


def composability_table(runs: pd.DataFrame, baseline: str = "baseline") -> pd.DataFrame:
    """One row per composability run in ``runs`` (the report's runs table), compared with the baseline of its
    setting, world size and seed; empty when there are none."""
    mine = runs[runs["results"].map(lambda r: "composability" in r["axes"])]
    mine = mine.assign(setting=mine["results"].map(lambda r: r["axes"]["composability"]),
                       ranks=mine["results"].map(lambda r: int(r["axes"]["ranks"])),
                       saved_bytes=mine["saved_mask_bytes"] + mine["saved_activation_bytes"],
                       digest=mine["results"].map(lambda r: r.get("param_sha256")))
    key = ["experiment", "model", "dataset", "seed"]
    reference = mine[(mine["variant"] == baseline) & (mine["status"] == "ok")][[*key, "digest", "saved_bytes"]]
    rows = mine.merge(reference, on=key, how="left", suffixes=("", "_baseline"))
    compared = (rows["status"] == "ok") & rows["digest_baseline"].notna()
    same = rows["digest"] == rows["digest_baseline"]
    rows["identical_to_baseline"] = pd.Series([bool(x) if c else None for x, c in zip(same, compared, strict=True)],
                                              index=rows.index, dtype=object)
    rows["saved_bytes_change"] = (rows["saved_bytes"] - rows["saved_bytes_baseline"]).where(compared)
    rows["status"] = rows["status"].where(rows["status"] == "ok", "failed: " + rows["error"].astype(str))
    return rows.sort_values(["setting", "ranks", "model", "dataset", "variant", "seed"])[list(COLUMNS)].reset_index(
        drop=True)


def setting_name(setting: str, ranks: int) -> str:
    """A setting as the claims table names it: ``eager``, ``eager (DDP, 2 ranks)``, ``fsdp2 (ZeRO-2: ..., 2 ranks)``."""
    return setting if ranks == 1 else f"{setting} ({SHARDED.get(setting, 'DDP')}, {ranks} ranks)"


def _bytes(value: object, signed: bool = False) -> str:
    return "—" if pd.isna(value) else METRICS["saved_mask_bytes"].with_unit(float(value), signed)


def _identical(value: object) -> str:
    if value is None or pd.isna(value):
        return "—"
    return "yes" if value else "**no**"


def composability_markdown(table: pd.DataFrame) -> str:
    intro = (
        "Each run trained from the same initial weights and data as the baseline of its setting and seed; "
        "\"identical\" compares the SHA-256 of all final parameters. Saved bytes: what one training forward keeps "
        "for backward (parameters excluded), measured with `pmdrop.track_saved_tensors`; under compile "
        "Inductor's own dropout is not seen as a dropout call, so compare the totals. Ranks > 1: DDP under "
        "torchrun, each rank on its own shard of the data with its own dropout seed; `zero1` shards AdamW's state "
        "(`ZeroRedundancyOptimizer`), `fsdp2` shards gradients and AdamW's state as ZeRO-2 does (`fully_shard` on "
        "each layer and the root) and its digest is of the full parameters, gathered on every rank. Settings: "
        "`conf/composability/`.\n\n"
    )
    header = ["setting", "ranks", "model/dataset", "variant", "seed", "status", "identical to baseline",
              "final loss", "saved masks", "saved total", "Δ saved total"]
    rows = [[r.setting, str(r.ranks), f"{r.model}/{r.dataset}", r.variant, str(r.seed), r.status,
             _identical(r.identical_to_baseline), "—" if pd.isna(r.final_loss) else f"{r.final_loss:.6g}",
             _bytes(r.saved_mask_bytes), _bytes(r.saved_bytes), _bytes(r.saved_bytes_change, signed=True)]
            for r in table.itertuples()]
    return intro + markdown_table(header, rows)
