"""Log the report's tables to a W&B run, only in online mode: offline or disabled W&B makes no wandb call."""

from __future__ import annotations

import logging
import os

import pandas as pd

from .provenance import Provenance
from .settings import WANDB_MODES, Settings

log = logging.getLogger(__name__)


def wandb_mode(settings: Settings) -> str:
    """The report setting wins over ``WANDB_MODE``; with neither, W&B is left alone ("disabled")."""
    mode = settings.wandb_mode or os.environ.get("WANDB_MODE") or "disabled"
    if mode not in WANDB_MODES:
        raise ValueError(f"W&B mode {mode!r} is not valid; valid: {', '.join(WANDB_MODES)}")
    return mode


def _cells(frame: pd.DataFrame) -> pd.DataFrame:
    """W&B tables take plain values: missing numbers become None, mixed columns text."""
    return frame.astype(object).where(frame.notna(), None)


def log_tables(tables: dict[str, pd.DataFrame], settings: Settings, provenance: Provenance) -> bool:
    """Logs each table as a ``wandb.Table`` to one run of job type "report"; returns whether it did."""
    mode = wandb_mode(settings)
    if mode != "online":
        log.info("W&B mode is %s: report tables not logged to W&B", mode)
        return False
    import wandb

    config = {"provenance": provenance.lines()}
    with wandb.init(project=settings.wandb_project, entity=settings.wandb_entity, job_type="report",
                    config=config) as run:
        run.log({name: wandb.Table(dataframe=_cells(frame)) for name, frame in tables.items() if not frame.empty})
    return True
