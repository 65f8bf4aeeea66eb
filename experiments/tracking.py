"""Experiment tracking for one job: a W&B run per job, or nothing (``logger=disabled``).

Loggers are picked by ``cfg.logger.backend`` from ``TRACKERS``. A tracker is a context manager yielding an object with
``log(step, metrics)`` and ``finish(results)``; leaving the context always ends the W&B run, so the next job of the
same process (basic/joblib launchers) never logs into this one.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

WANDB_MODES = ("offline", "online", "disabled")
# Large or already-logged fields of results.json that the W&B summary leaves out.
_NOT_IN_SUMMARY = ("config", "traceback")


class Tracker(Protocol):
    def log(self, step: int, metrics: Mapping[str, Any]) -> None: ...

    def finish(self, results: Mapping[str, Any]) -> None: ...


class NoTracker:
    """``logger=disabled``: makes no W&B call at all."""

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        pass

    def finish(self, results: Mapping[str, Any]) -> None:
        pass


class WandbTracker:
    def __init__(self, run: Any) -> None:
        self.run = run

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        # "step" is a logged metric (the x-axis of every chart) rather than W&B's own step, which must grow strictly:
        # a grad-cosine point may be logged at a step that already has a loss point.
        self.run.log({"step": step, **metrics})

    def finish(self, results: Mapping[str, Any]) -> None:
        self.run.summary.update({key: value for key, value in results.items() if key not in _NOT_IN_SUMMARY})
        if results.get("status") != "ok":
            self.run.finish(exit_code=1)  # shows the run as failed in W&B


def wandb_mode(cfg: DictConfig) -> str:
    """The W&B mode: ``WANDB_MODE`` from the environment wins over ``logger.mode`` (tests and CI force offline)."""
    mode = os.environ.get("WANDB_MODE") or cfg.logger.mode
    if mode not in WANDB_MODES:
        raise ValueError(f"unknown W&B mode {mode!r} (logger.mode or WANDB_MODE); valid: {', '.join(WANDB_MODES)}")
    return mode


@contextmanager
def wandb_tracker(cfg: DictConfig, run_dir: Path) -> Iterator[WandbTracker]:
    import wandb

    names = (cfg.experiment_name, cfg.model.name, cfg.dataset.name)
    with wandb.init(
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        mode=wandb_mode(cfg),
        dir=run_dir,  # W&B writes <run_dir>/wandb/
        group="/".join(names),
        job_type=cfg.variant.name,
        name=f"{cfg.variant.name}-seed{cfg.seed}",
        tags=[*names, cfg.variant.name, f"seed{cfg.seed}", *cfg.logger.tags],
        config=OmegaConf.to_container(cfg, resolve=True),
    ) as run:
        run.define_metric("*", step_metric="step")
        yield WandbTracker(run)


@contextmanager
def no_tracker(cfg: DictConfig, run_dir: Path) -> Iterator[NoTracker]:
    yield NoTracker()


TRACKERS: dict[str, Callable[[DictConfig, Path], AbstractContextManager[Tracker]]] = {
    "wandb": wandb_tracker,
    "none": no_tracker,
}


def check_logger_config(cfg: DictConfig) -> None:
    backend = cfg.logger.backend
    if backend not in TRACKERS:
        raise ValueError(f"unknown logger.backend {backend!r}; valid: {', '.join(TRACKERS)}")
    if backend == "wandb":
        wandb_mode(cfg)


def open_tracker(cfg: DictConfig, run_dir: Path) -> AbstractContextManager[Tracker]:
    check_logger_config(cfg)
    return TRACKERS[cfg.logger.backend](cfg, run_dir)
