"""Leader election on a Lease: campaign, renew every TTL/3, step down the moment leadership is
in doubt. `transition` is the pure, table-driven core; `LeaderElector` is its asyncio shell.

Leadership is believed only until `sent + ttl - safety_margin`, counted from when the last
successful renewal was *sent*; the store's fencing token stops a leader that is wrong anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import random
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from keel.api.resources import Lease
from keel.client import AlreadyExists, Backoff, KeelClient, KeelClientError, NotFound
from keel.clock import Clock

__all__ = [
    "TRANSITIONS",
    "Effect",
    "Election",
    "Event",
    "Kind",
    "LeaderElector",
    "Phase",
    "transition",
]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Phase(enum.Enum):
    CANDIDATE = "candidate"  # about to try creating the Lease
    FOLLOWING = "following"  # someone else holds it (or might): watch it, wait for DELETED
    LEADING = "leading"  # we hold it, as long as `now < deadline`


class Kind(enum.Enum):
    ACQUIRED = "acquired"  # our create of the Lease succeeded
    ACQUIRE_CONFLICT = "acquire_conflict"  # AlreadyExists: someone holds it
    ACQUIRE_FAILED = "acquire_failed"  # no answer / server error: try again after a pause
    OBSERVED = "observed"  # a follower saw the Lease and its holder
    RENEWED = "renewed"  # a renewal succeeded
    RENEW_FAILED = "renew_failed"  # 409, 404, unavailable, or no answer before the deadline
    DEADLINE_PASSED = "deadline_passed"  # the belief ran out without a successful renewal
    LEASE_DELETED = "lease_deleted"  # the Lease is gone (expired, released, or absent)
    FENCED_OUT = "fenced_out"  # a write of ours was rejected with FencingTokenRejected


class Effect(enum.Enum):
    NONE = "none"  # ignore the event (stale or irrelevant in this phase)
    TAKE = "take"  # we hold the lease: record token and the send time of the create
    EXTEND = "extend"  # renewal succeeded: move the deadline from its send time
    DROP = "drop"  # forget token and deadline: we are not the leader
    VACATE = "vacate"  # the Lease is gone: nobody holds it
    OBSERVE = "observe"  # remember who holds it


# (phase, event) -> (next phase, effect). Pairs that are absent keep the phase and do nothing.
TRANSITIONS: dict[tuple[Phase, Kind], tuple[Phase, Effect]] = {
    # Campaigning: the store decides by create-if-absent.
    (Phase.CANDIDATE, Kind.ACQUIRED): (Phase.LEADING, Effect.TAKE),
    (Phase.CANDIDATE, Kind.ACQUIRE_CONFLICT): (Phase.FOLLOWING, Effect.OBSERVE),
    # An ambiguous create may have acquired it: following is safe either way (an orphan
    # lease of ours expires after one TTL and we see it go).
    (Phase.CANDIDATE, Kind.ACQUIRE_FAILED): (Phase.FOLLOWING, Effect.DROP),
    (Phase.CANDIDATE, Kind.LEASE_DELETED): (Phase.CANDIDATE, Effect.NONE),
    # Following: campaign as soon as the Lease is gone.
    (Phase.FOLLOWING, Kind.OBSERVED): (Phase.FOLLOWING, Effect.OBSERVE),
    (Phase.FOLLOWING, Kind.ACQUIRE_CONFLICT): (Phase.FOLLOWING, Effect.OBSERVE),
    (Phase.FOLLOWING, Kind.LEASE_DELETED): (Phase.CANDIDATE, Effect.VACATE),
    # A create answered late still made us the holder: the store granted it.
    (Phase.FOLLOWING, Kind.ACQUIRED): (Phase.LEADING, Effect.TAKE),
    # Leading: only a successful renewal sent before the deadline keeps us here.
    (Phase.LEADING, Kind.RENEWED): (Phase.LEADING, Effect.EXTEND),
    (Phase.LEADING, Kind.RENEW_FAILED): (Phase.FOLLOWING, Effect.DROP),
    (Phase.LEADING, Kind.DEADLINE_PASSED): (Phase.FOLLOWING, Effect.DROP),
    (Phase.LEADING, Kind.FENCED_OUT): (Phase.FOLLOWING, Effect.DROP),
    # Our own lease vanished (we were paused past its TTL): nobody holds it, run again.
    (Phase.LEADING, Kind.LEASE_DELETED): (Phase.CANDIDATE, Effect.VACATE),
}


@dataclass(frozen=True, slots=True)
class Event:
    kind: Kind
    sent_at: float | None = None  # ACQUIRED / RENEWED: when the request was sent
    token: int | None = None  # ACQUIRED: the Lease's fencing token
    holder: str | None = None  # ACQUIRED / ACQUIRE_CONFLICT / OBSERVED


@dataclass(frozen=True, slots=True)
class Election:
    """What one replica believes about one Lease."""

    identity: str
    ttl: float
    safety_margin: float
    phase: Phase = Phase.CANDIDATE
    token: int | None = None
    holder: str | None = None
    renewed_sent_at: float | None = None  # send time of the last successful acquire/renew

    @property
    def deadline(self) -> float | None:
        """Until when leadership may be believed (None when not leading)."""
        if self.phase is not Phase.LEADING or self.renewed_sent_at is None:
            return None
        return self.renewed_sent_at + self.ttl - self.safety_margin

    def leading(self, now: float) -> bool:
        deadline = self.deadline
        return deadline is not None and now < deadline

    def leader_token(self, now: float) -> int | None:
        return self.token if self.leading(now) else None


def transition(state: Election, event: Event, now: float) -> Election:
    """The state after `event` at time `now`.

    A leader whose deadline has passed is first stepped down (as if DEADLINE_PASSED had been
    delivered on time), so no event can extend a belief that had already run out.
    """
    if state.phase is Phase.LEADING and not state.leading(now):
        state = _apply(state, Event(Kind.DEADLINE_PASSED))
    return _apply(state, event)


def _apply(state: Election, event: Event) -> Election:
    phase, effect = TRANSITIONS.get((state.phase, event.kind), (state.phase, Effect.NONE))
    return _EFFECTS[effect](replace(state, phase=phase), event)


def _none(state: Election, event: Event) -> Election:
    return state


def _take(state: Election, event: Event) -> Election:
    if event.sent_at is None or event.token is None:
        raise ValueError("ACQUIRED needs sent_at and token")
    return replace(
        state,
        token=event.token,
        holder=state.identity,
        renewed_sent_at=event.sent_at,
    )


def _extend(state: Election, event: Event) -> Election:
    if event.sent_at is None:
        raise ValueError("RENEWED needs sent_at")
    previous = state.renewed_sent_at if state.renewed_sent_at is not None else event.sent_at
    return replace(state, renewed_sent_at=max(previous, event.sent_at))


def _drop(state: Election, event: Event) -> Election:
    holder = None if state.holder == state.identity else state.holder
    return replace(state, token=None, renewed_sent_at=None, holder=holder)


def _vacate(state: Election, event: Event) -> Election:
    return replace(state, token=None, renewed_sent_at=None, holder=None)


def _observe(state: Election, event: Event) -> Election:
    return replace(state, holder=event.holder)


_EFFECTS: dict[Effect, Callable[[Election, Event], Election]] = {
    Effect.NONE: _none,
    Effect.TAKE: _take,
    Effect.EXTEND: _extend,
    Effect.DROP: _drop,
    Effect.VACATE: _vacate,
    Effect.OBSERVE: _observe,
}


# --------------------------------------------------------------------------- the shell


async def first_of(clock: Clock, timeout: float, *waits: Awaitable[Any]) -> bool:
    """Wait until one of `waits` completes or `timeout` passes on `clock`; True if one of
    `waits` completed first. The others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    timer = asyncio.ensure_future(clock.sleep(timeout))
    try:
        await asyncio.wait([*tasks, timer], return_when=asyncio.FIRST_COMPLETED)
        return any(t.done() for t in tasks)
    finally:
        for task in (*tasks, timer):
            task.cancel()
        await asyncio.gather(*tasks, timer, return_exceptions=True)


