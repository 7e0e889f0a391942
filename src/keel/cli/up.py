"""`keel up`: the whole platform on one machine, supervised by one process.

The API server runs in this process (over the embedded store by default); the
controller-manager, the scheduler and `clusters x nodes-per-cluster` agents run as child
processes (`python -m keel ...`, fresh interpreters), each with its own token and kubeconfig
under the state dir, and are restarted with backoff if they die. Each child's log gathers all
its runs, with a line from the supervisor where each run starts and how it ended. Ctrl-C stops
the children first (agents stop their workloads), then the API server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keel.api.auth import TokenFile
from keel.api.sessions import login_link
from keel.api.storage import ApiError
from keel.cli._progress import Progress
from keel.cli._state_dir import (
    KUBECONFIG,
    TOKEN_FILE,
    ensure_tokens,
    load_kubeconfig,
    read_tokens,
    write_kubeconfig,
)
from keel.cli._up_status import (
    metrics_listens,
    wait_until_ready,
    with_metrics,
    write_metrics_targets,
)
from keel.cli.apiserver import add_serve_arguments, guarded, run_server, serve, serve_options

CONTROLLERS = "namespace,gc,deployment,endpoints,nodelifecycle,cluster,quota"
# Failover of an ordinary instance within 10 s: what is left of the node lease (at most 4 s)
# plus the node lifecycle grace (2 s) plus rescheduling, a start and a health check.
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
                    "--lease-duration",
                    str(NODE_LEASE_SECONDS),
                ),
                f"node:{node}",
            )
        )
    return result


def spawn(argv: Sequence[str], *, log: Path | None = None) -> subprocess.Popen[bytes]:
    """Start `argv` as a new process, its output appended to `log` (else ours), in a session
    of its own when it has a log (Ctrl-C reaches `keel up` only, which stops it in order).

    Not the event loop's subprocess support: uvloop starts a child with fork() and runs this
    process's fork handlers in it, gRPC's among them while the etcd store's channels are open,
    and the child could crash (SIGSEGV) before it got to exec. subprocess.Popen starts it with
    vfork and exec on Linux (fork and exec with no Python code in between elsewhere), so no
    fork handler of this process runs in the child.
    """
    if log is None:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    with log.open("ab") as out:
        return subprocess.Popen(
            argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
        )


async def wait_exit(process: subprocess.Popen[bytes], poll: float = 0.2) -> int:
    """`process`'s exit code, waited for without blocking the loop: woken by a pidfd where
    the OS has them, by polling elsewhere."""
    code = process.poll()
    if code is not None:
        return code
    try:
        pidfd = os.pidfd_open(process.pid)
    except (AttributeError, OSError):  # no pidfds (not Linux, or older than 5.3)
        while (code := process.poll()) is None:  # noqa: ASYNC110 - an exit sets no event
            await asyncio.sleep(poll)
        return code
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await exited
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)
    return process.wait()


def describe_exit(code: int) -> str:
    """How a child ended, as Popen's return code says: minus the signal number if killed."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "unknown signal"
    return f"was killed by signal {-code} ({name})"


@dataclass
class Supervised:
    component: Component
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    task: asyncio.Task[None] | None = None
    stopping: bool = field(default=False)


