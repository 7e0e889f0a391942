"""Starts and stops local etcd clusters on free loopback ports (tests, `keel dev etcd`).

Each member is a real etcd process with its own data dir and log file; members are stopped by
the PIDs this module started, never by name.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from keel.dev.etcd_provision import ensure_etcd
from keel.store import MAX_REQUEST_BYTES

# Room for the request envelope around a value at exactly the store's size limit, so the
# client-side check (ValueTooLarge) is the one that decides, identically on every backend.
MAX_REQUEST_BYTES_FLAG = MAX_REQUEST_BYTES + 64 * 1024

_started: dict[int, subprocess.Popen[bytes]] = {}


def _kill_leftovers() -> None:
    for proc in list(_started.values()):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
            proc.wait()


atexit.register(_kill_leftovers)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None, f"member {self.name} is not running"
        return self.process.pid

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


@dataclass
class EtcdCluster:
    base_dir: Path
    members: list[EtcdMember]
    binary: str
    progress_notify_interval: str = "1s"
    token: str = field(default_factory=lambda: f"keel-{os.getpid()}-{time.monotonic_ns()}")

    @classmethod
    def start(
        cls,
        base_dir: Path | str,
        members: int = 1,
        *,
        binary: str | None = None,
        progress_notify_interval: str = "1s",
        timeout: float = 30.0,
    ) -> EtcdCluster:
        """Start `members` etcd processes as one new cluster and wait until it serves."""
        if members < 1:
            raise ValueError(f"members: expected at least 1, got {members}")
        base = Path(base_dir).resolve()
        base.mkdir(parents=True, exist_ok=True)
        cluster = cls(
            base_dir=base,
            members=[
                EtcdMember(
                    name=f"m{i}",
                    client_port=free_port(),
                    peer_port=free_port(),
                    data_dir=base / f"m{i}.etcd",
                    log_path=base / f"m{i}.log",
                )
                for i in range(members)
            ],
            binary=binary or ensure_etcd(),
            progress_notify_interval=progress_notify_interval,
        )
        try:
            for index in range(members):
                cluster._spawn(index)
            cluster.wait_healthy(timeout)
        except BaseException:
            cluster.stop()
            raise
        return cluster

    @property
    def endpoints(self) -> list[str]:
        return [m.endpoint for m in self.members]

    @property
    def url(self) -> str:
        return "etcd://" + ",".join(self.endpoints)

    def _initial_cluster(self) -> str:
        return ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)

    def _spawn(self, index: int) -> None:
        member = self.members[index]
        existing = member.data_dir.exists()
        args = [
            self.binary,
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls=http://127.0.0.1:{member.client_port}",
            f"--advertise-client-urls=http://127.0.0.1:{member.client_port}",
            f"--listen-peer-urls=http://127.0.0.1:{member.peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{member.peer_port}",
            f"--initial-cluster={self._initial_cluster()}",
            f"--initial-cluster-state={'existing' if existing else 'new'}",
            f"--initial-cluster-token={self.token}",
            f"--max-request-bytes={MAX_REQUEST_BYTES_FLAG}",
            f"--experimental-watch-progress-notify-interval={self.progress_notify_interval}",
            "--log-level=warn",
        ]
        log = member.log_path.open("ab")
        try:
            member.process = subprocess.Popen(
                args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        _started[member.process.pid] = member.process

    def _get_json(self, member: EtcdMember, path: str, body: bytes | None = None) -> object:
        request = urllib.request.Request(
            f"http://{member.endpoint}{path}", data=body, method="POST" if body else "GET"
        )
        with urllib.request.urlopen(request, timeout=2) as response:
            return json.loads(response.read())

    def member_healthy(self, index: int) -> bool:
        member = self.members[index]
        if not member.running:
            return False
        try:
            health = self._get_json(member, "/health")
        except (OSError, urllib.error.URLError, ValueError):
            return False
        return isinstance(health, dict) and health.get("health") == "true"

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every running member reports health (which needs a leader)."""
        deadline = time.monotonic() + timeout
        while True:
            running = [i for i, m in enumerate(self.members) if m.process is not None]
            for i in running:
                proc = self.members[i].process
                assert proc is not None
                if proc.poll() is not None:
                    log = self.members[i].log_path.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"etcd member {i} exited ({proc.returncode}):\n{log}")
            if all(self.member_healthy(i) for i in running):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd cluster at {self.url} not healthy after {timeout}s")
            time.sleep(0.05)

    def leader_index(self, timeout: float = 10.0) -> int:
        """Index of the current leader, as the running members report it."""
        deadline = time.monotonic() + timeout
        while True:
            for index, member in enumerate(self.members):
                if not member.running:
                    continue
                try:
                    status = self._get_json(member, "/v3/maintenance/status", b"{}")
                except (OSError, urllib.error.URLError, ValueError):
                    continue
                if not isinstance(status, dict):
                    continue
                header = status.get("header", {})
                leader = status.get("leader")
                if leader and leader == header.get("member_id"):
                    return index
            if time.monotonic() > deadline:
                raise TimeoutError("no etcd member reports itself leader")
            time.sleep(0.05)

    def kill_member(self, index: int, sig: int = signal.SIGKILL) -> None:
        """Send `sig` to one member; for SIGKILL/SIGTERM also reap it."""
        member = self.members[index]
        proc = member.process
        assert proc is not None, f"member {index} was never started"
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _started.pop(proc.pid, None)
            member.process = None

    def pause_member(self, index: int) -> None:
        self.kill_member(index, signal.SIGSTOP)

    def resume_member(self, index: int) -> None:
        self.kill_member(index, signal.SIGCONT)

    def restart_member(self, index: int, *, wait: bool = True) -> None:
        if self.members[index].running:
            self.kill_member(index, signal.SIGTERM)
        self._spawn(index)
        if wait:
            self.wait_healthy()

    def stop(self) -> None:
        """Stop every member this cluster started (SIGTERM, then SIGKILL after 10 s), one
        after another: members told to stop all at once wait on each other's departure
        (a 3-member cluster took 7 s to stop so, 1 s in turn). Paused ones resume first."""
        for paused in [m.process for m in self.members if m.process is not None]:
            if paused.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(paused.pid, signal.SIGCONT)
        for member in self.members:
            proc = member.process
            if proc is None:
                continue
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            _started.pop(proc.pid, None)
            member.process = None

    def __enter__(self) -> EtcdCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_foreground(directory: str, members: int) -> int:
    """`keel dev etcd`: run a cluster until SIGINT/SIGTERM, then stop it."""
    stop = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    # Before anything starts: a Ctrl-C the moment the members are up (or while they start)
    # must still stop them, not end this process with the members left running.
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    cluster = EtcdCluster.start(directory, members)
    try:
        print(f"etcd cluster of {members} running; store URL: {cluster.url}", flush=True)
        for i, member in enumerate(cluster.members):
            print(
                f"  member {i}: pid {member.pid}, client {member.endpoint}, log {member.log_path}"
            )
        sys.stdout.flush()
        while not stop:
            if not all(m.running for m in cluster.members):
                print("an etcd member exited; stopping the cluster", file=sys.stderr)
                return 1
            time.sleep(0.2)
    finally:
        cluster.stop()
        print("etcd cluster stopped", flush=True)
    return 0
