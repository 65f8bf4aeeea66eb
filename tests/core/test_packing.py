import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pmdrop
from pmdrop.packing import (
    byte_weights,
    fresh_packer,
    pack_flat,
    packs_by_matvec,
    packs_from_bytes,
    unpack_bits,
)


@settings(max_examples=150, deadline=None)
@given(
    shape=st.lists(st.integers(0, 9), min_size=0, max_size=4),
    masks_per_byte=st.sampled_from(pmdrop.VALID_MASKS_PER_BYTE),
    seed=st.integers(0, 2**16),
    keep=st.floats(0.0, 1.0),
)
def test_round_trip_any_shape(shape, masks_per_byte, seed, keep):
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < keep
    packed = pmdrop.pack_mask(mask, masks_per_byte)
    assert packed.dtype == torch.uint8
    expected = math.ceil(mask.numel() / masks_per_byte)
    assert packed.numel() == expected == pmdrop.packed_numel(mask.numel(), masks_per_byte)
    assert torch.equal(pmdrop.unpack_mask(packed, mask.shape, masks_per_byte), mask)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 300), masks_per_byte=st.sampled_from(pmdrop.VALID_MASKS_PER_BYTE))
def test_bit_layout_is_lsb_first_with_fixed_spacing(n, masks_per_byte):
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.5
    packed = pack_flat(mask, masks_per_byte).long()
    spacing = 8 // masks_per_byte
    expected = torch.zeros(pmdrop.packed_numel(n, masks_per_byte), dtype=torch.long)
    for i in range(n):
        expected[i // masks_per_byte] |= int(mask[i]) << ((i % masks_per_byte) * spacing)
    assert torch.equal(packed, expected)  # also: bits past the last mask are zero


@pytest.mark.parametrize("masks_per_byte", pmdrop.VALID_MASKS_PER_BYTE)
@pytest.mark.parametrize("n", [1, 3, 4, 5, 8, 13, 64, 101])
def test_dropout_packing_stores_exactly_ceil_n_over_k_bytes(n, masks_per_byte):
    mask = torch.rand(n, generator=torch.Generator().manual_seed(n)) < 0.5
    packed = pack_flat(torch.empty(n, dtype=torch.bool).copy_(mask), masks_per_byte)
    # the storage, not only the view: it is what a saved tensor costs
    assert packed.untyped_storage().nbytes() == math.ceil(n / masks_per_byte)
    assert torch.equal(packed, pack_flat(mask, masks_per_byte))


@settings(max_examples=150, deadline=None)
@given(
    shape=st.lists(st.integers(1, 24), min_size=1, max_size=3),
    masks_per_byte=st.sampled_from(pmdrop.VALID_MASKS_PER_BYTE),
    transpose=st.booleans(),
    noise=st.sampled_from([None, torch.float32, torch.bfloat16, torch.float64, torch.float16]),
    keep=st.sampled_from([0.3, 0.5, 0.9]),
    seed=st.integers(0, 2**16),
)
def test_a_fresh_packer_stores_the_same_bytes_as_the_word_pack(shape, masks_per_byte, transpose, noise, keep, seed):
    """Small CPU masks pack by one uint8 matrix-vector product; bytes and storage are the word pack's, also when
    the packer reads dropout's noise (0 or 1 / keep), from a bool copy or, given that value, from its bytes."""
    mask = torch.rand(shape, generator=torch.Generator().manual_seed(seed)) < 0.5
    if transpose and mask.dim() > 1:
        mask = mask.transpose(0, -1).contiguous().transpose(0, -1)  # dense, not contiguous: memory order counts
    fresh = mask if noise is None else torch.empty_like(mask, dtype=noise).copy_(mask).div_(keep)
    value = None if noise is None or fresh.stride()[-1] != 1 else torch.ones(1, dtype=noise).div_(keep)
    packed = fresh_packer(mask.numel(), masks_per_byte, mask.device, nonzero=noise is not None, value=value)(fresh)
    assert packed.untyped_storage().nbytes() == -(-mask.numel() // masks_per_byte)
    assert torch.equal(packed, pack_flat(mask, masks_per_byte))


def test_the_matvec_pack_is_taken_only_where_it_can_and_pays():
    cpu = torch.device("cpu")
    assert packs_by_matvec(4096, 8, cpu) and packs_by_matvec(4096, 4, cpu)
    assert not packs_by_matvec(4096, 1, cpu)  # one mask a byte: a copy
    assert not packs_by_matvec(4100, 8, cpu)  # a padded last byte: the word pack's tail
    assert not packs_by_matvec(2**20, 8, cpu)  # its integer kernel is slower than two ops at this size
    assert not packs_by_matvec(4096, 8, torch.device("meta"))  # CUDA (and meta, which plans for it) has no uint8 mv


def test_the_byte_pack_is_taken_only_where_a_byte_of_the_value_is_odd_and_it_pays():
    cpu, scale = torch.device("cpu"), torch.ones(1).div_(0.9)  # fp32 bytes e4 38 8e 3f
    assert packs_from_bytes(4096, 8, cpu, scale) and packs_from_bytes(4096, 1, cpu, scale)
    assert packs_from_bytes(16384, 8, cpu, scale) and not packs_from_bytes(32768, 8, cpu, scale)  # 64 KiB of noise
    assert packs_from_bytes(32768, 8, cpu, scale.bfloat16())
    assert not packs_from_bytes(4100, 8, cpu, scale)
    assert not packs_from_bytes(4096, 8, torch.device("meta"), scale)
    inf16 = torch.full((1,), float("inf"), dtype=torch.float16)  # where fp16's scale overflows
    for even in (torch.ones(1, dtype=torch.float16).div_(0.9), torch.tensor([2.0]), inf16):
        assert byte_weights(even, 8) is None and not packs_from_bytes(4096, 8, cpu, even)  # 3c72, 40000000, 7c00
    weights = byte_weights(scale, 8).view(8, 4).int()
    assert torch.equal(weights[:, :3], torch.zeros(8, 3, dtype=torch.int32))  # the odd byte only: 0x3f
    assert torch.equal(weights[:, 3] * 0x3F % 256, 2 ** torch.arange(8, dtype=torch.int32))


def test_unaligned_input_falls_back_to_the_tail_path():
    base = torch.rand(8 * 9 + 1) < 0.5
    view = base[1:]  # data pointer off the 8-byte alignment
    assert torch.equal(unpack_bits(pack_flat(view), view.shape, 8), view)


def test_noncontiguous_mask_packs_in_row_major_order():
    mask = torch.rand(5, 7) < 0.5
    assert torch.equal(pmdrop.unpack_mask(pmdrop.pack_mask(mask.t()), (7, 5)), mask.t())


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"masks_per_byte=3 .*valid: \(8, 4, 2, 1\)"):
        pmdrop.pack_mask(torch.ones(4, dtype=torch.bool), 3)
    with pytest.raises(TypeError, match="bool tensor"):
        pmdrop.pack_mask(torch.ones(4))
    with pytest.raises(ValueError, match="cannot hold exactly 17 masks"):
        pmdrop.unpack_mask(torch.zeros(2, dtype=torch.uint8), (17,))


@pytest.mark.parametrize(
    ("variant", "route", "fwd_kernels", "bwd_kernels"),
    [
        # native (CUDA) route: native_dropout + pack (one multiply, one strided copy); unpack (2) + its backward.
        # Before the one-multiply pack: 4 and 3 (pmdrop), 9 and 3 (pmdrop_4bit).
        ("pmdrop", "native", 3, 3), ("pmdrop_4bit", "native", 3, 3), ("seeded", "native", 1, 2),
        # noise (CPU) route: torch's own draw, div_ and multiply, then the pack (one uint8 matrix-vector product over
        # the noise's bytes); packing a bool copy of it: 5; with a multiply and a strided copy for the pack: 6; before
        # the saved-tensor hooks: 5 (bool draw, pack (2), select of the noise, multiply), before that 7.
        ("pmdrop", "noise", 4, 3), ("pmdrop_4bit", "noise", 4, 3), ("seeded", "noise", 3, 3),
    ],
)
def test_kernels_per_call(variant, route, fwd_kernels, bwd_kernels):
    """Every aten op that computes is a kernel launch on a GPU; the fused route's logic runs here on CPU."""
    from benchmarks.bench import count_ops

    counted = count_ops(variant, route)
    assert counted.error is None
    assert (counted.fwd_kernels, counted.bwd_kernels) == (fwd_kernels, bwd_kernels), (
        counted.fwd_op_names, counted.bwd_op_names)
