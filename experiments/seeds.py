"""``seed=0-4`` on the command line means seeds 0, 1, 2, 3, 4.

Hydra reads ``seed=0-4`` as the string "0-4" and launches a single job, so ``run.py`` rewrites the argument into
Hydra's sweep syntax before Hydra parses ``sys.argv``. Items may be mixed: ``seed=0-2,7`` -> ``seed=0,1,2,7``.
Anything without a range (``seed=3``, ``seed=0,1,2``, ``seed=range(0,5)``, ``seed=-1``) is left to Hydra.
"""

from __future__ import annotations

import re

_SEED_ARG = re.compile(r"^(\+{0,2}seed)=(.*)$")
_RANGE = re.compile(r"^(\d+)-(\d+)$")


class SeedRangeError(ValueError):
    """A ``seed=`` argument that looks like a range but is not ``A-B`` with integers ``0 <= A <= B``."""


def expand_seed_item(item: str) -> list[str]:
    """One comma-separated item of a seed argument: ``"2-4"`` -> ``["2", "3", "4"]``, ``"7"`` -> ``["7"]``."""
    item = item.strip()
    if "-" not in item.lstrip("-"):  # a plain (possibly negative) value: Hydra parses it
        return [item]
    match = _RANGE.match(item)
    if match is None:
        raise SeedRangeError(f"malformed seed range {item!r}: expected A-B with non-negative integers, e.g. seed=0-4")
    start, end = int(match[1]), int(match[2])
    if start > end:
        raise SeedRangeError(f"malformed seed range {item!r}: start {start} > end {end}; write seed={end}-{start}")
    return [str(seed) for seed in range(start, end + 1)]


def expand_seed_ranges(argv: list[str]) -> list[str]:
    """``argv`` with every ``seed=A-B`` item expanded to Hydra's ``seed=A,A+1,...,B``; other arguments unchanged."""
    expanded = []
    for arg in argv:
        match = _SEED_ARG.match(arg)
        value = match[2] if match else ""
        # Hydra's own sweep functions (range(), choice(), interval()) and quoted values pass through.
        if match is None or "(" in value or value[:1] in "'\"":
            expanded.append(arg)
            continue
        seeds = [seed for item in value.split(",") for seed in expand_seed_item(item)]
        expanded.append(f"{match[1]}={','.join(seeds)}")
    return expanded
