"""Rollouts with real processes: a `keel apiserver`, a controller-manager, a scheduler and two
agents running real workloads. A crash-looping release is rolled back on its own (and
`keel rollout status` says so, exiting 1); `keel rollout undo` restores the previous
template; a paused rollout makes no progress until resumed; a rollout that cannot become
ready exceeds its progress deadline."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from support import AgentProcess, ApiServer, KeelProcess, wait_for

from keel.api.resources import (
    Analysis,
    AnalysisProbe,
    Canary,
    CanaryPause,
    CanaryStep,
    Cluster,
    Deployment,
    DeploymentSpec,
    HealthCheck,
    Instance,
    InstanceSpec,
    InstanceTemplate,
    ObjectMeta,
    RollingUpdate,
    Strategy,
    TemplateMeta,
)
from keel.client import SyncClient
from keel.controllers.deployment import DEPLOYMENT_LABEL, HASH_LABEL, hash_of

NODES = ("r1", "r2")
NS = "default"
SLEEP = [sys.executable, "-c", "import time; time.sleep(1e6)"]
CRASH = [sys.executable, "-c", "import sys; sys.exit(1)"]


class Platform:
    def __init__(self, server: ApiServer, agents: list[AgentProcess]) -> None:
        self.server = server
        self.agents = agents
        self.kubeconfig = server.kubeconfig_for("admin")

    def keel(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
        return subprocess.run(
            [sys.executable, "-m", "keel", *args, "--kubeconfig", str(self.kubeconfig)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("rollouts")
    server = ApiServer(root / "apiserver", nodes=NODES).start()
    others: list[KeelProcess] = []
    agents: list[AgentProcess] = []
    try:
        with server.sync_client() as admin:
            admin.create(Cluster(metadata=ObjectMeta(name="c1")))
        others.append(
            server.controller_manager("cm", "--controllers", "deployment,nodelifecycle,gc")
        )
        others.append(server.scheduler("sched"))
        for node in NODES:
            agents.append(server.agent(node, root / "agents" / node).start())
        yield Platform(server, agents)
    finally:
        for agent in agents:
            agent.stop()
        for process in others:
            process.stop()
        server.stop()


def template(command: list[str], *, check: HealthCheck | None = None) -> InstanceTemplate:
    return InstanceTemplate(
        metadata=TemplateMeta(labels={"app": "roll"}),
        spec=InstanceSpec(command=command, health_check=check, termination_grace_period_seconds=1),
    )


def new_deployment(name: str, replicas: int = 2, **spec: object) -> Deployment:
    return Deployment(
        metadata=ObjectMeta(name=name, namespace=NS),
        spec=DeploymentSpec(
            replicas=replicas,
            template=template(SLEEP),
            bake_seconds=1,
            **{  # type: ignore[arg-type]
                "strategy": Strategy(rolling_update=RollingUpdate(max_surge=1, max_unavailable=0)),
                **spec,
            },
        ),
    )


def set_template(client: SyncClient, name: str, new: InstanceTemplate) -> None:
    patch = [{"op": "replace", "path": "/spec/template", "value": msgspec.to_builtins(new)}]
    client.patch(Deployment, name, patch, namespace=NS, type="json")


def running(client: SyncClient, name: str) -> list[tuple[str, bool]]:
    """(template hash, Ready) of the Deployment's live Instances."""
    items = client.list(Instance, namespace=NS, label_selector={DEPLOYMENT_LABEL: name}).items
    return sorted(
        (
            i.metadata.labels[HASH_LABEL],
            any(c.type == "Ready" and c.status == "True" for c in i.status.conditions),
        )
        for i in items
        if not i.metadata.deletion_timestamp
    )


def status(client: SyncClient, name: str) -> Deployment:
    return client.get(Deployment, name, namespace=NS)


def wait_stable(client: SyncClient, name: str, revision: str, replicas: int = 2) -> None:
    wait_for(
        f"{name}: {revision} stable and running in full",
        lambda: (
            status(client, name).status.stable_revision == revision
            and running(client, name) == [(revision, True)] * replicas
        ),
        timeout=60,
    )


