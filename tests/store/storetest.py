"""Helpers for store tests (and the store conformance suite): collect watch events, and wait
for a condition on them with a deadline (woken by each batch, not by polling)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from keel.store import Event, Store, WatchBatch


class WatchCollector:
    """Runs a watch in a task and records every batch, so tests can wait for events."""

    def __init__(
        self, store: Store, prefix: bytes, start_revision: int, progress_notify: bool = False
    ) -> None:
        self.batches: list[WatchBatch] = []
        self.error: BaseException | None = None
        self._changed = asyncio.Event()
        self._iterator: AsyncIterator[WatchBatch] = store.watch(
            prefix, start_revision=start_revision, progress_notify=progress_notify
        )
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for batch in self._iterator:
                self.batches.append(batch)
                self._changed.set()
        except Exception as exc:  # recorded for the test to assert on
            self.error = exc
            self._changed.set()

    @property
    def events(self) -> list[Event]:
        return [event for batch in self.batches for event in batch.events]

    async def wait_for(
        self, what: str, condition: Callable[[], object], *, timeout: float = 10.0
    ) -> None:
        """Wait until `condition()` holds, checking after every batch; fail after `timeout`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not condition():
            if self.error is not None:
                raise self.error
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what} "
                    f"(got {len(self.events)} events in {len(self.batches)} batches)"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    async def wait_events(self, count: int, timeout: float = 10.0) -> list[Event]:
        await self.wait_for(f"{count} events", lambda: len(self.events) >= count, timeout=timeout)
        return self.events

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
