"""Torch's two dropout routes, one object each: how a device's dropout draws its mask, what it saves, how it scales
and differentiates, and how the mask is drawn again from a generator state. The eager, ``torch.func``,
``torch.compile`` and ``torch.export`` paths all take these objects.

* :data:`NOISE` (CPU, and in-place calls on every device): ``noise = empty_like(x).bernoulli_(1 - p).div_(1 - p)``,
  ``y = x * noise``; torch saves the noise, in x's dtype.
* :data:`NATIVE` (CUDA, XPU, ..., and ``meta``, which plans memory with CUDA's semantics): ``native_dropout``; torch
  saves its bool mask, and its backward is ``native_dropout_backward(grad, mask, 1 / (1 - p))``.

Which device type takes which route is one table (``_NATIVE_DEVICE_TYPES``), changed only by :func:`use_route`.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch

# Device types whose out-of-place dropout is native_dropout; every other one takes the noise route. A frozenset (its
# hash is cached): the eager path keys its per-layout plans by it.
_NATIVE_DEVICE_TYPES = frozenset({"cuda", "xpu", "lazy", "privateuseone", "meta"})
_local = threading.local()


def scale(p: float) -> float:
    """Dropout's ``1 / (1 - p)`` (the noise route divides by ``1 - p`` instead, as torch does)."""
    return 1.0 / (1.0 - p)


def default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cpu":
        return torch.default_generator
    module = torch.get_device_module(device.type)
    return module.default_generators[device.index if device.index is not None else module.current_device()]


def _thread_generator(device: torch.device, state: torch.Tensor) -> torch.Generator:
    """A generator at ``state``: one per thread and device, reused by every redraw (none built per call)."""
    generators = _local.__dict__.setdefault("generators", {})
    generator = generators.get(device)
    if generator is None:
        generator = generators[device] = torch.Generator(device=device)
    generator.set_state(state)
    return generator


