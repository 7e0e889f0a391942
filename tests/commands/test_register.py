"""`keel register` and `keel deregister` as real processes against a real `keel up`: the
address is in the Service's Endpoints while the process runs, Ctrl-C and SIGTERM remove it at
once, SIGKILL within TTL + 1 s, a failing `--check` withdraws it, and registrations sit beside
the addresses a selector picks."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import msgspec
import pytest
import yaml
from commands.conftest import Platform, Streaming
from support import wait_for

from keel.api.resources import (
    Condition,
    Endpoints,
    Instance,
    InstanceStatus,
    Lease,
    PortStatus,
)
from keel.client import NotFound, SyncClient

TTL = 2


def service(platform: Platform, namespace: str, name: str, selector: str = "null") -> None:
    path = platform.state_dir / f"{namespace}-{name}.yaml"
    path.write_text(
        f"apiVersion: keel.dev/v1\nkind: Service\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\n"
        f"spec: {{selector: {selector}, ports: [{{name: http, port: 80, targetPort: http}}]}}\n"
    )
    platform.keel("apply", "-f", str(path))


def listed(client: SyncClient, namespace: str, name: str) -> list[tuple[str, int, bool]]:
    """(ip, port, ready) of every address in the Service's Endpoints."""
    try:
        endpoints = client.get(Endpoints, name, namespace=namespace)
    except NotFound:
        return []
    return [(a.ip, a.port, a.ready) for s in endpoints.subsets for a in s.addresses]


def register(platform: Platform, namespace: str, *args: str) -> Streaming:
    process = platform.start("register", "-n", namespace, "--ttl", str(TTL), *args)
    process.wait_for_line(lambda line: line.startswith("registered "))
    return process


@pytest.fixture
def client(platform: Platform) -> Iterator[SyncClient]:
    with platform.client() as client:
        yield client


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_register_keeps_the_address_until_stopped_and_a_stop_removes_it_at_once(
    platform: Platform, client: SyncClient, sig: signal.Signals
) -> None:
    ns = platform.namespace()
    service(platform, ns, "db")
    process = register(platform, ns, "db", "--address", "10.0.0.7:5432", "--name", "primary")
    wait_for("the address listed", lambda: listed(client, ns, "db") == [("10.0.0.7", 5432, True)])
    time.sleep(TTL * 1.5)  # several renewals later it is still there
    assert listed(client, ns, "db") == [("10.0.0.7", 5432, True)]
    t0 = time.monotonic()
    process.process.send_signal(sig)
    assert process.process.wait(timeout=10) == 0
    wait_for("the address gone", lambda: listed(client, ns, "db") == [], timeout=TTL)
    print(f"{sig.name}: gone from Endpoints after {time.monotonic() - t0:.2f} s")
    assert time.monotonic() - t0 < 1.0  # deregistered, not expired
    process.wait_for_line(lambda line: line == "deregistered 'primary'")


def test_a_killed_register_expires_within_ttl_plus_one_second(
    platform: Platform, client: SyncClient
) -> None:
    ns = platform.namespace()
    service(platform, ns, "cache")
    process = register(platform, ns, "cache", "--address", "cache.example.com:6379")
    wait_for("the address listed", lambda: listed(client, ns, "cache") != [])
    time.sleep(1.0)  # renewed at least once
    t0 = time.monotonic()
    process.process.kill()
    process.process.wait()
    wait_for("the address expired", lambda: listed(client, ns, "cache") == [], timeout=TTL + 5)
    expiry = time.monotonic() - t0
    print(f"registration expiry after SIGKILL (ttl {TTL} s): {expiry:.2f} s")
    assert expiry <= TTL + 1.0


def test_a_paused_register_expires_and_comes_back_when_resumed(
    platform: Platform, client: SyncClient
) -> None:
    ns = platform.namespace()
    service(platform, ns, "search")
    process = register(platform, ns, "search", "--address", "10.0.0.4:9200", "--name", "s1")
    try:
        wait_for("listed", lambda: listed(client, ns, "search") != [])
        process.process.send_signal(signal.SIGSTOP)
        wait_for("expired while paused", lambda: listed(client, ns, "search") == [],
                 timeout=TTL + 5)  # fmt: skip
        process.process.send_signal(signal.SIGCONT)
        wait_for("registered again", lambda: listed(client, ns, "search") != [], timeout=TTL + 5)
        assert process.process.poll() is None
    finally:
        process.process.send_signal(signal.SIGCONT)
        process.stop()


