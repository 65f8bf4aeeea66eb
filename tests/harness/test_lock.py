"""The locked environment: requirements.lock pins every package pyproject.toml asks for (`make lock` after a change),
each exactly and with hashes, and torch at the tested build."""

import re
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[2]


def _pins() -> dict[str, set[str]]:
    """name -> versions pinned in the lock (a package may be pinned per Python version, behind markers)."""
    text = (REPO / "requirements.lock").read_text()
    pins: dict[str, set[str]] = {}
    for line in text.splitlines():
        match = re.match(r"^([A-Za-z0-9._-]+)==([^ ;\\]+)", line)
        if match:
            pins.setdefault(canonicalize_name(match[1]), set()).add(match[2])
    return pins


def test_every_requirement_of_pyproject_is_pinned_in_the_lock():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    wanted = [Requirement(r) for r in project["dependencies"]]
    wanted += [Requirement(r) for extra in ("harness", "dev") for r in project["optional-dependencies"][extra]]
    pins = _pins()
    missing = [str(r) for r in wanted if canonicalize_name(r.name) not in pins]
    assert not missing, f"not in requirements.lock (run `make lock`): {missing}"
    outside = [f"{r} (locked {sorted(pins[canonicalize_name(r.name)])})" for r in wanted
               if not any(r.specifier.contains(v, prereleases=True) for v in pins[canonicalize_name(r.name)])]
    assert not outside, f"locked versions outside pyproject's ranges (run `make lock`): {outside}"
    assert pins["torch"] == {"2.14.1"} and pins["torchvision"] == {"0.29.1"}


def test_every_pin_carries_hashes():
    blocks = re.split(r"\n(?=[A-Za-z0-9])", (REPO / "requirements.lock").read_text())
    pinned = [block for block in blocks if re.match(r"^[A-Za-z0-9._-]+==", block)]
    assert pinned and all("--hash=sha256:" in block for block in pinned)
