"""``trainer.profile=true``: a ``torch.profiler`` trace of a few training steps, written into the run directory.

The trace (``trace.json``, Chrome trace format: chrome://tracing, Perfetto or TensorBoard's profiler plugin) covers
``trainer.profile_steps`` steps after ``trainer.timing_warmup_steps`` (lazy initialisation, allocator growth and
compilation left out), with CPU activities, and CUDA kernels on a GPU. pmdrop labels its draw, pack, unpack and
redraw with ``record_function`` ("pmdrop.draw", ...) while a profiler runs; ``python -m scripts.profile_share
RUN_DIR/trace.json`` sums each label's share of the profiled steps' time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, schedule

TRACE_FILE = "trace.json"


_trace_dir: ContextVar[Path | None] = ContextVar("trace_dir", default=None)


@contextmanager
def traces_into(run_dir: Path) -> Iterator[None]:
    """The directory a profiled job writes its trace into (the runner sets it to the run's directory)."""
    token = _trace_dir.set(Path(run_dir))
    try:
        yield
    finally:
        _trace_dir.reset(token)


@contextmanager
def step_profiler(enabled: bool, device: torch.device, skip: int, steps: int) -> Iterator[Callable[[], None] | None]:
    """A context whose value is called after every training step (None when not profiling): steps ``skip + 1`` to
    ``skip + steps`` are recorded, and the trace written as ``TRACE_FILE`` into the :func:`traces_into` directory
    once they are done."""
    if not enabled:
        yield None
        return
    if _trace_dir.get() is None:
        raise ValueError("trainer.profile=true needs the run directory to write its trace into (run it with run.py)")
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    trace = _trace_dir.get() / TRACE_FILE
    with profile(activities=activities, schedule=schedule(wait=skip, warmup=0, active=steps, repeat=1),
                 on_trace_ready=lambda recorder: recorder.export_chrome_trace(str(trace))) as recorder:
        yield recorder.step
