"""A controller for the failover tests, loaded into a real `keel controller-manager` with
`--controller runtime.fencing_probe:fencing_probe` (tests/ on PYTHONPATH); holds no tests.

From the moment its replica wins the lease it writes an annotation on Namespace keel-system
every `interval` seconds through the fenced view, never asking its clock whether it still
leads. After SIGSTOP/SIGCONT only the store can stop it, which is the point: its rejected
writes show that fencing is store-side.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from keel.api.resources import Namespace
from keel.client import FencingTokenRejected, KeelClient, KeelClientError
from keel.clock import Clock
from keel.runtime.controller import Controller
from keel.runtime.manager import ControllerManager

ANNOTATION = "keel.dev/fencing-probe"
log = logging.getLogger("keel.controller-manager")


def fencing_probe(manager: ControllerManager) -> list[Controller]:
    """The `--controller` factory: hooks a probe to the manager's leader election."""
    if manager.elector is None:
        raise ValueError("the fencing probe runs only without --shards")
    probe = FencingProbe(manager.client, manager.identity, clock=manager.clock)
    manager.elector.on_change(probe.leadership_changed)
    probe.stepped_down = manager.elector.lost
    return []  # it writes on leadership changes, not on reconciles


class FencingProbe:
    def __init__(
        self,
        client: KeelClient,
        identity: str,
        *,
        clock: Clock,
        namespace: str = "keel-system",
        lease: str = "controller-manager",
        interval: float = 0.1,
    ) -> None:
        self.client = client
        self.identity = identity
        self.clock = clock
        self.namespace = namespace
        self.lease = lease
        self.interval = interval
        self.stepped_down: Callable[[], None] = lambda: None
        self._task: asyncio.Task[None] | None = None

    def leadership_changed(self, token: int | None) -> None:
        # Deliberately ignores step-downs (token None): the probe plays a leader that does
        # not know it was paused. A new term replaces the old writer.
        if token is None:
            return
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._write(token))

    async def _write(self, token: int) -> None:
        async with self.client.fenced(self.namespace, self.lease, token) as view:
            count = 0
            while True:
                count += 1
                value = f"{self.identity} token {token} write {count}"
                patch = {"metadata": {"annotations": {ANNOTATION: value}}}
                try:
                    await view.patch(Namespace, self.namespace, patch)
                except FencingTokenRejected as exc:
                    log.error(
                        "%s: fencing probe write rejected with FencingTokenRejected (409), "
                        "token %d: %s; stepping down",
                        self.identity, token, exc,
                    )  # fmt: skip
                    self.stepped_down()
                    return
                except KeelClientError as exc:
                    log.warning("%s: fencing probe write failed: %s", self.identity, exc)
                await self.clock.sleep(self.interval)
