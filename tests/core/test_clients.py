"""A converted model under the tools real training code uses: pickle, torch.save, deepcopy, HF Trainer."""

import copy
import io
import pickle

import pytest
import torch

import pmdrop
from benchmarks.models import tiny_bert, token_batch

from .helpers import EXACT_VARIANTS


def train(model: torch.nn.Module, steps: int, seed: int) -> torch.nn.Module:
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    torch.manual_seed(seed)
    for step in range(steps):
        model(**token_batch(batch=2, seq=16, seed=seed + step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


def _pickle(model):
    return pickle.loads(pickle.dumps(model))


def _torch_save(model):
    buffer = io.BytesIO()
    torch.save(model, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=False)


@pytest.mark.parametrize("round_trip", [_pickle, _torch_save, copy.deepcopy], ids=["pickle", "torch.save", "deepcopy"])
@pytest.mark.parametrize("variant", EXACT_VARIANTS)
def test_a_converted_model_round_trips_and_keeps_training_bit_identically(variant, round_trip):
    torch.manual_seed(0)
    twin = train(tiny_bert(layers=1), 2, seed=10)
    converted = train(pmdrop.convert(copy.deepcopy(twin), variant), 2, seed=20)
    twin = train(twin, 2, seed=20)
    twin, loaded = round_trip(twin), round_trip(converted)
    attention = loaded.bert.encoder.layer[0].attention.self
    assert type(attention).__bases__ == (type(twin.bert.encoder.layer[0].attention.self),)
    with pmdrop.track_saved_tensors() as saved:
        loaded(**token_batch(batch=2, seq=16))
    assert saved.dropout_calls == {"pmdrop": 1 + 3 + 1}
    train(twin, 2, seed=30)
    train(loaded, 2, seed=30)
    for (name, a), b in zip(twin.named_parameters(), loaded.parameters(), strict=True):
        assert torch.equal(a, b), f"{variant}: {name} differs after the round trip"


def test_a_round_tripped_model_converts_again_to_another_variant():
    loaded = _pickle(pmdrop.convert(tiny_bert(layers=1), "pmdrop"))
    pmdrop.convert(loaded, "pmdrop_4bit")
    with pmdrop.track_saved_tensors() as saved:
        loaded(**token_batch(batch=2, seq=16))
    assert saved.dropout_calls == {"pmdrop": 5}
    assert {m.variant for m in loaded.modules() if isinstance(m, pmdrop.PackedDropout)} == {"pmdrop_4bit"}
    assert loaded.bert.encoder.layer[0].attention.self._pmdrop_spec.name == "pmdrop_4bit"


def small_bert() -> torch.nn.Module:
    return tiny_bert(hidden=32, layers=2, heads=4, intermediate=64, vocab=200, positions=32, seed=0)


def trainer_run(model: torch.nn.Module, output_dir, gradient_checkpointing: bool) -> torch.nn.Module:
    """A few steps of ``transformers.Trainer`` on its default arguments (CPU, no reporting)."""
    datasets = pytest.importorskip("datasets")
    pytest.importorskip("accelerate")
    from transformers import Trainer, TrainingArguments

    g = torch.Generator().manual_seed(0)
    rows = 24
    data = datasets.Dataset.from_dict({
        "input_ids": torch.randint(2, 200, (rows, 12), generator=g).tolist(),
        "attention_mask": [[1] * 12] * rows,
        "labels": torch.randint(0, 2, (rows,), generator=g).tolist(),
        "sentence": [f"row {i}" for i in range(rows)],  # columns the model does not take: Trainer drops them
        "idx": list(range(rows)),
    })
    args = TrainingArguments(
        output_dir=str(output_dir), report_to="none", use_cpu=True, max_steps=3,
        activation_checkpointing=gradient_checkpointing,
    )
    trainer = Trainer(model=model, args=args, train_dataset=data)
    torch.manual_seed(1234)
    trainer.train()
    return model


@pytest.fixture(scope="module")
def trainer_references(tmp_path_factory):
    return {ckpt: trainer_run(small_bert(), tmp_path_factory.mktemp("reference"), ckpt) for ckpt in (False, True)}


@pytest.mark.parametrize("gradient_checkpointing", [False, True], ids=["plain", "checkpointing"])
@pytest.mark.parametrize("variant", EXACT_VARIANTS)
def test_hf_trainer_on_default_arguments_trains_bit_identically(variant, gradient_checkpointing, tmp_path,
                                                                trainer_references):
    reference = trainer_references[gradient_checkpointing]
    trained = trainer_run(pmdrop.convert(small_bert(), variant), tmp_path, gradient_checkpointing)
    assert any(not torch.equal(a, b) for a, b in zip(small_bert().parameters(), trained.parameters(), strict=True))
    for (name, a), b in zip(reference.named_parameters(), trained.parameters(), strict=True):
        assert torch.equal(a, b), f"{variant}: {name} differs after Trainer steps"


def test_a_model_converted_with_routing_all_round_trips_and_keeps_routing():
    converted = pmdrop.convert(tiny_bert(layers=1), "pmdrop", routing="all")
    for loaded in (_pickle(converted), _torch_save(converted), copy.deepcopy(converted)):
        with pmdrop.track_saved_tensors() as saved:
            loaded(**token_batch(batch=2, seq=16))
        assert saved.dropout_calls == {"pmdrop": 5}
        assert pmdrop.active_variant() is None  # every mode a forward entered was left