async def within(clock: Clock, timeout: float, call: Coroutine[Any, Any, T]) -> T:
    """`await call`, or raise TimeoutError once `timeout` passes on `clock`."""
    task = asyncio.ensure_future(call)
    if not await first_of(clock, timeout, task):
        raise TimeoutError
    return task.result()


class LeaderElector:
    """Campaigns for `namespace/name` and keeps it while it can renew in time.

    Run `run()` as a task; read `is_leader()` before acting and write through
    `client.fenced(namespace, name, elector.token)`; call `lost()` when such a write is
    rejected with `FencingTokenRejected`. Cancelling `run()` releases the lease (unless
    `release_on_exit=False`) so a standby can take over at once.
    """

    def __init__(
        self,
        client: KeelClient,
        namespace: str,
        name: str,
        identity: str,
        *,
        ttl: int = 2,
        clock: Clock,
        rng: random.Random | None = None,
        renew_fraction: float = 1 / 3,
        safety_margin: float = 0.2,
        jitter: float = 0.2,
        campaign_jitter: float = 0.05,
        release_on_exit: bool = True,
    ) -> None:
        if not 0 < safety_margin < ttl:
            raise ValueError("safety_margin must be within (0, ttl)")
        if not 0 < renew_fraction < 1:
            raise ValueError("renew_fraction must be within (0, 1)")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.ttl = ttl
        self.clock = clock
        self.rng = rng or random.Random()
        self.renew_fraction = renew_fraction
        self.jitter = jitter
        self.campaign_jitter = campaign_jitter
        self.release_on_exit = release_on_exit
        self.state = Election(identity, float(ttl), safety_margin)
        self._lease: Lease | None = None
        self._callbacks: list[Callable[[int | None], None]] = []
        self._changed = asyncio.Event()
        self._wake = asyncio.Event()
        self._reported: int | None = None
        self._failed_campaigns = 0
        self._backoff = Backoff(initial=0.05, maximum=float(ttl))
        self.transitions = 0  # leadership changes seen (for metrics and tests)

    # ------------------------------------------------------------- public face

    def is_leader(self) -> bool:
        return self.state.leading(self.clock.now())

    @property
    def token(self) -> int | None:
        """The fencing token while leading, else None."""
        return self.state.leader_token(self.clock.now())

    @property
    def holder(self) -> str | None:
        """The holder last observed (ourselves while leading)."""
        return self.state.holder

    @property
    def deadline(self) -> float | None:
        return self.state.deadline

    def on_change(self, callback: Callable[[int | None], None]) -> None:
        """Call `callback(token)` on becoming leader and `callback(None)` on stepping down."""
        self._callbacks.append(callback)

    def lost(self) -> None:
        """A write with our token was rejected: someone else leads. Step down now."""
        self._feed(Event(Kind.FENCED_OUT))

    async def wait_leading(self) -> int:
        """Wait until leading; the fencing token."""
        while True:
            token = self.token
            if token is not None:
                return token
            self._changed.clear()
            await self._changed.wait()

    async def run(self) -> None:
        """Campaign, renew and step down until cancelled."""
        steps: dict[Phase, Callable[[], Awaitable[None]]] = {
            Phase.CANDIDATE: self._campaign,
            Phase.FOLLOWING: self._follow,
            Phase.LEADING: self._lead,
        }
        try:
            while True:
                await steps[self.state.phase]()
        finally:
            lease, self._lease = self._lease, None
            was_leading = self.state.phase is Phase.LEADING
            self._feed(Event(Kind.FENCED_OUT))  # step down before giving the lease back
            if self.release_on_exit and was_leading and lease is not None:
                with contextlib.suppress(Exception):
                    await asyncio.shield(self.client.release_lease(lease))

    # ------------------------------------------------------------- internals

    def _feed(self, event: Event) -> None:
        self.state = transition(self.state, event, self.clock.now())
        self._wake.set()
        self._notify()

    def _notify(self) -> None:
        token = self.state.leader_token(self.clock.now())
        if token == self._reported:
            return
        self._reported = token
        self.transitions += 1
        log.info(
            "%s %s %s/%s: token %s",
            self.identity,
            "leads" if token is not None else "does not lead",
            self.namespace,
            self.name,
            token,
        )
        self._changed.set()
        for callback in list(self._callbacks):
            try:
                callback(token)
            except Exception:
                log.exception("leader election callback failed")

    async def _campaign(self) -> None:
        sent = self.clock.now()
        try:
            lease = await self.client.acquire_lease(
                self.namespace, self.name, self.identity, self.ttl
            )
        except AlreadyExists:
            self._feed(Event(Kind.ACQUIRE_CONFLICT, holder=None))
            return
        except KeelClientError as exc:
            log.warning(
                "%s: campaign for %s/%s failed: %s", self.identity, self.namespace, self.name, exc
            )
            # Back off before looking again: a create that keeps failing (server trouble,
            # permissions) while the lease stays absent must not spin.
            delay = self._backoff.delay(self._failed_campaigns, self.rng)
            self._failed_campaigns += 1
            self._feed(Event(Kind.ACQUIRE_FAILED))
            await self.clock.sleep(delay)
            return
        self._failed_campaigns = 0
        self._lease = lease
        self._feed(
            Event(
                Kind.ACQUIRED, sent_at=sent, token=lease.status.fencing_token, holder=self.identity
            )
        )

    async def _follow(self) -> None:
        """Watch the Lease until it is gone; then campaign after a small jitter."""
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(self._watch_lease(gone))
        try:
            while self.state.phase is Phase.FOLLOWING and not gone.is_set():
                # The watch reports DELETED; a GET every TTL covers a watch that went quiet.
                if not await first_of(self.clock, self.ttl, gone.wait()):
                    await self._look(gone)
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        if gone.is_set() and self.state.phase is Phase.FOLLOWING:
            await self.clock.sleep(self.campaign_jitter * self.rng.random())
            self._feed(Event(Kind.LEASE_DELETED))

    async def _look(self, gone: asyncio.Event) -> None:
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        except NotFound:
            gone.set()
        except KeelClientError as exc:
            log.debug("%s: reading lease failed: %s", self.identity, exc)
        else:
            self._observe(lease)

    async def _watch_lease(self, gone: asyncio.Event) -> None:
        selector = f"metadata.name={self.name}"
        while True:
            try:
                # List, then watch from the list's revision: no deletion is missed between.
                listed = await self.client.list(
                    Lease, namespace=self.namespace, field_selector=selector
                )
                if not listed.items:
                    gone.set()
                    return
                self._observe(listed.items[0])
                watch = self.client.watch(
                    Lease,
                    namespace=self.namespace,
                    resource_version=listed.resource_version,
                    field_selector=selector,
                )
                try:
                    async for event in watch:
                        if event.type == "DELETED" or (
                            event.type == "RELIST" and not event.objects
                        ):
                            gone.set()
                            return
                        if event.object is not None:
                            self._observe(event.object)
                finally:
                    await watch.aclose()
            except KeelClientError as exc:
                log.debug("%s: lease watch failed: %s", self.identity, exc)
                await self.clock.sleep(self.ttl / 4)

    def _observe(self, lease: Lease) -> None:
        self._feed(Event(Kind.OBSERVED, holder=lease.spec.holder_identity))

    async def _lead(self) -> None:
        """Renew every ttl*renew_fraction (jittered) until a renewal fails or time runs out."""
        lease = self._lease
        assert lease is not None
        while self.state.phase is Phase.LEADING:
            sent_at = self.state.renewed_sent_at
            deadline = self.state.deadline
            assert sent_at is not None and deadline is not None
            interval = self.ttl * self.renew_fraction * (1 - self.jitter * self.rng.random())
            due = min(sent_at + interval, deadline)
            self._wake.clear()
            await first_of(self.clock, due - self.clock.now(), self._wake.wait())
            if self.state.phase is not Phase.LEADING:
                break  # lost() was called
            now = self.clock.now()
            if now >= deadline:
                self._feed(Event(Kind.DEADLINE_PASSED))
                break
            if now < due:
                continue
            try:
                lease = await within(self.clock, deadline - now, self.client.renew_lease(lease))
            except (KeelClientError, TimeoutError) as exc:
                log.warning(
                    "%s: renewal of %s/%s failed: %s",
                    self.identity,
                    self.namespace,
                    self.name,
                    exc or "deadline",
                )
                self._feed(Event(Kind.RENEW_FAILED))
                break
            self._lease = lease
            self._feed(Event(Kind.RENEWED, sent_at=now))
        if self.state.phase is not Phase.LEADING:
            self._lease = None
