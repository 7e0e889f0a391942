"""An agent that lost its node lease (cut off, paused) cannot write over what the control
plane decided meanwhile: its status writes carry its node lease's fencing token, and the API
server rejects them once the lease has a newer holder; the agent then drops the lease and
acquires a fresh one before it reports again."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from agent_harness import instance
from support import ApiServer

from keel.agent import Agent, AgentConfig
from keel.api.resources import Instance, InstanceStatus
from keel.client import FencingTokenRejected

LEASES = "keel-node-lease"


@pytest.fixture
def api(tmp_path: Path) -> Iterator[ApiServer]:
    with ApiServer(tmp_path / "api", nodes=["n1"]) as server:
        yield server


async def test_a_status_write_under_a_superseded_node_lease_token_is_rejected(
    api: ApiServer, tmp_path: Path
) -> None:
    async with api.client() as admin, api.client("node:n1") as node:
        created = await admin.create(instance("web", "n1", ["sleep", "600"]))
        assert created.spec.node_name == "n1"
        old = await node.acquire_lease(LEASES, "n1", "n1", 2)
        # The lease ran out while the agent was away (a release stands in for the expiry)
        # and the node's lease passed on: a later incarnation holds it now.
        assert await node.release_lease(old)
        new = await node.acquire_lease(LEASES, "n1", "n1", 2)
        assert new.status.fencing_token > old.status.fencing_token

        stale = msgspec.structs.replace(created, status=InstanceStatus(phase="Failed"))
        # What the agent sends: the write carries the old token, and is refused.
        with pytest.raises(FencingTokenRejected):
            async with node.fenced(LEASES, "n1", old.status.fencing_token) as fenced:
                await fenced.update_status(stale)
        # The agent itself, still holding the old lease when it comes back, reports.
        agent = Agent(node, AgentConfig(node="n1", cluster="c1", state_dir=tmp_path / "agent"))
        agent.lease = old
        await agent._write_status("default/web", stale, old)
        current = await admin.get(Instance, "web", namespace="default")
        assert current.status.phase != "Failed"  # nothing of the stale report landed
        assert agent.lease is None  # it lets the old lease go, to acquire a fresh one
        # Under the current token the same write is accepted.
        async with node.fenced(LEASES, "n1", new.status.fencing_token) as fenced:
            written = await fenced.update_status(
                msgspec.structs.replace(current, status=InstanceStatus(phase="Failed"))
            )
        assert written.status.phase == "Failed"
