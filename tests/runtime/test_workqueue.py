"""The work queue's guarantees, in virtual time: dedup, one worker per key, re-add during
processing, backoff with jitter, a retry-only token bucket, lanes without starvation, the
retry budget, bounded depth and metrics; plus property tests over random operation mixes."""

from __future__ import annotations

import asyncio
import random
from collections import deque

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from keel.clock import ManualClock
from keel.runtime.workqueue import TokenBucket, WorkQueue, backoff_delay


def queue(clock: ManualClock, **options: object) -> WorkQueue:
    return WorkQueue(clock=clock, rng=random.Random(7), **options)  # type: ignore[arg-type]


def drain(q: WorkQueue) -> list[str]:
    """Hand out (and finish) every key that is ready now."""
    out = []
    while (key := q.get_nowait()) is not None:
        out.append(key)
        q.done(key)
    return out


def test_a_pending_key_is_queued_once() -> None:
    q = queue(ManualClock())
    assert q.add("ns/a") and q.add("ns/b") and q.add("ns/a")
    assert len(q) == 2
    assert drain(q) == ["ns/a", "ns/b"]
    assert q.metrics.adds == 2 and q.metrics.deduplicated == 1


def test_a_key_is_never_handed_to_two_workers_and_reruns_after_done() -> None:
    q = queue(ManualClock())
    q.add("a")
    assert q.get_nowait() == "a"
    q.add("a")  # changed while a worker has it
    q.add("a")
    assert q.get_nowait() is None  # not to a second worker
    assert len(q) == 1
    q.done("a")
    assert q.get_nowait() == "a"  # once more, after the first run
    q.done("a")
    assert q.get_nowait() is None


def test_backoff_doubles_from_5ms_to_the_cap_with_jitter() -> None:
    rng = random.Random(1)
    ceilings = [backoff_delay(n, 0.005, 300.0, 0.0, rng) for n in range(1, 20)]
    assert ceilings[:4] == [0.005, 0.01, 0.02, 0.04]
    assert ceilings[-1] == 300.0 and max(ceilings) == 300.0
    jittered = [backoff_delay(3, 0.005, 300.0, 0.5, rng) for _ in range(200)]
    assert all(0.01 <= d <= 0.02 for d in jittered)
    assert len(set(jittered)) > 100  # keys that failed together do not retry together
    assert backoff_delay(10_000, 0.005, 300.0, 0.0, rng) == 300.0  # no overflow


def test_a_retry_waits_for_its_backoff_in_virtual_time() -> None:
    clock = ManualClock()
    q = queue(clock, jitter=0.0)
    q.add("a")
    for expected in (0.005, 0.01, 0.02, 0.04):
        key = q.get_nowait()
        assert key == "a"
        q.add_rate_limited(key)
        q.done(key)
        clock.advance(expected * 0.99)
        assert q.get_nowait() is None
        clock.advance(expected * 0.02)
    assert q.get_nowait() == "a"
    assert q.retries("a") == 4
    q.forget("a")
    q.add_rate_limited("a")
    q.done("a")
    clock.advance(0.005)
    assert q.get_nowait() == "a"  # forgotten: the backoff started over


def test_fresh_adds_are_never_throttled() -> None:
    clock = ManualClock()
    q = queue(clock, retry_rate=10.0, retry_burst=5)
    for i in range(100_000):
        assert q.add(f"ns/k{i}")
    handed = drain(q)  # the clock never moves: no rate limit at all
    assert len(handed) == 100_000
    assert q.metrics.throttled == 0


