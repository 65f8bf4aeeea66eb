"""A run directory is worked on by one process at a time: the run's lock file, claimed atomically.

The lock is ``<run_dir>.lock`` beside the run directory (so emptying the directory for a retry keeps it), created
with ``O_CREAT | O_EXCL``: exactly one process succeeds, also on a shared filesystem (NFS v3 and later do exclusive
create on the server; ``flock`` is not honoured across NFS clients everywhere). It holds JSON naming the holder:
host, pid, the process's start time (so a recycled pid is not mistaken for the holder) and when it began. While it
is held a thread touches the file every ``heartbeat_s`` seconds.

A lock is stale, and taken over, when its holder is on this host and that process is gone, or when it is on another
host (whose processes cannot be asked) and its heartbeat is older than ``stale_after_s``. Taking over is itself
exclusive: the one process that creates ``<lock>.takeover`` re-reads the lock, and replaces it only if it is still
the stale one it judged, so two sweeps that find the same stale lock never both think they hold it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HEARTBEAT_S = 30.0
# A lock of another host whose heartbeat is older than this is abandoned (its machine died or lost the filesystem).
STALE_AFTER_S = 600.0
# A takeover takes milliseconds; a takeover file this old was left by a process killed while taking over.
_TAKEOVER_STALE_S = 60.0


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, read from its file."""

    host: str
    pid: int
    process_start: str | None
    started_at: str
    token: str
    heartbeat_age_s: float

    def __str__(self) -> str:
        return f"{self.host}:{self.pid}"


class HeldElsewhere(Exception):
    """The run is being done by another live process; ``holder`` names it."""

    def __init__(self, lock_path: Path, holder: Holder) -> None:
        super().__init__(f"{lock_path.parent / lock_path.stem} is being run by {holder} (since {holder.started_at})")
        self.holder = holder


def lock_path_for(run_dir: Path) -> Path:
    return run_dir.with_name(f"{run_dir.name}.lock")


def _process_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # fields after the command name, which may hold spaces or ')'


def _alive(pid: int, process_start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        pass
    return process_start is None or _process_start(pid) in (None, process_start)


def read_holder(lock: Path) -> Holder | None:
    """The lock's holder; None when there is no lock file. A lock file that cannot be parsed (a process killed between
    creating and writing it) reads as a holder on no host with pid 0, which is stale once its heartbeat is old."""
    try:
        text = lock.read_text()
        age = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return None
    try:
        fields: dict[str, Any] = json.loads(text)
        return Holder(str(fields["host"]), int(fields["pid"]), fields.get("process_start"), str(fields["started_at"]),
                      str(fields["token"]), age)
    except (ValueError, KeyError, TypeError):
        return Holder("", 0, None, "unknown", "", age)


def is_stale(holder: Holder, stale_after_s: float = STALE_AFTER_S) -> bool:
    if holder.host == socket.gethostname() and holder.pid > 0:
        return not _alive(holder.pid, holder.process_start)
    return holder.heartbeat_age_s > stale_after_s


class RunLock:
    """The claim on one run directory: ``claim()`` or HeldElsewhere, then ``release()`` (or use it as a context)."""

    def __init__(self, run_dir: Path, heartbeat_s: float = HEARTBEAT_S, stale_after_s: float = STALE_AFTER_S) -> None:
        self.run_dir, self.path = run_dir, lock_path_for(run_dir)
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.token = uuid.uuid4().hex
        self.took_over: Holder | None = None  # the stale holder this claim replaced, if any
        self._stop = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def claim(self) -> RunLock:
        """Hold the lock, taking over a stale one; raises HeldElsewhere when a live process holds it. Makes the run
        directory (empty, if new) first, so a file in its way fails here as NotADirectoryError."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if not self._create():
            holder = read_holder(self.path)
            if holder is not None and not is_stale(holder, self.stale_after_s):
                raise HeldElsewhere(self.path, holder)
            self._take_over()
        self._heartbeat = threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}", daemon=True)
        self._heartbeat.start()
        return self

    def release(self) -> None:
        """Stop the heartbeat and remove the lock, if it is still this claim's (never another process's)."""
        self._stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join()
            self._heartbeat = None
        holder = read_holder(self.path)
        if holder is not None and holder.token == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> RunLock:
        return self.claim()

    def __exit__(self, *exc_info: object) -> None:
        self.release()

    def _create(self) -> bool:
        """Create the lock file exclusively and write this process into it; False when it exists."""
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        fields = {"host": socket.gethostname(), "pid": os.getpid(), "process_start": _process_start(os.getpid()),
                  "started_at": datetime.now(UTC).isoformat(timespec="seconds"), "token": self.token}
        try:
            os.write(fd, json.dumps(fields).encode())
            os.fsync(fd)
        except OSError:
            os.close(fd)
            self.path.unlink(missing_ok=True)
            raise
        os.close(fd)
        return True

    def _take_over(self) -> None:
        takeover = self.path.with_name(f"{self.path.name}.takeover")
        try:
            os.close(os.open(takeover, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        except FileExistsError:
            if time.time() - _mtime(takeover) > _TAKEOVER_STALE_S:
                takeover.unlink(missing_ok=True)
                return self._take_over()
            raise HeldElsewhere(self.path, read_holder(self.path) or Holder("", 0, None, "unknown", "", 0.0)) from None
        try:
            holder = read_holder(self.path)  # again, under the takeover file: it may have been replaced since
            if holder is not None and not is_stale(holder, self.stale_after_s):
                raise HeldElsewhere(self.path, holder)
            self.path.unlink(missing_ok=True)
            if not self._create():  # only a process that skipped the takeover file could get here first
                raise HeldElsewhere(self.path, read_holder(self.path) or Holder("", 0, None, "unknown", "", 0.0))
            self.took_over = holder
        finally:
            takeover.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            holder = read_holder(self.path)
            if holder is None or holder.token != self.token:
                return  # taken over (this process was judged dead): leave the new holder's file alone
            with suppress(OSError):  # a full or read-only disk: the run fails on its own writes; the heartbeat ages
                os.utime(self.path)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return time.time()
