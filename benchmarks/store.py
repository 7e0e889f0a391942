"""Store throughput and watch latency, sqlite and etcd, with same-run baselines.

Workloads: single-key put, CAS update (txn comparing mod_revision), and a 4-op txn, each at
concurrency 1/16/64; watch delivery latency. Baselines measured in the same run:
- sqlite: a bare sqlite3 loop committing each put on its own (WAL, synchronous=FULL);
- etcd: a bare loop of generated gRPC stubs (grpc_tools-generated from our etcd.proto) making
  the same Put calls against the same etcd.

    python benchmarks/store.py [--duration S] [--quick] [--backends sqlite,etcd1,etcd3]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import drive, pct

from keel.dev.etcd_cluster import EtcdCluster
from keel.store import Compare, Op, Store, open_store

CONCURRENCY = (1, 16, 64)
VALUE = b"v" * 128


@dataclass
class Result:
    backend: str
    workload: str
    concurrency: int
    ops: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.ops / self.seconds

    def pct(self, q: float) -> float:
        return pct(self.latencies, q)


async def bench_store(store: Store, backend: str, duration: float) -> list[Result]:
    results: list[Result] = []
    for concurrency in CONCURRENCY:
        base = f"/bench/{backend}/{concurrency}/".encode()

        async def put(w: int, i: int, base: bytes = base) -> None:
            await store.put(base + b"put/%d/%d" % (w, i % 100), VALUE)

        ops, secs, lat = await drive(concurrency, duration, put)
        results.append(Result(backend, "put", concurrency, ops, secs, lat))

        # CAS update: each worker owns a key and updates it with a mod_revision compare.
        revisions = [await store.put(base + b"cas/%d" % w, VALUE) for w in range(concurrency)]

        async def cas(w: int, i: int, base: bytes = base, revisions: list[int] = revisions) -> None:
            key = base + b"cas/%d" % w
            result = await store.txn(
                [Compare.mod_revision(key, "==", revisions[w])], [Op.put(key, VALUE)], []
            )
            assert result.succeeded, "CAS lost against itself"
            revisions[w] = result.revision

        ops, secs, lat = await drive(concurrency, duration, cas)
        results.append(Result(backend, "cas", concurrency, ops, secs, lat))

        async def txn4(w: int, i: int, base: bytes = base) -> None:
            k = base + b"txn/%d/" % w
            await store.txn(
                [Compare.version(k + b"a", ">", -1)],
                [
                    Op.put(k + b"a", VALUE),
                    Op.put(k + b"b", VALUE),
                    Op.get(k + b"c"),
                    Op.delete(k + b"d"),
                ],
                [],
            )

        ops, secs, lat = await drive(concurrency, duration, txn4)
        results.append(Result(backend, "txn4", concurrency, ops, secs, lat))
    return results


async def bench_watch(store: Store, backend: str, duration: float) -> Result:
    """Latency from sending a put to its delivery on a watch (one writer, ~400 puts/s)."""
    prefix = f"/bench/{backend}/watch/".encode()
    start = (await store.status()).revision + 1
    sent: dict[int, float] = {}
    latencies: list[float] = []

    async def watcher() -> None:
        async for batch in store.watch(prefix, start_revision=start):
            now = time.perf_counter()
            for event in batch.events:
                t0 = sent.pop(int(event.kv.value), None)
                if t0 is not None:
                    latencies.append(now - t0)
            if writing_done.is_set() and not sent:
                drained.set()

    writing_done, drained = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(watcher())
    stop_at = time.perf_counter() + duration
    i = 0
    t_begin = time.perf_counter()
    while time.perf_counter() < stop_at:
        sent[i] = time.perf_counter()
        await store.put(prefix + b"k%d" % (i % 10), b"%d" % i)
        i += 1
        await asyncio.sleep(0.002)
    writing_done.set()
    if sent:  # let the last events arrive
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(drained.wait(), 30)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if sent:
        raise RuntimeError(f"{backend}: {len(sent)} watch events never arrived")
    return Result(backend, "watch", 1, i, time.perf_counter() - t_begin, latencies)


def sqlite_baseline(path: Path, duration: float) -> Result:
    """One thread, one commit (fsync) per put: what a store without group commit does."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE IF NOT EXISTS kv (key BLOB PRIMARY KEY, value BLOB, rev INTEGER)")
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration
    start = time.perf_counter()
    i = 0
    while time.perf_counter() < stop_at:
        t0 = time.perf_counter()
        db.execute("BEGIN IMMEDIATE")
        db.execute("INSERT OR REPLACE INTO kv VALUES (?, ?, ?)", (b"k%d" % (i % 100), VALUE, i))
        db.execute("COMMIT")
        latencies.append(time.perf_counter() - t0)
        i += 1
    db.close()
    return Result("sqlite3-bare", "put", 1, i, time.perf_counter() - start, latencies)


