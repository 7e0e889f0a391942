"""The controller-manager under a stolen lease, against a real API server: a controller's
write with the old token is refused by the store, the manager stops all work and steps down
at once, does not take the lease back, and leads again (new token) once it is free."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest
from support import ApiServer, wait_for_async

from keel.api.resources import Lease, Namespace
from keel.client import KeelClient
from keel.clock import SystemClock
from keel.runtime.controller import Context, ControllerRunner, Result
from keel.runtime.manager import LEASE_NAME, LEASE_NAMESPACE, ControllerManager

# A long TTL: renewals are ~10 s apart, so it is the controller's write that meets the
# stolen lease first, not a renewal.
TTL = 30


class Annotator:
    """Writes an annotation on Namespace `default` whenever the test asks for it."""

    name = "annotator"
    primary = Namespace
    related = ()

    def __init__(self) -> None:
        self.go = asyncio.Event()
        self.writes = 0

    async def reconcile(self, ctx: Context, key: str) -> Result:
        if key != "default":
            return Result()
        await self.go.wait()
        self.go.clear()
        self.writes += 1
        patch = {"metadata": {"annotations": {"test/annotator": str(self.writes)}}}
        await ctx.client.patch(Namespace, "default", patch)
        return Result(requeue_after=0.0)


async def test_a_fenced_out_write_stops_the_work_and_steps_down(
    apiserver: ApiServer, client: KeelClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="keel.manager")
    clock = SystemClock()
    async with KeelClient.from_kubeconfig(apiserver.kubeconfig_for("controller")) as own:
        runner = ControllerRunner(own, clock=clock)
        annotator = Annotator()
        runner.register(annotator, workers=1)
        manager = ControllerManager(own, runner, identity="fenced", ttl=TTL, clock=clock)
        task = asyncio.get_running_loop().create_task(manager.run())
        try:
            assert manager.elector is not None
            first = await asyncio.wait_for(manager.elector.wait_leading(), 30)
            annotator.go.set()

            async def wrote() -> bool:
                return annotator.writes >= 1 and not annotator.go.is_set()

            await wait_for_async("a first, accepted write", wrote)

            # Someone else takes the lease behind the leader's back.
            stolen = await client.get(Lease, LEASE_NAME, namespace=LEASE_NAMESPACE)
            await client.release_lease(stolen)
            thief = await client.acquire_lease(LEASE_NAMESPACE, LEASE_NAME, "thief", TTL)
            assert thief.status.fencing_token > first

            annotator.go.set()  # the leader, unaware, writes again with its old token

            async def stepped_down() -> bool:
                return (
                    not manager.leading()
                    and manager.elector is not None
                    and (manager.elector.token is None)
                )

            await wait_for_async("the manager to stop and step down", stepped_down)
            assert "FencingTokenRejected" in caplog.text
            assert runner.partitions == {}
            lease = await client.get(Lease, LEASE_NAME, namespace=LEASE_NAMESPACE)
            assert lease.spec.holder_identity == "thief"  # not taken back

            # Once the lease is free again, the manager leads under a newer token.
            await client.release_lease(thief)
            again = await asyncio.wait_for(manager.elector.wait_leading(), 30)
            assert again > thief.status.fencing_token
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
