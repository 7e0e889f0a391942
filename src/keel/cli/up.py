"""`keel up`: the whole platform on one machine, supervised by one process.

The API server runs in this process over the embedded store; the controller-manager, the
scheduler and `clusters x nodes-per-cluster` agents run as child processes, each with its own
token and kubeconfig under the state dir, and are restarted with backoff if they die.
Ctrl-C stops the children first (agents stop their workloads), then the API server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("keel.up")

CONTROLLERS = "namespace,gc,deployment,endpoints,nodelifecycle"
# On one machine a short node lease keeps failover well inside 15 s: lease expiry (4 s) plus
# the node lifecycle grace (5 s) plus rescheduling and a restart.
NODE_LEASE_SECONDS = 4
RESTART_BASE = 1.0
RESTART_CAP = 30.0
STOP_GRACE = 20.0  # agents stop workloads gracefully (their own grace periods) within this


def node_names(clusters: int, nodes_per_cluster: int) -> list[tuple[str, str]]:
    """(cluster, node) pairs: cluster-1/node-1-1, cluster-1/node-1-2, cluster-2/node-2-1..."""
    return [
        (f"cluster-{c}", f"node-{c}-{n}")
        for c in range(1, clusters + 1)
        for n in range(1, nodes_per_cluster + 1)
    ]


@dataclass(frozen=True)
class Component:
    """One supervised child: its name (for logs) and its command line."""

    name: str
    argv: tuple[str, ...]
    role: str  # token role: controller, scheduler, node:NAME


def components(
    state_dir: Path, clusters: int, nodes_per_cluster: int, python: str = sys.executable
) -> list[Component]:
    keel = (python, "-m", "keel")
    kubeconfigs = state_dir / "kubeconfigs"
    result = [
        Component(
            "controller-manager",
            (
                *keel,
                "controller-manager",
                "--kubeconfig",
                str(kubeconfigs / "controller-manager"),
                "--identity",
                "keel-up",
                "--controllers",
                CONTROLLERS,
                "--state-dir",
                str(state_dir / "controller-manager"),
            ),
            "controller",
        ),
        Component(
            "scheduler",
            (
                *keel,
                "scheduler",
                "--kubeconfig",
                str(kubeconfigs / "scheduler"),
                "--identity",
                "keel-up",
            ),
            "scheduler",
        ),
    ]
    for cluster, node in node_names(clusters, nodes_per_cluster):
        result.append(
            Component(
                f"agent/{node}",
                (
                    *keel,
                    "agent",
                    "--node",
                    node,
                    "--cluster",
                    cluster,
                    "--kubeconfig",
                    str(kubeconfigs / node),
                    "--state-dir",
                    str(state_dir / "agents" / node),
                ),
                f"node:{node}",
            )
        )
    return result


@dataclass
class Supervised:
    component: Component
    log_path: Path
    process: asyncio.subprocess.Process | None = None
    restarts: int = 0
    task: asyncio.Task[None] | None = None
    stopping: bool = field(default=False)


class Supervisor:
    """Starts the components, restarts any that die (1 s doubling to 30 s), stops them in
    order on request: agents last to be signalled are the first to matter, so all get SIGTERM
    at once and SIGKILL after STOP_GRACE."""

    def __init__(self, items: Sequence[Component], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.children = [
            Supervised(c, log_dir / (c.name.replace("/", "-") + ".log")) for c in items
        ]

    async def start(self) -> None:
        for child in self.children:
            child.task = asyncio.create_task(self._keep_running(child), name=child.component.name)

    async def _spawn(self, child: Supervised) -> asyncio.subprocess.Process:
        with child.log_path.open("ab") as out:
            return await asyncio.create_subprocess_exec(
                *child.component.argv,
                stdout=out,
                stderr=out,
                stdin=asyncio.subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches keel up only; it stops us in order
            )

    async def _keep_running(self, child: Supervised) -> None:
        delay = RESTART_BASE
        while not child.stopping:
            started = asyncio.get_running_loop().time()
            child.process = await self._spawn(child)
            code = await child.process.wait()
            if child.stopping:
                return
            ran = asyncio.get_running_loop().time() - started
            delay = RESTART_BASE if ran > 60 else min(delay * 2, RESTART_CAP)
            child.restarts += 1
            print(
                f"keel up: {child.component.name} exited ({code}); restarting in {delay:.0f} s "
                f"(log {child.log_path})",
                flush=True,
            )
            await asyncio.sleep(delay)

    def pids(self) -> dict[str, int]:
        return {
            c.component.name: c.process.pid
            for c in self.children
            if c.process is not None and c.process.returncode is None
        }

    async def stop(self) -> None:
        for child in self.children:
            child.stopping = True
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        waits = [c.process.wait() for c in self.children if c.process is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*waits), STOP_GRACE)
        except TimeoutError:
            for child in self.children:
                if child.process is not None and child.process.returncode is None:
                    print(f"keel up: {child.component.name} did not stop; killing it", flush=True)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.process.pid, signal.SIGKILL)
            await asyncio.gather(*waits, return_exceptions=True)
        for child in self.children:
            if child.task is not None:
                child.task.cancel()
        await asyncio.gather(
            *(c.task for c in self.children if c.task is not None), return_exceptions=True
        )


async def report_services(path: str, kubeconfig: Path, timeout: float = 90.0) -> None:
    """Wait until the Services of a manifest have ready endpoints and print them."""
    import yaml

    from keel.api.resources import Endpoints
    from keel.client import ApiError, ApiUnavailable, KeelClient

    services: list[tuple[str, str]] = []
    text = await asyncio.to_thread(Path(path).read_text, encoding="utf-8")
    for doc in yaml.safe_load_all(text):
        if isinstance(doc, dict) and doc.get("kind") == "Service":
            meta = doc.get("metadata", {})
            services.append((meta.get("namespace", "default"), meta["name"]))
    if not services:
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with KeelClient.from_kubeconfig(str(kubeconfig)) as client:
        for namespace, name in services:
            while True:
                ready: list[str] = []
                with contextlib.suppress(ApiError, ApiUnavailable):
                    endpoints = await client.get(Endpoints, name, namespace=namespace)
                    ready = [
                        f"http://{a.ip}:{a.port}"
                        for subset in endpoints.subsets
                        for a in subset.addresses
                        if a.ready
                    ]
                if ready or loop.time() > deadline:
                    break
                await asyncio.sleep(0.5)
            if ready:
                print(f"keel up: service {namespace}/{name} is ready at:", flush=True)
                for address in ready:
                    print(f"    curl {address}/", flush=True)
            else:
                print(
                    f"keel up: service {namespace}/{name} has no ready endpoints yet; "
                    f"watch with: keel get instances -n {namespace} -w",
                    flush=True,
                )
