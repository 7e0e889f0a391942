"""`keel scheduler` as real processes: one of two replicas holds keel-system/scheduler and
binds; when it is killed the standby takes over and keeps binding."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from controllers.keel_processes import KEEL, ApiServer, eventually, lease_of
from scheduler.keel_platform import FakeAgent, platform, role_kubeconfig

from keel.api.resources import Instance, InstanceSpec, ObjectMeta
from keel.client import KeelClient


class SchedulerProcess:
    def __init__(self, state_dir: Path, kubeconfig: Path, identity: str) -> None:
        self.identity = identity
        self.log_path = state_dir / f"{identity}.log"
        command = [
            *KEEL, "scheduler",
            "--kubeconfig", str(kubeconfig), "--identity", identity, "--retry-interval", "1",
        ]  # fmt: skip
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)  # only the process this object started
        self.process.wait()

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.process.returncode


async def test_one_replica_binds_and_the_standby_takes_over(
    apiserver: ApiServer, admin: KeelClient, tmp_path: Path
) -> None:
    kubeconfig = role_kubeconfig(apiserver, "scheduler")
    replicas = {i: SchedulerProcess(tmp_path, kubeconfig, i) for i in ("sched-a", "sched-b")}
    agent = await FakeAgent(admin, "node-0", "c1").start()
    try:
        async with platform(apiserver, ("nodelifecycle",), scheduler=False):

            async def holder() -> str | None:
                lease = lease_of(apiserver, "scheduler")
                return lease["spec"]["holderIdentity"] if lease else None

            leader = await eventually(holder, "a scheduler to hold the lease")
            assert leader in replicas

            async def bound(name: str) -> bool:
                instance = await admin.get(Instance, name, namespace="default")
                return instance.spec.node_name == "node-0"

            await create(admin, "first")
            await eventually(lambda: bound("first"), "the first instance bound")
            replicas[leader].kill()

            async def new_holder() -> str | None:
                current = await holder()
                return current if current not in (None, leader) else None

            await eventually(new_holder, "the standby to take the lease", timeout=15)
            await create(admin, "second")
            await eventually(lambda: bound("second"), "the second instance bound")
    finally:
        await agent.stop_renewing()
        for replica in replicas.values():
            replica.stop()
    survivor = next(r for r in replicas.values() if r.identity != leader)
    assert survivor.process.returncode == 0, survivor.log_path.read_text()


async def create(client: KeelClient, name: str) -> None:
    await client.create(
        Instance(
            metadata=ObjectMeta(name=name, namespace="default"), spec=InstanceSpec(command=["x"])
        )
    )
