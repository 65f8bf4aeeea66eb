"""A sweep's outcome: every job's config checked before the first run, every job's outcome journaled, the tally.

Every job appends its outcome to ``runs.jsonl`` in Hydra's sweep directory (one short line: safe across joblib and
submitit worker processes), which is how ``RunOutcomes`` (a Hydra callback, conf/config.yaml) sees jobs that ran in
other processes. At the end it prints the tally and exits non-zero, listing them, when a run failed, diverged or
was interrupted; runs left to another process ("running elsewhere") are listed too. When the journal cannot be
written (a full or read-only disk) this process's outcomes still reach the tally. Ctrl-C and SIGTERM end the sweep
with one line (``report_interrupted``, called by run.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

import pmdrop

from . import stops
from .jobs import check_job_config, check_resources

JOURNAL_FILE = "runs.jsonl"
# A run's outcome in this sweep: "skipped" (finished before), the record's statuses, or "running elsewhere" (another
# process holds its lock). Only "ok" is finished; a run left elsewhere is that process's to finish.
OUTCOMES = ("ok", "skipped", "failed", "diverged", "interrupted", "running elsewhere")
NOT_DONE = ("failed", "diverged", "interrupted")  # the sweep exits non-zero when a run ended so
VARIANT_SETS = ("all", "exact")


def sweep_variants(which: str) -> str:
    """A sweep list of variants from the core registry, in registration order: ``${variants:all}`` every variant,
    ``${variants:exact}`` those bit-identical to torch.nn.Dropout. A variant registered in pmdrop joins every
    sweep that lists variants this way."""
    if which not in VARIANT_SETS:
        raise ValueError(f"${{variants:{which}}} is not a variant set; valid: {', '.join(VARIANT_SETS)}")
    names = pmdrop.variant_names()
    return ",".join(name for name in names if which == "all" or pmdrop.get_variant(name).bit_exact)


OmegaConf.register_new_resolver("variants", sweep_variants, replace=True)


def journal_path(hydra_cfg: DictConfig) -> Path:
    """``runs.jsonl`` in Hydra's output directory of this invocation (the sweep dir, or the single run's dir)."""
    base = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else hydra_cfg.run.dir
    return Path(base) / JOURNAL_FILE


# This process's outcomes, for the tally when the journal cannot be written: the basic launcher runs every job in
# this process, so its tally is never lost (a joblib worker's outcome that missed the journal is).
_outcomes_here: list[dict[str, Any]] = []


def _one_line(error: OSError, doing: str, path: Path) -> str:
    return f"{type(error).__name__}: cannot {doing} {error.filename or path}: {error.strerror or error}"


def record_outcome(run_dir: Path, status: str, error: str | None, damage: str | None = None) -> None:
    """Append the job's outcome to the sweep's journal (``damage``: the damaged files the run replaced)."""
    outcome = {"run_dir": str(run_dir), "status": status, "error": error, "damaged": damage}
    _outcomes_here.append(outcome)
    if not HydraConfig.initialized():
        return
    journal = journal_path(HydraConfig.get())
    try:
        journal.parent.mkdir(parents=True, exist_ok=True)
        with journal.open("a") as file:  # one short append per job: safe across joblib worker processes
            file.write(json.dumps(outcome) + "\n")
    except OSError as failure:
        print(f"{_one_line(failure, 'record the outcome in', journal)}; the tally counts it from memory", flush=True)


def read_outcomes(journal: Path) -> list[dict[str, Any]]:
    """The journal's outcomes, then this process's that did not reach it (a line cut by a full disk is skipped)."""
    outcomes = []
    with contextlib.suppress(FileNotFoundError):
        for line in journal.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                outcomes.append(json.loads(line))
    seen = {json.dumps(outcome, sort_keys=True) for outcome in outcomes}
    return outcomes + [o for o in _outcomes_here if json.dumps(o, sort_keys=True) not in seen]


def tally_line(outcomes: list[dict[str, Any]]) -> str:
    """``6 runs: 3 ok, 1 skipped (finished), 1 failed, 1 diverged; 1 with damaged files, run again``."""
    counts = {status: sum(o["status"] == status for o in outcomes) for status in OUTCOMES}
    line = f"{len(outcomes)} runs: {counts['ok']} ok, {counts['skipped']} skipped (finished), {counts['failed']} failed"
    line += "".join(f", {counts[status]} {status}" for status in OUTCOMES[3:] if counts[status])
    damaged = sum(bool(o.get("damaged")) for o in outcomes)
    return line + (f"; {damaged} with damaged files, run again" if damaged else "")


def report_outcomes(journal: Path) -> int:
    """Print the sweep's tally and a line per run not done (failed, diverged, interrupted) or running elsewhere;
    returns the number not done."""
    outcomes = read_outcomes(journal)
    if not outcomes:  # no job got as far as a run (a config error, reported by Hydra)
        return 0
    print(tally_line(outcomes))
    for outcome in outcomes:
        if outcome["status"] in (*NOT_DONE, "running elsewhere"):
            print(f"{outcome['status'].upper()} {outcome['run_dir']}: {outcome['error']}")
    return sum(outcome["status"] in NOT_DONE for outcome in outcomes)


@dataclass
class _Sweep:
    """The sweep this process is running: where its journal is, and how many runs it has (None: not known ahead)."""

    journal: Path | None = None
    planned: int | None = None


_sweep = _Sweep()


def _start_sweep(config: DictConfig, planned: int | None) -> None:
    """Before the first run: the sweep's own directory must take files (a read-only or full disk stops it here, in one
    line, rather than in Hydra's first write of it, with a traceback); then a fresh journal."""
    journal = journal_path(config.hydra)
    probe = journal.with_name(f".write-probe.{os.getpid()}")
    try:
        journal.parent.mkdir(parents=True, exist_ok=True)
        with probe.open("x") as file:
            file.write("probe\n")
            file.flush()
            os.fsync(file.fileno())
        probe.unlink()
        journal.unlink(missing_ok=True)
    except OSError as error:
        with contextlib.suppress(OSError):
            probe.unlink(missing_ok=True)
        print(f"{_one_line(error, 'write in', journal.parent)}; no run was started", file=sys.stderr)
        sys.exit(1)
    _sweep.journal, _sweep.planned = journal, planned
    _outcomes_here.clear()


