"""Peak memory of one training step as the bytes held by live tensors, split by what holds them.

:class:`StepMemory` watches one device over a block of code (a training step: forward, backward, optimizer step)
and reports the peak of the bytes of live tensor storages, each storage counted once, and what the storages alive
at that peak were:

* ``parameters``, ``gradients``, ``optimizer_state``, ``inputs_and_buffers`` (what existed before the step and the
  model's buffers);
* ``parameter_casts``: copies of a parameter in another dtype (autocast's cached weight casts);
* ``saved_masks`` and ``saved_activations``: storages saved for backward, a mask when saved inside a dropout call
  (``pmdrop.track_saved_tensors`` tells, through its ``on_save`` callback), the rest activations;
* ``temporaries``: everything else (forward results not saved, activation gradients, optimizer scratch).

On a GPU this is what ``torch.cuda.max_memory_allocated`` counts, less what kernels allocate internally
(workspaces) and what lives outside the step's tensors, with each storage rounded up as the caching allocator rounds
blocks (``CUDA_BLOCK_BYTES``). On CPU it is exact where RSS is not: no interpreter, no allocator caches, nothing
left from an earlier job of the sweep. On the ``meta`` device it is the same count without any memory behind it,
which is how experiments/memory_plan.py plans paper-scale steps.

Why not ``torch.distributed._tools.mem_tracker.MemTracker`` (the same tensor-level idea; a test checks the two agree
on the peak): it files every forward result under "Activation" (saved masks, saved activations and forward
temporaries alike), files optimizer scratch as optimizer state, rounds to allocator blocks only on real CUDA
tensors (not on meta, where the plan needs it), refuses a second iteration of a root module without
``reset_mod_stats``, and lives in a private package whose internals we would have to subclass. Here the peak is
found from a log of allocations and frees, and the split is computed once, after the step, for the storages alive at
the peak.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import weakref
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

# The CUDA caching allocator hands out blocks in multiples of 512 bytes; memory_allocated counts whole blocks.
CUDA_BLOCK_BYTES = 512
CATEGORIES = ("parameters", "parameter_casts", "gradients", "optimizer_state", "saved_masks", "saved_activations",
              "inputs_and_buffers", "temporaries")
_CASTS = {torch.ops.aten._to_copy.default, torch.ops.aten.to.dtype, torch.ops.aten.to.dtype_layout}


@dataclass
class PeakMemory:
    """A step's peak of live tensor bytes on one device and what held them at that moment."""

    peak_bytes: int
    split: dict[str, int]  # CATEGORIES -> bytes at the peak; sums to peak_bytes
    phase: str  # the part of the step the peak fell in (the names the caller gave with StepMemory.phase)
    start_bytes: int  # live at the step's start (parameters, optimizer state, the batch ...)
    # everything noted as saved for backward over the step, each storage once, in exact (unrounded) bytes
    saved_mask_bytes: int = 0
    saved_activation_bytes: int = 0
    saved_parameter_bytes: int = 0
    block_bytes: int = 1  # each storage's bytes rounded up to a multiple of this

    def as_dict(self) -> dict:
        return {"peak_bytes": self.peak_bytes, "split": dict(self.split), "phase": self.phase,
                "start_bytes": self.start_bytes, "saved_mask_bytes": self.saved_mask_bytes,
                "saved_activation_bytes": self.saved_activation_bytes,
                "saved_parameter_bytes": self.saved_parameter_bytes, "block_bytes": self.block_bytes}


@dataclass
class _Storage:
    key: int
    nbytes: int  # rounded to block_bytes
    exact_nbytes: int
    facts: set[str] = field(default_factory=set)


def tensors_in(*trees: object) -> Iterator[torch.Tensor]:
    """The tensors among operator arguments or results: the values, and those inside lists, tuples and dicts
    (a faster ``tree_leaves`` for the shapes aten operators take)."""
    for tree in trees:
        if isinstance(tree, torch.Tensor):
            yield tree
        elif isinstance(tree, list | tuple):
            yield from tensors_in(*tree)
        elif isinstance(tree, dict):
            yield from tensors_in(*tree.values())


