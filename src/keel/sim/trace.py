"""The replay record of a simulation: every API call, fault and process event, in order, each
stamped with virtual time. Two runs of one seed must produce equal traces.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["Trace"]


@dataclass
class Trace:
    """An append-only list of `"{time:.6f} {source}: {text}"` lines."""

    lines: list[str] = field(default_factory=list)
    limit: int = 2_000_000  # a runaway simulation must not eat the machine's memory

    def record(self, now: float, source: str, text: str) -> None:
        if len(self.lines) < self.limit:
            self.lines.append(f"{now:.6f} {source}: {text}")

    def __len__(self) -> int:
        return len(self.lines)

    def tail(self, count: int = 40) -> str:
        """The last lines, for a failure message."""
        return "\n".join(self.lines[-count:])
