"""Histories and verdicts: what `keel verify` records and what its checkers return.

A history is a list of JSON objects, one per line on disk. The register workload uses the
shared format `{"process", "type", "f", "key", "value", "time"}` (DESIGN.md section 7); the
other workloads add their own fields beside those. Nothing here does I/O beyond reading and
writing those lines, so every checker stays a pure function of a list.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Event", "HistoryError", "Verdict", "dump_history", "load_history", "parse_history"]

Event = dict[str, Any]
"""One history line: a JSON object."""


class HistoryError(ValueError):
    """A history file that is not one JSON object per line, or a line missing a field."""


@dataclass(frozen=True)
class Verdict:
    """What a checker concluded about one history.

    `valid` is the verdict. `summary` says it in one line a user reads first. For a violation,
    `counterexample` holds the smallest set of history events found that shows it, and
    `explanation` says in words what is wrong with them. `stats` carries counts and figures
    (operations, indeterminate ones, gaps, convergence time...) for the report.
    """

    model: str
    valid: bool
    summary: str
    counterexample: list[Event] = field(default_factory=list)
    explanation: str = ""
    stats: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def parse_history(lines: Iterable[str], *, source: str = "history") -> list[Event]:
    """Decode JSON lines, skipping blank ones; a bad line is a `HistoryError` naming it."""
    events: list[Event] = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        try:
            event = json.loads(text)
        except json.JSONDecodeError as exc:
            raise HistoryError(f"{source}:{number}: not JSON ({exc.msg})") from None
        if not isinstance(event, dict):
            raise HistoryError(f"{source}:{number}: expected a JSON object, got {text[:40]!r}")
        events.append(event)
    return events


def load_history(path: Path) -> list[Event]:
    with path.open(encoding="utf-8") as lines:
        return parse_history(lines, source=str(path))


def dump_history(events: Sequence[Event], path: Path) -> None:
    with path.open("w", encoding="utf-8") as out:
        for event in events:
            out.write(json.dumps(event, separators=(",", ":"), sort_keys=True) + "\n")
