"""Hand-made run directories that follow the harness contract (results.json + metrics.jsonl), in tmp dirs."""

import json
from pathlib import Path

# conf/model/tinybert.yaml and conf/dataset/synthetic_pairs.yaml, shrunk
TINYBERT = {"name": "tinybert", "family": "bert", "attn_implementation": "eager", "pretrained": False,
            "checkpoint": "huawei-noah/TinyBERT_General_4L_312D", "hidden_size": 32, "num_hidden_layers": 2,
            "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 64,
            "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1}
PAIRS = {"name": "synthetic_pairs", "kind": "synthetic_pairs", "task": "pair_classification", "metric": "f1",
         "seq_len": 16}
TRAINER = {"batch_size": 4, "steps": 6, "lr": 2e-5, "warmup_steps": 1, "weight_decay": 0.01, "precision": "fp32",
           "grad_checkpointing": False, "compile": False, "device": "cpu", "log_every": 2, "throughput_window": 4,
           "measure_step": 1, "eval_batches": 2, "paired": True, "grad_cosine_every": 2}


def make_results(
    *, experiment="demo", model=TINYBERT, dataset=PAIRS, variant="baseline", seed=0, status="ok", trainer=None,
    composability=None, **measured,
) -> dict:
    """A results.json record as the harness wrote it before records had a version: the runner's fields plus the
    trainer's measurements (``measured`` overrides them, ``trainer`` the trainer config, ``composability`` names the
    conf/composability/ setting of a composability run)."""
    config = {"seed": seed, "experiment_name": experiment, "runs_root": "runs", "force": False,
              "variant": {"name": variant}, "model": dict(model), "dataset": dict(dataset),
              "trainer": TRAINER | (trainer or {}),
              "logger": {"backend": "none"}}
    if composability is not None:
        config["composability"] = {"setting": composability}
    run = {
        "experiment": experiment, "model": model["name"], "dataset": dataset["name"], "variant": variant,
        "seed": seed, "status": status, "error": None, "started_at": "2025-01-01T00:00:00+00:00",
        "finished_at": "2025-01-01T00:01:00+00:00", "wall_time_s": 60.0, "git_commit": "abc1234",
        "torch_version": "2.14.1", "transformers_version": "5.23.0", "timm_version": "1.0.31", "hostname": "ci",
        "command": f"run.py -m experiment={experiment}", "config": config, "run_dir": "elsewhere",
    }
    if status == "failed":
        return run | {"error": "RuntimeError: boom", "traceback": "Traceback ...\nRuntimeError: boom"} | measured
    paired = variant != "baseline"
    return run | {
        "device": "cpu", "steps": 6, "batch_size": 4, "seq_len": dataset["seq_len"], "num_params": 71168,
        "precision": "fp32", "peak_memory_bytes": 300_000_000, "peak_memory_kind": "cpu_peak_rss",
        "saved_mask_bytes": 55680, "saved_activation_bytes": 212660, "saved_parameter_bytes": 71168,
        "dropout_calls": {"pmdrop": 8}, "throughput_samples_per_s": 100.0, "tokens_per_s": 1600.0,
        "step_time_s": 0.04, "task_metric": "f1", "metrics": {"f1": 0.8, "accuracy": 0.75}, "final_loss": 0.5,
        "grad_cosine": [[2, 0.9999], [4, 0.9998]] if paired else None,
    } | measured


def write_run(root: Path, losses=(0.7, 0.6, 0.5), **fields) -> Path:
    results = make_results(**fields)
    run_dir = (Path(root) / results["experiment"] / results["model"] / results["dataset"] / results["variant"]
               / f"seed{results['seed']}")
    run_dir.mkdir(parents=True, exist_ok=True)
    lines = [{"step": 2 * (i + 1), "loss": loss, "lr": 2e-5, "step_time_s": 0.04, "samples_per_s": 100.0}
             for i, loss in enumerate(losses)]
    lines += [{"step": step, "grad_cosine": value} for step, value in results.get("grad_cosine") or []]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    (run_dir / "results.json").write_text(json.dumps(results))
    return run_dir