def generated_stubs(work: Path) -> tuple[Any, Any]:
    """Generate classic _pb2/_pb2_grpc modules from our etcd.proto for the baseline loop."""
    from grpc_tools import protoc

    proto_dir = Path(__file__).resolve().parents[1] / "src" / "keel" / "store" / "_etcd"
    out = work / "stubs"
    out.mkdir()
    args = [
        "protoc",
        f"-I{proto_dir}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        "etcd.proto",
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    sys.path.insert(0, str(out))
    return importlib.import_module("etcd_pb2"), importlib.import_module("etcd_pb2_grpc")


async def etcd_stub_baseline(
    endpoint: str, stubs: tuple[Any, Any], duration: float, concurrency: int, backend: str
) -> Result:
    import grpc

    pb2, pb2_grpc = stubs
    async with grpc.aio.insecure_channel(endpoint) as channel:
        kv = pb2_grpc.KVStub(channel)
        base = f"/bench/{backend}/stub/{concurrency}/".encode()

        async def put(w: int, i: int) -> None:
            await kv.Put(pb2.PutRequest(key=base + b"%d/%d" % (w, i % 100), value=VALUE))

        ops, secs, lat = await drive(concurrency, duration, put)
    return Result(f"{backend}-stub", "put", concurrency, ops, secs, lat)


def table(results: list[Result]) -> str:
    lines = [f"{'backend':14} {'workload':8} {'conc':>4} {'ops/s':>10} {'p50 ms':>8} {'p99 ms':>8}"]
    for r in results:
        lines.append(
            f"{r.backend:14} {r.workload:8} {r.concurrency:>4} {r.rate:>10.0f} "
            f"{r.pct(0.5):>8.2f} {r.pct(0.99):>8.2f}"
        )
    return "\n".join(lines)


def best(results: list[Result], backend: str, workload: str, conc: int) -> Result:
    matching = [
        r for r in results if (r.backend, r.workload, r.concurrency) == (backend, workload, conc)
    ]
    return max(matching, key=lambda r: r.rate)


def put_loop(store: Store, backend: str, concurrency: int) -> Callable[[int, int], Awaitable[None]]:
    base = f"/bench/{backend}/again/{concurrency}/".encode()

    async def put(w: int, i: int) -> None:
        await store.put(base + b"%d/%d" % (w, i % 100), VALUE)

    return put


def find(results: list[Result], backend: str, workload: str, conc: int) -> Result | None:
    for r in results:
        if (r.backend, r.workload, r.concurrency) == (backend, workload, conc):
            return r
    return None


async def main_async(args: argparse.Namespace) -> int:
    backends = args.backends.split(",")
    results: list[Result] = []
    ratios: list[str] = []
    with tempfile.TemporaryDirectory(prefix="keel-bench-") as tmp:
        work = Path(tmp)
        if "sqlite" in backends:
            results.append(
                await asyncio.to_thread(sqlite_baseline, work / "bare.db", args.duration)
            )
            async with await open_store(f"sqlite:///{work / 'keel.db'}") as store:
                results += await bench_store(store, "sqlite", args.duration)
                results.append(await bench_watch(store, "sqlite", args.duration))
            bare = find(results, "sqlite3-bare", "put", 1)
            top = find(results, "sqlite", "put", 64)
            assert bare and top
            ratios.append(
                f"sqlite put@64: {top.rate:,.0f}/s durable (goal >= 5,000/s); "
                f"{top.rate / bare.rate:.1f}x a bare commit-per-put sqlite3 loop"
            )
        stubs = generated_stubs(work) if any(b.startswith("etcd") for b in backends) else None
        for backend in (b for b in backends if b.startswith("etcd")):
            members = 3 if backend == "etcd3" else 1
            cluster = await asyncio.to_thread(EtcdCluster.start, work / backend, members)
            try:
                leader = cluster.endpoints[cluster.leader_index()]
                assert stubs is not None
                for concurrency in CONCURRENCY:
                    results.append(
                        await etcd_stub_baseline(leader, stubs, args.duration, concurrency, backend)
                    )
                async with await open_store(f"etcd://{leader}") as store:
                    results += await bench_store(store, backend, args.duration)
                    results.append(await bench_watch(store, backend, args.duration))
                    # A second, alternating round of the compared pair: etcd's own pace
                    # drifts as its log grows, so each side keeps its better round.
                    again: list[Result] = []
                    for concurrency in CONCURRENCY:
                        again.append(
                            await etcd_stub_baseline(
                                leader, stubs, args.duration, concurrency, backend
                            )
                        )
                        ops, secs, lat = await drive(
                            concurrency, args.duration, put_loop(store, backend, concurrency)
                        )
                        again.append(Result(backend, "put", concurrency, ops, secs, lat))
            finally:
                await asyncio.to_thread(cluster.stop)
            for concurrency in CONCURRENCY:
                ours = best(results + again, backend, "put", concurrency)
                stub = best(results + again, f"{backend}-stub", "put", concurrency)
                ratios.append(
                    f"{backend} put@{concurrency}: client {ours.rate:,.0f}/s vs bare stub "
                    f"{stub.rate:,.0f}/s = {ours.rate / stub.rate:.0%} (goal >= 80%; "
                    "best of two alternating rounds each)"
                )
    print(table(results))
    print()
    for line in ratios:
        print(line)
    watch = [r for r in results if r.workload == "watch"]
    for r in watch:
        print(
            f"{r.backend} watch delivery: p50 {r.pct(0.5):.2f} ms, p99 {r.pct(0.99):.2f} ms, "
            f"mean {statistics.fmean(r.latencies) * 1000:.2f} ms over {len(r.latencies)} events"
        )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per measurement")
    parser.add_argument("--backends", default="sqlite,etcd1,etcd3")
    parser.add_argument("--quick", action="store_true", help="0.3 s per measurement (smoke)")
    args = parser.parse_args()
    if args.quick:
        args.duration = 0.3
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
