"""The Hydra harness that reproduces the paper's experiments.

``run.py`` (Hydra entry) -> ``runner.run_job`` (one run: its directory, skip/retry, its record, W&B through
``tracking``; ``sweep`` around the jobs: configs checked first, journal, tally) -> ``jobs`` (the config checks and the
job kind) -> ``train.run_training`` (the training loop) or ``maxfit.run_search`` (a size search), both on ``step``
(learner, device, peak memory). ``record`` is the run contract: what results.json holds, the one module of the
harness that the analysis (``scripts/``) imports.
"""
