"""Real processes for the controller tests: a `keel apiserver` on sqlite, `keel
controller-manager` replicas with their logs, and polling with deadlines (no fixed sleeps).

Shared by tests/controllers and tests/runtime/test_failover_processes.py; holds no tests.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import yaml

from keel.cli._state_dir import write_kubeconfig
from keel.runtime.manager import ControllerManager

T = TypeVar("T")
# Starts an in-process controller-manager running the named controllers (a fixture).
RunManager = Callable[[list[str]], ControllerManager]
START_TIMEOUT = 60.0
KEEL = (sys.executable, "-m", "keel")
# On the replicas' PYTHONPATH, so `--controller` can load a test module (runtime.fencing_probe).
TESTS = Path(__file__).resolve().parents[1]


def with_tests_on_path() -> dict[str, str]:
    """This environment with the tests directory appended to PYTHONPATH."""
    path = os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(TESTS)]))
    return {**os.environ, "PYTHONPATH": path}


def wait_for(condition: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Poll `condition` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)  # polling for the condition, with a deadline
        delay = min(delay * 2, 0.05)


async def eventually(condition: Callable[[], Awaitable[T]], what: str, timeout: float = 30.0) -> T:
    """The async `wait_for`: poll an async condition until truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = await condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(delay)  # polling for the condition, with a deadline
        delay = min(delay * 2, 0.05)


class ApiServer:
    """`keel apiserver` on sqlite in `state_dir`, on a free loopback port."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.url = ""

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    def start(self) -> ApiServer:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.kubeconfig.unlink(missing_ok=True)
        command = [
            *KEEL, "apiserver",
            "--store", f"sqlite:///{self.state_dir / 'keel.db'}",
            "--listen", "127.0.0.1:0",
            "--state-dir", str(self.state_dir),
        ]  # fmt: skip
        log = (self.state_dir / "apiserver.log").open("wb")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        wait_for(self._ready, "the API server to answer /readyz", START_TIMEOUT)
        return self

    def _ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError((self.state_dir / "apiserver.log").read_text())
        if not self.kubeconfig.exists():
            return False
        config = yaml.safe_load(self.kubeconfig.read_text())
        self.url = config["clusters"][0]["cluster"]["server"]
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def controller_kubeconfig(self) -> Path:
        """A kubeconfig with the `controller` role's token (from DIR/tokens.csv)."""
        path = self.state_dir / "controller.kubeconfig"
        if not path.exists():
            for line in (self.state_dir / "tokens.csv").read_text().splitlines():
                fields = line.split(",")
                if len(fields) == 3 and fields[2].strip() == "controller":
                    write_kubeconfig(path, self.url, fields[0].strip())
                    break
            else:
                raise RuntimeError("no controller token in tokens.csv")
        return path

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.process = None


class ManagerProcess:
    """One `keel controller-manager` replica; its stderr goes to a log file we read. The
    tests directory is on its PYTHONPATH, for `--controller MODULE:FACTORY` of test modules."""

    def __init__(self, state_dir: Path, kubeconfig: Path, identity: str, *args: str) -> None:
        self.identity = identity
        self.log_path = state_dir / f"{identity}.log"
        command = [
            *KEEL, "controller-manager", "--kubeconfig", str(kubeconfig), "--identity", identity,
            *args,
        ]  # fmt: skip
        log = self.log_path.open("wb")
        env = {**with_tests_on_path(), "PYTHONUNBUFFERED": "1"}
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        self.pid = self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def signal(self, sig: signal.Signals) -> None:
        # Only ever the process this object started, by its PID.
        os.kill(self.pid, sig)

    def stop(self) -> int | None:
        if self.process.poll() is None:
            self.signal(signal.SIGCONT)  # a stopped process cannot handle SIGTERM
            self.signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.signal(signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def lease_of(server: ApiServer, name: str = "controller-manager") -> dict[str, Any] | None:
    """The Lease `keel-system/NAME` as JSON read through the API, or None if absent."""
    import json

    token = yaml.safe_load(server.kubeconfig.read_text())["users"][0]["user"]["token"]
    request = urllib.request.Request(
        f"{server.url}/apis/keel.dev/v1/namespaces/keel-system/leases/{name}",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            lease: dict[str, Any] = json.loads(response.read())
            return lease
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            return None
        raise
