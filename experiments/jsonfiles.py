"""Run files as strict JSON: written whole or not at all, read back as a record or as a named damage.

Strict: no ``NaN``/``Infinity`` tokens (``allow_nan=False``), which Python writes by default and other JSON readers
(jq, JavaScript, most JSON libraries) refuse. A non-finite number is written as ``null`` and named in the record's
``nonfinite`` field (``{"metrics.f1": "nan"}``), so a diverged value is never silently a missing one. Torch-free:
the analysis reads runs through this module too.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

NONFINITE_KEY = "nonfinite"


class DamagedFile(ValueError):
    """A run file that exists but cannot be read as what it should be; ``str()`` is one line naming file and fault."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def _plain(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


def finite(value: Any, where: str = "") -> tuple[Any, dict[str, str]]:
    """``value`` with every non-finite float replaced by None, and where each was (dotted keys, list indices)."""
    if isinstance(value, float):
        return (value, {}) if math.isfinite(value) else (None, {where: str(value)})
    if isinstance(value, Mapping):
        out, found = {}, {}
        for key, item in value.items():
            out[key], more = finite(item, f"{where}.{key}" if where else str(key))
            found |= more
        return out, found
    if isinstance(value, list | tuple):
        out_list, found = [], {}
        for index, item in enumerate(value):
            clean, more = finite(item, f"{where}[{index}]")
            out_list.append(clean)
            found |= more
        return out_list, found
    if hasattr(value, "tolist") or isinstance(value, Path):
        return finite(_plain(value), where)
    return value, {}


def strict_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """The record made strict-JSON-able: non-finite numbers as None, listed under ``nonfinite`` when there are any."""
    clean, found = finite(record)
    if found:
        clean[NONFINITE_KEY] = {**(record.get(NONFINITE_KEY) or {}), **found}
    return clean


def dumps_strict(record: Mapping[str, Any], **kwargs: Any) -> str:
    return json.dumps(strict_record(record), allow_nan=False, default=_plain, **kwargs)


def write_json_atomic(path: Path, record: Mapping[str, Any]) -> None:
    """Serialise first, write a temp file in the same directory and fsync it, then rename: readers never see a partial
    file. When writing fails (a full disk, a read-only directory) the temp file is removed and the error raised."""
    text = dumps_strict(record, indent=2) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def append_jsonl(file: IO[str], record: Mapping[str, Any]) -> None:
    """One strict-JSON line, flushed (a killed run keeps every line it logged)."""
    file.write(dumps_strict(record) + "\n")
    file.flush()


def _parse(path: Path, text: str, where: str = "") -> Any:
    """JSON text to Python, non-finite tokens of older files kept as floats (``finite`` then names them)."""
    try:
        return json.loads(text, parse_constant=float)
    except json.JSONDecodeError as error:
        raise DamagedFile(path, f"{where}{_fault(text, error)} ({error.msg}: line {error.lineno} column "
                                f"{error.colno})") from None


def _fault(text: str, error: json.JSONDecodeError) -> str:
    """"truncated" when the parser ran out of text (a write that stopped: the error is at the end, or a string is
    still open there), else "not valid JSON"."""
    cut = error.pos >= len(text.rstrip()) or error.msg.startswith("Unterminated string")
    return "truncated" if cut else "not valid JSON"


def _text(path: Path) -> str:
    """The file's text; FileNotFoundError when it is absent (no file is not a damaged file)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise DamagedFile(path, f"not valid UTF-8 (byte {error.start})") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """A results file as a strict record (non-finite numbers of older files as None under ``nonfinite``).

    FileNotFoundError when it is absent; DamagedFile when it is empty, truncated, not JSON or not a JSON object;
    another OSError when it cannot be read.
    """
    path = Path(path)
    text = _text(path)
    if not text.strip():
        raise DamagedFile(path, "empty file")
    value = _parse(path, text)
    if not isinstance(value, dict):
        raise DamagedFile(path, f"holds a JSON {type(value).__name__}, not an object")
    return strict_record(value)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """A metrics file: one JSON object per line (blank lines skipped); DamagedFile naming the first bad line."""
    path = Path(path)
    records = []
    for number, line in enumerate(_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        value = _parse(path, line, f"line {number}: ")
        if not isinstance(value, dict):
            raise DamagedFile(path, f"line {number}: holds a JSON {type(value).__name__}, not an object")
        records.append(strict_record(value))
    return records
