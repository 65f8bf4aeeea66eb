"""The locked environments. requirements.lock pins every package pyproject.toml asks for (`make lock` after a change),
each exactly and with hashes, and torch at the newest tested build; requirements-gpu-stack.lock pins the GPU
machine's stack, the oldest tested, and pyproject.toml's floors are its versions: what is claimed is what CI tests."""

import re
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[2]
LOCKS = ("requirements.lock", "requirements-gpu-stack.lock")
# The packages whose oldest tested release is the GPU machine's, and so pyproject.toml's floor.
FLOORED = ("torch", "triton", "transformers", "timm", "torchvision", "accelerate")


def _pins(lock: str) -> dict[str, set[str]]:
    """name -> versions pinned in the lock (a package may be pinned per Python version, behind markers)."""
    pins: dict[str, set[str]] = {}
    for line in (REPO / lock).read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", line)
        if match:
            pins.setdefault(canonicalize_name(match[1]), set()).add(match[2])
    return pins


def _project() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _requirements() -> list[Requirement]:
    project = _project()
    extras = project["optional-dependencies"]
    return [Requirement(r) for r in project["dependencies"] + [r for name in sorted(extras) for r in extras[name]]]


def _floor(requirement: Requirement) -> str:
    floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    assert len(floors) == 1, f"{requirement}: one '>=' floor expected"
    return floors[0]


def test_every_requirement_of_pyproject_is_pinned_in_the_lock():
    wanted = _requirements()
    pins = _pins("requirements.lock")
    missing = [str(r) for r in wanted if canonicalize_name(r.name) not in pins]
    assert not missing, f"not in requirements.lock (run `make lock`): {missing}"
    outside = [f"{r} (locked {sorted(pins[canonicalize_name(r.name)])})" for r in wanted
               if not any(r.specifier.contains(v, prereleases=True) for v in pins[canonicalize_name(r.name)])]
    assert not outside, f"locked versions outside pyproject's ranges (run `make lock`): {outside}"
    assert pins["torch"] == {"2.14.1"} and pins["torchvision"] == {"0.29.1"}


def test_the_gpu_stack_lock_pins_the_gpu_machines_versions_within_pyprojects_ranges():
    pins = _pins("requirements-gpu-stack.lock")
    assert {name: pins[name] for name in FLOORED} == {
        "torch": {"2.11.0"}, "triton": {"3.6.0"}, "transformers": {"5.17.0"}, "timm": {"1.0.31"},
        "torchvision": {"0.26.0"}, "accelerate": {"1.15.0"},
    }
    outside = [f"{r} (locked {sorted(pins[canonicalize_name(r.name)])})" for r in _requirements()
               if canonicalize_name(r.name) in pins
               and not r.specifier.contains(next(iter(pins[canonicalize_name(r.name)])), prereleases=True)]
    assert not outside, f"GPU stack versions outside pyproject's ranges: {outside}"
    # The packages the GPU machine lacks stay out, so that the tests on this stack see what that machine sees.
    assert not {"wandb", "datasets", "hydra-joblib-launcher", "hydra-submitit-launcher"} & pins.keys()


def test_pyprojects_floors_are_the_oldest_tested_versions():
    gpu_stack = _pins("requirements-gpu-stack.lock")
    floors = {canonicalize_name(r.name): _floor(r) for r in _requirements() if canonicalize_name(r.name) in FLOORED}
    assert floors.keys() == set(FLOORED)
    assert {name: Version(floor) for name, floor in floors.items()} == {
        name: Version(next(iter(gpu_stack[name]))) for name in FLOORED
    }
    # requires-python: the oldest Python a lock is compiled for (the header names uv's --python-version).
    pythons = [re.search(r"--python-version (\S+)", (REPO / lock).read_text())[1] for lock in LOCKS]
    assert _project()["requires-python"] == f">={min(pythons, key=Version)}"


def test_every_pin_carries_hashes():
    for lock in LOCKS:
        blocks = re.split(r"\n(?=[A-Za-z0-9])", (REPO / lock).read_text())
        pinned = [block for block in blocks if re.match(r"^[A-Za-z0-9._-]+==", block)]
        assert pinned and all("--hash=sha256:" in block for block in pinned), lock