class Health(BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(type(self).status)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_a_failing_check_withdraws_the_endpoint_and_a_passing_one_restores_it(
    platform: Platform, client: SyncClient
) -> None:
    ns = platform.namespace()
    service(platform, ns, "api")
    handler = type("ApiHealth", (Health,), {"status": 200})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/healthz"
    process = register(
        platform, ns, "api", "--address", "10.0.0.9:80", "--check", url, "--check-interval", "0.2"
    )
    try:
        wait_for("listed ready", lambda: listed(client, ns, "api") == [("10.0.0.9", 80, True)])
        handler.status = 503
        wait_for("withdrawn", lambda: listed(client, ns, "api") == [("10.0.0.9", 80, False)])
        process.wait_for_line(lambda line: line.startswith("check failed: ") and "503" in line)
        handler.status = 200
        wait_for("ready again", lambda: listed(client, ns, "api") == [("10.0.0.9", 80, True)])
        shown = platform.keel("get", "endpoints", "api", "-n", ns).stdout
        assert "10.0.0.9:80" in shown and "1/1" in shown
    finally:
        process.stop()
        server.shutdown()
    assert listed(client, ns, "api") == []


def test_deregister_removes_a_registration_and_says_when_there_is_none(
    platform: Platform, client: SyncClient
) -> None:
    ns = platform.namespace()
    service(platform, ns, "queue")
    process = register(platform, ns, "queue", "--address", "10.0.0.3:5672", "--name", "q1")
    try:
        wait_for("listed", lambda: listed(client, ns, "queue") != [])
        out = platform.keel("deregister", "queue", "--name", "q1", "-n", ns).stdout
        assert "deregistered 'q1'" in out
        wait_for("gone", lambda: listed(client, ns, "queue") == [], timeout=1.0)
        # The running `keel register` learns it was removed, and stops.
        process.wait_for_line(lambda line: "was deregistered by someone else" in line)
        assert process.process.wait(timeout=10) == 0
        again = platform.keel("deregister", "queue", "--name", "q1", "-n", ns, check=False)
        assert again.returncode == 1
        assert 'no registration "q1" of service "queue"' in again.stderr
    finally:
        process.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "10.0.0.1"], "--address: expected HOST:PORT"),
        (["--address", "10.0.0.1:99999"], "--address: port must be between 1 and 65535"),
        (["--address", "bad host:80"], "--address: expected an IP address or a DNS name"),
        (["--address", "10.0.0.1:80", "--ttl", "1"], "--ttl: expected whole seconds"),
    ],
)
def test_bad_arguments_are_named(platform: Platform, args: list[str], message: str) -> None:
    result = platform.keel("register", "anything", *args, check=False)
    assert result.returncode != 0
    assert message in result.stderr


def test_registering_for_a_missing_service_fails_clearly(platform: Platform) -> None:
    result = platform.keel("register", "nope", "--address", "10.0.0.1:80", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == (
        'error: spec.registration.service: Service "nope" not found in namespace "default"'
    )


def test_a_taken_name_is_refused_with_what_to_do(platform: Platform) -> None:
    ns = platform.namespace()
    service(platform, ns, "dup")
    process = register(platform, ns, "dup", "--address", "10.0.0.1:80", "--name", "one")
    try:
        second = platform.keel(
            "register", "dup", "-n", ns, "--address", "10.0.0.2:80", "--name", "one", check=False
        )
        assert second.returncode == 1
        assert 'registration "one" of service "dup" already exists' in second.stderr
    finally:
        process.stop()


def test_selector_addresses_and_registrations_share_one_endpoints_object(
    platform: Platform, client: SyncClient
) -> None:
    ns = platform.namespace()
    service(platform, ns, "web", selector="{app: web}")
    path = platform.state_dir / f"{ns}-instance.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "keel.dev/v1",
                "kind": "Instance",
                "metadata": {"name": "web-0", "namespace": ns, "labels": {"app": "web"}},
                "spec": {"command": ["x"], "nodeName": ""},
            }
        )
    )
    platform.keel("apply", "-f", str(path))
    client.bind(ns, "web-0", "n1")
    instance = client.get(Instance, "web-0", namespace=ns)
    status = InstanceStatus(
        phase="Running",
        host_ip="127.0.0.1",
        ports=[PortStatus(name="http", port=8001)],
        conditions=[Condition(type="Ready", status="True")],
    )
    client.update_status(msgspec.structs.replace(instance, status=status))
    wait_for(
        "the instance listed", lambda: listed(client, ns, "web") == [("127.0.0.1", 8001, True)]
    )
    process = register(platform, ns, "web", "--address", "10.0.0.8:8080", "--name", "ext")
    try:
        both = [("127.0.0.1", 8001, True), ("10.0.0.8", 8080, True)]
        wait_for("both side by side", lambda: listed(client, ns, "web") == both)
        endpoints = client.get(Endpoints, "web", namespace=ns)
        marks = [(a.instance, a.lease) for s in endpoints.subsets for a in s.addresses]
        assert marks == [("web-0", ""), ("", "web.ext")]
        lease = client.get(Lease, "web.ext", namespace=ns)
        assert lease.metadata.labels == {"keel.dev/service": "web"}
    finally:
        process.stop()
    wait_for("only the instance", lambda: listed(client, ns, "web") == [("127.0.0.1", 8001, True)])
