"""Waiting for a condition with a deadline, never for a fixed time: one `wait_for(what,
condition)` for sync tests and one `wait_for_async` for async ones, same argument order."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0
# Polls start fast and back off: a condition that holds soon is seen at once, and a long wait
# does not keep a shared machine busy.
_FIRST_DELAY = 0.005
_MAX_DELAY = 0.05
# wait_for_async first lets the event loop run this many times without sleeping, so conditions
# about in-loop progress (e.g. in virtual time) are seen without real time passing.
_SPINS = 50


def _timed_out(what: str, timeout: float, last: object) -> AssertionError:
    return AssertionError(f"timed out after {timeout}s waiting for {what} (last value: {last!r})")


def wait_for(what: str, condition: Callable[[], T], *, timeout: float = DEFAULT_TIMEOUT) -> T:
    """Poll `condition` until it returns something truthy, and return that.

    After `timeout` seconds, fail with an AssertionError naming `what` and the last value
    seen. Exceptions from `condition` propagate at once.
    """
    deadline = time.monotonic() + timeout
    delay = _FIRST_DELAY
    while True:
        last = condition()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise _timed_out(what, timeout, last)
        time.sleep(delay)  # polling for the condition, with a deadline
        delay = min(delay * 2, _MAX_DELAY)


async def wait_for_async(
    what: str,
    condition: Callable[[], T | Awaitable[T]],
    *,
    timeout: float = DEFAULT_TIMEOUT,
    interval: float | None = None,
) -> T:
    """`wait_for` inside an event loop: `condition` may be sync or async (a coroutine
    function, or a lambda returning an awaitable), and other tasks run between polls.

    Time is the running loop's: real time normally, virtual time under `run_virtual`, where
    `timeout` and `interval` are virtual seconds. By default polls start by only yielding to
    the loop and then back off; a fixed `interval` suits conditions that cost a request.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    delay = _FIRST_DELAY
    spins = 0
    while True:
        result = condition()
        last = cast(T, await result) if inspect.isawaitable(result) else cast(T, result)
        if last:
            return last
        if loop.time() >= deadline:
            raise _timed_out(what, timeout, last)
        if interval is not None:
            await asyncio.sleep(interval)
        elif spins < _SPINS:
            spins += 1
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(delay)  # polling for the condition, with a deadline
            delay = min(delay * 2, _MAX_DELAY)
