"""Registry of dropout variants, picked by name (the harness and ``convert`` take strings)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class DropoutVariant:
    """How a dropout call that needs a backward stores its mask.

    ``apply(x, p, inplace, variant)`` runs only on the autograd path (training, 0 < p < 1, a
    floating ``x`` that requires grad); every other call takes torch's own ``dropout``.
    """

    name: str
    apply: Callable[[torch.Tensor, float, bool, DropoutVariant], torch.Tensor]
    summary: str
    masks_per_byte: int | None = None  # None: no packed mask is saved
    cache_unpacked: bool = False
    bit_exact: bool = True  # same output, gradient and RNG state as torch.nn.Dropout
    device_types: frozenset[str] | None = None  # the device types it runs on (None: any device torch runs on)


_REGISTRY: dict[str, DropoutVariant] = {}


def register_variant(variant: DropoutVariant) -> DropoutVariant:
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
    if spec.device_types is not None and device_type not in spec.device_types:
        valid = [name for name, v in _REGISTRY.items() if v.device_types is None or device_type in v.device_types]
        raise ValueError(f"dropout variant {spec.name!r} runs on {', '.join(sorted(spec.device_types))} only, not "
                         f"on {device_type}; valid on {device_type}: {', '.join(valid)}")
