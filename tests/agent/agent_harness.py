"""Real processes for the agent's tests: a `keel apiserver` on sqlite with node tokens, and
`keel agent` subprocesses with their own state dirs. Everything is stopped by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import yaml

from keel.api.auth import TokenFile
from keel.api.resources import Instance, InstanceSpec, ObjectMeta
from keel.client import SyncClient

T = TypeVar("T")
START_TIMEOUT = 60.0


def wait_for(what: str, check: Callable[[], T | None], timeout: float = 30.0) -> T:
    """Poll `check` until it returns something truthy, or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.05)  # polling for the condition, with a deadline
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


class ApiServer:
    """`keel apiserver` on sqlite in `state_dir`, with a `node:NAME` token per node."""

    def __init__(self, state_dir: Path, nodes: list[str]) -> None:
        self.state_dir = state_dir
        state_dir.mkdir(parents=True, exist_ok=True)
        tokens = state_dir / "tokens.csv"
        self.admin_token = TokenFile.create(tokens)
        self.node_tokens = {n: TokenFile.append(tokens, f"agent-{n}", f"node:{n}") for n in nodes}
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.process is None
        kubeconfig = self.state_dir / "kubeconfig"
        kubeconfig.unlink(missing_ok=True)
        self.starts += 1
        command = [
            sys.executable, "-m", "keel", "apiserver",
            "--store", f"sqlite:///{self.state_dir / 'keel.db'}",
            "--listen", f"127.0.0.1:{self.port}",
            "--state-dir", str(self.state_dir),
        ]  # fmt: skip
        log = self.state_dir / f"apiserver-{self.starts}.log"
        with log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"apiserver exited: {log.read_text()}")
            if kubeconfig.exists():
                config = yaml.safe_load(kubeconfig.read_text())
                server = config["clusters"][0]["cluster"]["server"]
                self.port = int(server.rsplit(":", 1)[1])
                try:
                    with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                        if response.status == 200:
                            return
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    pass
            time.sleep(0.05)  # polling for the condition, with a deadline
        raise RuntimeError(f"apiserver not ready in {START_TIMEOUT}s: {log.read_text()}")

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.send_signal(signal.SIGCONT)
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def client(self) -> SyncClient:
        return SyncClient(self.url, token=self.admin_token, timeout=10.0)

    def node_kubeconfig(self, node: str) -> Path:
        path = self.state_dir / f"kubeconfig-{node}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "keel", "cluster": {"server": self.url}}],
            "users": [{"name": node, "user": {"token": self.node_tokens[node]}}],
            "contexts": [{"name": "keel", "context": {"cluster": "keel", "user": node}}],
            "current-context": "keel",
        }
        path.write_text(yaml.safe_dump(config))
        return path


class AgentProcess:
    """`keel agent` for one node, as a subprocess (stopped by PID)."""

    def __init__(
        self, server: ApiServer, node: str, state_dir: Path, *extra: str, cluster: str = "c1"
    ) -> None:
        self.server = server
        self.node = node
        self.state_dir = state_dir
        self.cluster = cluster
        self.extra = list(extra)
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def log(self) -> Path:
        return self.state_dir.parent / f"agent-{self.node}-{self.starts}.log"

    def start(self, *more: str) -> None:
        assert self.process is None
        self.starts += 1
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable, "-m", "keel", "agent",
            "--node", self.node,
            "--cluster", self.cluster,
            "--kubeconfig", str(self.server.node_kubeconfig(self.node)),
            "--state-dir", str(self.state_dir),
            "--heartbeat-interval", "0.5",
            "--capacity", "cpu=4,memory=8Gi",
            *self.extra,
            *more,
        ]  # fmt: skip
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)

    def signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(sig)

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        code = self.process.wait(timeout=timeout)
        self.process = None
        return code

    def kill(self) -> None:
        """SIGKILL, as a crash: its workloads keep running."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.process = None

    def logs(self) -> str:
        return "\n".join(
            p.read_text(errors="replace")
            for p in sorted(self.state_dir.parent.glob(f"agent-{self.node}-*.log"))
        )


def instance(
    name: str,
    node: str,
    command: list[str],
    *,
    namespace: str = "default",
    **spec: object,
) -> Instance:
    """An Instance already bound to `node`, as the scheduler would leave it."""
    return Instance(
        kind="Instance",
        metadata=ObjectMeta(name=name, namespace=namespace),
        spec=InstanceSpec(command=command, node_name=node, **spec),  # type: ignore[arg-type]
    )


def ready(obj: Instance) -> bool:
    return any(c.type == "Ready" and c.status == "True" for c in obj.status.conditions)


def pid_alive(pid: int) -> bool:
    """Whether `pid` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return text[text.rfind(")") + 2 :].split()[0] != "Z"


def group_alive(pgid: int) -> bool:
    """Whether any live process is left in process group `pgid`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii") as f:
                text = f.read()
        except (FileNotFoundError, ProcessLookupError):
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def kill_group(pgid: int) -> None:
    """Clean up a workload group this test's agent started (if anything is left)."""
    if pgid > 1 and group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