def test_the_token_bucket_limits_only_retries() -> None:
    clock = ManualClock()
    q = queue(clock, retry_rate=10.0, retry_burst=5, jitter=0.0)
    keys = [f"k{i}" for i in range(20)]
    for key in keys:
        q.add(key)
    for key in drain(q):
        q.add_rate_limited(key)  # every one failed
    q.add("fresh")
    clock.advance(0.005)  # all backoffs are due
    assert sorted(drain(q)) == sorted([*keys[:5], "fresh"])  # burst of 5, fresh unthrottled
    assert q.get_nowait() is None
    handed = []
    for _ in range(15):
        clock.advance(0.1)  # one token per 0.1 s
        handed += drain(q)
        assert len(handed) <= 15
    assert sorted(handed) == sorted(keys[5:])
    assert q.metrics.throttled > 0


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    bucket = TokenBucket(rate=2.0, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.next_token_at(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) and not bucket.take(0.5)
    assert sum(bucket.take(100.0) for _ in range(10)) == 3


def test_high_lane_goes_first_and_low_is_not_starved() -> None:
    q = queue(ManualClock(), starvation_limit=4)
    q.add("low-1", "low")
    q.add("normal-1")
    q.add("high-1", "high")
    assert drain(q) == ["high-1", "normal-1", "low-1"]
    # A flood of high-priority work: low still gets one turn in every five.
    q.add("low-2", "low")
    order = []
    for i in range(20):
        q.add(f"high-{i + 2}", "high")
        key = q.get_nowait()
        assert key is not None
        order.append(key)
        q.done(key)
    assert "low-2" in order[:5]


def test_an_add_to_a_higher_lane_moves_a_pending_key_up() -> None:
    q = queue(ManualClock())
    q.add("a", "low")
    q.add("b")
    q.add("a", "high")
    assert drain(q) == ["a", "b"]


class Lifo(list[tuple[str, int]]):
    """A lane that hands out the newest key first (any `ReadyLane` will do)."""

    def popleft(self) -> tuple[str, int]:
        return self.pop()


def test_a_lane_may_have_its_own_order_and_the_others_stay_fifo() -> None:
    q = queue(ManualClock(), ready_lane=lambda lane: Lifo() if lane == "normal" else deque())
    for key in ("ns/a", "ns/b", "ns/c"):
        q.add(key)
        q.add(f"{key}-urgent", "high")
    q.add("ns/b")  # dedup holds whatever the order
    q.add("ns/a", "high")  # moved up: its stale entry in the normal lane is skipped
    assert drain(q) == ["ns/a-urgent", "ns/b-urgent", "ns/c-urgent", "ns/a", "ns/c", "ns/b"]


def test_unknown_lane_is_rejected() -> None:
    q = queue(ManualClock())
    with pytest.raises(ValueError, match="unknown lane"):
        q.add("a", "urgent")


def test_a_sick_key_is_parked_after_its_retry_budget_and_others_flow() -> None:
    clock = ManualClock()
    q = queue(clock, retry_budget=3, max_delay=300.0)
    q.add("sick")
    attempts = 0
    for _ in range(10):
        clock.advance(1.0)
        for key in drain(q):
            attempts += 1
            q.add_rate_limited(key)
    assert attempts == 4  # the first run plus 3 retries, then it is parked
    assert q.metrics.parked == 1
    q.add("healthy")
    assert drain(q) == ["healthy"]
    clock.advance(300.0)
    assert drain(q) == ["sick"]  # a parked key is retried at the max delay


def test_a_fresh_add_supersedes_a_delayed_retry() -> None:
    clock = ManualClock()
    q = queue(clock)
    q.add("a")
    q.add_rate_limited(q.get_nowait() or "")
    q.done("a")
    for _ in range(15):  # a long backoff
        q.add_rate_limited("a")
    q.add("a")  # the object changed: reconcile it now
    assert drain(q) == ["a"]
    clock.advance(400.0)
    assert drain(q) == []  # and the retry does not run it a second time


def test_add_after_keeps_the_earliest_request() -> None:
    clock = ManualClock()
    q = queue(clock)
    q.add_after("a", 10.0)
    q.add_after("a", 5.0)
    q.add_after("a", 20.0)
    assert len(q) == 1
    clock.advance(4.9)
    assert drain(q) == []
    clock.advance(0.2)
    assert drain(q) == ["a"]
    clock.advance(30.0)
    assert drain(q) == []


def test_depth_is_bounded_and_drops_are_counted() -> None:
    clock = ManualClock()
    q = queue(clock, max_depth=3)
    assert q.add("a") and q.add("b") and q.add("c")
    assert not q.add("d")
    assert q.add("a")  # already pending: no new room needed
    assert q.metrics.dropped == 1 and q.metrics.depth == 3
    key = q.get_nowait()
    assert key == "a"
    q.add_rate_limited(key)  # retries are never dropped, even when full
    q.done(key)
    assert len(q) == 3 and q.metrics.depth == 3
    clock.advance(1.0)
    assert sorted(drain(q)) == ["a", "b", "c"]
    assert q.add("d")


def test_metrics_count_adds_retries_and_latency() -> None:
    clock = ManualClock()
    q = queue(clock)
    q.add("a")
    q.add("b")
    clock.advance(2.0)
    key = q.get_nowait()
    assert key == "a"
    clock.advance(0.5)
    q.add_rate_limited(key)
    q.done(key)
    m = q.metrics
    assert (m.adds, m.retries, m.depth, m.processing) == (2, 1, 2, 0)
    assert m.queue_seconds.count == 1 and m.queue_seconds.sum == pytest.approx(2.0)
    assert m.work_seconds.count == 1 and m.work_seconds.sum == pytest.approx(0.5)
    assert m.work_seconds.quantile(0.5) == 0.5


def test_drop_all_forgets_pending_work_but_not_keys_in_flight() -> None:
    clock = ManualClock()
    q = queue(clock)
    for key in ("a", "b", "c"):
        q.add(key)
    assert q.get_nowait() == "a"
    q.add_after("d", 1.0)
    q.add("a")
    q.drop_all()
    assert len(q) == 0
    clock.advance(2.0)
    assert q.get_nowait() is None
    q.add("a")  # the shard came back while the abandoned run of "a" is still going
    assert q.get_nowait() is None
    q.done("a")
    assert drain(q) == ["a"]


async def test_get_waits_for_an_add_and_for_a_delay_in_virtual_time() -> None:
    clock = ManualClock()
    q = queue(clock)
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    assert not getter.done()
    q.add("a")
    assert await asyncio.wait_for(getter, 5) == "a"
    q.done("a")

    getter = asyncio.create_task(q.get())
    q.add_after("b", 30.0)
    for _ in range(10):
        await asyncio.sleep(0)
    assert not getter.done()
    clock.advance(30.0)
    assert await asyncio.wait_for(getter, 5) == "b"


async def test_shutdown_releases_waiting_getters() -> None:
    q = queue(ManualClock())
    getters = [asyncio.create_task(q.get()) for _ in range(3)]
    await asyncio.sleep(0)
    q.shutdown()
    assert await asyncio.wait_for(asyncio.gather(*getters), 5) == [None, None, None]
    assert not q.add("a")
    assert await q.get() is None


async def test_concurrent_workers_never_share_a_key_and_finish_everything() -> None:
    clock = ManualClock()
    q = queue(clock)
    rng = random.Random(3)
    in_flight: set[str] = set()
    runs: dict[str, int] = {}
    failures_left = {f"k{i}": rng.randrange(3) for i in range(200)}

    async def worker() -> None:
        while (key := await q.get()) is not None:
            assert key not in in_flight
            in_flight.add(key)
            for _ in range(rng.randrange(3)):
                await asyncio.sleep(0)
            if rng.random() < 0.2:
                q.add(f"k{rng.randrange(200)}")  # events keep arriving
            in_flight.discard(key)
            runs[key] = runs.get(key, 0) + 1
            if failures_left[key]:
                failures_left[key] -= 1
                q.add_rate_limited(key)
            else:
                q.forget(key)
            q.done(key)

    workers = [asyncio.create_task(worker()) for _ in range(8)]
    for key in failures_left:
        q.add(key)
    for _ in range(2000):  # move virtual time until every key has run through
        await asyncio.sleep(0)
        if len(q) == 0 and not q.metrics.processing:
            break
        clock.advance(0.01)
    q.shutdown()
    await asyncio.wait_for(asyncio.gather(*workers), 5)
    assert set(runs) == set(failures_left)
    assert not any(failures_left.values())


# ---------------------------------------------------------------------- properties

KEYS = st.sampled_from([f"k{i}" for i in range(6)])
OPS = st.one_of(
    st.tuples(st.just("add"), KEYS, st.sampled_from(["high", "normal", "low"])),
    st.tuples(st.just("add_after"), KEYS, st.floats(0, 5)),
    st.tuples(st.just("retry"), KEYS),
    st.tuples(st.just("forget"), KEYS),
    st.tuples(
        st.just("get"),
    ),
    st.tuples(st.just("done"), st.integers(0, 5)),
    st.tuples(st.just("advance"), st.floats(0, 2)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(OPS, max_size=80), st.integers(1, 8))
def test_property_no_double_hand_out_and_every_added_key_runs(
    ops: list[tuple[object, ...]], max_depth: int
) -> None:
    clock = ManualClock()
    q = WorkQueue(
        clock=clock, rng=random.Random(0), retry_budget=3, max_delay=10.0, max_depth=max_depth
    )
    processing: list[str] = []
    owed: set[str] = set()  # keys that must be handed out (again) at some point

    def hand_out() -> None:
        key = q.get_nowait()
        if key is not None:
            assert key not in processing, f"{key} handed to a second worker"
            processing.append(key)
            owed.discard(key)

    for op in ops:
        match op:
            case ("add", key, lane):
                if q.add(str(key), str(lane)):
                    owed.add(str(key))
            case ("add_after", key, delay):
                q.add_after(str(key), float(delay))  # type: ignore[arg-type]
                owed.add(str(key))
            case ("retry", key):
                q.add_rate_limited(str(key))
                owed.add(str(key))
            case ("forget", key):
                q.forget(str(key))
            case ("get",):
                hand_out()
            case ("done", index):
                if processing:
                    q.done(processing.pop(int(index) % len(processing)))  # type: ignore[call-overload]
            case ("advance", seconds):
                clock.advance(float(seconds))  # type: ignore[arg-type]
        assert len(q) <= max(max_depth, 0) + len(owed)
        assert q.metrics.depth == len(q)

    for key in processing:
        q.done(key)
    clock.advance(60.0)  # past every backoff, parked retry and bucket refill
    drained = []
    while (key := q.get_nowait()) is not None:
        assert key not in drained, f"{key} handed out twice with no new add"
        drained.append(key)
        q.done(key)
    assert set(drained) == owed
    assert len(q) == 0
