"""Periodic store compaction by the API server: sample the store revision every `interval`
and compact at the newest sample at least `retention` old, so that much history (watch
resumes, reads at a revision) always survives. The choice is a pure function."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

from keel.api.registry import REGISTRY_PREFIX
from keel.clock import Clock, SystemClock
from keel.store import CompactedError, FutureRevisionError, Store, StoreError

log = logging.getLogger(__name__)

Sample = tuple[float, int]  # (time, store revision then)


def choose_compaction(samples: Sequence[Sample], now: float, retention: float) -> int | None:
    """The newest revision sampled at least `retention` seconds before `now`: compacting
    there keeps every revision since that sample, i.e. at least `retention` of history.
    None when no sample is old enough yet."""
    best: int | None = None
    for at, revision in samples:
        if now - at >= retention and (best is None or revision > best):
            best = revision
    return best


class Compactor:
    """Runs `tick()` every `interval` seconds (`start`/`stop`), or drive `tick()` yourself.
    `on_compact(revision)` is told every compaction the store has, ours or another's."""

    def __init__(
        self,
        store: Store,
        interval: float = 60.0,
        retention: float = 300.0,
        clock: Clock | None = None,
        *,
        on_compact: Callable[[int], None] | None = None,
    ) -> None:
        if retention < 0 or interval <= 0:
            raise ValueError("compactor: interval must be > 0 and retention >= 0")
        self._store = store
        self.interval = interval
        self.retention = retention
        self._clock: Clock = clock or SystemClock()
        self._on_compact = on_compact
        self.samples: list[Sample] = []
        self.compacted = 0  # the store's compaction as far as we know
        self.compactions = 0  # ones we did
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> int | None:
        """Sample the revision and compact if a sample is old enough; returns the revision
        compacted at by this call, if any. Store outages are logged and skipped."""
        now = self._clock.now()
        try:
            revision = (await self._store.range(REGISTRY_PREFIX, limit=1)).revision
        except StoreError as exc:
            log.warning("compactor: cannot read the store revision (%s); will retry", exc)
            return None
        self.samples.append((now, revision))
        target = choose_compaction(self.samples, now, self.retention)
        if target is None:
            return None
        # Samples older than the chosen one can never be chosen again.
        self.samples = [s for s in self.samples if s[1] >= target]
        if target <= self.compacted:
            return None
        try:
            await self._store.compact(target)
        except CompactedError as exc:
            # Another API server compacted at or past it already: that is the goal met.
            self._note(exc.compact_revision)
            return None
        except FutureRevisionError as exc:
            # A fresh store after a restore can be behind our samples: start over.
            log.warning("compactor: %s; dropping samples", exc)
            self.samples.clear()
            return None
        except StoreError as exc:
            log.warning("compactor: compaction at %d failed (%s); will retry", target, exc)
            return None
        self.compactions += 1
        self._note(target)
        log.info("compactor: compacted the store at revision %d", target)
        return target

    def _note(self, revision: int) -> None:
        self.compacted = max(self.compacted, revision)
        if self._on_compact is not None:
            self._on_compact(self.compacted)

    async def run(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # a bug must not silently end compaction for good
                log.exception("compactor: tick failed")
            await self._clock.sleep(self.interval)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="keel-compactor")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
