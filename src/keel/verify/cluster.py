"""The cluster `keel verify` builds and owns: hosts, etcd members and the whole platform.

With `--store etcd` every host is a network namespace (keel.verify.hosts) holding one etcd
member, and the platform's processes are spread over the hosts: API servers beside the first
members, a controller-manager beside each API server, the scheduler and the agents on the
remaining hosts. With `--store sqlite` the embedded single-host platform runs on loopback
(one API server on a sqlite file). Every process is a `Component` started and stopped by PID.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from keel.api.auth import TokenFile
from keel.cli._state_dir import write_kubeconfig
from keel.client import KeelClient
from keel.dev.etcd_cluster import MAX_REQUEST_BYTES_FLAG, free_port
from keel.dev.etcd_provision import ensure_etcd
from keel.verify.components import Component

__all__ = ["ClusterShape", "VerifyCluster"]

CLUSTER_NAME = "verify"
CONTROLLERS = "namespace,gc,deployment,endpoints,nodelifecycle"
API_PORT = 7070
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380


@dataclass(frozen=True)
class ClusterShape:
    """How many of each part a verify cluster runs."""

    store: str = "etcd"  # etcd | sqlite
    hosts: int = 5
    etcd_members: int = 3
    apiservers: int = 2
    agents: int = 3
    node_lease_seconds: int = 4  # the agents' default
    controller_lease_ttl: int = 4

    def problems(self) -> list[str]:
        found = []
        if self.store not in ("etcd", "sqlite"):
            found.append(f"--store: expected etcd or sqlite, got {self.store!r}")
        if self.store == "etcd":
            if self.etcd_members not in (1, 3, 5):
                found.append(f"--etcd-members: expected 1, 3 or 5, got {self.etcd_members}")
            if self.hosts < self.etcd_members:
                found.append(
                    f"--hosts: expected at least one per etcd member ({self.etcd_members}),"
                    f" got {self.hosts}"
                )
            if not 1 <= self.apiservers <= self.hosts:
                found.append(f"--apiservers: expected 1 to {self.hosts}, got {self.apiservers}")
        if self.agents < 1:
            found.append(f"--agents: expected at least 1, got {self.agents}")
        return found


@dataclass
class HostInfo:
    """Where a host's processes listen, and the argv prefix that runs a command inside it."""

    name: str
    address: str
    prefix: tuple[str, ...] = ()


