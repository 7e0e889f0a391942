"""Scheduler throughput and latency on hollow nodes: real processes (`keel apiserver`,
`keel controller-manager` for node lifecycle, `keel dev hollow-nodes`, `keel scheduler`),
binding writes included. Per store backend and scenario, N Instances are created (64 in
flight) while the scheduler runs: placements/s from the first create to the last binding,
and pending-to-bound latency p50/p99 (create answered -> binding seen by a watch). With
--backlog they are created while the scheduler is stopped (SIGSTOP) and timed from its
resume instead. Scenarios:
- basic: 100m/64Mi each, no constraints;
- spread: a topology spread constraint over zones (maxSkew 1, DoNotSchedule);
- anti-affinity: groups of at most one Instance per node (10 groups for 50,000 on 5,000),
  required anti-affinity within a group over nodes: the last of a group fit one node only;
- fill: Instances of 1 cpu, exactly as many as whole cpus are left on the nodes (counted
  from the Instances bound so far), so that the nodes end up full and several schedulers
  race for their last rooms (the conflict rate shows it);
- preemption: the nodes are first filled with priority-0 Instances, then N/10 Instances of
  priority 100 each preempt one (eviction, nomination, binding).
Hollow nodes hold their leases but do not report Instances Running unless --hollow-reports
(kube's scheduler_perf runs no kubelets either; a report is one more write per Instance, on
the same API server). Baseline, same run: as many binding transactions (compare
mod_revision, put the bound Instance) written straight to the store, 64 in flight as the
scheduler's bindings.

With `--schedulers 1,2,4` each count runs on a fresh platform: 1 is one leader, more are that
many `keel scheduler --shards 4` processes placing at once over all Nodes; the table adds
the conflict rate (bindings the API server refused because another scheduler took the room
or the Instance first, over all bindings sent), scraped from each scheduler's /metrics.

    python benchmarks/scheduler.py [--nodes 5000] [--instances 50000] [--quick]
        [--backends sqlite,etcd3] [--scenarios basic,spread,anti-affinity,preemption]
        [--schedulers 1,2,4]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import socket
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the process launchers

import msgspec  # noqa: E402
from _common import pct  # noqa: E402
from support import ApiServer, KeelProcess  # noqa: E402

from keel.api.resources import (  # noqa: E402
    Instance,
    InstanceSpec,
    Lease,
    Namespace,
    Node,
    ObjectMeta,
)
from keel.client import AlreadyExists, KeelClient  # noqa: E402
from keel.store import Compare, Op, open_store  # noqa: E402

CONCURRENCY = 64
NODE_CPU = 4  # raised for dense runs: room for three scenarios of 100m each and a filler
GOALS = {"basic": 1000, "anti-affinity": 300, "preemption": 300}


@dataclass
class Row:
    backend: str
    scenario: str
    instances: int
    nodes: int
    rate: float
    p50: float
    p99: float
    baseline: float
    schedulers: int = 1
    conflict_rate: float = 0.0  # refused bindings / bindings sent, all schedulers
    notes: list[str] = field(default_factory=list)


GROUPS = 10  # anti-affinity groups: set from the sizes, so that every group fits


def spec_of(scenario: str, index: int) -> dict[str, Any]:
    base: dict[str, Any] = {
        "command": ["hollow"],
        "resources": {"cpu": "100m", "memory": "64Mi"},
    }
    if scenario == "spread":
        base["topologySpreadConstraints"] = [
            {
                "maxSkew": 1,
                "topologyKey": "zone",
                "whenUnsatisfiable": "DoNotSchedule",
                "labelSelector": {"matchLabels": {"app": "spread"}},
            }
        ]
    elif scenario == "anti-affinity":
        group = f"g{index % GROUPS}"
        base["affinity"] = {
            "instanceAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"labelSelector": {"matchLabels": {"group": group}}, "topologyKey": "node"}
                ]
            }
        }
    elif scenario == "preemption":
        base["priority"] = 100
        base["resources"] = {"cpu": "1", "memory": "64Mi"}
    elif scenario in ("filler", "fill"):
        base["resources"] = {"cpu": "1", "memory": "64Mi"}
    return base


def labels_of(scenario: str, index: int) -> dict[str, str]:
    if scenario == "spread":
        return {"app": "spread"}
    if scenario == "anti-affinity":
        return {"group": f"g{index % GROUPS}"}
    return {"app": scenario}


def instance(ns: str, scenario: str, index: int) -> Instance:
    return Instance(
        metadata=ObjectMeta(
            name=f"{scenario}-{index}", namespace=ns, labels=labels_of(scenario, index)
        ),
        spec=msgspec.convert(spec_of(scenario, index), InstanceSpec),
    )


async def create_all(client: KeelClient, objects: list[Instance]) -> dict[str, float]:
    created: dict[str, float] = {}
    queue = list(reversed(objects))

    async def worker() -> None:
        while queue:
            obj = queue.pop()
            await client.create(obj)
            created[obj.metadata.name] = time.monotonic()

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
    return created


class BoundWatch:
    """Records when each Instance of a namespace is first seen bound."""

    def __init__(self, client: KeelClient, ns: str) -> None:
        self.client = client
        self.ns = ns
        self.bound: dict[str, float] = {}
        self.changed = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        listed = await self.client.list(Instance, namespace=self.ns)
        self.task = asyncio.get_running_loop().create_task(self._run(listed.resource_version))

    async def _run(self, rv: str) -> None:
        async for event in self.client.watch(Instance, namespace=self.ns, resource_version=rv):
            now = time.monotonic()
            objects = event.objects if event.type == "RELIST" else (event.object,)
            for obj in objects:
                if obj is not None and obj.spec.node_name:
                    self.bound.setdefault(obj.metadata.name, now)
            self.changed.set()

    async def wait(self, names: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not names <= self.bound.keys():
            left = deadline - time.monotonic()
            if left <= 0:
                missing = len(names - self.bound.keys())
                raise SystemExit(f"timed out: {missing} of {len(names)} not bound in {self.ns}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), min(left, 1.0))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def wait_until(what: str, check: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


async def ready_nodes(client: KeelClient) -> int:
    nodes = (await client.list(Node)).items
    return sum(
        1
        for n in nodes
        if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions)
    )


class Schedulers:
    """The scheduler processes of one platform, with their /metrics ports."""

    def __init__(self, api: ApiServer, base: Path, count: int) -> None:
        self.ports = [_free_port() for _ in range(count)]
        # Several: shard leases with a short TTL, so that the first replica gives shards back
        # to the others within seconds (one alone keeps its lease for the whole run).
        shards = ("--shards", "4", "--lease-ttl", "5") if count > 1 else ("--lease-ttl", "600")
        self.processes = [
            KeelProcess(
                "scheduler",
                "--kubeconfig",
                str(api.kubeconfig_for("scheduler")),
                "--identity",
                f"bench-{n}",
                "--log-level",
                "WARNING",
                *shards,
                "--metrics-listen",
                f"127.0.0.1:{port}",
                log_dir=base,
                name=f"scheduler-{n}",
            ).start()
            for n, port in enumerate(self.ports)
        ]

    def signal(self, sig: signal.Signals) -> None:
        for process in self.processes:
            process.signal(sig)

    def totals(self) -> tuple[float, float]:
        """Bindings accepted and refused so far, over every scheduler."""
        placed = refused = 0.0
        for port in self.ports:
            url = f"http://127.0.0.1:{port}/metrics"
            with urllib.request.urlopen(url, timeout=10) as response:
                for line in response.read().decode().splitlines():
                    if line.startswith("keel_scheduler_placements_total"):
                        placed += float(line.rsplit(" ", 1)[1])
                    elif line.startswith("keel_scheduler_binding_conflicts_total"):
                        refused += float(line.rsplit(" ", 1)[1])
        return placed, refused


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def run_scenario(
    client: KeelClient,
    scheduler: Schedulers,
    scenario: str,
    count: int,
    *,
    timeout: float,
    backlog: bool,
) -> tuple[float, float, float]:
    """Create `count` Instances (64 in flight) and time them until bound: placements/s from
    the first create to the last binding, latency from each create to its binding. With
    `backlog`, the scheduler is stopped (SIGSTOP) while they are created and timed from its
    resume instead."""
    ns = f"bench-{scenario}"
    with contextlib.suppress(AlreadyExists):
        await client.create(Namespace(metadata=ObjectMeta(name=ns)))
    objects = [instance(ns, scenario, i) for i in range(count)]
    watch = BoundWatch(client, ns)
    await watch.start()
    if backlog:
        scheduler.signal(signal.SIGSTOP)
    begin = time.monotonic()
    try:
        created = await create_all(client, objects)
    finally:
        if backlog:
            scheduler.signal(signal.SIGCONT)
    done = time.monotonic()
    start = done if backlog else begin
    print(
        f"  {scenario}: {count:,} created at {count / (done - begin):,.0f}/s"
        + (" with the scheduler stopped; resumed" if backlog else ""),
        flush=True,
    )
    await watch.wait({o.metadata.name for o in objects}, timeout)
    await watch.stop()
    last = max(watch.bound.values())
    latencies = [max(0.0, watch.bound[name] - max(created[name], start)) for name in created]
    return count / max(last - start, 1e-9), pct(latencies, 0.5), pct(latencies, 0.99)


async def free_cpu_slots(client: KeelClient) -> int:
    """Whole cpus left over all Nodes, from the Instances bound to them."""
    used: dict[str, int] = {}
    for item in (await client.list(Instance)).items:
        if item.spec.node_name:
            used[item.spec.node_name] = (
                used.get(item.spec.node_name, 0) + item.spec.resources.millicpu
            )
    nodes = [n.metadata.name for n in (await client.list(Node)).items]
    return sum((NODE_CPU * 1000 - used.get(name, 0)) // 1000 for name in nodes)


async def fill_nodes(client: KeelClient, timeout: float) -> None:
    """Priority-0 Instances of 1 cpu until every node is full (not timed): as many as fit in
    the room the earlier scenarios left on each node (spread over zones of unequal sizes
    leaves unequal room)."""
    capacity = {n.metadata.name: n.spec.capacity for n in (await client.list(Node)).items}
    used_cpu = dict.fromkeys(capacity, 0)
    used_memory = dict.fromkeys(capacity, 0)
    for i in (await client.list(Instance)).items:
        if i.spec.node_name in capacity and i.status.phase not in ("Succeeded", "Failed"):
            used_cpu[i.spec.node_name] += i.spec.resources.millicpu
            used_memory[i.spec.node_name] += i.spec.resources.memory_bytes
    filler = instance("", "filler", 0).spec.resources
    count = sum(
        max(
            0,
            min(
                (c.millicpu - used_cpu[name]) // filler.millicpu,
                (c.memory_bytes - used_memory[name]) // filler.memory_bytes,
            ),
        )
        for name, c in capacity.items()
    )
    if count <= 0:
        return
    ns = "bench-filler"
    await client.create(Namespace(metadata=ObjectMeta(name=ns)))
    objects = [instance(ns, "filler", i) for i in range(count)]
    watch = BoundWatch(client, ns)
    await watch.start()
    await create_all(client, objects)
    await watch.wait({o.metadata.name for o in objects}, timeout)
    await watch.stop()


async def store_baseline(url: str, count: int) -> float:
    """Binding transactions straight to the store: CAS on mod_revision, 64 in flight."""
    store = await open_store(url)
    try:
        prefix = f"/bench-baseline/{os.getpid()}-{time.monotonic_ns()}/"
        body = msgspec.json.encode(instance("baseline", "basic", 0))
        bound = body.replace(b'"nodeName":""', b'"nodeName":"hollow-0001"')
        revisions: dict[bytes, int] = {}
        keys = [f"{prefix}{i}".encode() for i in range(count)]
        queue = list(keys)

        async def put_worker() -> None:
            while queue:
                key = queue.pop()
                revisions[key] = await store.put(key, body)

        await asyncio.gather(*(put_worker() for _ in range(CONCURRENCY)))
        queue = list(keys)
        start = time.perf_counter()

        async def bind_worker() -> None:
            while queue:
                key = queue.pop()
                result = await store.txn(
                    [Compare.mod_revision(key, "==", revisions[key])], [Op.put(key, bound)], []
                )
                assert result.succeeded

        await asyncio.gather(*(bind_worker() for _ in range(CONCURRENCY)))
        return count / (time.perf_counter() - start)
    finally:
        await store.close()


async def bench_backend(
    backend: str, store_url: str | None, base: Path, args: argparse.Namespace, schedulers: int
) -> list[Row]:
    api = ApiServer(
        base / "api",
        "--admission-rate", "1000000", "--admission-burst", "1000000",
        store=store_url,
    ).start()  # fmt: skip
    processes: list[KeelProcess] = [api]
    rows: list[Row] = []
    try:
        manager = KeelProcess(
            "controller-manager",
            "--kubeconfig", str(api.kubeconfig_for("controller")), "--identity", "bench-cm",
            "--controllers", "nodelifecycle", "--lease-ttl", "30",
            log_dir=base, name="controller-manager",
        ).start()  # fmt: skip
        processes.append(manager)
        hollow = KeelProcess(
            "dev", "hollow-nodes", "--count", str(args.nodes), "--clusters", str(args.clusters),
            "--capacity", f"cpu={NODE_CPU},memory=16Gi", "--lease-duration", "600",
            "--kubeconfig", str(api.kubeconfig), "--log-level", "WARNING",
            *(() if args.hollow_reports else ("--no-report",)),
            log_dir=base, name="hollow",
        ).start()  # fmt: skip
        processes.append(hollow)
        scheduler = Schedulers(api, base, schedulers)
        processes += scheduler.processes
        async with KeelClient.from_kubeconfig(api.kubeconfig) as client:
            started = time.monotonic()

            async def all_ready() -> bool:
                return await ready_nodes(client) >= args.nodes

            await wait_until(f"{args.nodes} Ready hollow nodes", all_ready, args.timeout)
            print(
                f"{backend}: {args.nodes} hollow nodes Ready after "
                f"{time.monotonic() - started:.1f} s",
                flush=True,
            )

            async def leading() -> bool:
                leases = (await client.list(Lease, namespace="keel-system")).items
                held = {
                    lease.spec.holder_identity
                    for lease in leases
                    if lease.metadata.name.startswith("scheduler") and lease.spec.holder_identity
                }
                return len(held) >= schedulers  # each holds a lease (or shards)

            await wait_until("the schedulers leading", leading, 60)
            baseline_url = store_url or f"sqlite:///{base / 'baseline.db'}"
            baseline = await store_baseline(baseline_url, args.instances)
            for scenario in args.scenarios:
                count = args.instances
                if scenario == "preemption":
                    await fill_nodes(client, args.timeout)
                    count = max(1, args.instances // 10)
                elif scenario == "fill":
                    count = max(1, await free_cpu_slots(client))
                placed_before, refused_before = scheduler.totals()
                rate, p50, p99 = await run_scenario(
                    client,
                    scheduler,
                    scenario,
                    count,
                    timeout=args.timeout,
                    backlog=args.backlog,
                )
                placed, refused = scheduler.totals()
                sent = (placed - placed_before) + (refused - refused_before)
                conflicts = (refused - refused_before) / sent if sent else 0.0
                row = Row(
                    backend, scenario, count, args.nodes, rate, p50, p99, baseline,
                    schedulers=schedulers, conflict_rate=conflicts,
                )  # fmt: skip
                rows.append(row)
                print(format_row(row), flush=True)
    finally:
        for process in reversed(processes):
            process.stop(timeout=60)
    return rows


HEADER = (
    f"{'backend':<8} {'sched':>5} {'scenario':<14} {'instances':>9} {'nodes':>6} "
    f"{'placements/s':>12} {'p50 ms':>8} {'p99 ms':>8} {'conflicts':>9} "
    f"{'store binds/s':>13} {'goal':>6}"
)


def format_row(row: Row) -> str:
    goal = GOALS.get(row.scenario)
    verdict = "" if goal is None else ("met" if row.rate >= goal else f"<{goal}")
    return (
        f"{row.backend:<8} {row.schedulers:>5} {row.scenario:<14} {row.instances:>9,} "
        f"{row.nodes:>6,} {row.rate:>12,.0f} {row.p50:>8,.0f} {row.p99:>8,.0f} "
        f"{row.conflict_rate:>8.1%} {row.baseline:>13,.0f} {verdict:>6}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else "")
    parser.add_argument("--nodes", type=int, default=5000)
    parser.add_argument("--instances", type=int, default=50000)
    parser.add_argument("--clusters", type=int, default=5)
    parser.add_argument("--backends", default="sqlite")
    parser.add_argument("--scenarios", default="basic,spread,anti-affinity,preemption")
    parser.add_argument("--timeout", type=float, default=1800.0)
    parser.add_argument(
        "--schedulers",
        default="1",
        help="comma-separated scheduler counts, each on a fresh platform (e.g. 1,2,4)",
    )
    parser.add_argument("--quick", action="store_true", help="50 nodes, 500 instances")
    parser.add_argument(
        "--backlog",
        action="store_true",
        help="create each scenario's Instances with the scheduler stopped (SIGSTOP), then "
        "time it from its resume (its watch may fall behind and relist)",
    )
    parser.add_argument(
        "--hollow-reports",
        action="store_true",
        help="hollow nodes also report each bound Instance Running (one more write each; "
        "by default they only hold their leases, as kube's scheduler_perf has no kubelets)",
    )
    args = parser.parse_args()
    if args.quick:
        args.nodes, args.instances, args.clusters, args.timeout = 50, 500, 2, 300.0
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    global GROUPS, NODE_CPU  # noqa: PLW0603 - settings for the helpers below
    per_node = -(-args.instances // args.nodes)
    GROUPS = max(10, per_node)
    NODE_CPU = max(4, -(-3 * per_node // 10) + 1)
    unknown = set(args.scenarios) - {"basic", "spread", "anti-affinity", "fill", "preemption"}
    if unknown:
        raise SystemExit(f"--scenarios: unknown {sorted(unknown)}")
    try:
        counts = [int(c) for c in args.schedulers.split(",") if c]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise SystemExit(f"--schedulers: expected counts like 1,2,4, got {args.schedulers!r}")
    rows: list[Row] = []
    for backend in [b for b in args.backends.split(",") if b]:
        for count in counts:
            with tempfile.TemporaryDirectory(prefix=f"keel-bench-sched-{backend}-") as tmp:
                base = Path(tmp)
                if backend == "sqlite":
                    rows += await bench_backend(backend, None, base, args, count)
                elif backend.startswith("etcd"):
                    from keel.dev.etcd_cluster import EtcdCluster

                    members = int(backend[4:] or "1")
                    cluster = EtcdCluster.start(base / "etcd", members)
                    try:
                        rows += await bench_backend(backend, cluster.url, base, args, count)
                    finally:
                        cluster.stop()
                else:
                    raise SystemExit(f"--backends: unknown {backend!r} (sqlite, etcd1, etcd3)")
    print()
    print(HEADER)
    for row in rows:
        print(format_row(row))


def _exit_on_sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit("terminated")  # so that every started process is stopped on the way out


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    asyncio.run(main())
