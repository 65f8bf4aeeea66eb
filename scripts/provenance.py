"""How a report file was obtained: the command, the devices and git commits read from the runs, the date.

Every file the report writes carries these lines (Markdown quote, CSV ``#`` comments, PNG footer and
metadata), so a table found on its own still says where its numbers came from.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from datetime import UTC, datetime

import pandas as pd

from experiments.record import git_commit

_MAX_LISTED = 4


def report_command(argv: list[str] | None = None) -> str:
    return shlex.join(["python", "-m", "scripts.report", *(sys.argv[1:] if argv is None else argv)])


def _listed(values: pd.Series) -> tuple[str, ...]:
    return tuple(sorted({str(v) for v in values.dropna() if str(v)}))


def _join(values: tuple[str, ...]) -> str:
    if not values:
        return "none recorded"
    shown = ", ".join(values[:_MAX_LISTED])
    return shown + (f" (+{len(values) - _MAX_LISTED} more)" if len(values) > _MAX_LISTED else "")


@dataclass(frozen=True)
class Provenance:
    command: str
    generated: str
    report_commit: str
    devices: tuple[str, ...]
    run_commits: tuple[str, ...]
    run_commands: tuple[str, ...]

    @classmethod
    def of(cls, runs: pd.DataFrame, command: str, report_commit: str | None = None) -> Provenance:
        """Provenance of a file made from ``runs`` (the rows it was computed from)."""
        return cls(
            command=command,
            generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            report_commit=(git_commit() or "unknown") if report_commit is None else report_commit,
            devices=_listed(runs["device"]) if len(runs) else (),
            run_commits=_listed(runs["git_commit"]) if len(runs) else (),
            run_commands=_listed(runs["command"]) if len(runs) else (),
        )

    def subset(self, runs: pd.DataFrame) -> Provenance:
        """The same report, describing only the rows of ``runs``."""
        return Provenance.of(runs, self.command, self.report_commit) if len(runs) else self

    def lines(self) -> list[str]:
        return [
            f"generated: {self.generated} by `{self.command}` (report code at git commit {self.report_commit})",
            f"device(s) of the runs read: {_join(self.devices)}",
            f"git commit(s) of the runs read: {_join(self.run_commits)}",
            f"run command(s): {_join(tuple(f'`{c}`' for c in self.run_commands))}",
        ]

    def markdown(self) -> str:
        return "\n".join(f"> {line}  " for line in self.lines()) + "\n"

    def csv_header(self) -> str:
        return "".join(f"# {line}\n" for line in self.lines())

    def footer(self) -> str:
        """One line for a plot: date, command, devices, commits."""
        return (f"generated {self.generated} by {self.command} | device: {_join(self.devices)} | "
                f"run commit: {_join(self.run_commits)}")
