"""Keel's own processes, as a user starts them: `python -m keel SUBCOMMAND ...` subprocesses
with their output in a log file, signalled only by the PID this object started.

`ApiServer` is `keel apiserver` (or `keel up`) on a free loopback port with its state dir,
ready once it answers /readyz; it hands out a token, a kubeconfig and clients per role and
starts the other components (`keel controller-manager`, `keel scheduler`, `keel agent`).
"""

from __future__ import annotations

import base64
import os
import ssl
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from signal import SIGCONT, SIGKILL, SIGSTOP, SIGTERM, Signals
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import yaml

from support.http import HttpClient
from support.waiting import wait_for

if TYPE_CHECKING:
    from keel.client import KeelClient, SyncClient

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
# On every process's PYTHONPATH, so `--controller MODULE:FACTORY` can load a test module.
TESTS = Path(__file__).resolve().parents[1]
# Roles `keel apiserver` gives a token when it creates the token file (besides admin).
DEFAULT_ROLES = ("controller", "scheduler", "viewer")


class KeelProcess:
    """`python -m keel SUBCOMMAND ARGS...`; each start writes a log file of its own."""

    def __init__(
        self,
        subcommand: str,
        *args: str,
        log_dir: Path,
        name: str | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.subcommand = subcommand
        self.args = list(args)
        self.log_dir = log_dir
        self.name = name or subcommand
        self.cwd = cwd
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None  # of the last run, once it ended
        self.starts = 0

    @property
    def command(self) -> list[str]:
        return [sys.executable, "-m", "keel", self.subcommand, *self.args]

    @property
    def log_path(self) -> Path:
        """The log of the current (or last) run."""
        return self.log_dir / f"{self.name}-{self.starts}.log"

    @property
    def pid(self) -> int:
        if self.process is None:
            raise RuntimeError(f"keel {self.subcommand} ({self.name}) is not running")
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        """Everything every run of this process wrote, oldest first."""
        return "".join(
            (self.log_dir / f"{self.name}-{n}.log").read_text(errors="replace")
            for n in range(1, self.starts + 1)
            if (self.log_dir / f"{self.name}-{n}.log").exists()
        )

    def start(self) -> Self:
        if self.running:
            raise RuntimeError(f"keel {self.subcommand} ({self.name}) is already running")
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        self.returncode = None
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.cwd,
                env={**os.environ, **_tests_on_path(), "PYTHONUNBUFFERED": "1", **self.env},
            )
        return self

    def signal(self, sig: Signals) -> None:
        """Send `sig` to this process (by the PID it was started with), if it still runs."""
        if self.process is not None:
            self.process.send_signal(sig)  # a no-op once the process has been reaped

    def pause(self) -> None:
        self.signal(SIGSTOP)

    def resume(self) -> None:
        self.signal(SIGCONT)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit on its own; its exit code."""
        if self.process is None:
            raise RuntimeError(f"keel {self.subcommand} ({self.name}) was not started")
        self.returncode = self.process.wait(timeout=timeout)
        self.process = None
        return self.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash."""
        if self.process is not None:
            self.process.kill()
            self.wait()

    def stop(self, sig: Signals = SIGTERM, timeout: float = STOP_TIMEOUT) -> int | None:
        """`sig` (SIGTERM: a clean stop), then SIGKILL if it has not exited within `timeout`;
        the exit code. A paused process is resumed so that it can handle `sig`."""
        if self.process is None:
            return self.returncode
        self.signal(sig)
        self.resume()
        try:
            return self.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return self.returncode

    def restart(self, sig: Signals = SIGTERM) -> Self:
        self.stop(sig)
        return self.start()

    def __enter__(self) -> Self:
        return self if self.running else self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def ca_context(cluster: dict[str, Any]) -> ssl.SSLContext | None:
    """A client context trusting a kubeconfig cluster's CA (None for plain HTTP)."""
    data = cluster.get("certificate-authority-data")
    if data:
        return ssl.create_default_context(cadata=base64.b64decode(data).decode("ascii"))
    ca = cluster.get("certificate-authority")
    return ssl.create_default_context(cafile=ca) if ca else None


def _tests_on_path() -> dict[str, str]:
    path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(TESTS)]))
    return {"PYTHONPATH": path}


