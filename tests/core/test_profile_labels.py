"""While a profiler runs, a call labels its draw, pack and unpack (seeded: its redraw), and computes what it computes
without one: the labelled branches are the same ops."""

from collections import Counter

import pytest
import torch

import pmdrop

from .helpers import assert_identical, step
from .routes import ROUTES, route, skip_baseline_on_native

LABELS = {
    # the hooks path labels torch's dropout as the draw, with the pack inside it; the in-place Function draws itself
    "hooks": {"pmdrop": {"pmdrop.draw": 1, "pmdrop.pack": 1, "pmdrop.unpack": 1},
              "seeded": {"pmdrop.draw": 1, "pmdrop.redraw": 1}},
    "in_place": {"pmdrop": {"pmdrop.pack": 1, "pmdrop.unpack": 1}, "seeded": {"pmdrop.redraw": 1}},
}


def _labels(events) -> Counter:
    return Counter(e.name for e in events if e.name.startswith("pmdrop."))


@pytest.mark.parametrize("route_name", ROUTES)
@pytest.mark.parametrize("variant", ["pmdrop", "pmdrop_4bit", "seeded", "baseline"])
def test_a_profiled_call_labels_its_work_and_computes_the_same(variant, route_name, eager_path):
    skip_baseline_on_native(variant, route_name)
    x0 = torch.randn(8, 64)
    layer = pmdrop.PackedDropout(0.3, variant=variant)
    with route(route_name):
        plain = step(layer, x0)
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            profiled = step(layer, x0)
    assert_identical(plain, profiled, variant)
    path = "hooks" if route_name == "native" else eager_path  # the native route never takes the in-place Function
    expected = {} if variant == "baseline" else LABELS[path]["seeded" if variant == "seeded" else "pmdrop"]
    assert _labels(prof.events()) == expected
