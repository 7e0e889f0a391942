"""Controller runtime: cold start, failover, and checkpoint restart, against real processes.

1. Cold start: N objects (default 100,000) in a sqlite store behind `keel apiserver`; time
   from starting a ControllerRunner until every key was reconciled once (goal <= 10 s).
   Baseline in the same run: one bare paged LIST of the same objects through the client.
2. Failover: two `keel controller-manager` processes (lease TTL 2 s); SIGKILL, then SIGSTOP,
   of the leader; time until the standby holds the lease with a higher fencing token
   (goal: TTL + 0.5 s).
3. Restart from a checkpoint vs a full relist: time until an informer is synced.

    python benchmarks/runtime.py [--objects N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common
import msgspec

from keel.api.resources import ObjectMeta, Service, ServicePort, ServiceSpec
from keel.client import KeelClient
from keel.clock import SystemClock
from keel.runtime.checkpoint import Checkpoint
from keel.runtime.controller import Context, ControllerRunner, Result
from keel.runtime.informer import Informer
from keel.store import Op, open_store

LEASE = "controller-manager"


async def fill_store(path: Path, count: int) -> None:
    """Write `count` Services straight into the store, 128 per txn, as the server would."""
    encode = msgspec.json.encode
    async with await open_store(f"sqlite:///{path}") as store:
        batch: list[Op] = []
        for i in range(count):
            name = f"svc-{i:06d}"
            obj = Service(
                kind="Service",
                metadata=ObjectMeta(
                    name=name,
                    namespace="default",
                    uid=f"uid-{i}",
                    generation=1,
                    creation_timestamp="2026-01-01T00:00:00Z",
                    labels={"app": f"a{i % 100}"},
                ),
                spec=ServiceSpec(
                    selector={"app": f"a{i % 100}"}, ports=[ServicePort(name="http", port=80)]
                ),
            )
            batch.append(Op.put(f"/registry/services/default/{name}".encode(), encode(obj)))
            if len(batch) == 128:
                await store.txn([], batch, [])
                batch = []
        if batch:
            await store.txn([], batch, [])


class ApiServer(_common.ApiServer):
    def client(self) -> KeelClient:
        return KeelClient(self.url, token=self.token)


class CountOnce:
    """Reconciles each Service key once and signals when all were seen."""

    name = "count-once"
    primary = Service
    related = ()

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.seen: set[str] = set()
        self.done = asyncio.Event()

    async def reconcile(self, ctx: Context, key: str) -> Result:
        if ctx.cache(Service).get(key) is not None:
            self.seen.add(key)
            if len(self.seen) >= self.expected:
                self.done.set()
        return Result()


async def cold_start(server: ApiServer, count: int) -> list[str]:
    async with server.client() as client:
        t0 = time.perf_counter()
        items, _ = await client.list(Service, namespace="default")
        bare = time.perf_counter() - t0
        assert len(items) >= count, len(items)
        del items
        controller = CountOnce(count)
        runner = ControllerRunner(client, clock=SystemClock())
        runner.register(controller, workers=8)
        t0 = time.perf_counter()
        task = asyncio.create_task(runner.run())
        await asyncio.wait_for(controller.done.wait(), 600)
        cold = time.perf_counter() - t0
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    return [
        f"cold start, {count:,} objects: every key reconciled once after {cold:.2f} s "
        f"(goal <= 10 s); a bare LIST of them alone takes {bare:.2f} s "
        f"(runtime = {cold / bare:.1f}x the bare list)"
    ]


async def checkpoint_restart(server: ApiServer, work: Path, count: int) -> list[str]:
    path = work / "services.checkpoint"
    async with server.client() as client:

        async def synced_after(checkpoint: Checkpoint | None) -> float:
            informer = Informer(
                client, Service, namespace="default", clock=SystemClock(), checkpoint=checkpoint
            )
            t0 = time.perf_counter()
            task = asyncio.create_task(informer.run())
            assert await informer.wait_synced(600)
            elapsed = time.perf_counter() - t0
            assert len(informer.cache) >= count
            task.cancel()  # saves the checkpoint on the way out
            await asyncio.gather(task, return_exceptions=True)
            return elapsed

        relist = await synced_after(None)
        await synced_after(Checkpoint(path))  # writes the checkpoint
        size = path.stat().st_size
        restart = await synced_after(Checkpoint(path))
    return [
        f"informer restart, {count:,} objects: full relist {relist:.2f} s, from a checkpoint "
        f"({size / 2**20:.1f} MiB) {restart:.2f} s = {relist / restart:.1f}x faster"
    ]


def lease_holder(server: ApiServer) -> tuple[str, int] | None:
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(
        f"{server.url}/apis/keel.dev/v1/namespaces/keel-system/leases/{LEASE}",
        headers={"Authorization": f"Bearer {server.token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            body = json.loads(response.read())
    except (urllib.error.HTTPError, OSError):
        return None
    return body["spec"]["holderIdentity"], int(body["status"]["fencingToken"])


def start_manager(server: ApiServer, identity: str, work: Path) -> subprocess.Popen[bytes]:
    log = (work / f"{identity}.log").open("ab")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keel",
            "controller-manager",
            "--kubeconfig",
            str(server.kubeconfig),
            "--identity",
            identity,
            "--lease-ttl",
            "2",
            "--controllers",
            "namespace",
        ],
        stdout=log,
        stderr=log,
    )


def failover(server: ApiServer, work: Path, sig: signal.Signals) -> str:
    managers = {name: start_manager(server, name, work) for name in ("cm-a", "cm-b")}
    try:
        deadline = time.monotonic() + 60
        held = lease_holder(server)
        while held is None or held[0] not in managers:
            if time.monotonic() > deadline:
                raise TimeoutError("no controller-manager took the lease")
            time.sleep(0.05)
            held = lease_holder(server)
        leader, token = held
        time.sleep(1.0)  # both up: one leading, one standing by
        t0 = time.monotonic()
        os.kill(managers[leader].pid, sig)
        while True:
            now = lease_holder(server)
            if now is not None and now[0] != leader and now[1] > token:
                elapsed = time.monotonic() - t0
                break
            if time.monotonic() - t0 > 30:
                raise TimeoutError("the standby never took over")
            time.sleep(0.01)
        return (
            f"failover after {sig.name} of the leader: standby holds the lease with a "
            f"higher fencing token after {elapsed:.2f} s (goal <= 2.5 s)"
        )
    finally:
        for proc in managers.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait()
        deadline = time.monotonic() + 10
        while lease_holder(server) is not None and time.monotonic() < deadline:
            time.sleep(0.1)  # let the lease expire before the next round


async def main_async(args: argparse.Namespace) -> int:
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="keel-bench-runtime-") as tmp:
        work = Path(tmp)
        state = work / "state"
        state.mkdir()
        t0 = time.perf_counter()
        await fill_store(state / "keel.db", args.objects)
        lines.append(
            f"(filled the store with {args.objects:,} objects in {time.perf_counter() - t0:.1f} s)"
        )
        server = ApiServer(state)
        try:
            lines += await cold_start(server, args.objects)
            lines += await checkpoint_restart(server, work, args.objects)
            for sig in (signal.SIGKILL, signal.SIGSTOP):
                lines.append(await asyncio.to_thread(failover, server, work, sig))
        finally:
            server.stop()
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--objects", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="smoke: 2,000 objects")
    args = parser.parse_args()
    if args.quick:
        args.objects = 2_000
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
