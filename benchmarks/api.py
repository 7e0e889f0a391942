"""API server throughput and watch fan-out, through real HTTP, with a same-run baseline.

1. Create and update throughput (p50/p99) at 64 concurrent clients through `keel apiserver`
   on sqlite, against the raw store doing the same writes (create-if-absent txns and CAS
   updates of the same encoded objects) in the same run. Goal: API >= 60% of raw store.
2. Watch fan-out: N HTTP watchers (1,000 and 10,000) on one kind while a writer updates
   objects; aggregate events/s delivered and delivery latency (write sent -> line received).
   Goal at 1,000 watchers: >= 100,000 events/s, p99 < 200 ms.

    python benchmarks/api.py [--duration S] [--watchers 1000,10000] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
from _common import ApiServer, drive, pct

from keel.api.resources import ObjectMeta, Service, ServicePort, ServiceSpec
from keel.store import Compare, Op, open_store

CONCURRENCY = 64


def service(name: str, generation: int = 0) -> Service:
    return Service(
        kind="Service",
        metadata=ObjectMeta(
            name=name,
            namespace="default",
            labels={"app": "bench"},
            annotations={"bench/gen": str(generation)},
        ),
        spec=ServiceSpec(selector={"app": "bench"}, ports=[ServicePort(name="http", port=80)]),
    )


def row(name: str, ops: int, secs: float, lat: list[float]) -> tuple[str, float]:
    rate = ops / secs
    return (
        f"{name:28} {rate:>9.0f}/s  p50 {pct(lat, 0.5):7.2f} ms  p99 {pct(lat, 0.99):7.2f} ms",
        rate,
    )


async def bench_raw_store(path: Path, duration: float) -> dict[str, tuple[str, float]]:
    """The same creates and updates straight on the store (no HTTP, no validation)."""
    encode = msgspec.json.encode
    results: dict[str, tuple[str, float]] = {}
    async with await open_store(f"sqlite:///{path}") as store:

        async def create(w: int, i: int) -> None:
            key = f"/registry/services/default/raw-{w}-{i}".encode()
            result = await store.txn(
                [Compare.create_revision(key, "==", 0)],
                [Op.put(key, encode(service(f"raw-{w}-{i}")))],
                [],
            )
            assert result.succeeded

        created = await drive(CONCURRENCY, duration, create)
        results["create"] = row("raw store create", *created)
        revisions = [0] * CONCURRENCY
        for w in range(CONCURRENCY):
            key = f"/registry/services/default/upd-{w}".encode()
            revisions[w] = await store.put(key, encode(service(f"upd-{w}")))

        async def update(w: int, i: int) -> None:
            key = f"/registry/services/default/upd-{w}".encode()
            result = await store.txn(
                [Compare.mod_revision(key, "==", revisions[w])],
                [Op.put(key, encode(service(f"upd-{w}", i)))],
                [],
            )
            assert result.succeeded
            revisions[w] = result.revision

        results["update"] = row(
            "raw store update (CAS)", *await drive(CONCURRENCY, duration, update)
        )
    return results


async def bench_api(server: ApiServer, duration: float) -> dict[str, tuple[str, float]]:
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    base = f"{server.url}/apis/keel.dev/v1/namespaces/default/services"
    encode = msgspec.json.encode
    results: dict[str, tuple[str, float]] = {}
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(headers=headers, connector=connector) as http:

        async def create(w: int, i: int) -> None:
            async with http.post(base, data=encode(service(f"api-{w}-{i}"))) as response:
                await response.read()
                assert response.status == 201, response.status

        created = await drive(CONCURRENCY, duration, create)
        results["create"] = row("API create (HTTP)", *created)
        versions = [""] * CONCURRENCY
        for w in range(CONCURRENCY):
            async with http.post(base, data=encode(service(f"apiupd-{w}"))) as response:
                body = msgspec.json.decode(await response.read())
                versions[w] = body["metadata"]["resourceVersion"]

        async def update(w: int, i: int) -> None:
            obj = service(f"apiupd-{w}", i)
            obj = msgspec.structs.replace(
                obj, metadata=msgspec.structs.replace(obj.metadata, resource_version=versions[w])
            )
            async with http.put(f"{base}/apiupd-{w}", data=encode(obj)) as response:
                body = msgspec.json.decode(await response.read())
                assert response.status == 200, body
                versions[w] = body["metadata"]["resourceVersion"]

        results["update"] = row(
            "API update (HTTP PUT, OCC)", *await drive(CONCURRENCY, duration, update)
        )
    return results


def watcher_process(url: str, token: str, count: int, duration: float, queue: Any) -> None:
    """One process holding `count` watches; reports (events, latencies sample)."""
    asyncio.run(_watchers(url, token, count, duration, queue))


async def _watchers(url: str, token: str, count: int, duration: float, queue: Any) -> None:
    marker = b'"bench/sent":"'
    received = 0
    first = last = 0.0
    latencies: list[float] = []
    ready = 0
    started = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    async with aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {token}"}, connector=connector, timeout=timeout
    ) as http:

        async def watch(index: int) -> None:
            nonlocal received, ready, first, last
            async with http.get(url) as response:
                assert response.status == 200, response.status
                ready += 1
                if ready == count:
                    started.set()
                buffer = b""
                async for chunk in response.content.iter_any():
                    now = time.time()
                    buffer += chunk
                    *lines, buffer = buffer.split(b"\n")
                    if lines:
                        first = first or now
                        last = now
                    for line in lines:
                        received += 1
                        if index % 50 == 0:
                            at = line.find(marker)
                            if at >= 0:
                                end = line.index(b'"', at + len(marker))
                                latencies.append(now - float(line[at + len(marker) : end]))

        tasks = [asyncio.create_task(watch(i)) for i in range(count)]
        await asyncio.wait_for(started.wait(), 120)
        queue.put(("ready", 0, []))
        begun = time.time()
        await asyncio.sleep(duration)
        # Drain: keep reading until nothing arrived for 2 s (at most 30 s), so a slow
        # delivery is measured as slow rather than as lost. (Counting the quiet from
        # `now - duration` instead of from the start never saw 2 s of quiet when duration
        # was under 2 s: the --quick run always drained the full 30 s.)
        for _ in range(300):
            if time.time() - max(last, begun) > 2.0:
                break
            await asyncio.sleep(0.1)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    queue.put(("done", received, latencies, first, last))


async def bench_fanout(server: ApiServer, watchers: int, duration: float, rate: int) -> str:
    """`watchers` HTTP watches split over two processes; one writer at `rate` updates/s."""
    start_rev = await current_revision(server)
    url = (
        f"{server.url}/apis/keel.dev/v1/namespaces/default/services?watch=true"
        f"&resourceVersion={start_rev}&labelSelector=app%3Dfanout"
    )
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = 2
    workers = [
        ctx.Process(
            target=watcher_process, args=(url, server.token, watchers // procs, duration, queue)
        )
        for _ in range(procs)
    ]
    for proc in workers:
        proc.start()
    for _ in workers:
        assert queue.get(timeout=180)[0] == "ready"
    headers = {"Authorization": f"Bearer {server.token}", "Content-Type": "application/json"}
    base = f"{server.url}/apis/keel.dev/v1/namespaces/default/services"
    writes = 0
    async with aiohttp.ClientSession(headers=headers) as http:
        stop_at = time.perf_counter() + duration
        interval = 1.0 / rate
        next_at = time.perf_counter()
        while time.perf_counter() < stop_at:
            obj = msgspec.structs.replace(
                service(f"fan-{writes}"),
                metadata=ObjectMeta(
                    name=f"fan-{writes}",
                    namespace="default",
                    labels={"app": "fanout"},
                    annotations={"bench/sent": repr(time.time())},
                ),
            )
            async with http.post(base, data=msgspec.json.encode(obj)) as response:
                await response.read()
            writes += 1
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
    received = 0
    latencies: list[float] = []
    spans: list[tuple[float, float]] = []
    for _ in workers:
        _, count, sample, first, last = queue.get(timeout=240)
        received += count
        latencies += sample
        if count:
            spans.append((first, last))
    for proc in workers:
        proc.join(timeout=30)
    expected = writes * watchers
    span = max(b for _, b in spans) - min(a for a, _ in spans) if spans else 0.0
    rate_text = f"{received / span:,.0f}" if span > 0 else "n/a"
    return (
        f"fan-out {watchers:>6} watchers: {writes} writes ({writes / duration:.0f}/s) -> "
        f"{received:,} events delivered ({received / expected:.1%} of {expected:,}) in "
        f"{span:.1f} s = {rate_text} events/s; delivery p50 {pct(latencies, 0.5):.1f} ms, "
        f"p99 {pct(latencies, 0.99):.1f} ms"
    )


async def current_revision(server: ApiServer) -> str:
    headers = {"Authorization": f"Bearer {server.token}"}
    async with (
        aiohttp.ClientSession(headers=headers) as http,
        http.get(f"{server.url}/apis/keel.dev/v1/namespaces/default/services?limit=1") as response,
    ):
        body = msgspec.json.decode(await response.read())
        return str(body["metadata"]["resourceVersion"])


async def main_async(args: argparse.Namespace) -> int:
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="keel-bench-api-") as tmp:
        work = Path(tmp)
        raw = await bench_raw_store(work / "raw.db", args.duration)
        server = ApiServer(work / "state")
        try:
            api = await bench_api(server, args.duration)
            for name in ("create", "update"):
                lines += [raw[name][0], api[name][0]]
                lines.append(
                    f"  API {name} = {api[name][1] / raw[name][1]:.0%} of the raw store "
                    "(goal >= 60%)"
                )
            for watchers in args.watchers:
                # the offered load: `rate` writes/s, at most 150,000 events/s in all
                rate = max(1, min(args.rate, 150_000 // watchers))
                lines.append(await bench_fanout(server, watchers, args.duration, rate))
        finally:
            server.stop()
    print("\n".join(lines))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--watchers", default="1000,10000")
    parser.add_argument("--rate", type=int, default=150, help="writes/s during fan-out")
    parser.add_argument("--quick", action="store_true", help="smoke: 1 s, 100 watchers")
    args = parser.parse_args()
    if args.quick:
        args.duration, args.watchers = 1.0, "100"
    args.watchers = [int(w) for w in args.watchers.split(",")]
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
