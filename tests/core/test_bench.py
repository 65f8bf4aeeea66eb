import json

import pytest
import torch

import pmdrop
from benchmarks import bench


def test_bench_prints_ratios_and_bytes_for_every_exact_variant(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--views", "size", "--shape", "64,33", "--pairs", "2", "--dtype", "fp32", "bf16", "--json",
                str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["provenance"]["device"].startswith("cpu") and "commit" in report["provenance"]
    rows = {(r["variant"], r["dtype"]): r for r in report["rows"]}
    assert set(rows) == {(v, d) for v in ("baseline", "pmdrop", "pmdrop_nocache", "pmdrop_4bit", "seeded")
                         for d in ("fp32", "bf16")}
    assert rows["pmdrop", "fp32"]["saved_bytes_per_element"] == 1 / 8
    assert rows["pmdrop_4bit", "bf16"]["saved_bytes_per_element"] == 1 / 4
    assert rows["baseline", "fp32"]["baseline_saved_bytes_per_element"] == 4
    assert rows["baseline", "bf16"]["baseline_saved_bytes_per_element"] == 2
    assert all(r["fwd_bwd_ratio"] > 0 for r in rows.values())
    assert "pmdrop_nocache" in printed and "x" in printed


def test_bench_rejects_an_unknown_variant_before_timing(capsys):
    with pytest.raises(ValueError, match="unknown dropout variant 'nope'"):
        bench.main(["--shape", "8", "--variants", "nope"])


def test_interleaved_alternates_which_side_goes_first():
    calls = []
    timed = bench.interleaved(lambda: calls.append("ref") or (1.0, 2.0),
                                     lambda: calls.append("cand") or (3.0, 2.0), pairs=3, warmup=1)
    assert calls == ["ref", "cand", "ref", "cand", "cand", "ref", "ref", "cand"]
    fwd, bwd, total = bench.fwd_bwd_ratios(timed)
    assert fwd == [3.0] * 3 and bwd == [1.0] * 3 and total == [5 / 3] * 3


def test_launch_bound_view_reports_per_call_ratios_op_counts_and_routing_cost(tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(["--views", "launch", "--call-pairs", "2", "--routing-pairs", "2", "--variants", "baseline",
                "pmdrop", "seeded", "--json", str(out)])
    printed = capsys.readouterr().out
    view = json.loads(out.read_text())["launch_bound"]
    assert [r["variant"] for r in view["per_call"]] == ["baseline", "pmdrop", "seeded"]
    assert all(r["fwd_bwd_ratio"] > 0 and r["baseline_fwd_bwd_us"] > 0 for r in view["per_call"])
    assert view["redraw_floor_ratio"] > 0 and "floor of a redraw" in printed
    assert [s["step"] for s in view["per_call_steps"]] == [
        "hooks that keep the mask as is", "+ the pack and decode ops", "pmdrop (+ plan lookup, checks, records)"]
    assert all(s["fwd_bwd_ratio"] > 0 for s in view["per_call_steps"]) and "where a pmdrop call's time goes" in printed
    assert set(view["op_costs_us"]) == {"pack", "decode"} and "the pack and the decode ops alone" in printed
    assert all(tuple(c) == bench.OP_COST_PRELUDES and min(c.values()) > 0 for c in view["op_costs_us"].values())
    ops = {(c["variant"], c["route"]): c for c in view["op_counts"]}
    # torch's own routes, as a reference: CPU draws noise (empty_like, bernoulli_, div_, mul), CUDA one native_dropout
    assert ops["nn.Dropout", "noise"]["fwd_op_names"] == ["empty_like", "bernoulli_", "div_", "mul"]
    assert ops["nn.Dropout", "native"]["fwd_op_names"] == ["native_dropout"]
    assert ops["nn.Dropout", "noise"]["fwd_kernels"] == 3 and ops["nn.Dropout", "native"]["fwd_kernels"] == 1
    assert ops["baseline", "noise"]["fwd_op_names"] == ops["nn.Dropout", "noise"]["fwd_op_names"]
    assert "native_dropout" in ops["pmdrop", "native"]["fwd_op_names"]  # the CUDA route's logic did run
    assert "native_dropout" not in ops["pmdrop", "noise"]["fwd_op_names"]
    assert "native_dropout_backward" in ops["pmdrop", "native"]["bwd_op_names"]
    assert ops["pmdrop", "noise"]["fwd_kernels"] > 0 and ops["pmdrop", "noise"]["bwd_kernels"] > 0
    routing = {(r["variant"], r["routing"]): r for r in view["routing"]}
    assert set(routing) == {(v, r) for v in ("baseline", "pmdrop") for r in ("static", "all")}
    assert all(r["fwd_bwd_ratio"] > 0 for r in routing.values())
    # static routing adds Python per dropout call (14 sites), the mode of routing="all" per torch op
    assert 0 < routing["baseline", "static"]["extra_python_calls"] <= 8 * 14
    assert routing["baseline", "all"]["extra_python_calls"] > 4 * routing["baseline", "static"]["extra_python_calls"]
    assert "routing cost" in printed and "aten ops dispatched per call" in printed


@pytest.mark.parametrize("packs", [False, True])
def test_the_steps_to_a_packed_call_compute_what_nn_dropout_computes(packs):
    """The per-call breakdown times the same computation at each step: output, gradient and RNG stream are torch's."""
    x = torch.randn(64, 64, requires_grad=True)
    plan = pmdrop.functional._CallPlan(x, 0.1, False, pmdrop.get_variant("pmdrop")) if packs else None
    results = []
    for layer in (torch.nn.Dropout(0.1), bench._DropoutUnderHooks(0.1, plan)):
        torch.manual_seed(7)
        y = layer(x)
        (grad,) = torch.autograd.grad(y, x, torch.randn_like(y))
        results.append((y, grad, torch.rand(1)))
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


def test_tiny_bert_stand_in_has_berts_dropout_sites():
    model, loss_of = bench._tiny_model("torch")
    with pmdrop.track_saved_tensors() as saved:
        loss_of(pmdrop.convert(model, "pmdrop"))
    assert saved.dropout_calls == {"pmdrop": 1 + 3 * 4 + 1}
