"""Experiment tracking for one job: a W&B run per job, or nothing (``logger=disabled``).

Loggers are picked by ``cfg.logger.backend`` from ``TRACKERS``. A tracker is a context manager yielding an object with
``log(step, metrics)`` and ``finish(results)``; leaving the context always ends the W&B run, so the next job of the
same process (basic/joblib launchers) never logs into this one.

W&B prints nothing to the console (``silent``; its files are written as usual: the run's console output goes to its
``output.log``), so a sweep's console holds one progress bar and one result line per run. ``WANDB_SILENT`` set in the
environment wins. Online, W&B waits at most ``logger.init_timeout_s`` for its server (``WANDB_INIT_TIMEOUT`` wins);
when it cannot reach it, the run logs offline instead, after one warning line, and so does every later run of the
same process, without waiting again: ``wandb sync`` uploads them later.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Protocol

from omegaconf import DictConfig, OmegaConf

WANDB_MODES = ("offline", "online", "disabled")
# Large or already-logged fields of results.json that the W&B summary leaves out.
_NOT_IN_SUMMARY = ("config", "traceback")

log = logging.getLogger(__name__)
# Why an online init of this process could not reach W&B's server, once it could not: later runs go offline at once.
_unreachable: list[str] = []


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


def init_timeout_s(cfg: DictConfig) -> float:
    """How long an online init waits for W&B's server: ``WANDB_INIT_TIMEOUT`` wins over ``logger.init_timeout_s``."""
    value = os.environ.get("WANDB_INIT_TIMEOUT") or cfg.logger.init_timeout_s
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not seconds > 0:
        raise ValueError(f"W&B init timeout {value!r} (logger.init_timeout_s or WANDB_INIT_TIMEOUT) must be a "
                         "number of seconds > 0")
    return seconds


def _settings(cfg: DictConfig) -> Any:
    import wandb

    return wandb.Settings(init_timeout=init_timeout_s(cfg),
                          **({} if "WANDB_SILENT" in os.environ else {"silent": True}))


def _init_or_offline(cfg: DictConfig, run_dir: Path, **kwargs: Any) -> Any:
    """``wandb.init``; online, a server that does not answer within the timeout leaves the run offline (one warning)."""
    import wandb

    mode = wandb_mode(cfg)
    if mode == "online" and _unreachable:
        mode = "offline"
    if mode != "online":
        return wandb.init(mode=mode, **kwargs)
    wandb_dir = run_dir / "wandb"
    before = set(wandb_dir.glob("run-*"))
    try:
        return wandb.init(mode=mode, **kwargs)
    except wandb.errors.CommError as error:
        for attempt in set(wandb_dir.glob("run-*")) - before:  # the unconnected attempt: it holds no data of the run
            shutil.rmtree(attempt, ignore_errors=True)
        _unreachable.append(str(error).splitlines()[0])
        log.warning("W&B: no answer from its server within %g s (%s); this run and the next ones of this process "
                    "log offline: upload them with `wandb sync %s/offline-run-*`", init_timeout_s(cfg),
                    _unreachable[0], wandb_dir)
        return wandb.init(mode="offline", **kwargs)


@contextmanager
def wandb_tracker(cfg: DictConfig, run_dir: Path) -> Iterator[WandbTracker]:
    names = (cfg.experiment_name, cfg.model.name, cfg.dataset.name)
    run = _init_or_offline(
        cfg,
        run_dir,
        project=cfg.logger.project,
        entity=cfg.logger.entity,
        dir=run_dir,  # W&B writes <run_dir>/wandb/
        group="/".join(names),
        job_type=cfg.variant.name,
        name=f"{cfg.variant.name}-seed{cfg.seed}",
        tags=[*names, cfg.variant.name, f"seed{cfg.seed}", *cfg.logger.tags],
        config=OmegaConf.to_container(cfg, resolve=True),
        settings=_settings(cfg),
    )
    with run:
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
        init_timeout_s(cfg)


def open_tracker(cfg: DictConfig, run_dir: Path) -> AbstractContextManager[Tracker]:
    check_logger_config(cfg)
    return TRACKERS[cfg.logger.backend](cfg, run_dir)
