"""Reading fields of history lines at the edge, for the checkers.

A checker trusts its values once these have returned; a missing or mistyped field is a
`HistoryError` naming the line (counted from 1 over the events, blank lines aside) and the
field, and saying what was expected.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from typing import Any

from keel.verify.history import Event, HistoryError

Process = str | int
"""A process id as workloads write it: a name or a number."""


def lines_of(history: Sequence[Event], workload: str) -> Iterator[tuple[int, Event]]:
    """(index, event) of every line for `workload`; lines naming another workload are
    skipped, so one combined history can be passed to every checker."""
    for index, event in enumerate(history):
        if not isinstance(event, dict):
            raise HistoryError(f"history line {index + 1}: expected a JSON object")
        if event.get("workload", workload) == workload:
            yield index, event


def _fail(index: int, name: str, problem: str) -> HistoryError:
    return HistoryError(f"history line {index + 1}: field {name!r} {problem}")


def _present(event: Event, index: int, name: str) -> Any:
    if name not in event:
        raise _fail(index, name, "is missing")
    return event[name]


def integer(event: Event, index: int, name: str, *, minimum: int | None = 0) -> int:
    value = _present(event, index, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(index, name, f"must be an integer, got {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise _fail(index, name, f"must be at least {minimum}, got {value}")
    return value


def optional_integer(event: Event, index: int, name: str) -> int | None:
    if event.get(name) is None:
        return None
    return integer(event, index, name)


def number(event: Event, index: int, name: str) -> float:
    value = _present(event, index, name)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise _fail(index, name, f"must be a non-negative number, got {value!r}")
    return float(value)


def text(event: Event, index: int, name: str) -> str:
    value = _present(event, index, name)
    if not isinstance(value, str) or not value:
        raise _fail(index, name, f"must be a non-empty string, got {value!r}")
    return value


def boolean(event: Event, index: int, name: str) -> bool:
    value = _present(event, index, name)
    if not isinstance(value, bool):
        raise _fail(index, name, f"must be true or false, got {value!r}")
    return value


def process(event: Event, index: int, name: str = "process") -> Process:
    value = _present(event, index, name)
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise _fail(index, name, f"must be a string or an integer, got {value!r}")
    return value if isinstance(value, str) else int(value)


def choice(event: Event, index: int, name: str, options: Collection[str]) -> str:
    value = _present(event, index, name)
    if value not in options:
        expected = ", ".join(repr(option) for option in options)
        raise _fail(index, name, f"must be one of {expected}, got {value!r}")
    return str(value)


def strings(event: Event, index: int, name: str, *, default: list[str] | None = None) -> list[str]:
    if default is not None and event.get(name) is None:
        return list(default)
    value = _present(event, index, name)
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise _fail(index, name, f"must be a list of strings, got {value!r}")
    return list(value)


def seconds(nanoseconds: int) -> str:
    """A monotonic time or a duration in nanoseconds, as a reader takes it in."""
    return f"{nanoseconds / 1e9:.3f}s"


def more(violations: int) -> str:
    """The tail of an explanation when more violations were found than the one shown."""
    if violations <= 1:
        return ""
    other = violations - 1
    return f" ({other:,} more violation{'s' if other != 1 else ''} found; this is the first.)"
