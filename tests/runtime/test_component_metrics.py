"""Each component's /metrics: the controller runtime's, the scheduler's and the agent's
collectors turn the counts they keep into well-formed Prometheus series, and
`MetricsServer` serves them over a real socket."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from support import ManualClock
from support.prometheus import parse, value_of

from keel.agent import Agent, AgentConfig, AgentMetrics, MemoryState
from keel.agent._metrics import count_phases
from keel.agent._plan import Record
from keel.api.resources import (
    Condition,
    Instance,
    InstanceSpec,
    Namespace,
    NamespaceScheduling,
    NamespaceSpec,
    Node,
    NodeSpec,
    NodeStatus,
    ObjectMeta,
    ResourceList,
)
from keel.client import KeelClient
from keel.metrics import CONTENT_TYPE, MetricsServer, Registry, parse_listen
from keel.runtime.controller import ControllerRunner, Result
from keel.runtime.manager import ControllerManager
from keel.runtime.metrics import ControllerManagerMetrics
from keel.runtime.workqueue import WorkQueue
from keel.scheduler.controller import SchedulerController
from keel.scheduler.metrics import SchedulerMetrics
from keel.scheduler.service import new_scheduler

NOWHERE = "http://127.0.0.1:9"  # never contacted: these tests only read in-memory counts


class Noop:
    name = "noop"
    primary = Instance
    related = ()

    async def reconcile(self, ctx: object, key: str) -> Result:
        return Result()


def manager_with_noop(clock: ManualClock, shards: int = 0) -> ControllerManager:
    client = KeelClient(NOWHERE)
    runner = ControllerRunner(client, clock=clock)
    runner.register(Noop())
    return ControllerManager(client, runner, identity="cm-1", shards=shards, clock=clock)


def test_controller_metrics_follow_the_runner_counts() -> None:
    clock = ManualClock()
    manager = manager_with_noop(clock)
    metrics = ControllerManagerMetrics(manager)
    _, types, samples = parse(metrics.render())
    assert types["keel_workqueue_depth"] == "gauge"
    assert types["keel_workqueue_adds_total"] == "counter"
    assert types["keel_reconcile_duration_seconds"] == "histogram"
    assert types["keel_leader_is_leader"] == "gauge"
    assert value_of(samples, "keel_reconcile_errors_total", controller="noop") == 0
    assert value_of(samples, "keel_leader_is_leader", lease="keel-system/controller-manager") == 0

    stats = manager.runner.metrics["noop"]
    stats.reconciles, stats.errors = 7, 2
    for seconds in (0.0002, 0.003, 0.2):
        stats.latency.observe(seconds)
    manager.runner.metrics_fenced = 1
    # A stopped partition's queue counts stay in the totals (counters never go down).
    queue = WorkQueue(clock=clock)
    queue.add("default/a")
    queue.add("default/b")
    queue.add_rate_limited("default/a")
    manager.runner._retire_queues({"noop": queue})
    _, _, samples = parse(metrics.render())
    assert value_of(samples, "keel_reconciles_total", controller="noop") == 7
    assert value_of(samples, "keel_reconcile_errors_total", controller="noop") == 2
    assert value_of(samples, "keel_workqueue_adds_total", controller="noop") == 2
    assert value_of(samples, "keel_workqueue_retries_total", controller="noop") == 1
    assert value_of(samples, "keel_reconcile_duration_seconds_count", controller="noop") == 3
    assert value_of(
        samples, "keel_reconcile_duration_seconds_bucket", controller="noop", le="0.005"
    ) == 2  # fmt: skip
    assert value_of(samples, "keel_fencing_rejections_total") == 1


def test_sharded_managers_report_each_shard_lease() -> None:
    metrics = ControllerManagerMetrics(manager_with_noop(ManualClock(), shards=3))
    _, _, samples = parse(metrics.render())
    leases = {
        dict(labels)["lease"] for name, labels, _ in samples if name == "keel_leader_is_leader"
    }
    assert leases == {f"keel-system/controller-manager-shard-{n}" for n in range(3)}


def test_scheduler_metrics_include_the_runtime_and_its_own() -> None:
    manager = new_scheduler(KeelClient(NOWHERE), identity="s-1", clock=ManualClock())
    metrics = SchedulerMetrics(manager)
    metrics.stats.placements = 4
    metrics.stats.conflicts = 1
    metrics.stats.pending_to_bound.observe(0.02)
    _, types, samples = parse(metrics.render())
    assert types["keel_scheduler_pending_to_bound_seconds"] == "histogram"
    assert value_of(samples, "keel_scheduler_placements_total") == 4
    assert value_of(samples, "keel_scheduler_binding_conflicts_total") == 1
    assert value_of(samples, "keel_scheduler_preemptions_total") == 0
    assert value_of(samples, "keel_scheduler_preemptions_stopped_total") == 0
    assert value_of(samples, "keel_scheduler_pending_to_bound_seconds_count") == 1
    assert value_of(samples, "keel_scheduler_pending_instances") == 0
    assert value_of(samples, "keel_leader_is_leader", lease="keel-system/scheduler") == 0
    assert value_of(samples, "keel_reconciles_total", controller="scheduler") == 0
    with pytest.raises(ValueError, match="no scheduler controller"):
        SchedulerMetrics(manager_with_noop(ManualClock()))


def test_scheduler_metrics_give_each_namespace_its_dominant_share() -> None:
    manager = new_scheduler(KeelClient(NOWHERE), identity="s-1", clock=ManualClock())
    controller = manager.runner.controllers["scheduler"]
    assert isinstance(controller, SchedulerController)
    heavy = Namespace(
        metadata=ObjectMeta(name="team-b"),
        spec=NamespaceSpec(scheduling=NamespaceScheduling(weight=2)),
    )
    manager.runner.cache(Namespace)._put("team-b", heavy)  # as its informer would
    ready = NodeStatus(conditions=[Condition(type="Ready", status="True")])
    node = Node(
        metadata=ObjectMeta(name="n1"),
        spec=NodeSpec(cluster="c1", capacity=ResourceList(cpu="4", memory="8Gi")),
        status=ready,
    )
    controller.state.upsert_node(node)
    for namespace, name, cpu, memory in (
        ("team-a", "x", "1", "1Gi"), ("team-b", "y", "1", "4Gi"), ("team-b", "z", "1", "0"),
    ):  # fmt: skip
        controller.state.upsert_instance(
            Instance(
                metadata=ObjectMeta(name=name, namespace=namespace),
                spec=InstanceSpec(
                    command=["x"], node_name="n1", resources=ResourceList(cpu=cpu, memory=memory)
                ),
            )
        )
    metrics = SchedulerMetrics(manager)
    _, types, samples = parse(metrics.render())
    assert types["keel_scheduler_dominant_share"] == "gauge"
    assert value_of(samples, "keel_scheduler_dominant_share", namespace="team-a") == 0.25
    assert value_of(samples, "keel_scheduler_dominant_share", namespace="team-b") == 0.5
    share = "keel_scheduler_weighted_dominant_share"
    assert value_of(samples, share, namespace="team-a") == 0.25
    assert value_of(samples, share, namespace="team-b") == 0.25
    controller.state.remove_instance("team-a/x")  # gone: its series goes too
    _, _, samples = parse(metrics.render())
    assert [dict(labels) for name, labels, _ in samples if name == share] == [
        {"namespace": "team-b"}
    ]


def record(name: str, **fields: object) -> Record:
    return Record(
        namespace="default", name=name, uid=name, spec=InstanceSpec(command=["true"]), **fields
    )  # type: ignore[arg-type]


def test_agent_phases_are_what_the_agent_reports() -> None:
    counts = count_phases(
        [
            record("new"),
            record("up", starts=1, pid=10, ready=True),
            record("backoff", starts=3),
            record("done", starts=1, terminal="Succeeded"),
        ]
    )
    assert counts == {"Pending": 1, "Running": 2, "Succeeded": 1, "Failed": 0}


def test_agent_metrics_render_its_counts(tmp_path: Path) -> None:
    config = AgentConfig(node="n1", cluster="c1", state_dir=tmp_path)
    agent = Agent(KeelClient(NOWHERE), config, clock=ManualClock(), state=MemoryState())
    metrics = AgentMetrics(agent)
    agent.records = {"default/up": record("up", starts=2, pid=10, ready=True)}
    agent.stats.restarts = 1
    agent.stats.checks["readiness", "success"] += 3
    agent.stats.lease_renewals = 5
    agent.stats.lease_misses = 1
    _, types, samples = parse(metrics.render())
    assert types["keel_agent_instances"] == "gauge"
    assert value_of(samples, "keel_agent_instances", phase="Running") == 1
    assert value_of(samples, "keel_agent_instances", phase="Failed") == 0
    assert value_of(samples, "keel_agent_instances_ready") == 1
    assert value_of(samples, "keel_agent_instance_restarts_total") == 1
    checks = "keel_agent_health_checks_total"
    assert value_of(samples, checks, check="readiness", result="success") == 3
    assert value_of(samples, checks, check="liveness", result="failure") == 0
    assert value_of(samples, "keel_agent_lease_renewals_total") == 5
    assert value_of(samples, "keel_agent_lease_misses_total") == 1
    assert value_of(samples, "keel_agent_lease_held") == 0


async def _http(port: int, request: bytes) -> tuple[str, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return status, headers, body


async def test_metrics_server_serves_the_registry_over_http() -> None:
    registry = Registry()
    hits = registry.counter("hits_total", "Scrapes.")
    registry.add_collector(hits.inc)
    async with MetricsServer(registry.render, "127.0.0.1", 0) as server:
        assert server.port and server.url == f"http://127.0.0.1:{server.port}/metrics"
        status, headers, body = await _http(
            server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        assert status == "HTTP/1.1 200 OK"
        assert headers["content-type"] == CONTENT_TYPE
        assert int(headers["content-length"]) == len(body)
        assert value_of(parse(body.decode())[2], "hits_total") == 1
        _, _, body = await _http(server.port, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")
        assert value_of(parse(body.decode())[2], "hits_total") == 2
        status, _, _ = await _http(server.port, b"GET /other HTTP/1.1\r\n\r\n")
        assert status.startswith("HTTP/1.1 404")
        status, _, _ = await _http(server.port, b"POST /metrics HTTP/1.1\r\n\r\n")
        assert status.startswith("HTTP/1.1 405")
        status, _, _ = await _http(server.port, b"nonsense\r\n\r\n")
        assert status.startswith("HTTP/1.1 400")


@pytest.mark.parametrize("text", ["", "9100", "host:", "host:http", "h:70000"])
def test_a_bad_listen_address_is_named(text: str) -> None:
    with pytest.raises(ValueError, match=r"--metrics-listen .*expected HOST:PORT"):
        parse_listen(text)
    assert parse_listen("[::1]:9100") == ("::1", 9100)
