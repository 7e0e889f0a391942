"""A real `keel up` for the client command tests (from tests/support), and a runner for the
commands as real subprocesses (`python -m keel ...`)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support import ApiServer

from keel.client import SyncClient

DEADLINE = 30.0
KEEL = [sys.executable, "-m", "keel"]


@dataclass
class Platform:
    """A running `keel up` (API server over sqlite, no agents) in a temporary state dir."""

    up: ApiServer

    @property
    def state_dir(self) -> Path:
        return self.up.state_dir

    @property
    def kubeconfig(self) -> Path:
        return self.up.kubeconfig

    def client(self) -> SyncClient:
        return self.up.sync_client()

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
            [*KEEL, *args],
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
            [*KEEL, *args],
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

    def wait_for_line(self, predicate: Callable[[str], bool], timeout: float = DEADLINE) -> str:
        """The next line (read by the thread, so no polling) for which `predicate` holds."""
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


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    root = tmp_path_factory.mktemp("keel-commands")
    up = ApiServer(root / ".keel", "--nodes-per-cluster", "0", subcommand="up", cwd=root)
    with up:
        yield Platform(up)
