"""The one way tests wait: the condition's own value comes back, and a timeout names what was
awaited and what was last seen, so a failing test says why."""

from __future__ import annotations

import asyncio

import pytest

from support import wait_for, wait_for_async


def test_wait_for_returns_the_first_truthy_value_of_the_condition() -> None:
    values = iter([None, 0, [], {"ready": True}])
    assert wait_for("a ready object", lambda: next(values)) == {"ready": True}


def test_a_timeout_names_what_was_awaited_and_the_last_value_seen() -> None:
    with pytest.raises(AssertionError, match=r"waiting for 3 nodes \(last value: \[\]\)"):
        wait_for("3 nodes", lambda: [], timeout=0.05)


def test_errors_of_the_condition_are_not_retried() -> None:
    def broken() -> bool:
        raise LookupError("no such node")

    with pytest.raises(LookupError):
        wait_for("a node", broken)


async def test_wait_for_async_takes_sync_and_async_conditions() -> None:
    polls = 0

    async def third_time() -> str | None:
        nonlocal polls
        polls += 1
        return "lucky" if polls == 3 else None

    assert await wait_for_async("the third poll", third_time) == "lucky"
    assert await wait_for_async("a sync condition", lambda: polls) == 3
    with pytest.raises(AssertionError, match="waiting for never"):
        await wait_for_async("never", lambda: None, timeout=0.05)


def test_wait_for_async_runs_in_the_loops_time_so_in_virtual_time_under_simulation() -> None:
    from keel.sim import run_virtual

    async def main() -> float:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(AssertionError, match="an hour"):
            await wait_for_async("an hour", lambda: False, timeout=3600, interval=60)
        return loop.time() - started

    assert run_virtual(main) >= 3600  # an hour of virtual time, in a moment of real time
