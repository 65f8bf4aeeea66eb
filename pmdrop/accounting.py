"""Exact accounting of the bytes a forward pass saves for backward (:class:`track_saved_tensors`).

A saved tensor is sorted by *origin*, not dtype (on CPU torch's own mask is a float tensor): anything saved while a
dropout call is running (:func:`dropout_site`) is a dropout mask, and so is what pmdrop's compiled and exported ops
mark as one (:func:`note_mask`: a compiled graph saves its tensors after it ran, outside any call).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import torch
from torch.overrides import TorchFunctionMode

_local = threading.local()
# Trackers open in any thread: with none, dropout calls skip dropout_site altogether (one list read per call).
trackers_open = [0]


def _active_ledgers() -> list[SavedBytes]:
    if not hasattr(_local, "ledgers"):
        _local.ledgers, _local.depth = [], 0
    return _local.ledgers


def _count_call(origin: str) -> None:
    for ledger in _active_ledgers():
        ledger.dropout_calls[origin] = ledger.dropout_calls.get(origin, 0) + 1


@contextmanager
def dropout_site(origin: str) -> Iterator[None]:
    """``with dropout_site(origin):`` marks the code inside as one dropout call for the open trackers; ``origin`` is
    "pmdrop" or "torch". Entered only while a tracker is open: dropout calls read ``trackers_open`` first."""
    if not inside_dropout_site():
        _count_call(origin)
    _local.depth += 1
    try:
        yield
    finally:
        _local.depth -= 1


def note_mask(t: torch.Tensor) -> torch.Tensor:
    """Mark ``t``, made by a dropout call of a compiled or exported graph, as its saved mask for the open trackers."""
    if trackers_open[0]:
        _count_call("pmdrop")
        _local.__dict__.setdefault("noted", set()).add(_storage_key(t))
    return t


def inside_dropout_site() -> bool:
    """Whether this thread is inside a :func:`dropout_site` (where a nested call is not counted again)."""
    return getattr(_local, "depth", 0) > 0


@dataclass
class SavedBytes:
    """Bytes saved for backward, each storage counted once."""

    mask_bytes: int = 0
    activation_bytes: int = 0
    parameter_bytes: int = 0
    mask_tensors: int = 0
    dropout_calls: dict[str, int] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return self.mask_bytes + self.activation_bytes + self.parameter_bytes

    def as_dict(self) -> dict:
        return {**asdict(self), "total_bytes": self.total_bytes}


class _SeeTorchDropout(TorchFunctionMode):
    """Marks dropout that bypasses pmdrop (an unconverted model's nn.Dropout / F.dropout)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func is torch.nn.functional.dropout:
            with dropout_site("torch"):
                return func(*args, **(kwargs or {}))
        return func(*args, **(kwargs or {}))


def _storage_key(t: torch.Tensor) -> tuple[str, int]:
    return (str(t.device), t.untyped_storage().data_ptr())


@contextmanager
def track_saved_tensors(parameters: Iterable[torch.Tensor] = (),
                        on_save: Callable[[torch.Tensor, bool], None] | None = None) -> Iterator[SavedBytes]:
    """Context manager: ``with track_saved_tensors(model.parameters()) as saved: loss = model(x)``.

    ``saved`` is a :class:`SavedBytes` filled in as the forward runs: ``mask_bytes`` (what dropout calls saved: torch's
    float or bool mask, pmdrop's packed mask or seeded's generator state), ``parameter_bytes`` (storages of the given
    parameters), ``activation_bytes`` (the rest), ``dropout_calls`` by origin ("pmdrop", or "torch" for dropout that
    bypasses pmdrop, e.g. an unconverted model). Each storage counts once. Works for eager, ``torch.func``, compiled
    (``torch.compile``: the graph's packed masks are marked by its pack op) and exported models. Tensors are left
    untouched. Like any ``saved_tensors_hooks``, an inner pair hides the tensors from it: inside
    :func:`pmdrop.pack_saved_masks`, nothing is counted. ``on_save(t, inside_dropout)``, when given, is called for
    every tensor saved (repeats and meta tensors included, which are not counted here: meta storages share one
    address), e.g. by a live-memory tracker.
    """
    saved, seen, parameter_keys = SavedBytes(), set(), {_storage_key(p) for p in parameters}

    def pack(t: torch.Tensor) -> torch.Tensor:
        key = _storage_key(t)
        mask = inside_dropout_site() or key in _local.__dict__.get("noted", ())
        if on_save is not None:
            on_save(t, mask)
        if key in seen or t.device.type == "meta":
            return t
        seen.add(key)
        nbytes = t.untyped_storage().nbytes()
        if mask:
            saved.mask_bytes += nbytes
            saved.mask_tensors += 1
        elif key in parameter_keys or isinstance(t, torch.nn.Parameter):
            saved.parameter_bytes += nbytes
        else:
            saved.activation_bytes += nbytes
        return t

    _active_ledgers().append(saved)
    trackers_open[0] += 1
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), _SeeTorchDropout():
            yield saved
    finally:
        _active_ledgers().remove(saved)
        trackers_open[0] -= 1
        if not _active_ledgers():
            _local.__dict__.pop("noted", None)
