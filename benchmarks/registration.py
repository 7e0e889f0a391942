"""External service registrations: how fast an abandoned one leaves Endpoints, and what live
ones cost the store, against real processes (`keel apiserver` on sqlite, `keel
controller-manager --controllers endpoints`, `keel register`).

1. Expiry: `keel register --ttl T` is SIGKILLed; time until its address is gone from the
   Service's Endpoints (goal <= T + 1 s), over several trials (median and worst).
   Baseline in the same run: the same process stopped with SIGINT, which deregisters at
   once; expiry minus T is then the cost of noticing an expiry over a deliberate removal.
2. Idle writes: N registrations kept alive by `KeelClient.register_endpoint` handles for a
   window of several TTLs; store writes counted by the API server (`keel_store_writes_total`,
   as `keel boundary` reads it) and the store revision, before and after (goal: 0 writes;
   renewals are store keep-alives). Baseline: the renewals made in the window, i.e. the
   writes a renew-by-writing design would have made.

    python benchmarks/registration.py [--trials N] [--ttl S] [--registrations N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import _common

from keel.api.resources import Endpoints, Lease, ObjectMeta, Service, ServicePort, ServiceSpec
from keel.cli.boundary import parse_store_writes
from keel.client import KeelClient, NotFound

SERVICE = "bench"
KILL_AFTER = 0.5  # seconds after the address is listed: before the first renewal (ttl/3)
NS = "default"


class ApiServer(_common.ApiServer):
    def client(self) -> KeelClient:
        return KeelClient(self.url, token=self.token)

    def total_writes(self) -> int:
        request = urllib.request.Request(
            self.url + "/metrics", headers={"Authorization": f"Bearer {self.token}"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            writes = parse_store_writes(response.read().decode())
        return sum(sum(verbs.values()) for verbs in writes.values())


def keel(server: ApiServer, work: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    log = (work / f"{name}.log").open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "keel", *args],
        stdout=log,
        stderr=log,
        env={**os.environ, "KEEL_KUBECONFIG": str(server.kubeconfig)},
    )


async def addresses(client: KeelClient) -> set[str]:
    try:
        endpoints = await client.get(Endpoints, SERVICE, namespace=NS)
    except NotFound:
        return set()
    return {f"{a.ip}:{a.port}" for s in endpoints.subsets for a in s.addresses}


async def until(what: str, condition: object, timeout: float) -> float:
    """Poll `condition()` (async) every 5 ms; the seconds it took to hold."""
    t0 = time.monotonic()
    while not await condition():  # type: ignore[operator]
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


async def removal(
    server: ApiServer,
    client: KeelClient,
    work: Path,
    trial: int,
    *,
    ttl: int,
    sig: signal.Signals,
    reactions: list[float],
) -> float:
    """Seconds from `sig` to a `keel register` process until its address left Endpoints;
    appends to `reactions` the seconds from its Lease being gone to that."""
    address = f"10.0.{trial // 250}.{trial % 250 + 1}:80"
    name = f"{sig.name.lower()}-{trial}"
    process = keel(
        server, work, name, "register", SERVICE, "--address", address, "--ttl", str(ttl),
        "--name", name,
    )  # fmt: skip
    try:
        await until("registered", lambda: _has(client, address), 60)
        await asyncio.sleep(KILL_AFTER)
        t0 = time.monotonic()
        os.kill(process.pid, sig)
        lease_gone: float | None = None
        while await _has(client, address):
            if lease_gone is None and not await _lease_exists(client, f"{SERVICE}.{name}"):
                lease_gone = time.monotonic()
            if time.monotonic() - t0 > ttl + 30:
                raise TimeoutError(f"{address} still listed {ttl + 30} s after {sig.name}")
            await asyncio.sleep(0.005)
        gone = time.monotonic()
        reactions.append(gone - (lease_gone or gone))
        return gone - t0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()


async def _lease_exists(client: KeelClient, name: str) -> bool:
    try:
        await client.get(Lease, name, namespace=NS)
    except NotFound:
        return False
    return True


async def _has(client: KeelClient, address: str) -> bool:
    return address in await addresses(client)


async def _lacks(client: KeelClient, address: str) -> bool:
    return address not in await addresses(client)


async def expiry(server: ApiServer, work: Path, trials: int, ttl: int) -> list[str]:
    reactions: list[float] = []
    async with server.client() as client:
        killed = [
            await removal(server, client, work, i, ttl=ttl, sig=signal.SIGKILL, reactions=reactions)
            for i in range(trials)
        ]
        stopped = [
            await removal(server, client, work, 100 + i, ttl=ttl, sig=signal.SIGINT, reactions=[])
            for i in range(trials)
        ]
    worst, median = max(killed), statistics.median(killed)
    base = statistics.median(stopped)
    verdict = "meets" if worst <= ttl + 1 else "MISSES"
    return [
        f"registration expiry, ttl {ttl} s, {trials} trials: SIGKILL -> gone from Endpoints "
        f"median {median:.2f} s, worst {worst:.2f} s ({verdict} the goal <= ttl + 1 = "
        f"{ttl + 1} s; worst = {worst / (ttl + 1):.2f}x the bound)",
        f"  the kill comes {KILL_AFTER:g} s after the registration's create, its last "
        f"keep-alive (renewals every ttl/3), so the store expires it ttl - {KILL_AFTER:g} s "
        f"later; from Lease gone to address gone (the controller's reaction, polled every "
        f"5 ms): median "
        f"{statistics.median(reactions) * 1000:.0f} ms, worst {max(reactions) * 1000:.0f} ms "
        f"-> worst case after a last keep-alive: ttl + {max(reactions):.2f} s",
        f"  baseline, SIGINT (deregisters at once): median {base:.3f} s, worst "
        f"{max(stopped):.3f} s",
    ]


async def idle_writes(server: ApiServer, count: int, ttl: int, window: float) -> list[str]:
    async with server.client() as client:
        handles = [
            await client.register_endpoint(SERVICE, f"10.1.{i // 250}.{i % 250 + 1}", 80, ttl=ttl)
            for i in range(count)
        ]
        try:
            await until("all listed", lambda: _all_listed(client, count), 60)
            await asyncio.sleep(1.0)  # the controller's own write has landed
            writes_before = server.total_writes()
            revision_before = (await client.list(Lease, namespace=NS)).resource_version
            renewals_before = sum(h.renewals for h in handles)
            await asyncio.sleep(window)
            renewals = sum(h.renewals for h in handles) - renewals_before
            writes = server.total_writes() - writes_before
            revision_after = (await client.list(Lease, namespace=NS)).resource_version
            listed = len(await addresses(client))
        finally:
            for handle in handles:
                await handle.close()
    verdict = "meets" if writes == 0 else "MISSES"
    return [
        f"idle writes, {count} live registrations (ttl {ttl} s, {listed} listed) over "
        f"{window:.0f} s: {writes} store writes, store revision {revision_before} -> "
        f"{revision_after} ({verdict} the goal of 0)",
        f"  baseline: {renewals} renewals in the window, each a keep-alive; renewing by "
        f"writing would have made {renewals} writes ({renewals / window:.1f}/s)",
    ]


async def _all_listed(client: KeelClient, count: int) -> bool:
    return sum(a.startswith("10.1.") for a in await addresses(client)) >= count


async def main_async(args: argparse.Namespace) -> int:
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="keel-bench-registration-") as tmp:
        work = Path(tmp)
        state = work / "state"
        state.mkdir()
        server = ApiServer(state)
        manager = keel(
            server, work, "cm", "controller-manager", "--kubeconfig", str(server.kubeconfig),
            "--identity", "cm-bench", "--controllers", "endpoints",
        )  # fmt: skip
        try:
            async with server.client() as client:
                await client.create(
                    Service(
                        metadata=ObjectMeta(name=SERVICE, namespace=NS),
                        spec=ServiceSpec(selector=None, ports=[ServicePort(name="http", port=80)]),
                    )
                )
            lines += await expiry(server, work, args.trials, args.ttl)
            lines += await idle_writes(server, args.registrations, args.idle_ttl, args.window)
        finally:
            manager.send_signal(signal.SIGTERM)
            try:
                manager.wait(timeout=20)
            except subprocess.TimeoutExpired:
                manager.kill()
                manager.wait()
            server.stop()
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--ttl", type=int, default=10, help="TTL of the expiry trials")
    parser.add_argument("--registrations", type=int, default=50)
    parser.add_argument("--idle-ttl", type=int, default=2, help="TTL of the idle registrations")
    parser.add_argument("--window", type=float, default=20.0, help="idle window, seconds")
    parser.add_argument(
        "--quick", action="store_true", help="smoke: 3 trials at ttl 2, 10 registrations, 6 s"
    )
    args = parser.parse_args()
    if args.quick:
        args.trials, args.ttl, args.registrations, args.window = 3, 2, 10, 6.0
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
