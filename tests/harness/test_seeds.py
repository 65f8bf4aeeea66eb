import subprocess
import sys

import pytest

from experiments.seeds import SeedRangeError, expand_seed_ranges

from .conftest import REPO_ROOT


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("seed=0-4", "seed=0,1,2,3,4"),
        ("seed=3-3", "seed=3"),
        ("seed=0-2,7", "seed=0,1,2,7"),
        ("seed= 1-2", "seed=1,2"),
        ("++seed=1-2", "++seed=1,2"),
        # Hydra's own syntax and plain values pass through untouched.
        ("seed=range(0,5)", "seed=range(0,5)"),
        ("seed=0,1,2", "seed=0,1,2"),
        ("seed=7", "seed=7"),
        ("seed=-1", "seed=-1"),
        ("seed='0-4'", "seed='0-4'"),
        ("trainer.steps=0-4", "trainer.steps=0-4"),
        ("myseed=0-4", "myseed=0-4"),
    ],
)
def test_expand_seed_ranges(arg, expected):
    assert expand_seed_ranges(["run.py", "-m", arg, "variant=pmdrop"]) == ["run.py", "-m", expected, "variant=pmdrop"]


@pytest.mark.parametrize(
    ("arg", "message"), [("seed=4-0", "start 4 > end 0"), ("seed=a-b", "'a-b'"), ("seed=0-2,x-3", "'x-3'")]
)
def test_malformed_range_is_an_error_naming_the_value(arg, message):
    with pytest.raises(SeedRangeError, match=message):
        expand_seed_ranges(["run.py", arg])


def test_rewritten_range_parses_as_five_int_seeds():
    """Through Hydra itself: the rewritten argument sweeps ints, not the string "0-4"."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    (override,) = OverridesParser.create().parse_overrides(expand_seed_ranges(["seed=0-4"]))
    assert list(override.sweep_iterator()) == [0, 1, 2, 3, 4]


def test_run_py_exits_2_on_malformed_range_and_runs_nothing(tmp_path):
    proc = subprocess.run(
        [sys.executable, "run.py", "-m", "seed=4-0", f"runs_root={tmp_path}"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip() == "run.py: error: malformed seed range '4-0': start 4 > end 0; write seed=0-4"
    assert not any(tmp_path.iterdir())
