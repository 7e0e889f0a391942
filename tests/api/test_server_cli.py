"""`keel apiserver`, `keel up` and `keel boundary` as real subprocesses."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
from pathlib import Path

import pytest
import yaml
from api_objects import deployment
from support import V1, ApiServer, HttpClient, wait_for
from support.processes import ca_context

KEEL = [sys.executable, "-m", "keel"]


def test_up_writes_a_kubeconfig_and_creates_the_clusters(tmp_path: Path) -> None:
    state = tmp_path / "state"
    up = ApiServer(state, "--clusters", "2", "--nodes-per-cluster", "0", subcommand="up")
    up.start()
    try:
        config = yaml.safe_load((state / "kubeconfig").read_text())
        server = config["clusters"][0]["cluster"]["server"]
        token = config["users"][0]["user"]["token"]
        assert server == up.url
        assert config["current-context"] == config["contexts"][0]["name"]
        client = HttpClient(server, token, up.ssl_context)
        assert (state / "keel.db").exists()

        def clusters() -> list[str]:
            items = client.get(f"{V1}/clusters").json["items"]
            return [c["metadata"]["name"] for c in items]

        wait_for("the Cluster objects", lambda: clusters() == ["cluster-1", "cluster-2"])
        roles = {line.split(",")[2] for line in up.token_file.read_text().splitlines()[1:]}
        assert roles == {"admin", "controller", "scheduler", "viewer"}
        assert client.post(f"{V1}/namespaces/default/deployments", deployment("web")).status == 201
    finally:
        assert up.stop(signal.SIGINT) == 0
    # running it again resumes from the state dir: same tokens, same objects
    again = ApiServer(state, "--clusters", "2", subcommand="up").start()
    try:
        config = yaml.safe_load((state / "kubeconfig").read_text())
        assert config["users"][0]["user"]["token"] == token
        client = HttpClient(again.url, token, again.ssl_context)
        assert client.get(f"{V1}/namespaces/default/deployments/web").status == 200
        items = client.get(f"{V1}/clusters").json["items"]
        assert [c["metadata"]["name"] for c in items] == ["cluster-1", "cluster-2"]
    finally:
        assert again.stop() == 0


def test_boundary_reports_writes_per_kind_with_storage_class(tmp_path: Path) -> None:
    with ApiServer(tmp_path) as server:
        server.http().post(f"{V1}/namespaces/default/deployments", deployment("web"))
        report = subprocess.run(
            [*KEEL, "boundary", "--kubeconfig", str(server.kubeconfig)],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
    lines = {line.split()[0]: line for line in report.splitlines() if line.strip()}
    assert "consensus" in lines["Deployment"]
    assert "create=1" in lines["Deployment"]
    assert "consensus-leased" in lines["Lease"]
    assert "memory" in lines["nodeheartbeats"]
    assert "create=3" in lines["Namespace"]  # default, keel-system, keel-node-lease


def test_a_certificate_without_its_key_is_refused(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            *KEEL,
            "apiserver",
            "--store",
            f"sqlite:///{tmp_path / 'k.db'}",
            "--listen",
            "127.0.0.1:0",
            "--state-dir",
            str(tmp_path),
            "--tls-cert-file",
            str(tmp_path / "tls.crt"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "--tls-cert-file was given without --tls-key-file" in result.stderr
    assert not (tmp_path / "k.db").exists()


def test_sigterm_with_an_open_watch_stops_promptly_and_cleanly(tmp_path: Path) -> None:
    server = ApiServer(tmp_path).start()
    watch = server.http().watch(f"{V1}/namespaces?watch=true")
    try:
        assert watch.next()["type"] == "ADDED"
        started = time.monotonic()
        assert server.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 5
    finally:
        watch.close()
    output = server.log()
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
    # Started means it answered /readyz over https, trusting only the kubeconfig's CA.
    server = ApiServer(tmp_path, "--tls-cert", str(cert), "--tls-key", str(key)).start()
    try:
        assert server.url.startswith("https://127.0.0.1:")
        assert f"listening on {server.url}" in server.log()
        cluster = yaml.safe_load(server.kubeconfig.read_text())["clusters"][0]["cluster"]
        assert cluster["server"] == server.url
        trusting = ca_context(cluster)
        assert HttpClient(server.url, server.token(), trusting).get(f"{V1}/nodes").status == 200
        # A client that does not trust the certificate gets no answer.
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            HttpClient(server.url, None).get("/readyz")
    finally:
        assert server.stop() == 0