def report_interrupted(interrupt: KeyboardInterrupt) -> int:
    """One line saying what finished and what did not, after Ctrl-C or SIGTERM; returns the exit code (130, 143)."""
    outcomes = read_outcomes(_sweep.journal) if _sweep.journal is not None else list(_outcomes_here)
    stopped = [o["run_dir"] for o in outcomes if o["status"] == "interrupted"]
    ended = [o for o in outcomes if o["status"] != "interrupted"]
    counts = ", ".join(f"{n} {status}" for status in OUTCOMES if (n := sum(o["status"] == status for o in ended)))
    left = f", {_sweep.planned - len(outcomes)} not started" if _sweep.planned is not None else ""
    name = interrupt.args[0] if isinstance(interrupt, stops.Interrupted) else "SIGINT"
    print(f"interrupted by {name}: {len(ended)} runs ended ({counts or 'none'}), {len(stopped)} interrupted"
          f"{' (' + ', '.join(stopped) + ')' if stopped else ''}{left}; the same command runs what is not finished",
          file=sys.stderr, flush=True)
    return interrupt.exit_code if isinstance(interrupt, stops.Interrupted) else 130


def sweep_jobs(config: DictConfig) -> list[tuple[list[str], DictConfig]]:
    """Every job of a basic-sweeper multirun: its overrides and its config, composed as the sweeper will compose it
    (without ``hydra``)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(params + list(config.hydra.overrides.task))
    jobs = []
    for batch in BasicSweeper.split_arguments(overrides, None):
        for job in batch:
            job_config = loader.load_sweep_config(config, list(job))
            with read_write(job_config), open_dict(job_config):
                del job_config["hydra"]
            jobs.append((list(job), job_config))
    return jobs


def sweep_job_configs(config: DictConfig) -> list[DictConfig]:
    """Every job config of a basic-sweeper multirun (``sweep_jobs`` without the overrides)."""
    return [job_config for _, job_config in sweep_jobs(config)]


class RunOutcomes(Callback):
    """Checks every job's config and resources before a sweep's first run; exits 1 at the end if a run failed,
    diverged or was interrupted, listing them."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        _start_sweep(config, 1)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not config.hydra.sweeper._target_.endswith(".BasicSweeper"):
            _start_sweep(config, None)
            return  # other sweepers choose jobs as they go; each job still checks itself before any work
        try:
            job_configs = sweep_job_configs(config)
            for job_config in job_configs:
                check_job_config(job_config)
        except CompactHydraException as error:
            # Hydra turns an exception raised in a callback into a warning and carries on: exit instead.
            print(error, file=sys.stderr)
            sys.exit(1)
        _start_sweep(config, len(job_configs))  # the sweep's own directory first: its journal holds the outcomes
        try:
            for job_config in job_configs:  # once every value is known good; each checkpoint once (cached)
                check_resources(job_config)
        except CompactHydraException as error:
            print(error, file=sys.stderr)
            sys.exit(1)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._exit_on_failure(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._exit_on_failure(config)

    @staticmethod
    def _exit_on_failure(config: DictConfig) -> None:
        if report_outcomes(journal_path(config.hydra)):
            sys.exit(1)
