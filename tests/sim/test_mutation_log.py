"""The simulated network logs every mutating request as the real server answered it: the
history the simulation's checkers (`check_fencing`, `check_once`) read. How the server answers
is pinned by tests/conformance/test_api.py; this checks only that the log says what it did."""

from __future__ import annotations

import contextlib

from keel.api.resources import Deployment, DeploymentSpec, InstanceSpec, InstanceTemplate
from keel.api.resources import ObjectMeta as Meta
from keel.client import Conflict, FencingTokenRejected
from keel.sim import Mutation, SimCluster, run_virtual


def _deployment(name: str) -> Deployment:
    template = InstanceTemplate(spec=InstanceSpec(command=["sleep", "inf"]))
    return Deployment(metadata=Meta(name=name), spec=DeploymentSpec(template=template))


def test_each_write_is_logged_with_its_outcome_and_fencing_token() -> None:
    async def main() -> tuple[list[Mutation], int]:
        cluster = SimCluster(seed=3)
        await cluster.start()
        c = cluster.client("writer", faulty=False)
        created = await c.create(_deployment("web"))
        await c.replace(created)  # unchanged: accepted, nothing written
        await c.patch(Deployment, "web", {"spec": {"replicas": 2}})
        with contextlib.suppress(Conflict):
            await c.replace(created)  # based on a stale resourceVersion
        lease = await c.acquire_lease("default", "lock", "writer", 2)
        token = lease.status.fencing_token
        async with c.fenced("default", "lock", token) as fenced:
            await fenced.create(_deployment("one"))
            await cluster.expire_lease("default", "lock")
            with contextlib.suppress(FencingTokenRejected):
                await fenced.create(_deployment("two"))
        await cluster.stop()
        return [m for m in cluster.mutations if m.kind == "Deployment"], token

    log, token = run_virtual(main)
    fencing = ("default/lock", token)
    assert [(m.verb, m.name, m.outcome, m.fencing) for m in log] == [
        ("create", "web", "ok", None),
        ("replace", "web", "noop", None),
        ("patch", "web", "ok", None),
        ("replace", "web", "Conflict", None),
        ("create", "one", "ok", fencing),
        ("create", "two", "FencingTokenRejected", fencing),
    ]
    # A no-op names the revision the object already had; a rejected write has none.
    assert [m.revision for m in log][1] == log[0].revision
    assert [m.revision > 0 for m in log] == [True, True, True, False, True, False]
    written = log[2].obj
    assert isinstance(written, Deployment) and written.spec.replicas == 2
