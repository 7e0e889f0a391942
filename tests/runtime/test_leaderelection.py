"""Leader election: the pure state machine exhaustively and with hypothesis, and the asyncio
elector against a real `keel apiserver` subprocess on sqlite (failover, fencing, step-down)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import ApiServer, wait_for_async

from keel.api.resources import Lease, Namespace, ObjectMeta
from keel.client import FencingTokenRejected, KeelClient
from keel.clock import ManualClock, SystemClock
from keel.runtime.leaderelection import (
    TRANSITIONS,
    Effect,
    Election,
    Event,
    Kind,
    LeaderElector,
    Phase,
    transition,
)

TTL = 2
MARGIN = 0.2
NS = "keel-system"


# --------------------------------------------------------------------------- pure core


def leader(sent_at: float = 0.0, token: int = 7) -> Election:
    state = Election("me", float(TTL), MARGIN)
    return transition(state, Event(Kind.ACQUIRED, sent_at=sent_at, token=token), sent_at)


def test_a_new_election_campaigns_first() -> None:
    state = Election("me", 2.0, 0.2)
    assert state.phase is Phase.CANDIDATE and not state.leading(0.0) and state.token is None


def test_acquiring_leads_until_ttl_minus_margin_after_the_create_was_sent() -> None:
    state = leader(sent_at=10.0)
    assert state.phase is Phase.LEADING and state.holder == "me"
    assert state.leading(11.79) and state.leader_token(11.79) == 7
    assert not state.leading(11.8) and state.leader_token(11.8) is None


def test_a_renewal_extends_from_its_send_time_not_its_answer() -> None:
    state = transition(leader(0.0), Event(Kind.RENEWED, sent_at=0.6), now=1.5)
    assert state.deadline == pytest.approx(0.6 + TTL - MARGIN)


def test_a_renewal_answered_after_the_deadline_does_not_revive_leadership() -> None:
    state = transition(leader(0.0), Event(Kind.RENEWED, sent_at=1.7), now=1.9)
    assert state.phase is Phase.FOLLOWING and not state.leading(1.9) and state.token is None


def test_an_older_renewal_never_moves_the_deadline_back() -> None:
    state = transition(leader(0.0), Event(Kind.RENEWED, sent_at=1.0), now=1.1)
    state = transition(state, Event(Kind.RENEWED, sent_at=0.5), now=1.2)
    assert state.deadline == pytest.approx(1.0 + TTL - MARGIN)


@pytest.mark.parametrize("kind", [Kind.RENEW_FAILED, Kind.DEADLINE_PASSED, Kind.FENCED_OUT])
def test_a_leader_steps_down_at_once(kind: Kind) -> None:
    state = transition(leader(0.0), Event(kind), now=0.1)
    assert state.phase is Phase.FOLLOWING
    assert not state.leading(0.1) and state.token is None and state.holder is None


def test_a_leader_whose_lease_vanished_campaigns_again() -> None:
    state = transition(leader(0.0), Event(Kind.LEASE_DELETED), now=0.1)
    assert state.phase is Phase.CANDIDATE and state.token is None


def test_a_conflict_makes_a_follower_that_campaigns_when_the_lease_is_deleted() -> None:
    state = Election("me", 2.0, 0.2)
    state = transition(state, Event(Kind.ACQUIRE_CONFLICT, holder="other"), now=0.0)
    assert state.phase is Phase.FOLLOWING and state.holder == "other"
    state = transition(state, Event(Kind.OBSERVED, holder="third"), now=0.5)
    assert state.holder == "third"
    state = transition(state, Event(Kind.LEASE_DELETED), now=1.0)
    assert state.phase is Phase.CANDIDATE and state.holder is None


def test_an_ambiguous_campaign_follows_instead_of_leading() -> None:
    state = transition(Election("me", 2.0, 0.2), Event(Kind.ACQUIRE_FAILED), now=0.0)
    assert state.phase is Phase.FOLLOWING and not state.leading(0.0)


@pytest.mark.parametrize("phase", list(Phase))
@pytest.mark.parametrize("kind", list(Kind))
def test_every_pair_follows_the_table(phase: Phase, kind: Kind) -> None:
    """Exhaustive: each (phase, event) lands where TRANSITIONS says, and only TAKE/EXTEND
    can make or keep a leader."""
    states = {
        Phase.CANDIDATE: Election("me", 2.0, 0.2),
        Phase.FOLLOWING: Election("me", 2.0, 0.2, phase=Phase.FOLLOWING, holder="x"),
        Phase.LEADING: leader(0.0),
    }
    event = Event(kind, sent_at=0.5, token=9, holder="x")
    after = transition(states[phase], event, now=0.5)
    expected_phase, effect = TRANSITIONS.get((phase, kind), (phase, Effect.NONE))
    assert after.phase is expected_phase
    if after.leading(0.5):
        assert effect in (Effect.TAKE, Effect.EXTEND, Effect.OBSERVE, Effect.NONE)
        assert after.token is not None and after.holder == "me"
    else:
        assert after.token is None or after.phase is not Phase.LEADING


def test_the_table_never_leads_without_the_store_saying_so() -> None:
    """Only ACQUIRED enters LEADING: no observation or deletion can make a leader."""
    into_leading = {
        (phase, kind)
        for (phase, kind), (to, _) in TRANSITIONS.items()
        if to is Phase.LEADING and phase is not Phase.LEADING
    }
    assert {kind for _, kind in into_leading} == {Kind.ACQUIRED}


events = st.builds(
    Event,
    kind=st.sampled_from(list(Kind)),
    sent_at=st.floats(0, 0),  # replaced by the step's own send time below
    token=st.integers(1, 100),
    holder=st.sampled_from(["me", "other", None]),
)


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(events, st.floats(0.0, 1.5), st.floats(0.0, 1.0)), max_size=40))
def test_no_sequence_leads_past_a_deadline_without_a_renewal(
    steps: list[tuple[Event, float, float]],
) -> None:
    """Whatever arrives, in any order, leadership at `now` needs an ACQUIRED or RENEWED sent
    less than ttl - margin ago (and sent while leading, for RENEWED)."""
    state = Election("me", float(TTL), MARGIN)
    now = 0.0
    last_grant: float | None = None  # send time of the last ACQUIRED/RENEWED that counted
    for drawn, gap, age in steps:
        now += gap
        sent = max(0.0, now - age)
        was_leading = state.leading(now)
        event = Event(drawn.kind, sent_at=sent, token=drawn.token, holder=drawn.holder)
        state = transition(state, event, now)
        if event.kind is Kind.ACQUIRED and not was_leading and state.phase is Phase.LEADING:
            last_grant = sent  # a create took the lease (a late duplicate while leading is
            # ignored by the table, so it must not move the model's deadline either)
        elif event.kind is Kind.RENEWED and was_leading:
            last_grant = max(last_grant or sent, sent)
        if state.leading(now):
            assert last_grant is not None and now < last_grant + TTL - MARGIN
            assert state.token is not None and state.holder == "me"
        for later in (now + 0.01, now + TTL):
            if state.leading(later):
                assert last_grant is not None and later < last_grant + TTL - MARGIN


def test_manual_clock_wakes_sleepers_only_when_time_passes_their_deadline() -> None:
    async def scenario() -> None:
        clock = ManualClock()
        woke: list[float] = []

        async def sleeper(seconds: float) -> None:
            await clock.sleep(seconds)
            woke.append(clock.now())

        tasks = [asyncio.create_task(sleeper(s)) for s in (1.0, 2.0)]
        await asyncio.sleep(0)
        clock.advance(0.5)
        await asyncio.sleep(0)
        assert woke == [] and clock.next_deadline() == 1.0
        clock.advance(1.0)
        await asyncio.gather(tasks[0])
        assert woke == [1.5]
        clock.advance(0.5)
        await asyncio.gather(tasks[1])
        assert woke == [1.5, 2.0]

    asyncio.run(scenario())


# --------------------------------------------------------------------------- real server


@pytest.fixture
async def client(apiserver: ApiServer) -> AsyncIterator[KeelClient]:
    async with apiserver.client("controller") as client:
        yield client


@contextlib.asynccontextmanager
async def running(*electors: LeaderElector) -> AsyncIterator[dict[str, asyncio.Task[None]]]:
    tasks = {e.identity: asyncio.create_task(e.run(), name=e.identity) for e in electors}
    try:
        yield tasks
    finally:
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)


def elector(client: KeelClient, name: str, identity: str, **options: Any) -> LeaderElector:
    rng = random.Random(identity)
    return LeaderElector(
        client, NS, name, identity, ttl=TTL, clock=SystemClock(), rng=rng, **options
    )


def lease_name() -> str:
    return f"le-{uuid.uuid4().hex[:8]}"


async def test_two_electors_never_lead_at_once_and_the_lease_names_the_leader(
    client: KeelClient,
) -> None:
    name = lease_name()
    a, b = elector(client, name, "a"), elector(client, name, "b")
    async with running(a, b):
        await wait_for_async("a leader", lambda: a.is_leader() or b.is_leader())
        # Watch them through several renewal rounds: exactly one leads the whole time.
        end = time.monotonic() + 2 * TTL
        while time.monotonic() < end:
            assert a.is_leader() + b.is_leader() == 1
            await asyncio.sleep(0.01)
        winner, loser = (a, b) if a.is_leader() else (b, a)
        lease = await client.get(Lease, name, namespace=NS)
        assert lease.spec.holder_identity == winner.identity
        assert lease.status.fencing_token == winner.token
        assert loser.holder == winner.identity and loser.token is None


async def test_a_standby_takes_over_within_ttl_and_a_half_with_a_higher_token(
    client: KeelClient,
) -> None:
    name = lease_name()
    first = elector(client, name, "first", release_on_exit=False)
    standby = elector(client, name, "standby")
    async with running(first) as tasks:
        old_token = await asyncio.wait_for(first.wait_leading(), 10)
        async with running(standby):
            await wait_for_async("the standby to see the leader", lambda: standby.holder == "first")
            # The leader dies: its task stops renewing, and nothing releases the lease.
            tasks["first"].cancel()
            died = time.monotonic()
            await asyncio.gather(tasks["first"], return_exceptions=True)
            new_token = await asyncio.wait_for(standby.wait_leading(), TTL + 5)
            failover = time.monotonic() - died
            print(f"failover after the leader's death: {failover:.3f} s")
            assert failover < TTL + 0.5
            assert new_token > old_token
            assert not first.is_leader()

            # The dead leader's token is refused by the store.
            with pytest.raises(FencingTokenRejected):
                async with client.fenced(NS, name, old_token) as stale:
                    await stale.create(
                        Namespace(kind="Namespace", metadata=ObjectMeta(name=lease_name()))
                    )
            # The new leader's token is accepted.
            async with client.fenced(NS, name, new_token) as fresh:
                created = await fresh.create(
                    Namespace(kind="Namespace", metadata=ObjectMeta(name=lease_name()))
                )
            assert created.metadata.uid


async def test_a_stopped_elector_releases_so_the_standby_leads_at_once(
    client: KeelClient,
) -> None:
    name = lease_name()
    first, standby = elector(client, name, "first"), elector(client, name, "standby")
    async with running(first) as tasks:
        await asyncio.wait_for(first.wait_leading(), 10)
        async with running(standby):
            await wait_for_async("the standby to see the leader", lambda: standby.holder == "first")
            tasks["first"].cancel()
            stopped = time.monotonic()
            await asyncio.gather(tasks["first"], return_exceptions=True)
            await asyncio.wait_for(standby.wait_leading(), TTL + 5)
            handover = time.monotonic() - stopped
            print(f"handover after a graceful stop: {handover:.3f} s")
            assert handover < 0.5


async def test_a_failed_renewal_steps_down_at_once_and_a_fenced_out_leader_too(
    client: KeelClient,
) -> None:
    name = lease_name()
    changes: list[int | None] = []
    a = elector(client, name, "a")
    a.on_change(changes.append)
    async with running(a):
        token = await asyncio.wait_for(a.wait_leading(), 10)
        assert changes == [token]
        # Someone takes the lease away: it is deleted and re-created by an intruder.
        await client.delete(Lease, name, namespace=NS)
        believed_until = a.deadline
        assert believed_until is not None
        intruder = await client.acquire_lease(NS, name, "intruder", TTL)
        await wait_for_async("a to step down", lambda: not a.is_leader(), timeout=TTL)
        stepped_down = time.monotonic()
        # Stepped down when its renewal got 409, before its belief would have run out.
        assert stepped_down < believed_until
        assert changes == [token, None]
        assert a.holder in (None, "intruder")
        await wait_for_async("a to observe the intruder", lambda: a.holder == "intruder")
        await client.release_lease(intruder)
        token2 = await asyncio.wait_for(a.wait_leading(), TTL + 5)
        assert token2 > intruder.status.fencing_token
        # A write rejected by the store makes it step down without waiting for a renewal.
        a.lost()
        assert not a.is_leader() and changes[-1] is None


async def test_a_leader_that_gets_no_answer_steps_down_at_its_deadline(
    tmp_path: Path,
) -> None:
    server = ApiServer(tmp_path / "apiserver").start()
    try:
        async with KeelClient(
            server.url, token=server.token(), timeout=30, ssl=server.ssl_context
        ) as client:
            a = elector(client, lease_name(), "a")
            async with running(a):
                await asyncio.wait_for(a.wait_leading(), 10)
                acquired = a.state.renewed_sent_at
                await wait_for_async("a renewal", lambda: a.state.renewed_sent_at != acquired)
                server.signal(signal.SIGSTOP)  # renewals now hang without an answer
                try:
                    deadline = a.deadline
                    assert deadline is not None
                    await wait_for_async("step-down", lambda: not a.is_leader(), timeout=TTL + 1)
                    # `is_leader()` turns false exactly at the deadline; the elector itself
                    # steps down (callbacks, phase) a moment later.
                    assert time.monotonic() >= deadline - 0.01
                    await wait_for_async(
                        "phase change", lambda: a.state.phase is not Phase.LEADING, timeout=1.0
                    )
                    assert time.monotonic() - deadline < 0.5
                finally:
                    server.signal(signal.SIGCONT)
    finally:
        server.stop()


# --------------------------------------------------------------------------- virtual time


class Pause:
    """A process pause (SIGSTOP) for the simulation: every call and sleep waits it out."""

    def __init__(self) -> None:
        self.running = asyncio.Event()
        self.running.set()

    async def __call__(self) -> None:
        await self.running.wait()


def simulate_pauses(seed: int, seconds: float = 30.0) -> list[float]:
    """Three electors on the real API server in memory, in virtual time; a seeded schedule pauses
    the current leader for random spans. Checks, every 10 ms of virtual time, that at most one
    believes it leads and that a believer holds the store's current lease and token. Returns
    the failover times (pause of the leader -> another acts)."""
    from keel.sim import SimClock, SimCluster, run_virtual

    async def main() -> list[float]:
        api = SimCluster(seed=seed)
        await api.start()
        rng = random.Random(seed)
        pauses = {name: Pause() for name in ("a", "b", "c")}
        electors = {
            name: LeaderElector(
                api.client(name, gate=pause), NS, "cm", name, ttl=TTL,
                clock=SimClock(pause), rng=random.Random(f"{seed}{name}"),
            )
            for name, pause in pauses.items()
        }  # fmt: skip
        tasks = [asyncio.create_task(e.run()) for e in electors.values()]
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        failovers: list[float] = []
        paused_at: tuple[str, float] | None = None
        next_pause = loop.time() + rng.uniform(1, 3)
        while loop.time() < end:
            leaders = [n for n, e in electors.items() if e.is_leader()]
            assert len(leaders) <= 1, leaders
            for name in leaders:
                stored = api.objects(Lease, NS)
                assert [(s.spec.holder_identity, s.status.fencing_token) for s in stored] == [
                    (name, electors[name].token)
                ]
            now = loop.time()
            if paused_at is not None and leaders and leaders[0] != paused_at[0]:
                failovers.append(now - paused_at[1])
                pauses[paused_at[0]].running.set()  # it wakes up to a lost lease
                paused_at = None
                next_pause = now + rng.uniform(1, 3)
            elif paused_at is None and leaders and now >= next_pause:
                pauses[leaders[0]].running.clear()
                paused_at = (leaders[0], now)
            await asyncio.sleep(0.01)
        for pause in pauses.values():
            pause.running.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return failovers

    return run_virtual(main)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_paused_leaders_never_overlap_and_standbys_act_within_ttl_and_a_half(seed: int) -> None:
    failovers = simulate_pauses(seed)
    assert len(failovers) >= 3
    assert max(failovers) < TTL + 0.5
