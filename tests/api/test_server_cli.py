"""`keel apiserver`, `keel up` and `keel boundary` as real subprocesses."""

from __future__ import annotations

import signal
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

import yaml
from test_server_harness import KEEL, ApiProcess, Client, deployment, wait_for

V1 = "/apis/keel.dev/v1"


def test_up_writes_a_kubeconfig_and_creates_the_clusters(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = ApiProcess(state, None, "--clusters", "2", "--nodes-per-cluster", "0", command="up")
    up.start()
    try:
        config = yaml.safe_load((state / "kubeconfig").read_text())
        server = config["clusters"][0]["cluster"]["server"]
        token = config["users"][0]["user"]["token"]
        assert server == up.url
        assert config["current-context"] == config["contexts"][0]["name"]
        client = Client(server, token)
        assert (state / "keel.db").exists()

        def clusters() -> list[str]:
            items = client.get(f"{V1}/clusters").json["items"]
            return [c["metadata"]["name"] for c in items]

        wait_for(lambda: clusters() == ["cluster-1", "cluster-2"], "the Cluster objects")
        assert set(up.tokens()) == {"admin", "controller", "scheduler", "viewer"}
        assert client.post(f"{V1}/namespaces/default/deployments", deployment("web")).status == 201
    finally:
        assert up.stop(signal.SIGINT) == 0
    # running it again resumes from the state dir: same tokens, same objects
    again = ApiProcess(state, None, "--clusters", "2", command="up").start()
    try:
        config = yaml.safe_load((state / "kubeconfig").read_text())
        assert config["users"][0]["user"]["token"] == token
        client = Client(again.url, token)
        assert client.get(f"{V1}/namespaces/default/deployments/web").status == 200
        items = client.get(f"{V1}/clusters").json["items"]
        assert [c["metadata"]["name"] for c in items] == ["cluster-1", "cluster-2"]
    finally:
        assert again.stop() == 0


def test_boundary_reports_writes_per_kind_with_storage_class(tmp_path: Path) -> None:
    server = ApiProcess(tmp_path, f"sqlite:///{tmp_path / 'k.db'}").start()
    try:
        admin = server.client()
        admin.post(f"{V1}/namespaces/default/deployments", deployment("web"))
        report = subprocess.run(
            [*KEEL, "boundary", "--kubeconfig", str(tmp_path / "kubeconfig")],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    finally:
        server.stop()
    lines = {line.split()[0]: line for line in report.splitlines() if line.strip()}
    assert "consensus" in lines["Deployment"]
    assert "create=1" in lines["Deployment"]
    assert "consensus-leased" in lines["Lease"]
    assert "memory" in lines["nodeheartbeats"]
    assert "create=3" in lines["Namespace"]  # default, keel-system, keel-node-lease


def test_a_non_loopback_address_without_tls_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *KEEL,
            "apiserver",
            "--store",
            f"sqlite:///{tmp_path / 'k.db'}",
            "--listen",
            "0.0.0.0:0",
            "--state-dir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "TLS" in result.stderr
    assert not (tmp_path / "k.db").exists()


def test_sigterm_with_an_open_watch_stops_promptly_and_cleanly(tmp_path: Path) -> None:
    server = ApiProcess(tmp_path, f"sqlite:///{tmp_path / 'k.db'}").start()
    watch = server.client().watch(f"{V1}/namespaces?watch=true")
    try:
        assert watch.next()["type"] == "ADDED"
        started = time.monotonic()
        assert server.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 5
    finally:
        watch.close()
    output = "".join(server.output)
    assert "stopped" in output
    assert "Traceback" not in output


def test_tls_serving_with_the_kubeconfig_trusting_the_certificate(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    proc = subprocess.Popen(
        [
            *KEEL, "apiserver", "--store", f"sqlite:///{tmp_path / 'k.db'}",
            "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path),
            "--tls-cert", str(cert), "--tls-key", str(key),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        url = proc.stdout.readline().split("listening on ", 1)[1].split()[0]
        assert url.startswith("https://127.0.0.1:")
        config = yaml.safe_load((tmp_path / "kubeconfig").read_text())
        cluster = config["clusters"][0]["cluster"]
        assert cluster["server"] == url
        context = ssl.create_default_context(cafile=cluster["certificate-authority"])

        def ready() -> bool:
            try:
                with urllib.request.urlopen(f"{url}/readyz", context=context, timeout=5) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(ready, "/readyz over https")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        if proc.stdout is not None:
            proc.stdout.close()
