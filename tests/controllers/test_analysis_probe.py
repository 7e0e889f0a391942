"""The analysis probes against real endpoints: an HTTP server on loopback answering 200 or
500, and exec probes that see the canaries in their environment."""

from __future__ import annotations

import http.server
import sys
import threading
from collections.abc import Iterator

import pytest

from keel.api.resources import (
    AnalysisProbe,
    Condition,
    Instance,
    InstanceSpec,
    InstanceStatus,
    ObjectMeta,
    PortStatus,
)
from keel.controllers.analysis import probe_endpoints, run_probe


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/ok" else 500)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[int]:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


def canary(name: str, port: int) -> Instance:
    return Instance(
        kind="Instance",
        metadata=ObjectMeta(name=name, namespace="default"),
        spec=InstanceSpec(command=["x"]),
        status=InstanceStatus(
            phase="Running",
            host_ip="127.0.0.1",
            ports=[PortStatus(name="http", port=port)],
            conditions=[Condition(type="Ready", status="True")],
        ),
    )


async def test_http_probe_passes_on_2xx_and_fails_otherwise(server: int) -> None:
    ready = [canary("web-1", server)]
    assert await run_probe(AnalysisProbe(type="http", path="/ok", port="http"), ready, ready)
    assert not await run_probe(AnalysisProbe(type="http", path="/bad", port="http"), ready, ready)
    # Nothing listening: a failure, not an error.
    closed = [canary("web-2", 9)]
    assert not await run_probe(AnalysisProbe(type="http", path="/ok"), closed, closed)
    # No ready canary at all: nothing passed.
    assert not await run_probe(AnalysisProbe(type="http", path="/ok"), [], ready)


def test_endpoints_resolve_port_names_numbers_and_the_first_port() -> None:
    one = canary("web-1", 8080)
    assert probe_endpoints(AnalysisProbe(type="http", port="http"), [one]) == ["127.0.0.1:8080"]
    assert probe_endpoints(AnalysisProbe(type="http", port=9000), [one]) == ["127.0.0.1:9000"]
    assert probe_endpoints(AnalysisProbe(type="http"), [one]) == ["127.0.0.1:8080"]
    assert probe_endpoints(AnalysisProbe(type="http", port="admin"), [one]) == []


async def test_exec_probe_sees_the_canaries_and_its_exit_status_decides() -> None:
    canaries = [canary("web-1", 8080), canary("web-2", 8081)]
    check = (
        "import os, sys; "
        "sys.exit(0 if os.environ['KEEL_CANARY_INSTANCES'] == 'web-1 web-2' "
        "and os.environ['KEEL_CANARY_ENDPOINTS'] == '127.0.0.1:8080 127.0.0.1:8081' else 1)"
    )
    passing = AnalysisProbe(type="exec", command=[sys.executable, "-c", check])
    assert await run_probe(passing, canaries, canaries)
    failing = AnalysisProbe(type="exec", command=[sys.executable, "-c", "raise SystemExit(3)"])
    assert not await run_probe(failing, canaries, canaries)
    slow = AnalysisProbe(
        type="exec",
        command=[sys.executable, "-c", "import time; time.sleep(30)"],
        timeout_seconds=1,
    )
    assert not await run_probe(slow, canaries, canaries)
    missing = AnalysisProbe(type="exec", command=["/nonexistent/probe"])
    assert not await run_probe(missing, canaries, canaries)
