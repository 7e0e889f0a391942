"""Virtual time for simulations: an asyncio event loop whose clock jumps forward whenever every
task is blocked, so sleeps, timeouts and `Clock`s run instantly and deterministically.

There is no real I/O in a simulation: the selector never reports a ready file descriptor, and
a wait with no timer pending is a deadlock (reported, not hung on).
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, TypeVar

__all__ = [
    "SimClock",
    "SimulationDeadlock",
    "SimulationRunaway",
    "VirtualEventLoop",
    "run_virtual",
]

T = TypeVar("T")

# Virtual time starts here rather than at 0, so code that subtracts durations from "now"
# never sees negative times.
EPOCH = 1000.0


class SimulationDeadlock(RuntimeError):
    """Every task waits, and nothing (no timer) can ever wake one of them."""


class SimulationRunaway(RuntimeError):
    """The loop iterated too often without virtual time passing (a busy loop), or virtual
    time ran past its limit (a wait for something that never happens, with timers ticking)."""


class _VirtualSelector(selectors.BaseSelector):
    """Registers file objects (the loop's self-pipe) but never reports them ready: a select
    with a timeout moves virtual time forward by that timeout instead of sleeping."""

    def __init__(self, loop_time: list[float], max_spins: int, max_time: float) -> None:
        self._time = loop_time
        self._limit = loop_time[0] + max_time
        self._keys: dict[Any, selectors.SelectorKey] = {}
        self._max_spins = max_spins
        self._spins = 0

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        key = selectors.SelectorKey(fileobj, _fd(fileobj), events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:
            raise SimulationDeadlock(
                "every task is blocked and no timer is pending: nothing can make progress"
            )
        if timeout > 0:
            self._time[0] += timeout
            self._spins = 0
            if self._time[0] > self._limit:
                raise SimulationRunaway(f"virtual time passed its limit ({self._limit:.0f} s)")
        else:
            self._spins += 1
            if self._spins > self._max_spins:
                raise SimulationRunaway(
                    f"{self._max_spins} loop iterations without virtual time passing"
                )
        return []

    def close(self) -> None:
        self._keys.clear()

    def get_map(self) -> Mapping[Any, selectors.SelectorKey]:
        return self._keys


def _fd(fileobj: Any) -> int:
    if isinstance(fileobj, int):
        return fileobj
    fileno: Callable[[], int] = fileobj.fileno
    return fileno()


class VirtualEventLoop(asyncio.SelectorEventLoop):
    """An event loop whose `time()` is virtual: it advances only when nothing is ready."""

    def __init__(
        self, *, start: float = EPOCH, max_spins: int = 1_000_000, max_time: float = 1e6
    ) -> None:
        self._virtual_now = [start]
        super().__init__(_VirtualSelector(self._virtual_now, max_spins, max_time))

    def time(self) -> float:
        return self._virtual_now[0]


class SimClock:
    """`keel.clock.Clock` in the running loop's (virtual) time.

    `gate`, when given, is awaited after every sleep: a paused process does not wake up
    until it is resumed, like a process under SIGSTOP.
    """

    def __init__(self, gate: Callable[[], Awaitable[object]] | None = None) -> None:
        self._gate = gate

    # Simulated wall-clock time: virtual seconds after a fixed instant (2026-01-01 UTC), so
    # timestamps in a trace are the same on every replay.
    WALL_EPOCH = 1_767_225_600.0

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def wall(self) -> float:
        return self.WALL_EPOCH + asyncio.get_running_loop().time() - EPOCH

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))
        if self._gate is not None:
            await self._gate()


def run_virtual(
    main: Callable[[], Coroutine[Any, Any, T]],
    *,
    start: float = EPOCH,
    max_spins: int = 1_000_000,
    max_time: float = 1e6,
) -> T:
    """Run `main()` to completion on a fresh virtual-time loop, then cancel what is left.

    `max_spins` loop iterations without time passing, or `max_time` virtual seconds, end a
    run that would never finish with `SimulationRunaway`.
    """
    loop = VirtualEventLoop(start=start, max_spins=max_spins, max_time=max_time)
    try:
        return loop.run_until_complete(main())
    finally:
        try:
            _cancel_all(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def _cancel_all(loop: asyncio.AbstractEventLoop) -> None:
    tasks = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in tasks:
        task.cancel()
    if tasks:
        loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