def _storage(t: torch.Tensor) -> torch.UntypedStorage | None:
    if t.layout is not torch.strided or t.is_nested:
        return None
    return t.untyped_storage()


class StepMemory(TorchDispatchMode):
    """``with StepMemory(device, model, optimizer, inputs=batch) as memory: ...`` then ``memory.result()``.

    Tensors that exist before the block count when registered here (``model``'s parameters, buffers and gradients,
    ``optimizer``'s state, ``inputs``); every storage an operator creates inside the block counts from its creation
    until its last reference goes. Pass ``memory.note_saved`` as ``pmdrop.track_saved_tensors(on_save=...)`` to have
    saved tensors filed as saved masks and activations; call ``memory.phase(name)`` to name the parts of the step.
    ``block_bytes`` rounds each storage up (``CUDA_BLOCK_BYTES`` for what a CUDA allocator would hold).
    """

    def __init__(self, device: torch.device | str, model: torch.nn.Module | None = None,
                 optimizer: torch.optim.Optimizer | None = None, inputs: Iterable[torch.Tensor] | dict = (),
                 block_bytes: int = 1) -> None:
        super().__init__()
        self.device = torch.device(device)
        self.block_bytes = block_bytes
        self._model, self._optimizer, self._inputs = model, optimizer, inputs
        self._records: dict[int, _Storage] = {}  # id of a live storage -> its record (dropped when it dies)
        self._facts: dict[int, _Storage] = {}  # every storage seen, alive or not, by key
        self._keys = itertools.count()
        self._events: list[tuple[int, int]] = []  # (key, +bytes or -bytes), in order
        self._phases: list[tuple[int, str]] = [(0, "start")]  # (event index, phase name)
        self._start_events = 0
        self._hooks: list = []
        self._finalizers: list[weakref.finalize] = []
        self._paused = False

    # ------------------------------------------------------------------ registering storages
    def _on_device(self, storage: torch.UntypedStorage) -> bool:
        device = storage.device
        return device.type == self.device.type and (self.device.index is None or device.index == self.device.index)

    def _rounded(self, nbytes: int) -> int:
        return math.ceil(nbytes / self.block_bytes) * self.block_bytes

    def _record(self, t: torch.Tensor, fact: str | None = None) -> _Storage | None:
        storage = _storage(t)
        if storage is None or not self._on_device(storage):
            return None
        record = self._records.get(id(storage))
        exact = storage.nbytes()
        nbytes = self._rounded(exact)
        if record is None:
            record = _Storage(next(self._keys), nbytes, exact)
            self._records[id(storage)] = record
            self._facts[record.key] = record
            self._events.append((record.key, nbytes))
            self._finalizers.append(weakref.finalize(storage, self._freed, id(storage), record))
        elif nbytes != record.nbytes:  # resized in place
            self._events.append((record.key, nbytes - record.nbytes))
            record.nbytes, record.exact_nbytes = nbytes, exact
        if fact is not None:
            record.facts.add(fact)
        return record

    def _freed(self, storage_id: int, record: _Storage) -> None:
        self._events.append((record.key, -record.nbytes))
        if self._records.get(storage_id) is record:
            del self._records[storage_id]

    def _record_gradient(self, parameter: torch.Tensor) -> None:
        if parameter.grad is not None:
            self._record(parameter.grad, "gradient")

    def _record_optimizer_state(self, optimizer: torch.optim.Optimizer, *args: object) -> None:
        for state in optimizer.state.values():
            for value in state.values():
                if isinstance(value, torch.Tensor):
                    self._record(value, "optimizer_state")

    def note_saved(self, t: torch.Tensor, inside_dropout: bool) -> None:
        """A tensor saved for backward (``pmdrop.track_saved_tensors``'s ``on_save``)."""
        self._record(t, "saved_mask" if inside_dropout else "saved")

    def phase(self, name: str) -> None:
        """Name the part of the step that starts now (e.g. "forward", "backward", "optimizer")."""
        self._phases.append((len(self._events), name))

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Leave the code inside out (instrumentation, e.g. a gradient cosine): what it creates is not counted."""
        self._paused = True
        try:
            yield
        finally:
            self._paused = False

    # ------------------------------------------------------------------ the mode
    def __enter__(self) -> StepMemory:
        if self._model is not None:
            for parameter in self._model.parameters():
                self._record(parameter, "parameter")
                self._record_gradient(parameter)
                if parameter.requires_grad:
                    self._hooks.append(parameter.register_post_accumulate_grad_hook(self._record_gradient))
            for buffer in self._model.buffers():
                self._record(buffer, "input")
        if self._optimizer is not None:
            self._record_optimizer_state(self._optimizer)
            self._hooks.append(self._optimizer.register_step_post_hook(self._record_optimizer_state))
        inputs = self._inputs.values() if isinstance(self._inputs, dict) else self._inputs
        for t in inputs:
            self._record(t, "input")
        self._start_events = len(self._events)
        return super().__enter__()

    def __exit__(self, *exc: object) -> None:
        try:
            super().__exit__(*exc)
        finally:
            for hook in self._hooks:
                hook.remove()
            self._hooks.clear()
            # A finalizer holds this mode until its storage dies, and the mode held the model whose storages those are:
            # left attached, they would keep the model (and, under DDP, its process group) alive for ever. Frees after
            # the step only lower the total, so the peak is complete here.
            for finalizer in self._finalizers:
                finalizer.detach()
            self._finalizers.clear()
            self._model, self._optimizer, self._inputs = None, None, ()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._paused:
            return func(*args, **kwargs)
        for t in tensors_in(args, kwargs):
            storage = _storage(t)
            if storage is not None and id(storage) not in self._records:
                self._record(t, "input")  # alive since before the step, first seen here
        out = func(*args, **kwargs)
        cast_of_parameter = func in _CASTS and isinstance(args[0], torch.nn.Parameter)
        for t in tensors_in(out):
            self._record(t, "parameter_cast" if cast_of_parameter else None)
        return out

    # ------------------------------------------------------------------ the result
    def _category(self, record: _Storage) -> str:
        facts = record.facts
        for fact, category in (("parameter", "parameters"), ("parameter_cast", "parameter_casts"),
                               ("gradient", "gradients"), ("optimizer_state", "optimizer_state"),
                               ("saved_mask", "saved_masks"), ("saved", "saved_activations"),
                               ("input", "inputs_and_buffers")):
            if fact in facts:
                return category
        return "temporaries"

    def result(self) -> PeakMemory:
        """The peak and its split; call after the block."""
        total, peak, peak_index = 0, -1, 0
        for index, (_, delta) in enumerate(self._events):
            total += delta
            if total > peak:
                peak, peak_index = total, index
        live: dict[int, int] = {}
        start_bytes = 0
        for index, (key, delta) in enumerate(self._events[: peak_index + 1]):
            live[key] = live.get(key, 0) + delta
            if index < self._start_events:
                start_bytes += delta
        split = dict.fromkeys(CATEGORIES, 0)
        for key, nbytes in live.items():
            if nbytes:
                split[self._category(self._facts[key])] += nbytes
        phase = next(name for index, name in reversed(self._phases) if index <= peak_index)
        saved = dict.fromkeys(("saved_mask", "saved", "parameter"), 0)  # exact bytes, as track_saved_tensors has them
        for record in self._facts.values():
            if "saved_mask" in record.facts:
                saved["saved_mask"] += record.exact_nbytes
            elif "saved" in record.facts:
                saved["parameter" if "parameter" in record.facts else "saved"] += record.exact_nbytes
        return PeakMemory(max(peak, 0), split, phase, start_bytes, saved["saved_mask"], saved["saved"],
                          saved["parameter"], self.block_bytes)


class NoStepMemory:
    """:class:`StepMemory`'s interface doing nothing, for the steps a training loop does not measure."""

    note_saved = None

    def __enter__(self) -> NoStepMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def phase(self, name: str) -> None:
        pass

    def paused(self) -> contextlib.nullcontext:
        return contextlib.nullcontext()

    def result(self) -> None:
        return None
