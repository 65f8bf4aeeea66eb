"""The Hydra harness that reproduces the paper's experiments.

``run.py`` (Hydra entry) -> ``runner.run_job`` (run directory, skip/retry, results.json, W&B through ``tracking``)
-> ``train.run_training`` (models, data, training loop and measurements).
"""
