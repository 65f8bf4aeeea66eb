"""experiments/memory.py: a step's peak of live tensor bytes and its split, on CPU."""

import warnings

import pytest
import torch
from torch import nn

import pmdrop
from benchmarks.models import tiny_bert
from experiments.memory import CATEGORIES, CUDA_BLOCK_BYTES, StepMemory


def _tiny_bert(variant: str) -> nn.Module:
    model = tiny_bert(hidden=32, layers=2, heads=2, intermediate=64, vocab=200, positions=64, seed=0)
    return pmdrop.convert(model, variant)


def _batch() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {"input_ids": torch.randint(5, 200, (4, 48), generator=generator), "labels": torch.tensor([0, 1, 0, 1])}


def _step(model, optimizer, batch, memory=None):
    with pmdrop.track_saved_tensors(model.parameters(), on_save=memory and memory.note_saved) as saved:
        loss = model(**batch).loss
    if memory is not None:
        memory.phase("backward")
    loss.backward()
    del loss
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return saved


def test_peak_equals_torch_memtracker_on_a_training_step():
    from torch.distributed._tools.mem_tracker import MemTracker

    model, batch = _tiny_bert("baseline"), _batch()
    optimizer = torch.optim.AdamW(model.parameters())
    _step(model, optimizer, batch)  # AdamW's state exists from here on
    with StepMemory("cpu", model, optimizer, inputs=batch) as memory:
        _step(model, optimizer, batch, memory)
    theirs = MemTracker()
    theirs.track_external(model, optimizer, *batch.values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # its module hooks warn about modules gone by backward
        with theirs:
            _step(model, optimizer, batch)
    peak = memory.result()
    assert peak.peak_bytes == theirs.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"]
    assert sum(peak.split.values()) == peak.peak_bytes and set(peak.split) == set(CATEGORIES)


@pytest.mark.parametrize("variant", ["baseline", "pmdrop"])
def test_saved_bytes_are_track_saved_tensors_figures(variant):
    model, batch = _tiny_bert(variant), _batch()
    optimizer = torch.optim.AdamW(model.parameters())
    with StepMemory("cpu", model, optimizer, inputs=batch) as memory:
        saved = _step(model, optimizer, batch, memory)
    peak = memory.result()
    assert (peak.saved_mask_bytes, peak.saved_activation_bytes, peak.saved_parameter_bytes) == (
        saved.mask_bytes, saved.activation_bytes, saved.parameter_bytes)
    assert peak.saved_mask_bytes > 0


def test_split_at_the_peak_files_masks_activations_parameters_and_state():
    torch.manual_seed(0)
    layer = nn.Linear(64, 64)
    model = pmdrop.convert(nn.Sequential(layer, nn.Dropout(0.5)), "baseline")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(1024, 64)
    model(x).sum().backward()
    optimizer.step()  # momentum buffers: optimizer state
    optimizer.zero_grad(set_to_none=True)
    with StepMemory("cpu", model, optimizer, inputs=[x]) as memory:
        memory.phase("forward")
        with pmdrop.track_saved_tensors(model.parameters(), on_save=memory.note_saved):
            loss = model(x).sum()
        memory.phase("backward")
        loss.backward()
        del loss
    peak = memory.result()
    n_bytes = 1024 * 64 * 4
    weights = (64 * 64 + 64) * 4
    # The peak is torch's CPU dropout multiply: the linear's output and the product (temporaries) and the noise,
    # which the multiply saves (a mask: saved inside a dropout call); x, saved by the linear, is a saved activation.
    assert peak.phase == "forward"
    assert peak.split == {"parameters": weights, "parameter_casts": 0, "gradients": 0, "optimizer_state": weights,
                          "saved_masks": n_bytes, "saved_activations": n_bytes, "inputs_and_buffers": 0,
                          "temporaries": 2 * n_bytes}
    assert peak.saved_mask_bytes == n_bytes and peak.saved_activation_bytes == n_bytes


def test_packed_mask_is_saved_at_one_bit_per_element():
    model = pmdrop.convert(nn.Sequential(nn.Linear(64, 64), nn.Dropout(0.5)), "pmdrop")
    x = torch.randn(1024, 64)
    memory = StepMemory("cpu", model, inputs=[x])
    with memory, pmdrop.track_saved_tensors(model.parameters(), on_save=memory.note_saved):
        model(x).sum().backward()
    assert memory.result().saved_mask_bytes == 1024 * 64 // 8


def test_a_storage_freed_before_the_peak_is_not_in_it_and_blocks_round_up():
    with StepMemory("cpu") as memory:
        a = torch.ones(1000)  # 4000 bytes
        del a
        b = torch.ones(10)  # 40 bytes
        c = torch.ones(300)  # 1200 bytes
        del b, c
    assert memory.result().peak_bytes == 4000
    with StepMemory("cpu", block_bytes=CUDA_BLOCK_BYTES) as memory:
        kept = [torch.ones(1, dtype=torch.uint8) for _ in range(3)]
    assert memory.result().peak_bytes == 3 * 512 and memory.result().split["temporaries"] == 3 * 512
    del kept


def test_autocast_weight_casts_are_their_own_category():
    torch.manual_seed(0)
    model = nn.Linear(64, 64)
    x = torch.randn(8, 64)
    with StepMemory("cpu", model, inputs=[x]) as memory, torch.autocast("cpu", dtype=torch.bfloat16):
        y = model(x)
    peak = memory.result()
    assert peak.split["parameter_casts"] == 64 * 64 * 2 + 64 * 2  # the bf16 weight and bias, alive with the output
    assert peak.split["temporaries"] == 2 * 8 * 64 * 2 and y.dtype is torch.bfloat16  # x's bf16 copy and y


def test_the_model_is_freed_once_the_step_is_measured():
    """The tracker keeps nothing of the step alive: a sweep's finished models are freed, and under DDP a failed run's
    process group with them (its peer would otherwise wait out the collective timeout)."""
    import gc
    import weakref

    model, batch = _tiny_bert("pmdrop"), _batch()
    optimizer = torch.optim.AdamW(model.parameters())
    with StepMemory("cpu", model, optimizer, inputs=batch) as memory:
        _step(model, optimizer, batch, memory)
    assert memory.result().peak_bytes > 0
    model_alive = weakref.ref(model)
    del model, optimizer
    gc.collect()
    assert model_alive() is None
