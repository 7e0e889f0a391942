"""A real `keel up` for the client command tests, and a runner for the commands as real
subprocesses (`python -m keel ...`)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from keel.client import SyncClient

DEADLINE = 30.0


ENTRY = [sys.executable, "-m", "keel"]


@dataclass
class Platform:
    """A running `keel up` (API server over sqlite) in a temporary state dir."""

    state_dir: Path
    kubeconfig: Path
    server: str
    process: subprocess.Popen[bytes]

    def client(self) -> SyncClient:
        return SyncClient.from_kubeconfig(self.kubeconfig)

    def keel(
        self,
        *args: str,
        check: bool = True,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run one client command to completion with this platform's kubeconfig."""
        environment = {**os.environ, "KEEL_KUBECONFIG": str(self.kubeconfig)}
        if env is not None:
            environment.update(env)
        result = subprocess.run(
            [*ENTRY, *args],
            check=False,
            input=stdin,
            capture_output=True,
            text=True,
            cwd=cwd,
            env=environment,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"keel {' '.join(args)} exited {result.returncode}:\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def start(self, *args: str) -> Streaming:
        """Start a long-running client command (`get -w`, `logs -f`)."""
        environment = {**os.environ, "KEEL_KUBECONFIG": str(self.kubeconfig)}
        process = subprocess.Popen(
            [*ENTRY, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        return Streaming(process)

    def namespace(self) -> str:
        """A fresh namespace of the test's own."""
        name = f"t-{uuid.uuid4().hex[:8]}"
        path = self.state_dir / f"{name}.yaml"
        path.write_text(
            yaml.safe_dump(
                {"apiVersion": "keel.dev/v1", "kind": "Namespace", "metadata": {"name": name}}
            )
        )
        self.keel("apply", "-f", str(path))
        return name


class Streaming:
    """A command that keeps printing: its lines are read by a thread into a queue."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = DEADLINE) -> str:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no matching line within {timeout}s; saw {self.seen!r}")
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                continue
            self.seen.append(line)
            if predicate(line):
                return line

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _ready(server: str) -> bool:
    try:
        with urllib.request.urlopen(server + "/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("keel-commands")
    state = root / ".keel"
    log = (root / "up.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "keel",
            "up",
            "--state-dir",
            str(state),
            "--listen",
            "127.0.0.1:0",
            "--nodes-per-cluster",
            "0",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    kubeconfig = state / "kubeconfig"
    deadline = time.monotonic() + DEADLINE
    server = ""
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"keel up exited: {(root / 'up.log').read_text()}")
        if kubeconfig.exists():
            try:
                server = yaml.safe_load(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
            except (TypeError, KeyError, yaml.YAMLError):
                server = ""
            if server and _ready(server):
                break
        time.sleep(0.1)
    else:
        process.kill()
        raise AssertionError(f"keel up not ready: {(root / 'up.log').read_text()}")
    try:
        yield Platform(state, kubeconfig, server, process)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()
