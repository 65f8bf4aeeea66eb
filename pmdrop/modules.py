"""The one-line swap: ``model = pmdrop.convert(model, "pmdrop")``.

Models apply dropout two ways: ``nn.Dropout`` modules, and ``F.dropout`` called inside their
code (transformers' attention-probability dropout, Longformer's attention). ``convert`` replaces
the modules with :class:`PackedDropout` and runs every container module's forward inside
:func:`dropout_mode`, a ``TorchFunctionMode`` that sends ``F.dropout`` calls to pmdrop. Containers,
not only the root, enter the mode so that code re-run outside the root's forward (activation
checkpointing recomputes a layer during backward) still routes its dropout through pmdrop.
"""

from __future__ import annotations

import threading
import types
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from .functional import dropout
from .variants import DropoutVariant, get_variant

_local = threading.local()


def _bind_dropout_args(input, p=0.5, training=True, inplace=False):  # noqa: A002 - F.dropout's names
    return input, p, training, inplace


class _RouteDropout(TorchFunctionMode):
    def __init__(self, variant: DropoutVariant) -> None:
        super().__init__()
        self.variant = variant

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.nn.functional.dropout:
            x, p, training, inplace = _bind_dropout_args(*args, **kwargs)
            return dropout(x, p, training, inplace, self.variant)
        return func(*args, **kwargs)


def active_variant() -> str | None:
    """Name of the variant the innermost :func:`dropout_mode` routes to, or None outside one."""
    stack = getattr(_local, "stack", None)
    return stack[-1] if stack else None


@contextmanager
def dropout_mode(variant: str | DropoutVariant = "pmdrop") -> Iterator[None]:
    """Send every ``torch.nn.functional.dropout`` call made inside to pmdrop's ``variant``.

    Also covers ``nn.Dropout`` modules (their forward calls ``F.dropout``). Dropout fused into
    ``F.scaled_dot_product_attention`` is not a separate call and stays torch's.
    """
    spec = get_variant(variant)
    if not hasattr(_local, "stack"):
        _local.stack = []
    _local.stack.append(spec.name)
    try:
        with _RouteDropout(spec):
            yield
    finally:
        _local.stack.pop()


class PackedDropout(nn.Dropout):
    """``nn.Dropout`` whose mask is stored as ``variant`` says (an ``nn.Dropout`` subclass, so
    code that reads ``.p`` or checks ``isinstance(m, nn.Dropout)`` keeps working)."""

    def __init__(self, p: float = 0.5, inplace: bool = False, variant: str = "pmdrop") -> None:
        super().__init__(p, inplace)
        self.variant = get_variant(variant).name

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - nn.Dropout's name
        return dropout(input, self.p, self.training, self.inplace, self.variant)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, variant={self.variant!r}"


def _forward_in_dropout_mode(self: nn.Module, *args, **kwargs):
    if active_variant() == self._pmdrop_variant:
        return self._pmdrop_forward(*args, **kwargs)
    with dropout_mode(self._pmdrop_variant):
        return self._pmdrop_forward(*args, **kwargs)


def _warn_fused_attention_dropout(model: nn.Module) -> None:
    """Attention dropout inside SDPA is one fused kernel: no mask call exists for pmdrop to take."""
    config = getattr(model, "config", None)
    attn = getattr(config, "_attn_implementation", None)
    attn_p = getattr(config, "attention_probs_dropout_prob", 0.0) or getattr(config, "attention_dropout", 0.0)
    if attn not in (None, "eager") and attn_p:
        warnings.warn(
            f"attention uses {attn!r}: its attention-probability dropout (p={attn_p}) runs inside the fused "
            "kernel and is not packed; load the model with attn_implementation='eager' to pack it",
            stacklevel=3,
        )
    for name, module in model.named_modules():
        attn_drop = getattr(module, "attn_drop", None)
        if getattr(module, "fused_attn", False) and getattr(attn_drop, "p", 0.0):
            warnings.warn(
                f"{name or type(module).__name__} uses fused attention: its attention dropout is not packed; "
                "call timm.layers.set_fused_attn(False) before create_model to pack it",
                stacklevel=3,
            )
            break


def convert(model: nn.Module, variant: str = "pmdrop") -> nn.Module:
    """Route every dropout of ``model`` through pmdrop's ``variant``; returns ``model`` (changed in place).

    Converting again switches the variant. Parameters, buffers and state_dict keys are untouched.
    """
    spec = get_variant(variant)
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if type(child) is nn.Dropout:
                replacement = PackedDropout(child.p, child.inplace, spec.name)
                replacement.train(child.training)
                setattr(parent, name, replacement)
            elif isinstance(child, PackedDropout):
                child.variant = spec.name
    for module in model.modules():
        if module is model or next(module.children(), None) is not None:
            if "_pmdrop_forward" not in module.__dict__:
                module._pmdrop_forward = module.forward
                module.forward = types.MethodType(_forward_in_dropout_mode, module)
            module._pmdrop_variant = spec.name
    _warn_fused_attention_dropout(model)
    return model
