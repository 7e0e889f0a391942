"""The controllers' work queue: deduplicated keys in priority lanes, one worker per key at a
time, delayed and rate-limited retries, bounded depth and metrics.

All decisions are synchronous and take time from the injected clock; only `get()` waits.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from keel.clock import Clock

__all__ = [
    "Histogram",
    "ReadyLane",
    "TokenBucket",
    "WorkQueue",
    "WorkQueueMetrics",
    "backoff_delay",
]

# Latency buckets (seconds): from an in-memory reconcile to a stuck one.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.0005,
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.5,
    1.0,
    5.0,
    10.0,
    60.0,
)


@dataclass
class Histogram:
    """Cumulative-free bucket counts (`counts[i]` observations <= `bounds[i]`, the last
    slot for larger ones), plus sum and count: enough to export as Prometheus data."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: list[int] = field(default_factory=list)
    sum: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (inf past the last bound)."""
        if not self.count:
            return 0.0
        target, seen = q * self.count, 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= target and n:
                return self.bounds[i] if i < len(self.bounds) else float("inf")
        return float("inf")


@dataclass
class WorkQueueMetrics:
    depth: int = 0  # keys pending: ready, re-added while processing, or delayed
    adds: int = 0  # add() calls that queued a key (not deduplicated ones)
    deduplicated: int = 0  # add() calls for a key that was already pending
    retries: int = 0  # add_rate_limited() calls
    dropped: int = 0  # add() calls refused because the queue was full
    parked: int = 0  # retries past the budget, delayed by max_delay
    throttled: int = 0  # retries that were due but waited for the retry bucket
    processing: int = 0  # keys handed out and not done yet
    queue_seconds: Histogram = field(default_factory=Histogram)  # add -> get
    work_seconds: Histogram = field(default_factory=Histogram)  # get -> done


def backoff_delay(
    failures: int, base: float, cap: float, jitter: float, rng: random.Random
) -> float:
    """Delay before retry number `failures` (1-based): `base * 2**(failures-1)` capped at
    `cap`, minus up to `jitter` of it, so keys that failed together spread out."""
    ceiling = cap if failures > 64 else min(cap, base * 2.0 ** (failures - 1))
    return ceiling * (1.0 - jitter * rng.random())


TIMER_SLACK = 1e-6


class TokenBucket:
    """`rate` tokens per second, at most `burst` saved up; starts full."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("token bucket: need rate > 0 and burst >= 1")
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self.tokens = min(self.burst, self.tokens + (now - self._at) * self.rate)
            self._at = now

    def take(self, now: float) -> bool:
        self._refill(now)
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def next_token_at(self, now: float) -> float:
        self._refill(now)
        return now if self.tokens >= 1.0 else now + (1.0 - self.tokens) / self.rate


class ReadyLane(Protocol):
    """The ready keys of one lane, as `(key, seq)` pairs (`seq` rises with every add, so it
    is the arrival order). A `deque` is the default: first in, first out. A controller may
    order a lane otherwise (the scheduler's fair lane, keel.scheduler.fairness); the queue
    still deduplicates, and skips entries whose key was moved or handed out since."""

    def append(self, item: tuple[str, int], /) -> None: ...

    def popleft(self) -> tuple[str, int]: ...

    def clear(self) -> None: ...

    def __len__(self) -> int: ...


@dataclass(slots=True)
class _Waiting:
    """A key's one delayed add: the earliest requested wins."""

    at: float
    seq: int
    lane: int
    retry: bool  # a rate-limited retry: must also get a token from the retry bucket


