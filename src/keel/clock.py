"""The one clock: everything in Keel that waits, times out or stamps a time takes a `Clock`.

Code takes a `Clock` parameter instead of calling time/asyncio/datetime directly, so tests run
in virtual time (`ManualClock`, or the simulation's `keel.sim.SimClock`) and never sleep to
wait for a condition. It sits below every layer (the store's lease deadlines use it too).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from typing import Protocol

__all__ = ["Clock", "ManualClock", "SystemClock", "rfc3339"]


def rfc3339(wall: float) -> str:
    """A wall-clock time as Kubernetes writes timestamps: `2026-01-01T00:00:00Z`."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(wall))


class Clock(Protocol):
    """Monotonic time in seconds, the wall-clock time for timestamps, and a way to wait."""

    def now(self) -> float:
        """Monotonic seconds: deadlines, timeouts, durations."""
        ...

    def wall(self) -> float:
        """Seconds since the Unix epoch: timestamps that users read."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    """`time.monotonic` and `asyncio.sleep`."""

    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """Virtual time that moves only when a test calls `advance`.

    `sleep(d)` returns once `advance` has moved time to or past `now + d`; a non-positive
    sleep yields once to the event loop and returns.

    With `auto_advance`, a sleep moves time forward by its own length at once (and wakes
    the sleepers that became due): for code whose waits a test only wants to observe, such
    as a client's retry backoff. `slept` lists every sleep asked for, in order.
    """

    # The wall clock of a ManualClock starts at a fixed, readable instant (2026-01-01 UTC).
    WALL_EPOCH = 1_767_225_600.0

    def __init__(self, start: float = 0.0, *, auto_advance: bool = False) -> None:
        self._now = start
        self._start = start
        self.auto_advance = auto_advance
        self.slept: list[float] = []
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self._now

    def wall(self) -> float:
        return self.WALL_EPOCH + (self._now - self._start)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        if self.auto_advance:
            self.advance(seconds)
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._seq), future))
        await future

    @property
    def sleepers(self) -> int:
        """How many sleeps are pending (cancelled ones included until time passes them)."""
        return sum(1 for _, _, f in self._sleepers if not f.done())

    def next_deadline(self) -> float | None:
        """The earliest pending wake-up time, if any."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has been reached."""
        if seconds < 0:
            raise ValueError("time cannot go backwards")
        self.set(self._now + seconds)

    def set(self, now: float) -> None:
        """Move time to `now` (never backwards) and wake the sleepers that are due."""
        if now < self._now:
            raise ValueError("time cannot go backwards")
        self._now = now
        while self._sleepers and self._sleepers[0][0] <= now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
