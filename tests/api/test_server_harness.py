"""A real `keel apiserver` subprocess on a free loopback port, and a small urllib client.

Shared by the tests/api/test_server_*.py modules (this module holds no tests itself).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEADLINE = 30.0
KEEL = (sys.executable, "-m", "keel")


def wait_for(condition: Callable[[], Any], what: str, timeout: float = DEADLINE) -> Any:
    """Poll `condition` until it returns something truthy; fail after `timeout`."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


@dataclass
class Response:
    status: int
    body: bytes
    headers: dict[str, str]

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Client:
    base: str
    token: str | None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> Response:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        all_headers = {"Content-Type": content_type, **(headers or {})}
        if self.token:
            all_headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.base + path, data=data, method=method, headers=all_headers
        )
        try:
            with urllib.request.urlopen(request, timeout=DEADLINE) as response:
                return Response(response.status, response.read(), dict(response.headers))
        except urllib.error.HTTPError as exc:
            return Response(exc.code, exc.read(), dict(exc.headers))

    def get(self, path: str, **kw: Any) -> Response:
        return self.request("GET", path, **kw)

    def post(self, path: str, body: Any, **kw: Any) -> Response:
        return self.request("POST", path, body, **kw)

    def put(self, path: str, body: Any, **kw: Any) -> Response:
        return self.request("PUT", path, body, **kw)

    def delete(self, path: str, body: Any = None, **kw: Any) -> Response:
        return self.request("DELETE", path, body, **kw)

    def patch(self, path: str, body: Any, content_type: str, **kw: Any) -> Response:
        return self.request("PATCH", path, body, content_type=content_type, **kw)

    def watch(self, path: str, timeout: float = 10.0) -> Watch:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(self.base + path, headers=headers)
        return Watch(urllib.request.urlopen(request, timeout=timeout))


@dataclass
class Watch:
    """A streaming watch response, read one JSON line at a time."""

    response: Any
    seen: list[dict[str, Any]] = field(default_factory=list)

    def next(self) -> dict[str, Any]:
        line = self.response.readline()
        if not line:
            raise EOFError("the watch stream ended")
        event: dict[str, Any] = json.loads(line)
        self.seen.append(event)
        return event

    def until(self, matches: Callable[[dict[str, Any]], bool], limit: int = 1000) -> dict[str, Any]:
        for _ in range(limit):
            event = self.next()
            if matches(event):
                return event
        raise AssertionError(f"no matching event among {limit}")

    def close(self) -> None:
        self.response.close()


class ApiProcess:
    """`keel apiserver` as a subprocess, on 127.0.0.1 with a port the OS chose."""

    def __init__(
        self, state_dir: Path, store: str | None, *extra: str, command: str = "apiserver"
    ) -> None:
        self.state_dir = state_dir
        self.store = store
        self.extra = extra
        self.command = command
        self.proc: subprocess.Popen[str] | None = None
        self.url = ""
        self.output: list[str] = []

    def start(self) -> ApiProcess:
        self.proc = subprocess.Popen(
            [
                *KEEL,
                self.command,
                *(("--store", self.store) if self.store else ()),
                "--listen",
                "127.0.0.1:0",
                "--state-dir",
                str(self.state_dir),
                *self.extra,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        self.output.append(line)
        if "listening on " not in line:
            rest = self.proc.stdout.read() if self.proc.poll() is not None else ""
            raise AssertionError(f"apiserver did not start: {line}{rest}")
        self.url = line.split("listening on ", 1)[1].split()[0]
        wait_for(lambda: self.client(None).get("/readyz").status == 200, "/readyz")
        return self

    def tokens(self) -> dict[str, str]:
        """role -> token from the state dir's token file."""
        found: dict[str, str] = {}
        for line in (self.state_dir / "tokens.csv").read_text().splitlines():
            if line and not line.startswith("#"):
                token, _name, role = line.split(",")
                found.setdefault(role, token)
        return found

    def client(self, role: str | None = "admin") -> Client:
        return Client(self.url, self.tokens()[role] if role else None)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            out, _ = self.proc.communicate(timeout=DEADLINE)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.output.append(out or "")
        return self.proc.returncode


def running(state_dir: Path, store: str, *extra: str) -> Iterator[ApiProcess]:
    server = ApiProcess(state_dir, store, *extra).start()
    try:
        yield server
    finally:
        server.stop()


def store_writes(client: Client) -> dict[tuple[str, str], float]:
    """keel_store_writes_total samples from /metrics: (kind, verb) -> count."""
    found: dict[tuple[str, str], float] = {}
    for line in client.get("/metrics").body.decode().splitlines():
        if line.startswith("keel_store_writes_total{"):
            labels, _, value = line[len("keel_store_writes_total{") :].rpartition("} ")
            parts = dict(p.split("=", 1) for p in labels.split(","))
            found[(parts["kind"].strip('"'), parts["verb"].strip('"'))] = float(value)
    return found


def deployment(name: str, replicas: int = 1, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "keel.dev/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels},
        "spec": {"replicas": replicas, "template": {"spec": {"command": ["sleep", "1"]}}},
    }


def instance(name: str, node: str = "", **labels: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"command": ["sleep", "1"]}
    if node:
        spec["nodeName"] = node
    return {
        "apiVersion": "keel.dev/v1",
        "kind": "Instance",
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }


def lease(name: str, holder: str, seconds: int = 10) -> dict[str, Any]:
    return {
        "apiVersion": "keel.dev/v1",
        "kind": "Lease",
        "metadata": {"name": name},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": seconds},
    }
