"""Hydra entry point: one job per run.

    python run.py -m experiment=demo                       # 5 variants x 5 seeds
    python run.py -m model=bert_large variant=pmdrop seed=0-4
    python run.py variant=seeded seed=3 trainer.steps=50   # a single run

``seed=A-B`` means seeds A..B (rewritten before Hydra parses the command line, see experiments/seeds.py).
"""

import sys

import hydra
from omegaconf import DictConfig

from experiments.runner import run_job
from experiments.seeds import SeedRangeError, expand_seed_ranges
from experiments.stops import signals_interrupt
from experiments.sweep import report_interrupted


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    return run_job(cfg)


if __name__ == "__main__":
    try:
        sys.argv = expand_seed_ranges(sys.argv)
    except SeedRangeError as error:
        print(f"run.py: error: {error}", file=sys.stderr)
        sys.exit(2)
    with signals_interrupt():  # Ctrl-C and SIGTERM: the running job is recorded as interrupted, then one line
        try:
            main()
        except KeyboardInterrupt as interrupt:
            sys.exit(report_interrupted(interrupt))