def test_a_crash_looping_release_is_rolled_back_automatically(platform: Platform) -> None:
    with platform.server.sync_client() as client:
        client.create(new_deployment("crash", auto_rollback=True))
        v1 = hash_of(template(SLEEP))
        wait_stable(client, "crash", v1)
        set_template(client, "crash", template(CRASH))
        v2 = hash_of(template(CRASH))
        wait_for(
            "crash: rolled back",
            lambda: status(client, "crash").status.phase == "RolledBack",
            timeout=90,
        )
        dep = status(client, "crash")
        assert dep.status.failed_revision == v2
        rolled = next(c for c in dep.status.conditions if c.type == "RolledBack")
        assert rolled.reason == "CrashLoop"
        wait_for(
            "crash: the stable revision runs in full",
            lambda: running(client, "crash") == [(v1, True), (v1, True)],
            timeout=30,
        )
        # Not retried: the spec still names v2, and nothing of it comes back.
        time.sleep(3)
        assert running(client, "crash") == [(v1, True), (v1, True)]
        result = platform.keel("rollout", "status", "deployment/crash")
        assert result.returncode == 1 and "rolled back" in result.stdout, result
        events = platform.keel("describe", "deployment", "crash")
        assert "CrashLoop" in events.stdout


def test_undo_restores_the_previous_template(platform: Platform) -> None:
    with platform.server.sync_client() as client:
        client.create(new_deployment("undo"))
        v1 = hash_of(template(SLEEP))
        wait_stable(client, "undo", v1)
        v2_template = template([*SLEEP[:-1], "import time; time.sleep(1e6 + 1)"])
        set_template(client, "undo", v2_template)
        v2 = hash_of(v2_template)
        wait_for(
            "undo: v2 rolled out",
            lambda: running(client, "undo") == [(v2, True), (v2, True)],
            timeout=60,
        )
        history = platform.keel("rollout", "history", "undo")
        assert history.returncode == 0 and v1 in history.stdout and v2 in history.stdout
        result = platform.keel("rollout", "undo", "deployment/undo")
        assert result.returncode == 0, result
        assert "rolled back to revision 1" in result.stdout
        assert status(client, "undo").spec.template == template(SLEEP)
        wait_for(
            "undo: v1 runs again",
            lambda: running(client, "undo") == [(v1, True), (v1, True)],
            timeout=60,
        )
        watched = platform.keel("rollout", "status", "-w", "deployment/undo", "--timeout", "60")
        assert watched.returncode == 0 and "successfully rolled out" in watched.stdout


def test_a_paused_rollout_makes_no_progress_until_resumed(platform: Platform) -> None:
    with platform.server.sync_client() as client:
        client.create(new_deployment("paused"))
        v1 = hash_of(template(SLEEP))
        wait_stable(client, "paused", v1)
        assert platform.keel("rollout", "pause", "deployment/paused").returncode == 0
        v2_template = template([*SLEEP[:-1], "import time; time.sleep(1e6 + 2)"])
        set_template(client, "paused", v2_template)
        wait_for(
            "paused: phase Paused",
            lambda: status(client, "paused").status.phase == "Paused",
            timeout=30,
        )
        client.patch(Deployment, "paused", {"spec": {"replicas": 3}}, namespace=NS)
        wait_for(
            "paused: scaled to 3 with the running revision",
            lambda: running(client, "paused") == [(v1, True)] * 3,
            timeout=30,
        )
        time.sleep(3)
        assert running(client, "paused") == [(v1, True)] * 3
        assert platform.keel("rollout", "resume", "paused").returncode == 0
        v2 = hash_of(v2_template)
        wait_for(
            "paused: resumed and rolled out",
            lambda: running(client, "paused") == [(v2, True)] * 3,
            timeout=60,
        )


def test_a_rollout_that_never_becomes_ready_exceeds_its_progress_deadline(
    platform: Platform,
) -> None:
    with platform.server.sync_client() as client:
        client.create(new_deployment("deadline", progress_deadline_seconds=4))
        v1 = hash_of(template(SLEEP))
        wait_stable(client, "deadline", v1)
        never = template(SLEEP, check=HealthCheck(type="exec", command=["false"], period_seconds=1))
        set_template(client, "deadline", never)

        def failed() -> bool:
            dep = status(client, "deadline")
            progressing = next(c for c in dep.status.conditions if c.type == "Progressing")
            return (progressing.status, progressing.reason) == ("False", "ProgressDeadlineExceeded")

        wait_for("deadline: ProgressDeadlineExceeded", failed, timeout=30)
        # maxUnavailable 0: the old instances keep serving.
        assert [r for r in running(client, "deadline") if r[0] == v1] == [(v1, True)] * 2
        result = platform.keel("rollout", "status", "deadline")
        assert result.returncode == 1 and "progress deadline exceeded" in result.stdout


