"""Why a run stops before its end: its numbers stopped being finite (``Diverged``), or the sweep was told to stop by
Ctrl-C or SIGTERM (``Interrupted``). The runner records each with a status of its own ("diverged", "interrupted").
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import FrameType


class Diverged(Exception):
    """A loss or metric that is NaN or infinite; ``step`` is the training step (None: after training, at evaluation)."""

    def __init__(self, step: int | None, values: Mapping[str, float]) -> None:
        shown = ", ".join(f"{key}={value}" for key, value in values.items())
        super().__init__(f"{shown} at step {step}" if step is not None else f"{shown} at evaluation")
        self.step, self.values = step, dict(values)


def check_finite(step: int | None, values: Mapping[str, object]) -> None:
    """Raise Diverged naming every non-finite number among ``values`` (non-numbers are ignored)."""
    bad = {key: value for key, value in values.items()
           if isinstance(value, float) and not math.isfinite(value)}
    if bad:
        raise Diverged(step, bad)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM. A KeyboardInterrupt, so whatever cleans up after Ctrl-C cleans up after SIGTERM too, and
    Hydra passes it through (it catches Exception only); ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number

    @property
    def exit_code(self) -> int:
        return 128 + self.signal_number


def _raise(signal_number: int, frame: FrameType | None) -> None:
    raise Interrupted(signal_number)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGINT and SIGTERM raise Interrupted in the main thread while inside; elsewhere (a worker thread) a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.signal(number, _raise) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
