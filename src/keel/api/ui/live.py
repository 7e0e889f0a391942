"""The consensus boundary, live: store writes per kind and verb over the last minute, and the
idle-writes counter. Pure bookkeeping over times the caller passes (no clock, no I/O); the
/ui stream (keel.api.ui) feeds it from the API server's WriteCounter and pushes snapshots.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any

# Writes of these kinds mean someone changed what the platform should be (a user, or a
# controller acting on a user's change). A minute without any of them is an idle minute, and
# every store write in an idle minute counts as an idle write: a steady platform makes none
# (node failures do, which is why it is shown rather than asserted).
DESIRED_KINDS = frozenset({"Deployment", "Revision", "Service", "Namespace", "Cluster"})
WINDOW = 60.0


@dataclass
class BoundaryWindow:
    """Writes in a sliding minute, and writes made in idle minutes since the start."""

    window: float = WINDOW
    recent: deque[tuple[float, str, str]] = field(default_factory=deque)
    idle_writes: int = 0
    idle_minutes: int = 0
    _minute: int | None = None
    _minute_writes: int = 0
    _minute_desired: bool = False
    last_write: float | None = None

    def _roll(self, now: float) -> None:
        """Close every minute that ended before `now`."""
        minute = math.floor(now / 60.0)
        if self._minute is None:
            self._minute = minute
            return
        while self._minute < minute:
            if not self._minute_desired:
                self.idle_minutes += 1
                self.idle_writes += self._minute_writes
            self._minute += 1
            self._minute_writes, self._minute_desired = 0, False
        while self.recent and self.recent[0][0] <= now - self.window:
            self.recent.popleft()

    def note(self, kind: str, verb: str, now: float) -> None:
        self._roll(now)
        self.recent.append((now, kind, verb))
        self._minute_writes += 1
        self._minute_desired = self._minute_desired or kind in DESIRED_KINDS
        self.last_write = now

    def per_minute(self, now: float) -> dict[str, dict[str, int]]:
        """kind -> verb -> writes within the last `window` seconds."""
        self._roll(now)
        rates: dict[str, dict[str, int]] = {}
        for _, kind, verb in self.recent:
            by_verb = rates.setdefault(kind, {})
            by_verb[verb] = by_verb.get(verb, 0) + 1
        return rates

    def snapshot(self, now: float, totals: dict[tuple[str, str], int]) -> dict[str, Any]:
        """What the boundary page shows, as JSON-ready data."""
        by_kind: dict[str, dict[str, int]] = {}
        for (kind, verb), count in totals.items():
            by_kind.setdefault(kind, {})[verb] = count
        return {
            "perMinute": self.per_minute(now),
            "totals": by_kind,
            "idleWrites": self.idle_writes,
            "idleMinutes": self.idle_minutes,
            "secondsSinceWrite": None if self.last_write is None else now - self.last_write,
        }