def test_a_release_whose_health_check_fails_is_rolled_back_automatically(
    platform: Platform,
) -> None:
    with platform.server.sync_client() as client:
        client.create(new_deployment("unhealthy", auto_rollback=True, progress_deadline_seconds=5))
        v1 = hash_of(template(SLEEP))
        wait_stable(client, "unhealthy", v1)
        never = template(SLEEP, check=HealthCheck(type="exec", command=["false"], period_seconds=1))
        set_template(client, "unhealthy", never)
        wait_for(
            "unhealthy: rolled back",
            lambda: status(client, "unhealthy").status.phase == "RolledBack",
            timeout=60,
        )
        rolled = next(
            c for c in status(client, "unhealthy").status.conditions if c.type == "RolledBack"
        )
        assert rolled.reason == "ProgressDeadlineExceeded"
        wait_for(
            "unhealthy: the stable revision runs in full",
            lambda: running(client, "unhealthy") == [(v1, True), (v1, True)],
            timeout=30,
        )


def canary_strategy(*steps: CanaryStep) -> Strategy:
    return Strategy(
        type="Canary",
        canary=Canary(steps=list(steps)),
        rolling_update=RollingUpdate(max_surge=1, max_unavailable=0),
    )


def test_a_canary_pauses_at_its_weight_and_continues_on_promote(platform: Platform) -> None:
    steps = (CanaryStep(set_weight=25), CanaryStep(pause=CanaryPause()))
    with platform.server.sync_client() as client:
        client.create(new_deployment("canary", replicas=4, strategy=canary_strategy(*steps)))
        v1 = hash_of(template(SLEEP))
        wait_stable(client, "canary", v1, replicas=4)
        v2_template = template([*SLEEP[:-1], "import time; time.sleep(1e6 + 3)"])
        set_template(client, "canary", v2_template)
        v2 = hash_of(v2_template)
        wait_for(
            "canary: one canary, three stable, waiting at the pause",
            lambda: (
                running(client, "canary") == sorted([(v1, True)] * 3 + [(v2, True)])
                and status(client, "canary").status.current_step == 1
            ),
            timeout=60,
        )
        time.sleep(3)  # an indefinite pause holds
        assert running(client, "canary") == sorted([(v1, True)] * 3 + [(v2, True)])
        shown = platform.keel("rollout", "status", "canary")
        assert shown.returncode == 0 and "step 2/2 pause (promote to go on)" in shown.stdout
        promoted = platform.keel("rollout", "promote", "deployment/canary")
        assert promoted.returncode == 0, promoted
        watched = platform.keel("rollout", "status", "-w", "canary", "--timeout", "60")
        assert watched.returncode == 0 and "successfully rolled out" in watched.stdout
        assert running(client, "canary") == [(v2, True)] * 4


def test_a_failing_canary_analysis_aborts_to_the_stable_revision(platform: Platform) -> None:
    gates = Analysis(
        window_seconds=30,
        interval_seconds=1,
        probe=AnalysisProbe(type="exec", command=[sys.executable, "-c", "raise SystemExit(1)"]),
    )
    steps = (CanaryStep(set_weight=50), CanaryStep(analysis=gates))
    with platform.server.sync_client() as client:
        client.create(new_deployment("analysed", replicas=2, strategy=canary_strategy(*steps)))
        v1 = hash_of(template(SLEEP))
        wait_stable(client, "analysed", v1)
        v2_template = template([*SLEEP[:-1], "import time; time.sleep(1e6 + 4)"])
        set_template(client, "analysed", v2_template)
        wait_for(
            "analysed: rolled back",
            lambda: status(client, "analysed").status.phase == "RolledBack",
            timeout=60,
        )
        dep = status(client, "analysed")
        rolled = next(c for c in dep.status.conditions if c.type == "RolledBack")
        assert rolled.reason == "AnalysisFailed" and "probe failed" in rolled.message
        wait_for(
            "analysed: stable in full",
            lambda: running(client, "analysed") == [(v1, True), (v1, True)],
            timeout=30,
        )
        watched = platform.keel("rollout", "status", "-w", "analysed", "--timeout", "30")
        assert watched.returncode == 1 and "AnalysisFailed" in watched.stdout


def test_abort_returns_a_paused_canary_to_stable(platform: Platform) -> None:
    steps = (CanaryStep(set_weight=50), CanaryStep(pause=CanaryPause()))
    with platform.server.sync_client() as client:
        client.create(new_deployment("aborted", replicas=2, strategy=canary_strategy(*steps)))
        v1 = hash_of(template(SLEEP))
        wait_stable(client, "aborted", v1)
        v2_template = template([*SLEEP[:-1], "import time; time.sleep(1e6 + 5)"])
        set_template(client, "aborted", v2_template)
        wait_for(
            "aborted: at the pause",
            lambda: status(client, "aborted").status.current_step == 1,
            timeout=60,
        )
        result = platform.keel("rollout", "abort", "aborted")
        assert result.returncode == 0, result
        wait_for(
            "aborted: rolled back",
            lambda: (
                status(client, "aborted").status.phase == "RolledBack"
                and running(client, "aborted") == [(v1, True), (v1, True)]
            ),
            timeout=60,
        )
