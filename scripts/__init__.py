"""Analysis of finished runs: ``python -m scripts.report runs/ --out results/``.

Reads only the files runs leave behind (``results.json``, ``metrics.jsonl``); never starts a run.
"""
