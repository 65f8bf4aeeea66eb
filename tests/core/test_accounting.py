import pytest
import torch

import pmdrop

N = 32 * 8 * 96  # divisible by 8


@pytest.mark.parametrize(
    ("variant", "bytes_per_element"),
    [("baseline", 4.0), ("pmdrop", 1 / 8), ("pmdrop_nocache", 1 / 8), ("pmdrop_4bit", 1 / 4)],
)
def test_saved_mask_bytes_per_element_cpu_fp32(variant, bytes_per_element):
    x = torch.randn(N, requires_grad=True)
    with pmdrop.track_saved_tensors() as saved:
        pmdrop.dropout(x, 0.1, variant=variant)
    assert saved.mask_bytes / N == bytes_per_element
    assert saved.activation_bytes == 0 and saved.mask_tensors == 1


def test_seeded_saves_only_the_generator_state():
    x = torch.randn(N, requires_grad=True)
    with pmdrop.track_saved_tensors() as saved:
        pmdrop.dropout(x, 0.1, variant="seeded")
    assert saved.mask_bytes == torch.get_rng_state().numel()  # constant, whatever the size of x


def test_origin_not_dtype_decides_and_parameters_are_split_out():
    linear = torch.nn.Linear(16, 16)
    x = torch.randn(8, 16, requires_grad=True)
    with pmdrop.track_saved_tensors(linear.parameters()) as saved:
        h = torch.nn.functional.dropout(linear(x), 0.5)  # torch's own dropout: a float mask
        h.relu()
    assert saved.dropout_calls == {"torch": 1}
    assert saved.mask_bytes == 8 * 16 * 4
    assert saved.parameter_bytes == 16 * 16 * 4  # the weight linear keeps for grad_input
    assert saved.activation_bytes == 8 * 16 * 4 * 2  # linear's input, relu's output
    assert saved.as_dict()["total_bytes"] == saved.total_bytes


def test_a_storage_saved_twice_is_counted_once():
    x = torch.randn(100, requires_grad=True)
    with pmdrop.track_saved_tensors() as saved:
        y = x * x  # saves x twice (self and other)
    del y
    assert saved.activation_bytes == 400


@pytest.mark.parametrize(("variant", "mask_bytes"), [("pmdrop", 8 * 16 // 8), ("seeded", None)])
def test_a_compiled_models_packed_mask_is_counted_as_its_mask(variant, mask_bytes):
    """A compiled graph saves its tensors after it ran, outside any dropout call: its pack marks the mask."""
    torch._dynamo.reset()
    model = pmdrop.convert(torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.Dropout(0.1)), variant)
    compiled = torch.compile(model, backend="aot_eager")
    x = torch.randn(8, 16, requires_grad=True)
    compiled(x).sum().backward()  # compiled outside the tracker
    with pmdrop.track_saved_tensors(model.parameters()) as saved:
        y = compiled(x)
    y.sum().backward()
    assert saved.dropout_calls == {"pmdrop": 1} and saved.mask_tensors == 1
    assert saved.mask_bytes == (mask_bytes or torch.get_rng_state().numel())