def draw_noise(shape: Sequence[int], stride: Sequence[int], dtype: torch.dtype, device: torch.device, p: float,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """The noise route's draw as torch makes it: ``empty_like(x).bernoulli_(1 - p).div_(1 - p)``, in that layout."""
    noise = torch.empty_strided(shape, stride, dtype=dtype, device=device)
    return noise.bernoulli_(1 - p, generator=generator).div_(1 - p)


def mask_stride(x: torch.Tensor) -> tuple[int, ...]:
    """Strides of the mask or noise torch's dropout saves for ``x``: ``empty_like(x)``'s, by torch's own rule for x's
    device, taken on the meta device (no memory; a traced graph's fake ``x`` follows it as Inductor does)."""
    return torch.empty_like(x, device="meta").stride()


def torch_dropout(x: torch.Tensor, p: float, training: bool, inplace: bool) -> torch.Tensor:
    """Torch's own dropout, as ``F.dropout`` calls it (called directly, so :func:`pmdrop.dropout_mode` does not see
    it)."""
    return torch.dropout_(x, p, training) if inplace else torch.dropout(x, p, training)


def _native_dropout_output(x: torch.Tensor, p: float, train: bool) -> torch.Tensor:
    return torch.native_dropout(x, p, train)[0]


class Route:
    """One of torch's dropout routes (:data:`NOISE` or :data:`NATIVE`)."""

    __slots__ = ("name", "native")

    def __init__(self, name: str, native: bool) -> None:
        self.name, self.native = name, native

    def saved_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """The dtype of the one tensor torch's dropout saves: the bool mask, or the noise in x's dtype."""
        return torch.bool if self.native else dtype

    def eager_op(self, inplace: bool):
        """What torch's dropout runs on this route, called as ``op(x, p, True)``."""
        return _native_dropout_output if self.native else torch.dropout_ if inplace else torch.dropout

    def draw(self, x: torch.Tensor, p: float) -> tuple[torch.Tensor, torch.Tensor]:
        """``(drawn, mask)`` with torch's random numbers: native_dropout's output, or torch's noise (torch.dropout of
        a tensor of ones, 1 * v being v), and the bool mask. With plain ops, so every transform treats it as it treats
        ``F.dropout``'s draw."""
        if self.native:
            return torch.ops.aten.native_dropout(x, p, True)
        noise = torch.dropout(torch.ones_like(x), p, True)
        return noise, noise != 0

    def apply_drawn(self, x: torch.Tensor, drawn: torch.Tensor, inplace: bool) -> torch.Tensor:
        """The output from :meth:`draw`'s ``drawn``: native_dropout's output (``drawn`` itself), or ``x * noise``."""
        if self.native:
            return drawn
        return x.mul_(drawn) if inplace else x * drawn

    def decoded(self, mask: torch.Tensor, p: float, dtype: torch.dtype) -> torch.Tensor:
        """What torch saves, from the bool mask: the mask itself, or the noise (0/1 in dtype, then ``div_`` by 1 - p:
        multiplying by a precomputed scale would give 0 * inf = nan where the scale overflows, fp16 near p = 1)."""
        return mask if self.native else mask.to(dtype).div_(1 - p)

    def backward(self, grad: torch.Tensor, saved: torch.Tensor, p: float) -> torch.Tensor:
        """The input gradient from what torch saves (:meth:`decoded`), as torch's derivative computes it."""
        if not self.native:
            return grad * saved
        if torch.is_grad_enabled():  # create_graph: torch's derivative of native_dropout rounds this way
            return grad * (saved.type_as(grad) * scale(p))
        return torch.ops.aten.native_dropout_backward(grad, saved, scale(p))

    def tangent(self, x_tangent: torch.Tensor, saved: torch.Tensor, p: float, inplace: bool) -> torch.Tensor:
        """Forward-mode derivative as torch computes it: native_dropout's ``x_t * scale * mask``; ``x_t * noise``."""
        if self.native:
            return x_tangent * scale(p) * saved
        return x_tangent.mul_(saved) if inplace else x_tangent * saved

    def redraw(self, state: torch.Tensor, shape: Sequence[int], stride: Sequence[int], dtype: torch.dtype,
               device: torch.device, p: float, alignment: int = 0) -> torch.Tensor:
        """What torch's dropout of an input of this shape, strides and dtype saved, drawn again from ``state`` (the
        generator state before the call). ``alignment``: the input's address mod 16, which sets CUDA's vector width."""
        if not self.native:
            generator = None if device.type == "meta" else _thread_generator(device, state)
            return draw_noise(shape, stride, dtype, device, p, generator)
        if device.type == "cpu":  # CPU native_dropout's mask is bernoulli_(1 - p) of empty_like(x, bool): drawn alone
            like_x = torch.empty_strided(shape, stride, dtype=torch.bool)
            return torch.empty_like(like_x).bernoulli_(1 - p, generator=_thread_generator(device, state))
        if device.type == "meta":
            return torch.ops.aten.native_dropout(torch.empty_strided(shape, stride, dtype=dtype, device=device), p,
                                                 True)[1]
        extent = 1 + sum((size - 1) * st for size, st in zip(shape, stride, strict=True)) if math.prod(shape) else 0
        # A stand-in with the input's strides and alignment: the kernel's path depends on both.
        buffer = torch.empty(extent + 16 // dtype.itemsize, dtype=dtype, device=device)
        stand_in = buffer.as_strided(shape, stride, (alignment - buffer.data_ptr() % 16) % 16 // dtype.itemsize)
        generator = default_generator(device)
        current = generator.get_state()
        try:
            generator.set_state(state)
            return torch.ops.aten.native_dropout(stand_in, p, True)[1]
        finally:
            generator.set_state(current)


NOISE = Route("noise", native=False)
NATIVE = Route("native", native=True)
ROUTES = {"noise": NOISE, "native": NATIVE}


def route_for(x: torch.Tensor, inplace: bool) -> Route:
    """The route torch's dropout takes for ``x``: in-place calls and the noise devices draw noise."""
    return NATIVE if not inplace and x.device.type in _NATIVE_DEVICE_TYPES else NOISE


@contextmanager
def use_route(route: str, device_type: str = "cpu") -> Iterator[None]:
    """Inside, pmdrop's dropout of ``device_type`` tensors takes ``route`` ("noise" or "native").

    The documented way to force a route: ``with pmdrop.use_route("native"):`` runs CUDA's route (native_dropout's bool
    mask, packed) on CPU tensors, bit for bit as ``native_dropout`` computes there; ``use_route("noise", "meta")``
    plans meta tensors with the CPU's semantics. Process-wide while the block runs (not per thread); torch's own
    dropout (``baseline``, unconverted models) is not affected.
    """
    if route not in ROUTES:
        raise ValueError(f"unknown dropout route {route!r}; valid: {', '.join(ROUTES)}")
    global _NATIVE_DEVICE_TYPES
    previous = _NATIVE_DEVICE_TYPES
    _NATIVE_DEVICE_TYPES = previous | {device_type} if route == "native" else previous - {device_type}
    try:
        yield
    finally:
        _NATIVE_DEVICE_TYPES = previous
