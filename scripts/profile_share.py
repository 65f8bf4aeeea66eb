"""Share of the profiled steps' time spent in pmdrop's labelled work, from a ``trainer.profile=true`` trace.

    python -m scripts.profile_share runs/.../seed0/trace.json

Reads the Chrome trace torch.profiler wrote (experiments/profiling.py): the steps are its ``ProfilerStep#N``
ranges; pmdrop's ``record_function`` labels ("pmdrop.draw", "pmdrop.pack", "pmdrop.unpack", "pmdrop.redraw") are
summed per label, on the CPU timeline (host time: Python, dispatch, CPU kernels) and, when the trace has CUDA
activities, on the GPU timeline (the kernels launched inside each label). A label nested in another pmdrop label
counts in its own row and not again in the total.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

LABEL_PREFIX = "pmdrop."
_TIMELINES = {"user_annotation": "cpu", "gpu_user_annotation": "gpu"}


@dataclass
class Share:
    step_us: float  # the profiled steps, summed
    steps: int
    label_us: dict[str, dict[str, float]]  # timeline ("cpu", "gpu") -> label -> microseconds
    total_us: dict[str, float]  # timeline -> outermost pmdrop labels, summed

    def fraction(self, timeline: str = "cpu") -> float:
        return self.total_us.get(timeline, 0.0) / self.step_us if self.step_us else 0.0


def _outermost(spans: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) spans."""
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(spans):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def profile_share(trace: Path) -> Share:
    events = json.loads(Path(trace).read_text())
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    complete = [e for e in events if e.get("ph") == "X" and "dur" in e]
    steps = [e for e in complete if str(e.get("name", "")).startswith("ProfilerStep#")
             and e.get("cat") == "user_annotation"]
    label_us: dict[str, dict[str, float]] = {}
    spans: dict[str, list[tuple[float, float]]] = {}
    for event in complete:
        timeline = _TIMELINES.get(event.get("cat"))
        name = str(event.get("name", ""))
        if timeline is None or not name.startswith(LABEL_PREFIX):
            continue
        per_label = label_us.setdefault(timeline, {})
        per_label[name] = per_label.get(name, 0.0) + float(event["dur"])
        spans.setdefault(timeline, []).append((float(event["ts"]), float(event["ts"]) + float(event["dur"])))
    return Share(sum(float(e["dur"]) for e in steps), len(steps), label_us,
                 {timeline: _outermost(s) for timeline, s in spans.items()})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace", type=Path, help="trace.json written by trainer.profile=true")
    args = parser.parse_args(argv)
    if not args.trace.is_file():
        parser.error(f"trace {str(args.trace)!r} is not a file")
    share = profile_share(args.trace)
    print(f"{share.steps} profiled steps, {share.step_us / 1e3:.1f} ms in all (CPU timeline)")
    for timeline, labels in sorted(share.label_us.items()):
        for name, us in sorted(labels.items()):
            print(f"  {timeline} {name:<16} {us / 1e3:9.2f} ms  {us / share.step_us:7.2%} of step time")
        print(f"  {timeline} {'pmdrop, all':<16} {share.total_us[timeline] / 1e3:9.2f} ms  "
              f"{share.fraction(timeline):7.2%} of step time")
    if not share.label_us:
        print("  no pmdrop labels in this trace (a baseline run, or a pmdrop without record_function labels)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
