"""The retry schedule (exponential, capped, jittered downwards; writes never repeated once they
may have reached the server), the watch cursor, and line reassembly of a watch stream."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keel.client import Backoff
from keel.client._backoff import may_retry_unavailable
from keel.client._transport import iter_lines
from keel.client._watch import WatchCursor


def test_backoff_ceiling_doubles_until_the_cap() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, factor=2.0, jitter=0.5)
    assert [backoff.ceiling(n) for n in range(6)] == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


def test_backoff_never_overflows_for_huge_attempt_numbers() -> None:
    assert Backoff(maximum=10.0).ceiling(100_000) == 10.0


@given(
    attempt=st.integers(min_value=0, max_value=200),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    seed=st.integers(),
)
def test_jittered_delay_stays_between_the_jitter_floor_and_the_ceiling(
    attempt: int, jitter: float, seed: int
) -> None:
    backoff = Backoff(initial=0.05, maximum=5.0, jitter=jitter)
    delay = backoff.delay(attempt, random.Random(seed))
    ceiling = backoff.ceiling(attempt)
    assert ceiling * (1 - jitter) - 1e-12 <= delay <= ceiling


def test_jitter_spreads_clients_that_retry_at_the_same_attempt() -> None:
    backoff = Backoff(initial=1.0, maximum=1.0, jitter=0.5)
    delays = {round(backoff.delay(0, random.Random(seed)), 6) for seed in range(50)}
    assert len(delays) > 40


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": 0.0}, {"initial": 2.0, "maximum": 1.0}, {"factor": 0.5}, {"jitter": 1.5}],
)
def test_backoff_rejects_nonsense_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="backoff"):
        Backoff(**kwargs)


@pytest.mark.parametrize(
    ("method", "sent", "retry"),
    [
        ("GET", True, True),
        ("GET", False, True),
        ("POST", False, True),
        ("POST", True, False),
        ("PUT", True, False),
        ("PATCH", True, False),
        ("DELETE", True, False),
    ],
)
def test_only_reads_or_unsent_writes_are_repeated(method: str, sent: bool, retry: bool) -> None:
    assert may_retry_unavailable(method, sent=sent) is retry


def test_watch_cursor_resumes_at_once_after_progress_and_backs_off_without() -> None:
    backoff = Backoff(initial=1.0, maximum=8.0, jitter=0.0)
    rng = random.Random(0)
    cursor = WatchCursor("5")
    cursor.connecting()
    cursor.observed("7")
    cursor.ended()
    assert (cursor.resource_version, cursor.delay(backoff, rng)) == ("7", 0.0)
    schedule = []
    for _ in range(5):
        cursor.connecting()
        cursor.ended()  # refused or dropped before any line
        schedule.append(cursor.delay(backoff, rng))
    assert schedule == [1.0, 2.0, 4.0, 8.0, 8.0]
    cursor.connecting()
    cursor.observed("")  # a line without a version still counts as progress
    assert cursor.delay(backoff, rng) == 0.0
    assert cursor.resource_version == "7"


def test_simultaneous_relists_after_410_are_spread_over_time() -> None:
    rng = random.Random(1)
    delays = []
    for _ in range(200):
        cursor = WatchCursor("5")
        cursor.connecting()
        cursor.observed("9")  # the connection had made progress: still no instant relist
        cursor.ended(expired=True)
        delays.append(cursor.delay(Backoff(), rng))
    assert all(0.0 <= d <= 1.0 for d in delays)
    assert max(delays) - min(delays) > 0.8  # spread over the window, not in lockstep
    assert sum(d < 0.1 for d in delays) < 40


def test_watch_cursor_relists_after_expiry_and_then_continues_from_the_list() -> None:
    cursor = WatchCursor("5")
    cursor.connecting()
    cursor.observed("9")
    cursor.ended(expired=True)
    assert cursor.relist_needed
    cursor.relisted("42")
    assert (cursor.relist_needed, cursor.resource_version) == (False, "42")


class Chunks:
    """A stream that hands out fixed chunks, then EOF."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks

    async def readany(self) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""


@given(
    lines=st.lists(
        st.binary(max_size=300).map(lambda b: b.replace(b"\n", b"") + b"\n"), max_size=20
    ),
    cuts=st.lists(st.integers(min_value=0, max_value=6000), max_size=30),
    tail=st.binary(max_size=20).map(lambda b: b.replace(b"\n", b"")),
)
def test_stream_lines_are_reassembled_whatever_the_chunk_boundaries(
    lines: list[bytes], cuts: list[int], tail: bytes
) -> None:
    data = b"".join(lines) + tail  # an unterminated tail (a cut stream) is not a line
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]

    async def collect() -> list[bytes]:
        return [line async for line in iter_lines(Chunks(chunks))]

    assert asyncio.run(collect()) == lines