@dataclass
class VerifyCluster:
    shape: ClusterShape
    run_dir: Path
    hosts: list[HostInfo]
    components: dict[str, Component] = field(default_factory=dict)
    admin_token: str = ""
    api_urls: list[str] = field(default_factory=list)
    etcd_endpoints: list[str] = field(default_factory=list)
    python: str = sys.executable

    # ------------------------------------------------------------------ layout

    @classmethod
    def plan(cls, shape: ClusterShape, run_dir: Path, hosts: Sequence[HostInfo]) -> VerifyCluster:
        """Lay the platform out over `hosts` (pure: nothing starts until `start`)."""
        cluster = cls(shape=shape, run_dir=run_dir, hosts=list(hosts))
        tokens = run_dir / "tokens.csv"
        run_dir.mkdir(parents=True, exist_ok=True)
        if not tokens.exists():
            cluster.admin_token = TokenFile.create(tokens)
        logs = run_dir / "logs"
        keel = (cluster.python, "-m", "keel")
        if shape.store == "etcd":
            members = hosts[: shape.etcd_members]
            initial = ",".join(
                f"e{i + 1}=http://{h.address}:{ETCD_PEER_PORT}" for i, h in enumerate(members)
            )
            binary = ensure_etcd()
            for i, host in enumerate(members):
                name = f"e{i + 1}"
                cluster.etcd_endpoints.append(f"{host.address}:{ETCD_CLIENT_PORT}")
                cluster._add(
                    Component(
                        name=f"etcd/{name}",
                        role="etcd",
                        host=host.name,
                        prefix=host.prefix,
                        log_path=logs / f"etcd-{name}.log",
                        argv=(
                            binary,
                            f"--name={name}",
                            f"--data-dir={run_dir / 'data' / name}",
                            f"--listen-client-urls=http://{host.address}:{ETCD_CLIENT_PORT}",
                            f"--advertise-client-urls=http://{host.address}:{ETCD_CLIENT_PORT}",
                            f"--listen-peer-urls=http://{host.address}:{ETCD_PEER_PORT}",
                            f"--initial-advertise-peer-urls=http://{host.address}:{ETCD_PEER_PORT}",
                            f"--initial-cluster={initial}",
                            "--initial-cluster-state=new",
                            f"--initial-cluster-token={run_dir.name}",
                            f"--max-request-bytes={MAX_REQUEST_BYTES_FLAG}",
                            "--experimental-watch-progress-notify-interval=1s",
                            "--log-level=warn",
                        ),
                    )
                )
            store_url = "etcd://" + ",".join(cluster.etcd_endpoints)
            api_hosts = list(hosts[: shape.apiservers])
        else:
            store_url = f"sqlite:///{run_dir / 'data' / 'keel.db'}"
            api_hosts = [hosts[0]]
        for i, host in enumerate(api_hosts):
            port = API_PORT if host.prefix else free_port()
            url = f"http://{host.address}:{port}"
            cluster.api_urls.append(url)
            cluster._add(
                Component(
                    name=f"apiserver/{i + 1}",
                    role="apiserver",
                    host=host.name,
                    prefix=host.prefix,
                    log_path=logs / f"apiserver-{i + 1}.log",
                    argv=(
                        *keel,
                        "apiserver",
                        "--state-dir",
                        str(run_dir / f"apiserver-{i + 1}"),
                        "--listen",
                        f"{host.address}:{port}",
                        "--store",
                        store_url,
                        "--token-file",
                        str(tokens),
                        "--insecure",
                        "--compaction-retention",
                        "86400",
                        "--admission-rate",
                        "5000",
                        "--admission-burst",
                        "10000",
                    ),
                )
            )
        kubeconfigs = run_dir / "kubeconfigs"
        kubeconfigs.mkdir(parents=True, exist_ok=True)

        def kubeconfig(name: str, role: str, api: int) -> str:
            path = kubeconfigs / name
            write_kubeconfig(
                path,
                cluster.api_urls[api % len(cluster.api_urls)],
                TokenFile.append(tokens, name, role),
            )
            return str(path)

        for i, host in enumerate(api_hosts[:2] if len(api_hosts) > 1 else [api_hosts[0]] * 2):
            name = f"controller-manager-{i + 1}"
            cluster._add(
                Component(
                    name=f"controller-manager/{i + 1}",
                    role="controller-manager",
                    host=host.name,
                    prefix=host.prefix,
                    log_path=logs / f"{name}.log",
                    argv=(
                        *keel,
                        "controller-manager",
                        "--kubeconfig",
                        kubeconfig(name, "controller", i),
                        "--identity",
                        name,
                        "--controllers",
                        CONTROLLERS,
                        "--lease-ttl",
                        str(shape.controller_lease_ttl),
                        "--state-dir",
                        str(run_dir / name),
                    ),
                )
            )
        others = list(hosts[len(api_hosts) :]) or list(hosts)
        scheduler_host = others[0]
        cluster._add(
            Component(
                name="scheduler",
                role="scheduler",
                host=scheduler_host.name,
                prefix=scheduler_host.prefix,
                log_path=logs / "scheduler.log",
                argv=(
                    *keel,
                    "scheduler",
                    "--kubeconfig",
                    kubeconfig("scheduler", "scheduler", 0),
                    "--identity",
                    "scheduler-1",
                    "--lease-ttl",
                    str(shape.controller_lease_ttl),
                ),
            )
        )
        agent_hosts = others[1:] or others
        for i in range(shape.agents):
            host = agent_hosts[i % len(agent_hosts)]
            node = f"node-{i + 1}"
            cluster._add(
                Component(
                    name=f"agent/{node}",
                    role="agent",
                    host=host.name,
                    prefix=host.prefix,
                    log_path=logs / f"agent-{node}.log",
                    argv=(
                        *keel,
                        "agent",
                        "--node",
                        node,
                        "--cluster",
                        CLUSTER_NAME,
                        "--kubeconfig",
                        kubeconfig(node, f"node:{node}", i),
                        "--state-dir",
                        str(run_dir / "agents" / node),
                        "--capacity",
                        "cpu=8,memory=16Gi",
                        "--lease-duration",
                        str(shape.node_lease_seconds),
                        "--host-ip",
                        host.address,
                    ),
                )
            )
        if not cluster.admin_token:
            for line in tokens.read_text(encoding="utf-8").splitlines():
                parts = line.split(",")
                if len(parts) == 3 and parts[2] == "admin":
                    cluster.admin_token = parts[0]
        return cluster

    def _add(self, component: Component) -> None:
        self.components[component.name] = component

    def of_role(self, role: str) -> list[Component]:
        return [c for c in self.components.values() if c.role == role]

    def host_of(self, component: Component) -> HostInfo:
        return next(h for h in self.hosts if h.name == component.host)

    def pids(self) -> list[int]:
        return [c.pid for c in self.components.values() if c.running and c.pid is not None]

    # ------------------------------------------------------------------ life

    async def start(self, timeout: float = 60.0) -> None:
        """Start the store, then the API servers, then everything else, each when ready."""
        for member in self.of_role("etcd"):
            await member.start()
        if self.etcd_endpoints:
            await self._wait("etcd to elect a leader", self.etcd_leader, timeout)
        for api in self.of_role("apiserver"):
            await api.start()
        for url in self.api_urls:
            await self._wait(
                f"the API server at {url}", functools.partial(self._ready, url), timeout
            )
        await self._create_cluster_object()
        for role in ("controller-manager", "scheduler", "agent"):
            for component in self.of_role(role):
                await component.start()

    async def stop(self) -> None:
        """Agents first (they stop their workloads), then the rest, by PID."""
        for component in self.components.values():
            component.resume()
        await asyncio.gather(*(c.stop() for c in self.of_role("agent")))
        for role in ("scheduler", "controller-manager", "apiserver"):
            await asyncio.gather(*(c.stop() for c in self.of_role(role)))
        # etcd members one after another: told to stop all at once, they wait on each
        # other's departure (7 s for three; 1 s in turn).
        for member in self.of_role("etcd"):
            await member.stop()

    async def _wait(self, what: str, probe: Any, timeout: float) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        last: Any = None
        while loop.time() < deadline:
            with contextlib.suppress(Exception):
                last = await probe()
                if last:
                    return last
            await asyncio.sleep(0.2)
        raise TimeoutError(f"keel verify: timed out after {timeout:.0f}s waiting for {what}")

    async def _ready(self, url: str) -> bool:
        timeout = aiohttp.ClientTimeout(total=2)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url + "/readyz") as response,
        ):
            return response.status == 200

    async def _create_cluster_object(self) -> None:
        from keel.api.resources import Cluster, ObjectMeta
        from keel.client import AlreadyExists

        async with self.client(0) as client:
            with contextlib.suppress(AlreadyExists):
                await client.create(Cluster(metadata=ObjectMeta(name=CLUSTER_NAME)))

    def client(self, api: int = 0, *, timeout: float = 5.0) -> KeelClient:
        """An admin client of API server number `api` (modulo their count)."""
        return KeelClient(
            self.api_urls[api % len(self.api_urls)], token=self.admin_token, timeout=timeout
        )

    async def etcd_leader(self) -> str | None:
        """The name of the etcd member that leads, as the members themselves report it."""
        timeout = aiohttp.ClientTimeout(total=1)
        names = {f"e{i + 1}": endpoint for i, endpoint in enumerate(self.etcd_endpoints)}
        async with aiohttp.ClientSession(timeout=timeout) as session:
            ids: dict[str, str] = {}
            leaders: list[str] = []
            for name, endpoint in names.items():
                if not self.components[f"etcd/{name}"].running:
                    continue
                with contextlib.suppress(Exception):
                    async with session.post(
                        f"http://{endpoint}/v3/maintenance/status", data=b"{}"
                    ) as response:
                        status = json.loads(await response.read())
                    ids[str(status["header"]["member_id"])] = name
                    if status.get("leader"):
                        leaders.append(str(status["leader"]))
            for leader in leaders:
                if leader in ids:
                    return ids[leader]
        return None
