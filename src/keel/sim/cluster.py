"""`SimCluster`: the control plane of a simulation, made of the real parts. The real
`ApiServer` app serves from an in-memory store, both on the loop's virtual clock, and every
process talks to it through the real `KeelClient` over a `ProcessNetwork` (faults, pauses and
the mutation log). Nothing of the server's semantics is re-implemented here.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from typing import TypeVar, cast

from keel.api.auth import TokenFile
from keel.api.registry import BY_KIND
from keel.api.resources import Resource
from keel.api.server import ApiServer
from keel.client import KeelClient, RetryPolicy
from keel.sim.faults import FaultMix, FaultScheduler
from keel.sim.loop import SimClock
from keel.sim.network import Gate, Mutation, MutationLog, ProcessNetwork, Reachable, Stall
from keel.sim.trace import Trace
from keel.sim.transport import AppTransport
from keel.store import MemoryStore

__all__ = ["ROLES", "SimCluster"]

R = TypeVar("R", bound=Resource)

SERVER = "http://keel.sim:7070"
# One bearer token per role; node agents get `node:NAME` tokens from `node_token`.
ROLES = ("admin", "viewer", "controller", "scheduler")


def _token(role: str) -> str:
    return f"sim-{role.replace(':', '-')}-token"


class SimCluster:
    """The API server and its store, for one simulation run (see module docstring)."""

    def __init__(
        self,
        *,
        seed: int = 0,
        trace: Trace | None = None,
        faults: FaultScheduler | None = None,
        nodes: Sequence[str] = (),
    ) -> None:
        self.seed = seed
        self.trace = trace if trace is not None else Trace()
        self.faults = faults if faults is not None else FaultScheduler(seed, FaultMix())
        self.clock = SimClock()
        self.store = MemoryStore(clock=self.clock)
        lines = [f"{_token(role)},sim-{role},{role}" for role in ROLES]
        lines += [f"{_token('node:' + node)},node-{node},node:{node}" for node in nodes]
        self.server = ApiServer(
            self.store,
            TokenFile.parse("\n".join(lines), "<simulation>"),
            clock=self.clock,
            rng=random.Random(f"{seed}:apiserver"),
        )
        self.app = AppTransport(self.server.app)
        self.log = MutationLog(self.trace)
        self.url = SERVER  # what clients of `app` address requests to

    async def start(self) -> None:
        """Boot the API server (namespaces, watch cache) and wait until it serves reads."""
        await self.server.start()
        await self.server.ready.wait()

    async def stop(self) -> None:
        await self.server.stop()
        await self.store.close()

    @property
    def mutations(self) -> list[Mutation]:
        return self.log.mutations

    def client(
        self,
        caller: str,
        *,
        role: str = "admin",
        gate: Gate | None = None,
        stall: Stall | None = None,
        cut_off: Callable[[], bool] | None = None,
        reachable: Reachable | None = None,
        faulty: bool = True,
        namespace: str = "default",
    ) -> KeelClient:
        """The real client for `caller` with the token of `role` (admin, viewer, controller,
        scheduler, node:NAME). `gate` is awaited around every request (a paused or killed
        process); while `cut_off()` is true its requests fail unsent and its open watches
        stay silent until `reachable()` returns; with `faulty`, the run's faults apply to its
        requests and watches."""
        faults = self.faults if faulty else FaultScheduler(self.seed, FaultMix())
        network = ProcessNetwork(
            self.app,
            caller,
            faults=faults,
            log=self.log,
            revision=self._revision,
            gate=gate,
            stall=stall,
            cut_off=cut_off,
            reachable=reachable,
        )
        return KeelClient(
            SERVER,
            token=_token(role),
            namespace=namespace,
            transport=network,
            clock=self.clock,
            rng=random.Random(f"{self.seed}:{caller}:client"),
            retry=RetryPolicy(),
        )

    def token(self, role: str) -> str:
        """The bearer token of `role` (one of ROLES, or node:NAME for a node of the run), for
        requests outside the client's API (e.g. /metrics through `app`)."""
        return _token(role)

    async def _revision(self) -> int:
        return (await self.store.status()).revision

    # ----------------------------------------------------------------- what checkers read

    def objects(self, kind: type[R], namespace: str | None = None) -> list[R]:
        """The objects of a kind as the API server's watch cache has them now."""
        info = BY_KIND[kind.kind_name]
        cached, _ = self.server.cache.list(info, namespace)
        return [cast("R", c.obj) for c in cached]

    async def expire_lease(self, namespace: str, name: str, *, why: str = "forced") -> bool:
        """End a Lease object's store lease now, as a lost keep-alive would: the object
        vanishes and its holder must find out. False if there is no such lease."""
        cached = self.server.cache.get(BY_KIND["Lease"], namespace, name)
        if cached is None or not cached.lease:
            return False
        self.trace.record(self.clock.now(), "fault", f"expire lease {namespace}/{name} ({why})")
        await self.store.revoke_lease(cached.lease)
        return True