class ApiServer(KeelProcess):
    """`keel apiserver` (or `keel up`: `subcommand="up"`) with its state dir, on a loopback
    port the OS picks at the first start and keeps across restarts.

    `store` is a store URL (default: sqlite in the state dir); `nodes` get a `node:NAME`
    token each; `token_file` shares another server's tokens.
    """

    def __init__(
        self,
        state_dir: Path,
        *args: str,
        store: str | None = None,
        subcommand: str = "apiserver",
        nodes: Iterable[str] = (),
        token_file: Path | None = None,
        cwd: Path | None = None,
    ) -> None:
        super().__init__(subcommand, *args, log_dir=state_dir, cwd=cwd)
        self.state_dir = state_dir
        self.store = store
        self.nodes = list(nodes)
        self.shared_tokens = token_file
        self.port = 0
        self.url = ""
        self.ssl_context: ssl.SSLContext | None = None

    @property
    def command(self) -> list[str]:
        return [
            *super().command,
            *(("--store", self.store) if self.store else ()),
            *(("--token-file", str(self.shared_tokens)) if self.shared_tokens else ()),
            "--listen", f"127.0.0.1:{self.port}",
            "--state-dir", str(self.state_dir),
        ]  # fmt: skip

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig the server writes into its state dir."""
        return self.state_dir / "kubeconfig"

    @property
    def token_file(self) -> Path:
        return self.shared_tokens or self.state_dir / "tokens.csv"

    def start(self) -> Self:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if self.nodes and not self.token_file.exists():
            from keel.api.auth import TokenFile

            # What the server would create, plus a token per node (it reads the file once).
            TokenFile.create(self.token_file)
            for role in DEFAULT_ROLES:
                TokenFile.append(self.token_file, role, role)
            for node in self.nodes:
                TokenFile.append(self.token_file, f"agent-{node}", f"node:{node}")
        self.kubeconfig.unlink(missing_ok=True)  # it says where the server listens, once it does
        super().start()
        try:
            wait_for(
                f"keel {self.subcommand} to answer /readyz", self._ready, timeout=START_TIMEOUT
            )
        except AssertionError as exc:
            self.stop(SIGKILL)
            raise AssertionError(f"{exc}\n{self.log()}") from None
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(
                f"keel {self.subcommand} exited with {self.process.returncode}:\n{self.log()}"
            )
        if not self.kubeconfig.exists():
            return False
        cluster = yaml.safe_load(self.kubeconfig.read_text())["clusters"][0]["cluster"]
        self.url = str(cluster["server"])
        self.port = int(self.url.rsplit(":", 1)[1])
        self.ssl_context = ca_context(cluster)
        try:
            return self.http(None).get("/readyz", timeout=2).status == 200
        except OSError:
            return False

    # -- credentials and clients, per role: admin, viewer, controller, scheduler, node:NAME

    def token(self, role: str = "admin") -> str:
        """The first token of `role` in the token file."""
        for line in self.token_file.read_text().splitlines():
            fields = [f.strip() for f in line.split(",")]
            if len(fields) == 3 and not fields[0].startswith("#") and fields[2] == role:
                return fields[0]
        raise KeyError(f"no {role} token in {self.token_file}")

    def kubeconfig_for(self, role: str = "admin") -> Path:
        """A kubeconfig for this server with the token of `role`."""
        if role == "admin":
            return self.kubeconfig
        path = self.state_dir / f"kubeconfig-{role.replace(':', '-')}"
        cluster: dict[str, str] = {"server": self.url}
        admin = yaml.safe_load(self.kubeconfig.read_text())["clusters"][0]["cluster"]
        for field in ("certificate-authority", "certificate-authority-data"):
            if field in admin:
                cluster[field] = admin[field]
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "keel", "cluster": cluster}],
            "users": [{"name": role, "user": {"token": self.token(role)}}],
            "contexts": [{"name": "keel", "context": {"cluster": "keel", "user": role}}],
            "current-context": "keel",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def http(self, role: str | None = "admin") -> HttpClient:
        """Plain HTTP as `role` (anonymous for None)."""
        return HttpClient(self.url, self.token(role) if role else None, self.ssl_context)

    # keel.client is imported when first asked for: it costs a test run that never uses it
    # (most start a server only to speak HTTP to it) a third of a second.
    def sync_client(self, role: str = "admin") -> SyncClient:
        from keel.client import SyncClient

        return SyncClient.from_kubeconfig(self.kubeconfig_for(role))

    def client(self, role: str = "admin") -> KeelClient:
        from keel.client import KeelClient

        return KeelClient.from_kubeconfig(self.kubeconfig_for(role))

    # -- the other components, against this server

    def controller_manager(self, identity: str, *args: str) -> KeelProcess:
        """`keel controller-manager` with the controller token, started."""
        return KeelProcess(
            "controller-manager",
            "--kubeconfig", str(self.kubeconfig_for("controller")), "--identity", identity, *args,
            log_dir=self.state_dir, name=identity,
        ).start()  # fmt: skip

    def scheduler(self, identity: str, *args: str) -> KeelProcess:
        """`keel scheduler` with the scheduler token, started."""
        return KeelProcess(
            "scheduler",
            "--kubeconfig", str(self.kubeconfig_for("scheduler")), "--identity", identity, *args,
            log_dir=self.state_dir, name=identity,
        ).start()  # fmt: skip

    def agent(self, node: str, state_dir: Path, *args: str, cluster: str = "c1") -> AgentProcess:
        """`keel agent` for `node` (which needs a node token: see `nodes`), not yet started."""
        return AgentProcess(self, node, state_dir, *args, cluster=cluster)


class AgentProcess(KeelProcess):
    """`keel agent` for one node, with its own state dir (its workloads' records and logs)."""

    def __init__(
        self, server: ApiServer, node: str, state_dir: Path, *args: str, cluster: str
    ) -> None:
        super().__init__(
            "agent",
            "--node", node, "--cluster", cluster,
            "--kubeconfig", str(server.kubeconfig_for(f"node:{node}")),
            "--state-dir", str(state_dir),
            *args,
            log_dir=state_dir.parent, name=f"agent-{node}", cwd=server.cwd,
        )  # fmt: skip
        self.node = node
        self.state_dir = state_dir
