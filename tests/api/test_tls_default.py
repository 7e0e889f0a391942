"""TLS by default: the state dir's own CA and serving certificate (keel.api.certs), the
kubeconfig's certificate-authority-data, `--insecure` for plain HTTP, and a state dir from an
older keel (plain HTTP, no CA) upgraded on its next start."""

from __future__ import annotations

import base64
import ipaddress
import socket
import ssl
import urllib.error
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from support import V1, ApiServer, HttpClient
from support.processes import ca_context

from keel.api.certs import (
    Sans,
    certificate_sans,
    ensure_serving_certificate,
    missing_sans,
    sans_for,
)
from keel.api.resources import Namespace


def _ips(*texts: str) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return frozenset(ipaddress.ip_address(t) for t in texts)


def test_sans_cover_loopback_the_host_name_and_the_listen_address() -> None:
    sans = sans_for("10.1.2.3", "Box-1")
    assert sans.dns == {"localhost", "box-1"}
    assert sans.ips == _ips("127.0.0.1", "::1", "10.1.2.3")
    # all interfaces is no name a client can use; a host name is a DNS SAN
    assert sans_for("0.0.0.0", "h").ips == _ips("127.0.0.1", "::1")
    assert sans_for("[::]", "h").ips == _ips("127.0.0.1", "::1")
    assert "api.example.org" in sans_for("api.example.org", "h").dns


def test_missing_sans_names_what_a_certificate_lacks() -> None:
    have = Sans(frozenset({"localhost"}), _ips("127.0.0.1"))
    want = sans_for("10.0.0.7", "")
    missing = missing_sans(have, want)
    assert missing.dns == frozenset()
    assert missing.ips == _ips("::1", "10.0.0.7")
    assert missing_sans(want, want) == Sans(frozenset(), frozenset())


def test_first_start_makes_a_ca_later_starts_reuse_it_a_new_address_reissues(
    tmp_path: Path,
) -> None:
    first = ensure_serving_certificate(tmp_path, "127.0.0.1", hostname="box")
    assert first.created_ca and first.issued
    assert (first.ca_key.stat().st_mode & 0o777) == 0o600
    assert (first.key.stat().st_mode & 0o777) == 0o600
    cert = x509.load_pem_x509_certificate(first.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(first.ca_pem)
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    assert certificate_sans(cert) == sans_for("127.0.0.1", "box")

    again = ensure_serving_certificate(tmp_path, "127.0.0.1", hostname="box")
    assert not again.created_ca and not again.issued
    assert again.cert.read_bytes() == first.cert.read_bytes()

    ca_before = first.ca_pem
    moved = ensure_serving_certificate(tmp_path, "10.9.8.7", hostname="box")
    assert not moved.created_ca and moved.issued
    assert moved.ca_pem == ca_before  # clients keep trusting the same CA
    sans = certificate_sans(x509.load_pem_x509_certificate(moved.cert.read_bytes()))
    assert ipaddress.ip_address("10.9.8.7") in sans.ips
    assert ipaddress.ip_address("127.0.0.1") in sans.ips


def _cluster(server: ApiServer) -> dict[str, str]:
    cluster: dict[str, str] = yaml.safe_load(server.kubeconfig.read_text())["clusters"][0][
        "cluster"
    ]
    return cluster


def test_apiserver_serves_https_by_default_trusted_through_the_kubeconfig(
    tmp_path: Path,
) -> None:
    with ApiServer(tmp_path) as server:
        assert server.url.startswith("https://127.0.0.1:")
        cluster = _cluster(server)
        assert "certificate-authority" not in cluster  # kubectl refuses both
        pem = base64.b64decode(cluster["certificate-authority-data"])
        assert pem == (tmp_path / "tls" / "ca.crt").read_bytes()
        trusting = ca_context(cluster)
        assert HttpClient(server.url, server.token(), trusting).get(f"{V1}/nodes").status == 200
        # the certificate names localhost and the host name too
        port = server.port
        for name in ("localhost", socket.gethostname()):
            context = ssl.create_default_context(cadata=pem.decode())
            with (
                socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
                context.wrap_socket(raw, server_hostname=name) as tls_sock,
            ):
                assert tls_sock.version() is not None
        # a client that does not trust the CA gets no answer; plain HTTP none either
        with pytest.raises(urllib.error.URLError, match="CERTIFICATE_VERIFY_FAILED"):
            HttpClient(server.url, None).get("/readyz")
        with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
            HttpClient(server.url.replace("https://", "http://"), None).get("/readyz", timeout=5)
        # Keel's own client verifies with the kubeconfig's CA
        with server.sync_client() as client:
            assert "default" in [ns.metadata.name for ns in client.list(Namespace).items]


def test_insecure_serves_plain_http_and_writes_no_ca(tmp_path: Path) -> None:
    with ApiServer(tmp_path, "--insecure") as server:
        assert server.url.startswith("http://127.0.0.1:")
        assert "certificate-authority-data" not in _cluster(server)
        assert server.http().get(f"{V1}/nodes").status == 200
    assert not (tmp_path / "tls").exists()


def test_a_state_dir_of_an_older_keel_upgrades_to_tls_on_the_next_start(tmp_path: Path) -> None:
    with ApiServer(tmp_path, "--insecure") as server:
        token = server.token()
        assert server.http().post(f"{V1}/namespaces", {"metadata": {"name": "kept"}}).status == 201
    # as an older keel left it: a plain-HTTP kubeconfig without a CA, no tls/ directory
    assert not (tmp_path / "tls").exists()
    old = yaml.safe_load(server.kubeconfig.read_text())
    assert old["clusters"][0]["cluster"]["server"].startswith("http://")
    (tmp_path / "kubeconfig.old").write_text(yaml.safe_dump(old))
    with ApiServer(tmp_path) as upgraded:
        assert upgraded.url.startswith("https://")
        assert upgraded.token() == token
        answer = upgraded.http().get(f"{V1}/namespaces/kept")
        assert answer.status == 200
        assert (tmp_path / "tls" / "ca.crt").exists()
