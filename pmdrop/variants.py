"""The registry of dropout variants, picked by name (the harness and ``convert`` take strings): the one source of what
each variant stores for backward and where it runs. Every built-in variant is registered here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from . import fused
from .packing import check_masks_per_byte

# What a variant keeps for backward: torch's own saved tensor, the mask packed ``masks_per_byte`` per byte, or only the
# generator state from which backward draws the mask again.
STORAGES = ("torch", "packed", "regenerated")


@dataclass(frozen=True)
class DropoutVariant:
    """How a dropout call that needs a backward stores its mask.

    ``storage`` says what is kept (one of :data:`STORAGES`; ``masks_per_byte`` in {8, 4, 2, 1} with "packed" only).
    ``apply(x, p, inplace, variant)``, where given, is the variant's own implementation (the Triton variants); without
    it pmdrop's bit-exact path for ``storage`` runs, on every path :func:`pmdrop.dropout` names, and only where a
    backward is needed.
    """

    name: str
    storage: str
    summary: str
    masks_per_byte: int | None = None
    cache_unpacked: bool = False  # keep the decoded mask while the graph is retained (a second backward reuses it)
    bit_exact: bool = True  # same output, gradient and RNG state as torch.nn.Dropout
    device_types: frozenset[str] | None = None  # the device types it runs on (None: any device torch runs on)
    apply: Callable[[torch.Tensor, float, bool, DropoutVariant], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.storage not in STORAGES:
            raise ValueError(f"dropout variant {self.name!r}: storage={self.storage!r}; valid: {', '.join(STORAGES)}")
        if (self.storage == "packed") != (self.masks_per_byte is not None):
            raise ValueError(f"dropout variant {self.name!r}: masks_per_byte goes with storage='packed', only with it")
        if self.masks_per_byte is not None:
            check_masks_per_byte(self.masks_per_byte)


_REGISTRY: dict[str, DropoutVariant] = {}


def register_variant(variant: DropoutVariant) -> DropoutVariant:
    """Make ``variant`` known by its name (to :func:`pmdrop.convert`, ``PackedDropout`` and the harness's configs)."""
    if variant.name in _REGISTRY and _REGISTRY[variant.name] != variant:
        raise ValueError(f"dropout variant {variant.name!r} is already registered")
    _REGISTRY[variant.name] = variant
    return variant


def variant_names() -> list[str]:
    return list(_REGISTRY)


def get_variant(name: str | DropoutVariant) -> DropoutVariant:
    if isinstance(name, DropoutVariant):
        return name
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown dropout variant {name!r}; valid: {', '.join(_REGISTRY)}") from None


def check_runs_on(variant: str | DropoutVariant, device: str | torch.device) -> None:
    """One-line ValueError if ``variant`` cannot run on ``device`` (e.g. a Triton variant without CUDA)."""
    spec = get_variant(variant)
    device_type = torch.device(device).type
    if device_type == "cpu" and spec.apply is fused.apply and fused.interpreting():
        return  # the Triton variants on CPU tensors under Triton's interpreter (TRITON_INTERPRET=1), for tests
    if spec.device_types is not None and device_type not in spec.device_types:
        valid = [name for name, v in _REGISTRY.items() if v.device_types is None or device_type in v.device_types]
        raise ValueError(f"dropout variant {spec.name!r} runs on {', '.join(sorted(spec.device_types))} only, not "
                         f"on {device_type}; valid on {device_type}: {', '.join(valid)}")


def packed_variant(masks_per_byte: int, cache_unpacked: bool = True) -> DropoutVariant:
    """A packed variant at any supported density (``masks_per_byte`` in {8, 4, 2, 1}), registered on first use."""
    name = f"pmdrop_k{check_masks_per_byte(masks_per_byte)}" + ("" if cache_unpacked else "_nocache")
    return register_variant(DropoutVariant(name, "packed", f"mask packed {masks_per_byte} per byte",
                                           masks_per_byte=masks_per_byte, cache_unpacked=cache_unpacked))


_TRITON = ", own Philox stream, not bit-identical to nn.Dropout"


def fused_packed_variant(masks_per_byte: int) -> DropoutVariant:
    """The Triton (CUDA) packed variant at ``masks_per_byte`` in {8, 4, 2, 1}; 8 is ``pmdrop_fused``.

    Pass it to :func:`pmdrop.dropout` as is, or register it (:func:`register_variant`) to use it by name.
    """
    name = "pmdrop_fused" if check_masks_per_byte(masks_per_byte) == 8 else f"pmdrop_fused_k{masks_per_byte}"
    return DropoutVariant(name, "packed", f"Triton, CUDA: mask drawn, applied and packed {masks_per_byte} per byte in "
                          f"one pass{_TRITON}", masks_per_byte=masks_per_byte, bit_exact=False,
                          device_types=frozenset({"cuda"}), apply=fused.apply)


for _variant in (
    DropoutVariant("baseline", "torch", "torch.nn.Dropout as is (the reference)"),
    DropoutVariant("pmdrop", "packed", "mask packed 8 per byte; unpacked mask cached while the graph is retained",
                   masks_per_byte=8, cache_unpacked=True),
    DropoutVariant("pmdrop_nocache", "packed", "mask packed 8 per byte; unpacked on every access", masks_per_byte=8),
    DropoutVariant("pmdrop_4bit", "packed", "the paper's 4-bit ablation: 4 masks per byte", masks_per_byte=4,
                   cache_unpacked=True),
    DropoutVariant("seeded", "regenerated", "no mask: saves the RNG state, redraws it in backward"),
    fused_packed_variant(8),
    DropoutVariant("seeded_fused", "regenerated", f"Triton, CUDA: no mask, saves the Philox seed and counter and "
                   f"redraws it in backward{_TRITON}", bit_exact=False, device_types=frozenset({"cuda"}),
                   apply=fused.apply),
):
    register_variant(_variant)
