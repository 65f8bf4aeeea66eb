"""The one-line swap on whole models: every dropout site routed, trajectories bit-identical."""

import copy
import functools
import inspect
import pathlib
import warnings

import pytest
import torch
import torch.nn.functional as F  # the spelling models use, which routing must see
from torch import nn
from torch.nn.functional import dropout as imported_dropout

import pmdrop
from benchmarks.models import tiny_bert, tiny_longformer, tiny_vit, token_batch

from .helpers import EXACT_VARIANTS


def dropout_calls(model, inputs):
    model.train()
    with pmdrop.track_saved_tensors(model.parameters()) as saved:
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    del out
    return saved


ROUTINGS = ["static", "all"]


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("layers", [1, 2])
def test_every_bert_site_goes_through_pmdrop(layers, routing):
    model = tiny_bert(layers=layers)
    before = dropout_calls(model, token_batch())
    pmdrop.convert(model, "pmdrop", routing=routing)
    after = dropout_calls(model, token_batch())
    sites = 1 + 3 * layers + 1  # BertModel: embeddings + 3 per layer; the classifier head adds 1
    assert before.dropout_calls == {"torch": sites}
    assert after.dropout_calls == {"pmdrop": sites}
    assert after.mask_bytes < before.mask_bytes / 8 * 1.01


@pytest.mark.parametrize("routing", ROUTINGS)
def test_every_longformer_site_goes_through_pmdrop(routing):
    model = tiny_longformer()
    batch = {"input_ids": torch.randint(2, 500, (2, 64)), "attention_mask": torch.ones(2, 64, dtype=torch.long)}
    before = dropout_calls(model, batch)
    pmdrop.convert(model, "pmdrop", routing=routing)
    after = dropout_calls(model, batch)
    assert set(before.dropout_calls) == {"torch"} and set(after.dropout_calls) == {"pmdrop"}
    assert after.dropout_calls["pmdrop"] == before.dropout_calls["torch"] >= 1 + 3 * 2


@pytest.mark.parametrize("routing", ROUTINGS)
def test_every_unfused_vit_site_goes_through_pmdrop(routing):
    model = tiny_vit()
    images = torch.randn(2, 3, 32, 32)
    before = dropout_calls(model, images)
    pmdrop.convert(model, "pmdrop", routing=routing)
    after = dropout_calls(model, images)
    assert set(after.dropout_calls) == {"pmdrop"}
    assert after.dropout_calls["pmdrop"] == before.dropout_calls["torch"] >= 4 * 2


def test_replaced_modules_keep_their_settings_and_state_dict():
    model = tiny_bert(layers=1)
    keys = list(model.state_dict())
    originals = {n: (m.p, m.inplace) for n, m in model.named_modules() if type(m) is torch.nn.Dropout}
    pmdrop.convert(model, "pmdrop_4bit")
    replaced = {n: m for n, m in model.named_modules() if isinstance(m, pmdrop.PackedDropout)}
    assert set(replaced) == set(originals)
    assert all((m.p, m.inplace) == originals[n] and m.variant == "pmdrop_4bit" for n, m in replaced.items())
    assert "variant='pmdrop_4bit'" in repr(model)
    assert list(model.state_dict()) == keys
    pmdrop.convert(model, "seeded")
    assert {m.variant for m in replaced.values()} == {"seeded"}


def test_convert_rejects_unknown_variant_and_warns_about_fused_attention_dropout():
    with pytest.raises(ValueError, match="valid: baseline"):
        pmdrop.convert(torch.nn.Sequential(torch.nn.Dropout()), "fast")
    with pytest.raises(ValueError, match="unknown routing 'dynamic'; valid: static, all"):
        pmdrop.convert(torch.nn.Sequential(torch.nn.Dropout()), "pmdrop", routing="dynamic")
    with pytest.warns(UserWarning, match="runs inside the fused kernel and is not packed"):
        pmdrop.convert(tiny_bert(attn="sdpa", layers=1), "pmdrop")


def test_dropout_mode_routes_functional_code_outside_modules():
    x = torch.randn(4096, requires_grad=True)
    with pmdrop.track_saved_tensors() as saved, pmdrop.dropout_mode("pmdrop"):
        torch.nn.functional.dropout(x, 0.1, training=True)
        assert pmdrop.active_variant() == "pmdrop"
    assert saved.dropout_calls == {"pmdrop": 1} and saved.mask_bytes == 4096 // 8
    assert pmdrop.active_variant() is None