class WorkQueue:
    """Keys ("namespace/name" or "name") waiting to be reconciled.

    - `add` queues a key at once (never throttled); a pending key is not queued twice (a
      higher lane moves it up); a key being processed is queued again when `done` is called.
    - `get` hands out the next key, high lanes first; a lower lane that was passed over
      `starvation_limit` times in a row while it had work goes next, so it always progresses.
    - `add_after` delays an add; `add_rate_limited` retries a failed key after its own
      jittered exponential backoff, and only as fast as a token bucket shared by all retries
      allows. After `retry_budget` consecutive retries a key is parked at `max_delay`, so a
      sick object costs one attempt per `max_delay`. `forget` resets a key's retries.
    - A fresh `add` supersedes a pending delayed add of the same key.
    - With `max_depth` keys pending, `add` of a new key returns False (counted in
      `metrics.dropped`); the informer's periodic resync offers the key again later.
      Delayed adds and retries are never dropped.
    - `ready_lane(name)`, if given, makes the container of each lane's ready keys (FIFO
      otherwise): it decides the order within the lane (see `ReadyLane`).
    """

    def __init__(
        self,
        *,
        base_delay: float = 0.005,
        max_delay: float = 300.0,
        retry_rate: float = 50.0,
        retry_burst: int = 200,
        retry_budget: int = 20,
        max_depth: int = 1_000_000,
        lanes: Sequence[str] = ("high", "normal", "low"),
        starvation_limit: int = 10,
        jitter: float = 0.5,
        clock: Clock,
        rng: random.Random | None = None,
        ready_lane: Callable[[str], ReadyLane] | None = None,
    ) -> None:
        if not lanes or len(set(lanes)) != len(lanes):
            raise ValueError("work queue: lanes must be distinct names")
        if not 0 < base_delay <= max_delay:
            raise ValueError("work queue: need 0 < base_delay <= max_delay")
        if max_depth < 1 or retry_budget < 1 or starvation_limit < 1:
            raise ValueError("work queue: max_depth, retry_budget, starvation_limit must be >= 1")
        if not 0 <= jitter <= 1:
            raise ValueError("work queue: jitter must be within [0, 1]")
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.retry_budget = retry_budget
        self.max_depth = max_depth
        self.starvation_limit = starvation_limit
        self.jitter = jitter
        self.lanes = tuple(lanes)
        self._lane_index = {name: i for i, name in enumerate(self.lanes)}
        self._default_lane = self._lane_index.get("normal", len(self.lanes) // 2)
        self._clock = clock
        self._rng = rng or random.Random()
        self._bucket = TokenBucket(retry_rate, retry_burst, clock.now())
        self._seq = itertools.count()
        # Ready keys: per lane a FIFO (or the lane's own order) of (key, seq); an entry is
        # live only while `_queued[key]` holds the same seq (moving a key up a lane leaves a
        # dead entry).
        self._ready: list[ReadyLane] = [
            ready_lane(name) if ready_lane is not None else deque() for name in self.lanes
        ]
        self._queued: dict[str, tuple[int, int, float]] = {}  # key -> (lane, seq, added at)
        self._passed_over = [0] * len(self.lanes)
        self._processing: dict[str, tuple[int, float]] = {}  # key -> (lane, started at)
        self._dirty: dict[str, tuple[int, float]] = {}  # re-added while processing
        self._waiting: dict[str, _Waiting] = {}
        self._timers: list[tuple[float, int, str]] = []  # heap; live iff seq matches _waiting
        self._throttled: deque[tuple[str, int]] = deque()  # due retries waiting for a token
        self._failures: dict[str, int] = {}
        self._getters: deque[asyncio.Future[None]] = deque()
        self._shutdown = False
        self.metrics = WorkQueueMetrics()

    # ------------------------------------------------------------------ adding

    def _lane(self, lane: str | None) -> int:
        if lane is None:
            return self._default_lane
        try:
            return self._lane_index[lane]
        except KeyError:
            raise ValueError(f"work queue: unknown lane {lane!r} (lanes: {self.lanes})") from None

    def _depth(self) -> int:
        return len(self._queued) + len(self._dirty) + len(self._waiting)

    def add(self, key: str, lane: str = "normal") -> bool:
        """Queue `key` now. True if it is (or already was) pending; False if the queue is
        full or shut down."""
        if self._shutdown:
            return False
        index = self._lane(lane)
        waiting = self._waiting.pop(key, None)
        if waiting is not None:  # a fresh add supersedes the delayed one; same depth
            self._enqueue(key, min(index, waiting.lane), self._clock.now())
            self.metrics.adds += 1
            return True
        if key in self._queued or key in self._dirty:
            self._enqueue(key, index, 0.0)
            self.metrics.deduplicated += 1
            return True
        if self._depth() >= self.max_depth:
            self.metrics.dropped += 1
            return False
        self._enqueue(key, index, self._clock.now())
        self.metrics.adds += 1
        return True

    def _enqueue(self, key: str, lane: int, now: float) -> None:
        """Make `key` ready in `lane` (or move it up to it), or mark it for after `done`."""
        if key in self._processing:
            dirty = self._dirty.get(key)
            if dirty is None:
                self._dirty[key] = (lane, now)
            elif lane < dirty[0]:
                self._dirty[key] = (lane, dirty[1])
        else:
            queued = self._queued.get(key)
            if queued is None:
                seq = next(self._seq)
                self._queued[key] = (lane, seq, now)
                self._ready[lane].append((key, seq))
                self._wake_one()
            elif lane < queued[0]:
                seq = next(self._seq)
                self._queued[key] = (lane, seq, queued[2])
                self._ready[lane].append((key, seq))
        self.metrics.depth = self._depth()

    def add_after(self, key: str, delay: float, lane: str = "normal") -> None:
        """Queue `key` after `delay` seconds (at once if `delay <= 0`). If it is already
        pending sooner, nothing changes."""
        if self._shutdown:
            return
        if delay <= 0:
            self._force_add(key, self._lane(lane))
            return
        self._delay(key, self._lane(lane), self._clock.now() + delay, retry=False)

    def _force_add(self, key: str, lane: int) -> None:
        """An add that is never refused (it continues work that was already accepted)."""
        self._waiting.pop(key, None)
        self._enqueue(key, lane, self._clock.now())

    def _delay(self, key: str, lane: int, at: float, *, retry: bool) -> None:
        if key in self._queued or key in self._dirty:
            return  # it runs sooner anyway
        current = self._waiting.get(key)
        if current is not None and current.at <= at:
            return
        seq = next(self._seq)
        self._waiting[key] = _Waiting(at, seq, lane, retry)
        earliest = not self._timers or at < self._timers[0][0]
        heapq.heappush(self._timers, (at, seq, key))
        if len(self._timers) > 2 * len(self._waiting) + 1024:
            self._compact_timers()
        self.metrics.depth = self._depth()
        if earliest:
            self._wake_all()  # sleeping getters must wake up earlier than they planned

    def _compact_timers(self) -> None:
        self._timers = [(w.at, w.seq, k) for k, w in self._waiting.items()]
        heapq.heapify(self._timers)

    def add_rate_limited(self, key: str, lane: str | None = None) -> None:
        """Retry `key` after a failure: after its backoff, then a token from the retry
        bucket. Lane: the given one, else the lane it was handed out from."""
        if self._shutdown:
            return
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        self.metrics.retries += 1
        if failures > self.retry_budget:
            self.metrics.parked += 1
            delay = backoff_delay(1, self.max_delay, self.max_delay, self.jitter * 0.2, self._rng)
        else:
            delay = backoff_delay(failures, self.base_delay, self.max_delay, self.jitter, self._rng)
        if lane is not None:
            index = self._lane(lane)
        else:
            processing = self._processing.get(key)
            index = processing[0] if processing is not None else self._default_lane
        self._delay(key, index, self._clock.now() + delay, retry=True)

    def forget(self, key: str) -> None:
        """The key succeeded: its next failure starts the backoff from `base_delay` again."""
        self._failures.pop(key, None)

    def retries(self, key: str) -> int:
        """Consecutive failures of `key` since it was last forgotten."""
        return self._failures.get(key, 0)

    # ------------------------------------------------------------------ handing out

    def _promote(self, now: float) -> None:
        """Move delayed adds that are due into the ready lanes (retries need a token)."""
        timers, waiting = self._timers, self._waiting
        while timers and timers[0][0] <= now:
            _, seq, key = heapq.heappop(timers)
            entry = waiting.get(key)
            if entry is None or entry.seq != seq:
                continue
            if entry.retry:
                self._throttled.append((key, seq))
            else:
                del waiting[key]
                self._enqueue(key, entry.lane, now)
        throttled = self._throttled
        while throttled:
            key, seq = throttled[0]
            entry = waiting.get(key)
            if entry is None or entry.seq != seq:
                throttled.popleft()
                continue
            if not self._bucket.take(now):
                self.metrics.throttled += 1
                break
            throttled.popleft()
            del waiting[key]
            self._enqueue(key, entry.lane, now)

    def _next_lane(self) -> int | None:
        """The lane to serve: the highest with work, unless a lower one with work was
        passed over `starvation_limit` times (then the most passed-over such lane)."""
        best: int | None = None
        starving: int | None = None
        for lane, ready in enumerate(self._ready):
            if not ready:
                continue
            if best is None:
                best = lane
            if self._passed_over[lane] >= self.starvation_limit and (
                starving is None or self._passed_over[lane] > self._passed_over[starving]
            ):
                starving = lane
        return starving if starving is not None else best

    def get_nowait(self) -> str | None:
        """The next ready key (now marked processing), or None if none is ready."""
        if self._shutdown:
            return None
        now = self._clock.now()
        # Due within a microsecond is due: a wait shorter than the clock's float resolution
        # (1e-13 s at a clock of 1000 s) would end without time passing, and spin.
        horizon = now + TIMER_SLACK
        if (self._timers and self._timers[0][0] <= horizon) or self._throttled:
            self._promote(horizon)
        while True:
            lane = self._next_lane()
            if lane is None:
                return None
            key, seq = self._ready[lane].popleft()
            queued = self._queued.get(key)
            if queued is None or queued[1] != seq:
                continue  # moved to a higher lane, or handed out already
            break
        del self._queued[key]
        passed = self._passed_over
        passed[lane] = 0
        for other in range(lane + 1, len(passed)):
            if self._ready[other]:
                passed[other] += 1
        self._processing[key] = (lane, now)
        self.metrics.processing = len(self._processing)
        self.metrics.depth = self._depth()
        self.metrics.queue_seconds.observe(now - queued[2])
        return key

    def _next_wakeup(self) -> float | None:
        at: float | None = None
        if self._timers:
            at = self._timers[0][0]
        if self._throttled:
            token_at = self._bucket.next_token_at(self._clock.now())
            at = token_at if at is None else min(at, token_at)
        return at

    async def get(self) -> str | None:
        """Wait for the next key; None once the queue is shut down. The caller must call
        `done(key)` when it has finished with it."""
        while True:
            key = self.get_nowait()
            if key is not None or self._shutdown:
                return key
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._getters.append(waiter)
            wakeup = self._next_wakeup()
            try:
                if wakeup is None:
                    await waiter
                else:
                    await self._wait_until(waiter, wakeup)
            except BaseException:
                # Cancelled after being woken: hand the wakeup to another getter.
                if waiter.done() and not waiter.cancelled() and any(self._ready):
                    self._wake_one()
                raise
            finally:
                if not waiter.done():
                    waiter.cancel()
                    with contextlib.suppress(ValueError):
                        self._getters.remove(waiter)

    async def _wait_until(self, waiter: asyncio.Future[None], at: float) -> None:
        sleeper = asyncio.ensure_future(self._clock.sleep(max(0.0, at - self._clock.now())))
        try:
            await asyncio.wait((waiter, sleeper), return_when=asyncio.FIRST_COMPLETED)
        finally:
            sleeper.cancel()

    def _wake_one(self) -> None:
        getters = self._getters
        while getters:
            waiter = getters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _wake_all(self) -> None:
        getters, self._getters = self._getters, deque()
        for waiter in getters:
            if not waiter.done():
                waiter.set_result(None)

    def done(self, key: str) -> None:
        """The worker finished `key`; if it was added meanwhile, it is ready again now."""
        processing = self._processing.pop(key, None)
        if processing is None:
            return
        now = self._clock.now()
        self.metrics.work_seconds.observe(now - processing[1])
        self.metrics.processing = len(self._processing)
        dirty = self._dirty.pop(key, None)
        if dirty is not None and not self._shutdown:
            self._enqueue(key, dirty[0], dirty[1])
        self.metrics.depth = self._depth()

    # ------------------------------------------------------------------ lifecycle

    def drop_all(self) -> None:
        """Forget every pending key, delayed add and retry count (a shard was lost). Keys
        being processed stay marked until their worker calls `done`, so a key re-added
        meanwhile still waits for the abandoned run to finish."""
        for ready in self._ready:
            ready.clear()
        self._queued.clear()
        self._dirty.clear()
        self._waiting.clear()
        self._timers.clear()
        self._throttled.clear()
        self._failures.clear()
        self._passed_over = [0] * len(self.lanes)
        self.metrics.depth = 0

    def shutdown(self) -> None:
        """Stop handing out keys: waiting and later `get()` calls return None."""
        self._shutdown = True
        self._wake_all()

    @property
    def is_shutdown(self) -> bool:
        return self._shutdown

    def is_processing(self, key: str) -> bool:
        return key in self._processing

    def __len__(self) -> int:
        """Keys pending (ready, re-added while processing, or delayed); as `metrics.depth`."""
        return self._depth()

    def __contains__(self, key: object) -> bool:
        return key in self._queued or key in self._dirty or key in self._waiting