class Supervisor:
    """Starts the components, restarts any that die (1 s doubling to 30 s), and stops them on
    request: all get SIGTERM at once (agents stop their workloads within their grace periods)
    and SIGKILL after STOP_GRACE.

    A child's log is appended to across its runs (and across runs of `keel up`), so what a
    crashed child wrote survives its restart; the supervisor marks where each run starts and
    how it ended (exit code or signal) in the log, and prints the latter."""

    def __init__(self, items: Sequence[Component], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.children = [
            Supervised(c, log_dir / (c.name.replace("/", "-") + ".log")) for c in items
        ]

    async def start(self) -> None:
        for child in self.children:
            child.task = asyncio.create_task(self._keep_running(child), name=child.component.name)

    @staticmethod
    def _mark(child: Supervised, text: str) -> None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        with child.log_path.open("a", encoding="utf-8") as log:
            log.write(f"--- keel up {stamp}: {child.component.name} {text} ---\n")

    async def _keep_running(self, child: Supervised) -> None:
        delay = RESTART_BASE
        while not child.stopping:
            started = asyncio.get_running_loop().time()
            self._mark(child, f"starting (run {child.restarts + 1})")
            child.process = spawn(child.component.argv, log=child.log_path)
            code = await wait_exit(child.process)
            if child.stopping:
                return
            ran = asyncio.get_running_loop().time() - started
            delay = RESTART_BASE if ran > 60 else min(delay * 2, RESTART_CAP)
            child.restarts += 1
            ended = f"(pid {child.process.pid}) {describe_exit(code)}"
            self._mark(child, f"{ended}; restart {child.restarts} in {delay:.0f} s")
            print(
                f"keel up: {child.component.name} {ended}; restarting in {delay:.0f} s "
                f"(log {child.log_path})",
                flush=True,
            )
            await asyncio.sleep(delay)

    async def stop(self) -> None:
        for child in self.children:
            child.stopping = True
            if child.process is not None and child.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    child.process.send_signal(signal.SIGTERM)
        running = [c.process for c in self.children if c.process is not None]
        try:
            await asyncio.wait_for(asyncio.gather(*map(wait_exit, running)), STOP_GRACE)
        except TimeoutError:
            for child in self.children:
                if child.process is not None and child.process.returncode is None:
                    print(f"keel up: {child.component.name} did not stop; killing it", flush=True)
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(child.process.pid, signal.SIGKILL)
            await asyncio.gather(*map(wait_exit, running), return_exceptions=True)
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
    from keel.client import ApiError as ClientApiError
    from keel.client import ApiUnavailable, KeelClient

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
                with contextlib.suppress(ClientApiError, ApiUnavailable):
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


# ------------------------------------------------------------------------- the command


def component_tokens(token_path: Path, items: list[Any]) -> dict[str, str]:
    """A token of its role for every component, added to the token file on first use and
    reused afterwards. Must run before the server loads the file."""
    by_name = {(name, role): token for token, (name, role) in read_tokens(token_path).items()}
    tokens: dict[str, str] = {}
    for item in items:
        name = item.name.split("/")[-1]
        token = by_name.get((name, item.role)) or by_name.get((item.role, item.role))
        if token is None:
            token = TokenFile.append(token_path, name, item.role)
        tokens[name] = token
    return tokens


def component_kubeconfigs(
    state_dir: Path, url: str, tokens: dict[str, str], ca_pem: bytes | None
) -> None:
    """A kubeconfig per component: STATE/kubeconfigs/NAME, trusting the server's CA."""
    directory = state_dir / "kubeconfigs"
    directory.mkdir(parents=True, exist_ok=True)
    for name, token in tokens.items():
        write_kubeconfig(directory / name, url, token, ca_pem)


def cmd_up(args: argparse.Namespace) -> int:
    if args.clusters < 0 or args.nodes_per_cluster < 0:
        print("keel up: --clusters and --nodes-per-cluster must be >= 0", file=sys.stderr)
        return 1
    options = serve_options(args, "up")
    items = components(options.state_dir, options.clusters, args.nodes_per_cluster)
    listens = metrics_listens(options.state_dir, [item.name for item in items])
    items = with_metrics(items, listens)
    supervisor = Supervisor(items, options.state_dir / "logs")
    token_path = options.token_file or options.state_dir / TOKEN_FILE
    ensure_tokens(token_path)
    tokens = component_tokens(token_path, items)  # before the server loads the file

    async def start_platform(api: Any) -> None:
        from keel.api.registry import BY_KIND
        from keel.api.resources import Cluster, ObjectMeta

        await api.ready.wait()
        started = asyncio.get_running_loop().time()
        info = BY_KIND["Cluster"]
        for i in range(1, options.clusters + 1):
            name = f"cluster-{i}"
            if await api.storage.read(info, "", name) is not None:
                continue
            with contextlib.suppress(ApiError):
                await api.storage.create(
                    info, Cluster(metadata=ObjectMeta(name=name)), namespace=""
                )
        url, admin_token, ca_pem = load_kubeconfig(options.state_dir / KUBECONFIG)
        print(f"keel up: dashboard {login_link(url, admin_token, time.time())}", flush=True)
        component_kubeconfigs(options.state_dir, url, tokens, ca_pem)
        await supervisor.start()
        print(
            f"keel up: {options.clusters} cluster(s), {len(items) - 2} node agent(s), "
            f"controller-manager and scheduler started (logs in {options.state_dir / 'logs'})",
            flush=True,
        )
        targets = write_metrics_targets(options.state_dir, listens, url)
        print(
            f"keel up: metrics at http://{listens['controller-manager']}/metrics "
            f"(controller-manager), http://{listens['scheduler']}/metrics (scheduler); "
            f"every target in {targets}",
            flush=True,
        )
        nodes = [node for _cluster, node in node_names(options.clusters, args.nodes_per_cluster)]
        progress = Progress(prefix="keel up: ")
        await wait_until_ready(api, nodes, progress, options.state_dir / "logs", started)
        if args.apply:
            await apply_and_report(args.apply, options.state_dir / KUBECONFIG)

    return guarded("up", lambda: run_server(serve(options, start_platform, supervisor.stop)))


async def apply_and_report(path: str, kubeconfig: Path) -> None:
    """`keel up --apply FILE`: apply it, then say how to reach its Services."""
    proc = spawn(
        [sys.executable, "-m", "keel", "apply", "-f", path, "--kubeconfig", str(kubeconfig)]
    )
    if await wait_exit(proc) != 0:
        print(f"keel up: applying {path} failed (see above)", flush=True)
        return
    await report_services(path, kubeconfig)


def add_up_command(commands: Any) -> None:
    up = commands.add_parser(
        "up",
        help="the platform on one machine: API server over an embedded store, "
        "controller-manager, scheduler and node agents",
    )
    add_serve_arguments(up)
    up.add_argument("--clusters", type=int, default=2, help="clusters (default 2)")
    up.add_argument(
        "--nodes-per-cluster", type=int, default=2, help="node agents per cluster (default 2)"
    )
    up.add_argument(
        "--apply", default=None, metavar="FILE", help="apply FILE once the platform is up"
    )
    up.set_defaults(run=cmd_up)
