"""A sweep's outcome: every job's config checked before the first run, every job's outcome journaled, the tally.

Every job appends its outcome to ``runs.jsonl`` in Hydra's sweep directory (one short line: safe across joblib and
submitit worker processes), which is how ``RunOutcomes`` (a Hydra callback, conf/config.yaml) sees jobs that ran in
other processes. At the end it prints the tally and exits non-zero, listing the failed runs, when any run failed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

import pmdrop

from .jobs import check_job_config

JOURNAL_FILE = "runs.jsonl"
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


def record_outcome(run_dir: Path, status: str, error: str | None) -> None:
    if not HydraConfig.initialized():
        return
    journal = journal_path(HydraConfig.get())
    journal.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"run_dir": str(run_dir), "status": status, "error": error}) + "\n"
    with journal.open("a") as file:  # one short append per job: safe across joblib worker processes
        file.write(line)


def read_outcomes(journal: Path) -> list[dict[str, Any]]:
    if not journal.exists():
        return []
    return [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]


def report_outcomes(journal: Path) -> int:
    """Print the sweep's tally and its failed runs; returns the number of failed runs."""
    outcomes = read_outcomes(journal)
    if not outcomes:  # no job got as far as a run (a config error, reported by Hydra)
        return 0
    failed = [outcome for outcome in outcomes if outcome["status"] == "failed"]
    counts = {status: sum(o["status"] == status for o in outcomes) for status in ("ok", "skipped", "failed")}
    print(f"{len(outcomes)} runs: {counts['ok']} ok, {counts['skipped']} skipped (finished), {counts['failed']} failed")
    for outcome in failed:
        print(f"FAILED {outcome['run_dir']}: {outcome['error']}")
    return len(failed)


def sweep_job_configs(config: DictConfig) -> list[DictConfig]:
    """Every job config of a basic-sweeper multirun, composed as the sweeper will compose it (without ``hydra``)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(params + list(config.hydra.overrides.task))
    job_configs = []
    for batch in BasicSweeper.split_arguments(overrides, None):
        for job in batch:
            job_config = loader.load_sweep_config(config, list(job))
            with read_write(job_config), open_dict(job_config):
                del job_config["hydra"]
            job_configs.append(job_config)
    return job_configs


class RunOutcomes(Callback):
    """Checks every job's config before a sweep's first run; exits 1 at the end if any run failed, listing them."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        journal_path(config.hydra).unlink(missing_ok=True)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        journal_path(config.hydra).unlink(missing_ok=True)
        if not config.hydra.sweeper._target_.endswith(".BasicSweeper"):
            return  # other sweepers choose jobs as they go; each job still checks itself before any work
        try:
            for job_config in sweep_job_configs(config):
                check_job_config(job_config)
        except CompactHydraException as error:
            # Hydra turns an exception raised in a callback into a warning and carries on: exit instead.
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
