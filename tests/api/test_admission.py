"""Per-client token buckets, in virtual time."""

from __future__ import annotations

import math

import pytest
from support import ManualClock

from keel.api.admission import TokenBucketAdmission


def test_a_burst_is_admitted_then_the_next_request_waits_one_token_interval() -> None:
    clock = ManualClock()
    admission = TokenBucketAdmission(rate=10, burst=5, clock=clock)
    assert [admission.admit("a") for _ in range(5)] == [0.0] * 5
    assert admission.admit("a") == pytest.approx(0.1)
    clock.advance(0.1)
    assert admission.admit("a") == 0.0
    assert admission.admit("a") == pytest.approx(0.1)


def test_retry_after_is_the_time_until_a_token_is_available() -> None:
    clock = ManualClock()
    admission = TokenBucketAdmission(rate=2, burst=1, clock=clock)
    assert admission.admit("a") == 0.0
    wait = admission.admit("a")
    assert wait == pytest.approx(0.5)
    assert math.ceil(wait) == 1  # what the server sends as Retry-After
    clock.advance(0.25)
    assert admission.admit("a") == pytest.approx(0.25)
    clock.advance(0.25)
    assert admission.admit("a") == 0.0


def test_refused_requests_do_not_consume_tokens() -> None:
    clock = ManualClock()
    admission = TokenBucketAdmission(rate=1, burst=1, clock=clock)
    admission.admit("a")
    for _ in range(100):
        assert admission.admit("a") > 0
    clock.advance(1.0)
    assert admission.admit("a") == 0.0


def test_sustained_rate_is_the_configured_rate() -> None:
    clock = ManualClock()
    admission = TokenBucketAdmission(rate=200, burst=400, clock=clock)
    admitted = 0
    for _ in range(10_000):  # 10 s of a client sending 1000 req/s
        clock.advance(0.001)
        admitted += admission.admit("busy") == 0.0
    assert admitted == pytest.approx(400 + 200 * 10, abs=2)


def test_one_busy_client_does_not_starve_another() -> None:
    clock = ManualClock()
    admission = TokenBucketAdmission(rate=10, burst=10, clock=clock)
    for _ in range(50):
        admission.admit("busy")
    assert admission.admit("busy") > 0
    assert admission.admit("quiet") == 0.0


def test_the_bucket_never_holds_more_than_burst() -> None:
    clock = ManualClock()
    admission = TokenBucketAdmission(rate=10, burst=3, clock=clock)
    admission.admit("a")
    clock.advance(3600)
    assert [admission.admit("a") == 0.0 for _ in range(4)] == [True, True, True, False]


def test_idle_clients_are_forgotten() -> None:
    clock = ManualClock()
    admission = TokenBucketAdmission(rate=100, burst=100, clock=clock)
    for i in range(1000):
        admission.admit(f"client-{i}")
    assert len(admission) == 1000
    clock.advance(1.0)  # every bucket is full again
    for _ in range(600):
        admission.admit("active")
        clock.advance(0.001)
    assert len(admission) <= 2


def test_tracked_clients_are_bounded_even_when_none_is_idle() -> None:
    clock = ManualClock()
    admission = TokenBucketAdmission(rate=1, burst=10, clock=clock, max_clients=100)
    for i in range(10_000):
        admission.admit(f"client-{i}")
    assert len(admission) == 100


def test_recently_seen_clients_survive_eviction() -> None:
    clock = ManualClock()
    admission = TokenBucketAdmission(rate=1, burst=2, clock=clock, max_clients=3)
    admission.admit("hot")
    admission.admit("hot")
    assert admission.admit("hot") > 0  # "hot" is empty
    for i in range(10):
        admission.admit(f"drive-by-{i}")
        admission.admit("hot")  # seen again: stays tracked, stays limited
    assert admission.admit("hot") > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"rate": 0}, "rate"), ({"burst": 0}, "burst"), ({"max_clients": 0}, "max_clients")],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TokenBucketAdmission(**kwargs)  # type: ignore[arg-type]


def test_defaults_are_200_per_second_with_burst_400() -> None:
    admission = TokenBucketAdmission(clock=ManualClock())
    assert (admission.rate, admission.burst) == (200.0, 400.0)