def train(model, steps: int, checkpointing: bool = False, reentrant: bool = False) -> torch.nn.Module:
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(1234)
    for step in range(steps):
        loss = model(**token_batch(seed=step)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


@pytest.fixture(scope="module")
def tinybert_and_baseline_after_20_steps():
    torch.manual_seed(0)
    initial = tiny_bert()
    return initial, train(copy.deepcopy(initial), 20)


@pytest.mark.usefixtures("eager_path")
@pytest.mark.parametrize("variant", EXACT_VARIANTS)
def test_20_step_tinybert_training_is_bit_identical(variant, tinybert_and_baseline_after_20_steps):
    initial, baseline = tinybert_and_baseline_after_20_steps
    trained = train(pmdrop.convert(copy.deepcopy(initial), variant), 20)
    for (name, a), b in zip(baseline.named_parameters(), trained.parameters(), strict=True):
        assert torch.equal(a, b), f"{variant}: parameter {name} differs after 20 steps"
    assert any(not torch.equal(a, b) for a, b in zip(initial.parameters(), trained.parameters(), strict=True))


@pytest.mark.usefixtures("eager_path")
@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
@pytest.mark.parametrize("variant", ["pmdrop", "seeded"])
def test_training_with_hf_gradient_checkpointing_is_bit_identical(variant, reentrant):
    """Checkpointing re-runs layers during backward, outside the root forward: they must still route."""
    torch.manual_seed(0)
    initial = tiny_bert(layers=2)
    baseline = train(copy.deepcopy(initial), 3, checkpointing=True, reentrant=reentrant)
    trained = train(pmdrop.convert(copy.deepcopy(initial), variant), 3, checkpointing=True, reentrant=reentrant)
    assert all(torch.equal(a, b) for a, b in zip(baseline.parameters(), trained.parameters(), strict=True))


@pytest.mark.parametrize("reentrant", [False, True], ids=["non-reentrant", "reentrant"])
def test_layers_recomputed_by_checkpointing_route_their_dropout(reentrant):
    layers = 2
    model = pmdrop.convert(tiny_bert(layers=layers), "pmdrop")
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    model.train()
    with pmdrop.track_saved_tensors() as saved:
        model(**token_batch()).loss.backward()
    assert saved.dropout_calls == {"pmdrop": 1 + 2 * 3 * layers + 1}  # each layer's 3 sites again in backward


def _helper_dropout(x, p):
    return F.dropout(x, p, training=True)


def _decorated(forward):
    @functools.wraps(forward)
    def wrapper(self, *args, **kwargs):
        return forward(self, *args, **kwargs)

    return wrapper


class FunctionalDropouts(nn.Module):
    """Every spelling of a functional dropout call that static routing must find."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(64, 64)

    @_decorated
    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        x = F.dropout(self.linear(x), 0.1, self.training)
        x = nn.functional.dropout(x, p=0.2, training=self.training)
        x = torch.nn.functional.dropout(x, p=0.3)
        x = imported_dropout(x, 0.4)
        x = _helper_dropout(x, 0.5)
        x = self._method_dropout(x)
        return (lambda t: F.dropout(t, 0.1))(x) * scale

    def _method_dropout(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, 0.2)


class ImportsDropoutAtRunTime(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.nn.functional import dropout  # not in the code's globals: only routing="all" sees it

        return dropout(x, 0.1)


@pytest.mark.parametrize("routing", ROUTINGS)
def test_every_functional_spelling_is_routed(routing):
    model = nn.Sequential(FunctionalDropouts())
    x = torch.randn(8, 64, requires_grad=True)
    torch.manual_seed(0)
    expected = model(x)
    pmdrop.convert(model, "pmdrop", routing=routing)
    torch.manual_seed(0)
    with pmdrop.track_saved_tensors() as saved:
        got = model(x)
    assert saved.dropout_calls == {"pmdrop": 7}
    assert torch.equal(got, expected)


def test_dropout_the_code_does_not_show_needs_routing_all():
    model = nn.Sequential(ImportsDropoutAtRunTime())
    x = torch.randn(8, 64, requires_grad=True)
    assert dropout_calls(pmdrop.convert(model, "pmdrop"), x).dropout_calls == {"torch": 1}
    assert dropout_calls(pmdrop.convert(model, "pmdrop", routing="all"), x).dropout_calls == {"pmdrop": 1}
    assert dropout_calls(pmdrop.convert(model, "pmdrop"), x).dropout_calls == {"torch": 1}  # hooks removed


def _function_modes_seen_by(model, module, inputs) -> int:
    seen = []
    handle = module.register_forward_pre_hook(lambda *_: seen.append(torch._C._len_torch_function_stack()))
    model(**inputs)
    handle.remove()
    return max(seen)


def test_static_routing_runs_no_function_mode_around_other_ops():
    """What keeps routing free: no Python sees the matmuls, adds and layer norms of a converted model."""
    model = tiny_bert(layers=1).train()
    linear = model.bert.encoder.layer[0].attention.self.query
    assert _function_modes_seen_by(pmdrop.convert(model, "pmdrop"), linear, token_batch()) == 0
    assert _function_modes_seen_by(pmdrop.convert(model, "pmdrop", routing="all"), linear, token_batch()) == 1


def test_only_converted_instances_change_class_and_names_stay():
    converted, untouched = tiny_bert(layers=1), tiny_bert(layers=1)
    pmdrop.convert(converted, "pmdrop")
    attention = converted.bert.encoder.layer[0].attention.self
    original = type(untouched.bert.encoder.layer[0].attention.self)
    assert isinstance(attention, original) and type(attention) is not original
    assert type(attention).__name__ == original.__name__ and type(attention).__qualname__ == original.__qualname__
    assert type(converted) is type(untouched)  # the root's forward never calls F.dropout: left as it is
    assert dropout_calls(untouched, token_batch()).dropout_calls == {"torch": 1 + 3 + 1}
    pmdrop.convert(converted, "seeded")
    assert type(converted.bert.encoder.layer[0].attention.self).__bases__ == (original,)


@pytest.mark.parametrize("routing", ROUTINGS)
def test_convert_keeps_forward_signatures_and_sets_no_instance_forward(routing):
    model = tiny_bert(layers=1)
    kept = [name for name, m in model.named_modules() if not isinstance(m, nn.Dropout)]  # dropouts are replaced
    signatures = {name: inspect.signature(model.get_submodule(name).forward) for name in kept}
    pmdrop.convert(model, "pmdrop", routing=routing)
    assert {name: inspect.signature(model.get_submodule(name).forward) for name in kept} == signatures
    assert not [name for name, m in model.named_modules() if "forward" in m.__dict__]


class WarnsFromForward(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        warnings.warn("from the model's own code", UserWarning, stacklevel=1)
        return F.dropout(x, 0.1)


class WarnsAboutCaller(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = WarnsFromForward()
        self.drop = nn.Dropout(0.1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        warnings.warn("about this module's caller", UserWarning, stacklevel=2)
        return self.drop(self.inner(x))


@pytest.mark.parametrize("routing", ROUTINGS)
def test_warnings_inside_a_converted_model_name_the_models_code(routing):
    model = pmdrop.convert(WarnsAboutCaller(), "pmdrop", routing=routing)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model(torch.randn(4, 8, requires_grad=True))
    files = {str(w.message): w.filename for w in caught}
    assert set(files) == {"from the model's own code", "about this module's caller"}
    assert files["from the model's own code"] == __file__
    assert not files["about this module's caller"].startswith(str(pathlib.Path(pmdrop.__file__).parent))


def test_torchscript_refuses_in_one_sentence_and_trace_records_eval_mode():
    model = pmdrop.convert(nn.Sequential(nn.Linear(4, 64), nn.Dropout(0.5), FunctionalDropouts()), "pmdrop")
    for scriptable in (model, pmdrop.PackedDropout(0.5), model[2]):
        with pytest.raises(RuntimeError, match=r"^pmdrop's dropout cannot be compiled by TorchScript \(.*\): use"):
            torch.jit.script(scriptable)
    x = torch.randn(3, 4, requires_grad=True)
    for traced in (model[:2], model):
        with pytest.raises(RuntimeError, match=r"^torch.jit.trace cannot record pmdrop's dropout in training mode"):
            torch.jit.trace(traced.train(), x)
    traced = torch.jit.trace(model[:2].eval(), x)  # eval: dropout is the identity, nothing to record
    assert torch.equal(traced(x), model[:2](x))


@pytest.mark.parametrize(
    ("name", "build", "inputs"),
    [
        ("bert", lambda: tiny_bert(layers=2), lambda: ((), token_batch())),
        ("vit", tiny_vit, lambda: ((torch.randn(2, 3, 32, 32),), {})),
    ],
)
def test_routing_traces_under_torch_compile_without_graph_breaks(name, build, inputs):
    torch._dynamo.reset()
    model = pmdrop.convert(build().train(), "baseline")
    args, kwargs = inputs()
    explained = torch._dynamo.explain(model)(*args, **kwargs)
    assert explained.graph_break_count == 0, f"{name}: {[r.reason for r in explained.break_reasons]}"
    assert explained.graph_count == 1


def test_routing_adds_no_graph_break_to_longformer():
    """Longformer breaks the graph itself (``.item()`` on its global-attention test): routing adds none.

    On torch < 2.14 (2.11 seen) Dynamo runs a stretch of Longformer's global attention eagerly, and the routed dropout
    module called from there, a frame of pmdrop's and not one of torch.nn's that Dynamo skips, is compiled on its own:
    one more graph holding that dropout alone, with no break reason. From torch 2.14 Dynamo traces that stretch."""
    batch = {"input_ids": torch.randint(2, 500, (2, 64)), "attention_mask": torch.ones(2, 64, dtype=torch.long)}
    counts, lone_dropouts = {}, {}
    for variant in (None, "baseline"):
        torch._dynamo.reset()
        torch.manual_seed(0)
        model = tiny_longformer().train()
        explained = torch._dynamo.explain(pmdrop.convert(model, variant) if variant else model)(**batch)
        counts[variant] = explained.graph_break_count
        lone_dropouts[variant] = sum([node.target for node in graph.graph.nodes if node.op == "call_function"]
                                     == [torch.dropout] for graph in explained.graphs)
        assert not [r for r in explained.break_reasons if "pmdrop" in str(r)]
    if torch.__version__ >= "2.14":
        assert counts["baseline"] == counts[None]
    else:
        assert lone_dropouts[None] == 0 and counts["baseline"] == counts[None] + lone_dropouts["baseline"]


class ScaledDropout(nn.Dropout):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * 2


def test_a_dropout_subclass_static_routing_cannot_reach_warns_and_routing_all_routes_it():
    model = nn.Sequential(nn.Linear(8, 8), ScaledDropout(0.1))
    x = torch.randn(4, 8, requires_grad=True)
    with pytest.warns(UserWarning, match=r"ScaledDropout subclasses nn.Dropout .* routing='all'\) routes it") as caught:
        pmdrop.convert(model, "pmdrop")
    assert caught[0].filename == __file__
    assert dropout_calls(model, x).dropout_calls == {"torch": 1}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pmdrop.convert(model, "pmdrop", routing="all")
    assert dropout_calls(model, x).dropout_calls == {"pmdrop": 1}


# ------------------------------------------------------------------ what convert tells
def test_convert_refuses_torchscript_and_a_variant_the_models_device_cannot_run():
    with pytest.raises(TypeError, match=r"^convert takes an eager nn.Module, got a TorchScript"):
        pmdrop.convert(torch.jit.script(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))))
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.1))
    cuda_only = pmdrop.DropoutVariant("cuda_only", "packed", "", masks_per_byte=8, device_types=frozenset({"cuda"}))
    with pytest.raises(ValueError, match=r"'cuda_only' runs on cuda only, not on cpu; valid on cpu: baseline"):
        pmdrop.convert(model, cuda_only)
    assert type(model[1]) is nn.Dropout  # refused before any change


def test_convert_warns_when_it_finds_nothing_and_names_the_dropout_kinds_it_leaves():
    with pytest.warns(UserWarning, match=r"^convert found no dropout in Linear: .* the model is unchanged"):
        pmdrop.convert(nn.Linear(4, 4))
    model = nn.Sequential(nn.Dropout2d(0.1), nn.AlphaDropout(0.1), nn.Dropout(0.1))
    with pytest.warns(UserWarning, match=r"^convert leaves 1 Dropout2d, 1 AlphaDropout as torch's dropout"):
        pmdrop.convert(model)
    assert [type(m) for m in model] == [nn.Dropout2d, nn.AlphaDropout, pmdrop.PackedDropout]


def test_convert_logs_what_it_converted(caplog):
    model = nn.Sequential(nn.Dropout(0.1), FunctionalDropouts(), nn.Dropout(0.2))
    with caplog.at_level("INFO", logger="pmdrop"):
        pmdrop.convert(model, "seeded")
    (record,) = caplog.records
    assert record.getMessage() == (
        "convert(Sequential, 'seeded', routing='static'): 2 nn.Dropout -> PackedDropout (2 in all); "
        "F.dropout routed in FunctionalDropouts"
    )
