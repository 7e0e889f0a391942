"""Sharding: split a controller's keys over N shard leases, balanced across live replicas.

`shard_of` and `plan_shards` are pure; `ShardCoordinator` announces its replica with a member
lease, takes free shard leases up to ceil(shards / live members), and gives extras back.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import math
import random
import zlib
from collections.abc import Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass

from keel.api.resources import Lease
from keel.client import AlreadyExists, KeelClient, KeelClientError
from keel.clock import Clock
from keel.runtime.leaderelection import Election, Event, Kind, first_of, transition, within

__all__ = ["ShardCoordinator", "plan_shards", "shard_of", "shard_target"]

log = logging.getLogger(__name__)

LostCallback = Callable[[int], Awaitable[None] | None]


def shard_of(key: str, shards: int) -> int:
    """The shard of a key ("namespace/name" or "name"): stable across processes and runs."""
    if shards < 1:
        raise ValueError("shards must be >= 1")
    return zlib.crc32(key.encode()) % shards


def shard_target(shards: int, live_members: int) -> int:
    """The most shards one replica may hold."""
    return math.ceil(shards / max(1, live_members))


def preference(identity: str, shard: int) -> int:
    """How much `identity` wants `shard` (rendezvous hashing): replicas prefer different
    shards, so they rarely race for the same free one, and keep the same ones across runs."""
    return zlib.crc32(f"{identity}/{shard}".encode())


def plan_shards(
    owned: Collection[int],
    free: Collection[int],
    live_members: int,
    shards: int,
    identity: str,
) -> tuple[list[int], list[int]]:
    """Which free shards to take and which owned shards to give back: `(take, release)`.

    A replica holds at most `shard_target(shards, live_members)`: over it, it releases the
    shards it prefers least; under it, it takes the free shards it prefers most.
    """
    target = shard_target(shards, live_members)

    def ranked(candidates: Iterable[int]) -> list[int]:
        return sorted(candidates, key=lambda shard: (-preference(identity, shard), shard))

    if len(owned) > target:
        return [], ranked(owned)[target:]
    return ranked(set(free) - set(owned))[: target - len(owned)], []


@dataclass
class _Held:
    """A lease this replica holds, and its election state (the same core as leadership)."""

    lease: Lease
    state: Election
    renew_due: float


class ShardCoordinator:
    """Takes, keeps and gives back the shard leases of one replica.

    `owned` maps shard -> fencing token for the shards held right now (a shard drops out at
    once when its renewal fails or its deadline passes). `on_acquired(shard, token)` is
    called when a shard is taken; `on_lost(shard)` when it is lost or given back; on a
    graceful give-back it is awaited before the lease is released, so the owner can drop
    the shard's queue and abandon in-flight work before a new owner acts.
    """

    def __init__(
        self,
        client: KeelClient,
        identity: str,
        shards: int,
        *,
        ttl: int = 2,
        namespace: str = "keel-system",
        prefix: str = "controller-manager",
        clock: Clock,
        rng: random.Random | None = None,
        renew_fraction: float = 1 / 3,
        safety_margin: float = 0.2,
        jitter: float = 0.2,
        campaign_jitter: float = 0.05,
        release_on_exit: bool = True,
    ) -> None:
        if shards < 1:
            raise ValueError("shards must be >= 1")
        self.client = client
        self.identity = identity
        self.shards = shards
        self.ttl = ttl
        self.namespace = namespace
        self.prefix = prefix
        self.clock = clock
        self.rng = rng or random.Random()
        self.renew_fraction = renew_fraction
        self.safety_margin = safety_margin
        self.jitter = jitter
        self.campaign_jitter = campaign_jitter
        self.release_on_exit = release_on_exit
        self._held: dict[int, _Held] = {}
        self._member: _Held | None = None
        self._leases: dict[str, Lease] = {}  # this namespace's leases, from list + watch
        self._synced = False
        self._cooldown: dict[int, float] = {}  # shard -> until when not to campaign for it
        self._member_retry_at = 0.0
        self._changed = asyncio.Event()
        self._acquired: list[Callable[[int, int], None]] = []
        self._lost: list[LostCallback] = []
        self._background: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------- public face

    @property
    def member_name(self) -> str:
        return f"{self.prefix}-member-{self.identity}"

    def shard_name(self, shard: int) -> str:
        return f"{self.prefix}-shard-{shard}"

    @property
    def owned(self) -> dict[int, int]:
        """shard -> fencing token, for the shards this replica may act on now."""
        now = self.clock.now()
        owned: dict[int, int] = {}
        for shard, held in self._held.items():
            token = held.state.leader_token(now)
            if token is not None:
                owned[shard] = token
        return owned

    def token(self, shard: int) -> int | None:
        held = self._held.get(shard)
        return held.state.leader_token(self.clock.now()) if held else None

    def live_members(self) -> set[str]:
        """The replicas whose member lease exists (this one always counts)."""
        marker = f"{self.prefix}-member-"
        members = {
            lease.spec.holder_identity
            for name, lease in self._leases.items()
            if name.startswith(marker)
        }
        return members | {self.identity}

    def holders(self) -> dict[int, str]:
        """shard -> holder, as this replica's lease cache sees it."""
        found: dict[int, str] = {}
        for shard in range(self.shards):
            lease = self._leases.get(self.shard_name(shard))
            if lease is not None:
                found[shard] = lease.spec.holder_identity
        return found

    def lost(self, shard: int) -> None:
        """A write with the shard's token was rejected: stop owning it now (no release; the
        lease is someone else's or gone). `on_lost` callbacks run in the background."""
        self._lose(shard, "a write was fenced out")
        self._changed.set()

    def on_acquired(self, callback: Callable[[int, int], None]) -> None:
        self._acquired.append(callback)

    def on_lost(self, callback: LostCallback) -> None:
        self._lost.append(callback)

    async def run(self) -> None:
        """Announce, balance, renew until cancelled; then give every shard back."""
        watcher = asyncio.ensure_future(self._watch_leases())
        try:
            while True:
                await self._step()
                wait = max(0.0, self._next_wake() - self.clock.now())
                self._changed.clear()
                await first_of(self.clock, wait, self._changed.wait())
        finally:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await asyncio.shield(self._leave())

    # ------------------------------------------------------------- one round

    async def _step(self) -> None:
        now = self.clock.now()
        for shard, held in list(self._held.items()):
            if not held.state.leading(now):
                self._lose(shard, "its deadline passed")
        await self._keep_member()
        await self._renew_due()
        if not self._synced:
            return
        now = self.clock.now()
        self._cooldown = {shard: until for shard, until in self._cooldown.items() if until > now}
        free = [
            shard
            for shard in range(self.shards)
            if self.shard_name(shard) not in self._leases
            and shard not in self._held
            and self._cooldown.get(shard, now) <= now
        ]
        take, release = plan_shards(
            list(self._held), free, len(self.live_members()), self.shards, self.identity
        )
        for shard in release:
            self._spawn(self._give_back(shard, self._held.pop(shard)))
        if take:
            await self.clock.sleep(self.campaign_jitter * self.rng.random())
            await asyncio.gather(*(self._take(shard) for shard in take))

    def _next_wake(self) -> float:
        times = [self.clock.now() + self.ttl]  # look again at least once per TTL
        for held in [*self._held.values(), *([self._member] if self._member else [])]:
            times.append(held.renew_due)
            deadline = held.state.deadline
            if deadline is not None:
                times.append(deadline)
        times.extend(until for until in self._cooldown.values())
        return min(times)

    def _new_held(self, lease: Lease, sent_at: float) -> _Held:
        state = Election(self.identity, float(self.ttl), self.safety_margin)
        event = Event(
            Kind.ACQUIRED, sent_at=sent_at, token=lease.status.fencing_token, holder=self.identity
        )
        return _Held(lease, transition(state, event, self.clock.now()), self._due(sent_at))

    def _due(self, sent_at: float) -> float:
        return sent_at + self.ttl * self.renew_fraction * (1 - self.jitter * self.rng.random())

    async def _keep_member(self) -> None:
        """Hold (or re-take) the member lease that tells the others this replica is alive."""
        now = self.clock.now()
        member = self._member
        if member is not None:
            if now >= member.renew_due and not await self._renew(member):
                self._member = None
            return
        if now < self._member_retry_at:
            return
        try:
            lease = await self.client.acquire_lease(
                self.namespace, self.member_name, self.identity, self.ttl
            )
        except KeelClientError as exc:
            # Often an earlier incarnation's member lease: it counts us already and expires.
            log.debug("%s: member lease not acquired: %s", self.identity, exc)
            self._member_retry_at = now + self.ttl / 4
            return
        self._member = self._new_held(lease, now)
        self._leases[lease.metadata.name] = lease

    async def _renew_due(self) -> None:
        now = self.clock.now()
        due = [shard for shard, held in self._held.items() if now >= held.renew_due]

        async def renew(shard: int) -> None:
            held = self._held.get(shard)
            if held is not None and not await self._renew(held):
                self._lose(shard, "its renewal failed")

        await asyncio.gather(*(renew(shard) for shard in due))

    async def _renew(self, held: _Held) -> bool:
        sent = self.clock.now()
        deadline = held.state.deadline
        if deadline is None or sent >= deadline:
            return False
        try:
            lease = await within(self.clock, deadline - sent, self.client.renew_lease(held.lease))
        except (KeelClientError, TimeoutError) as exc:
            name = held.lease.metadata.name
            log.warning("%s: renewal of %s failed: %s", self.identity, name, exc or "deadline")
            held.state = transition(held.state, Event(Kind.RENEW_FAILED), self.clock.now())
            return False
        held.lease = lease
        held.state = transition(held.state, Event(Kind.RENEWED, sent_at=sent), self.clock.now())
        held.renew_due = self._due(sent)
        return held.state.leading(self.clock.now())

    async def _take(self, shard: int) -> None:
        if shard in self._held or self.shard_name(shard) in self._leases:
            return  # taken meanwhile (we saw it during the jitter)
        sent = self.clock.now()
        try:
            lease = await self.client.acquire_lease(
                self.namespace, self.shard_name(shard), self.identity, self.ttl
            )
        except KeelClientError as exc:
            if not isinstance(exc, AlreadyExists):
                log.warning("%s: taking shard %d failed: %s", self.identity, shard, exc)
            # Until the watch shows the holder (or the lease is gone again), leave it be.
            self._cooldown[shard] = self.clock.now() + self.ttl
            return
        self._held[shard] = held = self._new_held(lease, sent)
        self._leases[lease.metadata.name] = lease
        token = held.state.leader_token(self.clock.now())
        if token is None:
            del self._held[shard]  # answered too late to act on
            return
        log.info("%s takes shard %d (token %d)", self.identity, shard, token)
        for callback in list(self._acquired):
            try:
                callback(shard, token)
            except Exception:
                log.exception("on_acquired callback failed")

    def _lose(self, shard: int, why: str) -> None:
        """The shard is gone at once (no release: it already is, or it is in doubt)."""
        if self._held.pop(shard, None) is None:
            return
        log.warning("%s loses shard %d: %s", self.identity, shard, why)
        # Notified in the background, so a slow owner does not delay other renewals.
        self._spawn(self._notify_lost(shard))

    async def _give_back(self, shard: int, held: _Held) -> None:
        """Stop acting on the shard (the caller removed it from `_held`), let the owner drop
        its work, then release the lease."""
        log.info("%s gives back shard %d", self.identity, shard)
        await self._notify_lost(shard)
        with contextlib.suppress(KeelClientError):
            await self.client.release_lease(held.lease)
        self._changed.set()

    async def _notify_lost(self, shard: int) -> None:
        for callback in list(self._lost):
            try:
                result = callback(shard)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("on_lost callback failed")

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _leave(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        if self.release_on_exit:
            held, self._held = self._held, {}
            await asyncio.gather(*(self._give_back(shard, h) for shard, h in held.items()))
            member, self._member = self._member, None
            if member is not None:
                with contextlib.suppress(KeelClientError):
                    await self.client.release_lease(member.lease)
        else:
            for shard in list(self._held):
                self._lose(shard, "stopped")
            self._member = None
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # ------------------------------------------------------------- lease cache

    async def _watch_leases(self) -> None:
        while True:
            try:
                listed = await self.client.list(Lease, namespace=self.namespace)
                self._reset(listed.items)
                watch = self.client.watch(
                    Lease, namespace=self.namespace, resource_version=listed.resource_version
                )
                try:
                    async for event in watch:
                        if event.type == "RELIST":
                            self._reset(event.objects)
                        elif event.type == "DELETED" and event.object is not None:
                            self._forget(event.object)
                        elif event.object is not None:
                            self._leases[event.object.metadata.name] = event.object
                            self._changed.set()
                finally:
                    await watch.aclose()
            except KeelClientError as exc:
                log.debug("%s: lease watch failed: %s", self.identity, exc)
                await self.clock.sleep(self.ttl / 4)

    def _reset(self, leases: Iterable[Lease]) -> None:
        self._leases = {lease.metadata.name: lease for lease in leases}
        self._synced = True
        self._changed.set()

    def _forget(self, lease: Lease) -> None:
        name = lease.metadata.name
        current = self._leases.get(name)
        # A DELETED event for an older incarnation must not hide a newer one.
        if current is not None and current.status.fencing_token <= lease.status.fencing_token:
            del self._leases[name]
        shard_prefix = f"{self.prefix}-shard-"
        if name.startswith(shard_prefix) and name[len(shard_prefix) :].isdigit():
            self._cooldown.pop(int(name[len(shard_prefix) :]), None)
        self._changed.set()
