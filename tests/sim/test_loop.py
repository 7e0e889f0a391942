"""Virtual time: sleeps, timeouts and SimClock take no real time, deadlocks and busy loops
are reported instead of hanging."""

from __future__ import annotations

import asyncio
import time

import pytest

from keel.clock import Clock
from keel.sim.loop import (
    EPOCH,
    SimClock,
    SimulationDeadlock,
    SimulationRunaway,
    run_virtual,
)


def test_an_hour_of_sleeping_takes_no_real_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        await asyncio.sleep(3600)
        return loop.time()

    started = time.monotonic()
    assert run_virtual(main) == EPOCH + 3600
    assert time.monotonic() - started < 1.0


def test_timeouts_fire_in_virtual_time() -> None:
    async def main() -> float:
        loop = asyncio.get_running_loop()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(5):
                await asyncio.sleep(60)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.Event().wait(), 2.5)
        return loop.time() - EPOCH

    assert run_virtual(main) == pytest.approx(7.5)


def test_concurrent_sleepers_wake_in_deadline_order() -> None:
    async def main() -> list[tuple[str, float]]:
        loop = asyncio.get_running_loop()
        woke: list[tuple[str, float]] = []

        async def sleeper(name: str, seconds: float) -> None:
            await asyncio.sleep(seconds)
            woke.append((name, loop.time() - EPOCH))

        await asyncio.gather(sleeper("c", 3), sleeper("a", 1), sleeper("b", 2))
        return woke

    assert run_virtual(main) == [("a", 1.0), ("b", 2.0), ("c", 3.0)]


def test_sim_clock_is_a_runtime_clock_in_virtual_time() -> None:
    async def main() -> tuple[float, float]:
        clock: Clock = SimClock()
        before = clock.now()
        await clock.sleep(2.5)
        await clock.sleep(-1)  # a negative sleep returns at once
        return before, clock.now()

    before, after = run_virtual(main)
    assert after - before == 2.5


def test_a_sim_clock_gate_holds_a_paused_sleeper() -> None:
    async def main() -> float:
        resumed = asyncio.Event()
        clock = SimClock(resumed.wait)
        loop = asyncio.get_running_loop()
        loop.call_later(10, resumed.set)
        await clock.sleep(1)  # due at 1 s, but the process is paused until 10 s
        return clock.now() - EPOCH

    assert run_virtual(main) == 10.0


def test_a_deadlock_is_reported_not_hung_on() -> None:
    async def main() -> None:
        await asyncio.Event().wait()

    with pytest.raises(SimulationDeadlock):
        run_virtual(main)


def test_a_busy_loop_is_reported() -> None:
    async def main() -> None:
        while True:  # noqa: ASYNC110 (the busy loop is the point)
            await asyncio.sleep(0)

    with pytest.raises(SimulationRunaway):
        run_virtual(main, max_spins=10_000)


def test_waiting_forever_with_timers_ticking_is_reported() -> None:
    async def main() -> None:
        while True:  # noqa: ASYNC110 (waiting forever is the point)
            await asyncio.sleep(1.0)

    with pytest.raises(SimulationRunaway):
        run_virtual(main, max_time=3600)
