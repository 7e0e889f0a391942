"""One `keel verify` run, end to end: build the cluster, run the workloads under the nemesis,
heal, measure convergence, collect the store's own history, tear everything down, check.

The run directory holds everything a reader needs afterwards: `history.jsonl` (every workload
operation and nemesis step), `exclusive.jsonl` and `duplicates.jsonl` (what the probe
processes themselves logged), `logs/` (every component), `schedule.json`, `verdicts.json` and
`report.html`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from keel.api.resources import Deployment, Endpoints, Instance
from keel.store import open_store
from keel.verify.cluster import ClusterShape, HostInfo, VerifyCluster
from keel.verify.history import Verdict, load_history
from keel.verify.nemesis import Nemesis, Network, expand, schedule
from keel.verify.workloads import EXCLUSIVE, NAMESPACE, PLAIN, Recorder, WorkloadOptions, Workloads

__all__ = ["RunOptions", "RunResult", "verify"]


@dataclass(frozen=True)
class RunOptions:
    run_dir: Path
    seed: int
    duration: float = 60.0
    faults: tuple[str, ...] = ("partition", "kill", "pause", "slow-disk")
    ordered_faults: bool = False
    shape: ClusterShape = field(default_factory=ClusterShape)
    workloads: WorkloadOptions = field(default_factory=WorkloadOptions)
    convergence_bound: float = 60.0
    slow_disk_ms: int = 300
    rollout: bool = True


@dataclass
class RunResult:
    run_dir: Path
    verdicts: list[Verdict]
    convergence_seconds: float | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        return all(v.valid for v in self.verdicts)


async def verify(options: RunOptions, *, say: Callable[[str], None] = print) -> RunResult:
    """Run the whole verification and return the verdicts (the report is written too)."""
    run_dir = options.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    shape = options.shape
    kinds = expand(options.faults, shape.store)
    faults = schedule(
        options.seed, kinds, options.duration, ordered=options.ordered_faults, store=shape.store
    )
    (run_dir / "schedule.json").write_text(
        json.dumps(
            {
                "seed": options.seed,
                "duration": options.duration,
                "command": (
                    f"keel verify --store {shape.store} --seed {options.seed}"
                    f" --duration {options.duration:g} --faults {','.join(options.faults)}"
                    + "".join(f" --broken {mode}" for mode in options.workloads.broken)
                ),
                "shape": asdict(shape),
                "faults": [f.to_json() for f in faults],
            },
            indent=2,
        )
        + "\n"
    )
    recorder = Recorder(run_dir / "history.jsonl")
    fabric: Any = None
    network: Network | None = None
    try:
        if shape.store == "etcd":
            from keel.verify.fabric import NamespaceNetwork

            network = NamespaceNetwork.create(run_dir, shape.hosts)
            fabric = network
            hosts = network.hosts()
            _note_in_schedule(
                run_dir, prefix=network.fabric.prefix, subnet=str(network.fabric.layout.subnet)
            )
        else:
            from keel.verify.fabric import LoopbackNetwork

            network = LoopbackNetwork()
            hosts = [HostInfo("loopback", "127.0.0.1")]
        cluster = VerifyCluster.plan(shape, run_dir, hosts)
        say(
            f"keel verify: {len(hosts)} host(s), {len(cluster.components)} processes"
            f" ({shape.store} store), seed {options.seed}, {len(faults)} fault(s) over"
            f" {options.duration:.0f}s; run directory {run_dir}"
        )
        if fabric is not None:
            for component in cluster.components.values():
                component.on_start = fabric.record_pid
        try:
            await cluster.start()
            say("keel verify: cluster up; starting workloads")
            result = await _exercise(
                options,
                cluster=cluster,
                network=network,
                recorder=recorder,
                faults=faults,
                say=say,
            )
        finally:
            say("keel verify: stopping the cluster")
            await cluster.stop()
    finally:
        if fabric is not None:
            fabric.destroy()
        recorder.close()
    say("keel verify: checking the histories")
    from keel.verify.checks import check_all

    result.verdicts = check_all(run_dir)
    (run_dir / "verdicts.json").write_text(
        json.dumps([v.to_json() for v in result.verdicts], indent=2, default=str) + "\n"
    )
    from keel.verify.report import write_report

    write_report(run_dir)
    return result


def _note_in_schedule(run_dir: Path, **facts: Any) -> None:
    path = run_dir / "schedule.json"
    schedule = json.loads(path.read_text())
    schedule.update(facts)
    path.write_text(json.dumps(schedule, indent=2) + "\n")


async def _exercise(
    options: RunOptions,
    *,
    cluster: VerifyCluster,
    network: Network | None,
    recorder: Recorder,
    faults: list[Any],
    say: Callable[[str], None],
) -> RunResult:
    store_url = (
        "etcd://" + ",".join(cluster.etcd_endpoints)
        if cluster.etcd_endpoints
        else f"sqlite:///{cluster.run_dir / 'data' / 'keel.db'}"
    )
    workloads = Workloads(
        api_urls=cluster.api_urls,
        token=cluster.admin_token,
        store_url=store_url,
        run_dir=cluster.run_dir,
        recorder=recorder,
        options=_store_aware(options.workloads, cluster),
        rng=random.Random(options.seed),
    )
    await workloads.setup()
    if "exclusive" in workloads.options.workloads:
        say("keel verify: waiting for the probe deployments to run")
        await _wait_converged(cluster, workloads, timeout=90.0)
    nemesis = Nemesis(cluster, network, recorder, slow_disk_ms=options.slow_disk_ms)
    loop = asyncio.get_running_loop()
    started = loop.time()
    workloads.start()
    rollout_task = None
    if options.rollout and "exclusive" in workloads.options.workloads:

        async def rollout_midway() -> None:
            await asyncio.sleep(options.duration / 2)
            await workloads.rollout()

        rollout_task = asyncio.create_task(rollout_midway())
    try:
        nemesis_task = asyncio.create_task(nemesis.run(faults, started))
        remaining = started + options.duration - loop.time()
        await asyncio.wait({nemesis_task}, timeout=max(remaining, 0) + 0.1)
        if not nemesis_task.done():
            nemesis_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await nemesis_task
        elif nemesis_task.exception() is not None:
            recorder.record(
                "errors", type="error", process="nemesis", error=repr(nemesis_task.exception())
            )
        await nemesis.heal_all()
        say("keel verify: faults healed; measuring convergence")
        result = RunResult(cluster.run_dir, [])
        result.convergence_seconds = await _convergence(options, cluster, workloads, recorder)
    finally:
        if rollout_task is not None:
            rollout_task.cancel()
        await workloads.stop()
    store = await open_store(store_url) if cluster.etcd_endpoints else None
    if store is not None:
        try:
            await workloads.collect_truth(store)
        finally:
            await store.close()
    else:
        # The embedded store is the API server's own file: read it once the server is gone.
        for api in cluster.of_role("apiserver"):
            await api.stop()
        async with await open_store(store_url) as sqlite:
            await workloads.collect_truth(sqlite)
    return result


def _store_aware(options: WorkloadOptions, cluster: VerifyCluster) -> WorkloadOptions:
    """The embedded store belongs to its API server process (it holds the file's lock), so
    the raw store-client register runs only against etcd."""
    if cluster.etcd_endpoints:
        return options
    kept = tuple(w for w in options.workloads if w != "store-register")
    return dataclasses.replace(options, workloads=kept)


# ---------------------------------------------------------------------- convergence


async def _convergence(
    options: RunOptions, cluster: VerifyCluster, workloads: Workloads, recorder: Recorder
) -> float | None:
    """Probe until the desired state holds and has held for 3 s, or the bound passes."""
    recorder.record("convergence", type="bound", seconds=options.convergence_bound)
    heal = recorder.record("convergence", type="heal")["time"]
    if "exclusive" not in workloads.options.workloads:
        recorder.record("convergence", type="probe", converged=True, missing=[])
        return 0.0
    deadline = time.monotonic_ns() + int(options.convergence_bound * 1e9)
    first_converged: int | None = None
    async with cluster.client(0, timeout=3.0) as client:
        while time.monotonic_ns() < deadline + 3e9:
            missing = await _missing(client, workloads)
            now = recorder.record(
                "convergence", type="probe", converged=not missing, missing=missing
            )["time"]
            if missing:
                first_converged = None
                if now > deadline:
                    break
            else:
                first_converged = first_converged or now
                if now - first_converged >= 3e9:
                    break
            await asyncio.sleep(0.5)
    return (first_converged - heal) / 1e9 if first_converged is not None else None


async def _wait_converged(cluster: VerifyCluster, workloads: Workloads, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    missing: list[str] = ["not probed"]
    async with cluster.client(0, timeout=3.0) as client:
        while loop.time() < deadline:
            missing = await _missing(client, workloads)
            if not missing:
                return
            await asyncio.sleep(0.5)
    raise TimeoutError(f"keel verify: the probe deployments never became ready: {missing}")


async def _missing(client: Any, workloads: Workloads) -> list[str]:
    """What still differs from the desired state: unready deployments, inexact Endpoints,
    probe processes running without an Instance (orphans) or twice for one."""
    missing: list[str] = []
    try:
        instances = (await client.list(Instance, namespace=NAMESPACE)).items
        for name in (EXCLUSIVE, PLAIN):
            deployment = await client.get(Deployment, name, namespace=NAMESPACE)
            want = deployment.spec.replicas
            status = deployment.status
            mine = [i for i in instances if i.metadata.labels.get("app") == name]
            if status.ready_replicas != want or status.updated_replicas != want:
                missing.append(
                    f"deployment {name}: {status.ready_replicas}/{want} ready,"
                    f" {status.updated_replicas}/{want} updated"
                )
            if len(mine) != want:
                missing.append(f"deployment {name}: {len(mine)} instances, want {want}")
        endpoints = await client.get(Endpoints, PLAIN, namespace=NAMESPACE)
        listed = sorted((a.instance, a.port) for s in endpoints.subsets for a in s.addresses)
        ready = sorted(
            (i.metadata.name, p.port)
            for i in instances
            if i.metadata.labels.get("app") == PLAIN
            and not i.metadata.deletion_timestamp
            and any(c.type == "Ready" and c.status == "True" for c in i.status.conditions)
            for p in i.status.ports
        )
        if listed != ready:
            missing.append(f"endpoints {PLAIN}: {listed} != ready instances {ready}")
    except Exception as exc:
        return [f"API unreachable: {type(exc).__name__}: {exc}"]
    uids = {i.metadata.uid for i in instances}
    names = {i.metadata.name for i in instances}
    live = _live_copies([workloads.exclusive_log, workloads.duplicates_log])
    per_instance: dict[str, int] = {}
    for instance, uid, pid in live:
        per_instance[instance] = per_instance.get(instance, 0) + 1
        if uid not in uids or instance not in names:
            missing.append(f"orphan process {pid} of instance {instance} (uid {uid}), now gone")
    for instance, count in per_instance.items():
        if count > 1:
            missing.append(f"instance {instance} runs {count} copies")
    return missing


def _live_copies(paths: list[Path]) -> list[tuple[str, str, int]]:
    """(instance, uid, pid) of each probe copy that started, never logged a stop, and lives."""
    open_copies: dict[str, tuple[str, str, int]] = {}
    for path in paths:
        if not path.exists():
            continue
        for event in load_history(path):
            copy = str(event.get("copy"))
            if event.get("type") == "start":
                open_copies[copy] = (
                    str(event.get("instance")),
                    str(event.get("uid")),
                    int(event.get("pid", 0)),
                )
            elif event.get("type") == "stop":
                open_copies.pop(copy, None)
    live = []
    for instance, uid, pid in open_copies.values():
        if _alive(pid):
            live.append((instance, uid, pid))
    return live


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return False
    return True
