"""The state dir's certificate authority and serving certificate (TLS by default, as k3s does).

On first start `ensure_serving_certificate` creates `tls/ca.crt` + `tls/ca.key` (a CA valid
for ten years) and `tls/server.crt` + `tls/server.key` (a year) signed by it, with SANs for
loopback, the host name and the listen address. Later starts reuse them, and reissue only
the serving certificate, from the same CA, when it lacks a SAN the listen address needs or
nears its end: clients keep trusting the CA they were given. `missing_sans` and `sans_for`
are pure; the file handling is the only I/O, all of it here.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TLS_DIR = "tls"
CA_DAYS = 3650
SERVING_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=30)
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class ServingFiles:
    """Where the CA and the serving certificate and key live, and whether they were made now."""

    ca_cert: Path
    ca_key: Path
    cert: Path
    key: Path
    created_ca: bool = False
    issued: bool = False

    @property
    def ca_pem(self) -> bytes:
        return self.ca_cert.read_bytes()


@dataclass(frozen=True)
class Sans:
    """Subject alternative names a serving certificate must carry."""

    dns: frozenset[str]
    ips: frozenset[IPAddress]

    def __str__(self) -> str:
        return ", ".join(sorted(self.dns) + sorted(str(ip) for ip in self.ips))


def sans_for(listen_host: str, hostname: str) -> Sans:
    """The names a client may reach the server by: loopback (127.0.0.1, ::1, localhost), the
    machine's host name, and the listen address (all-interfaces addresses excepted)."""
    dns = {"localhost"}
    ips: set[IPAddress] = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    if hostname:
        dns.add(hostname.lower())
    host = listen_host.strip("[]")
    if host:
        try:
            address = ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            dns.add(host.lower())
        else:
            if not address.is_unspecified:
                ips.add(address)
    return Sans(frozenset(dns), frozenset(ips))


def certificate_sans(cert: x509.Certificate) -> Sans:
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return Sans(frozenset(), frozenset())
    return Sans(
        frozenset(name.lower() for name in ext.get_values_for_type(x509.DNSName)),
        frozenset(
            ip
            for ip in ext.get_values_for_type(x509.IPAddress)
            if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
        ),
    )


def missing_sans(have: Sans, want: Sans) -> Sans:
    """What `want` names that `have` does not (empty: the certificate serves)."""
    return Sans(want.dns - have.dns, want.ips - have.ips)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    tmp.replace(path)


def _write_public(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _make_ca(common_name: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _issue(
    ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, sans: Sans
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in sorted(sans.dns)]
    names += [x509.IPAddress(ip) for ip in sorted(sans.ips, key=str)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "keel-apiserver")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(
            min(now + datetime.timedelta(days=SERVING_DAYS), ca_cert.not_valid_after_utc)
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _load_ca(
    cert_path: Path, key_path: Path
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except ValueError as exc:
        raise ValueError(
            f"{cert_path} / {key_path}: not a PEM certificate and key ({exc})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path}: expected an EC private key (made by keel)")
    return cert, key


def _needs_reissue(cert_path: Path, key_path: Path, want: Sans, ca: x509.Certificate) -> bool:
    if not cert_path.is_file() or not key_path.is_file():
        return True
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    except ValueError:
        return True
    if cert.issuer != ca.subject:
        return True
    if cert.not_valid_after_utc - _now() < RENEW_BEFORE:
        return True
    missing = missing_sans(certificate_sans(cert), want)
    return bool(missing.dns or missing.ips)


def ensure_serving_certificate(
    state_dir: Path, listen_host: str, *, hostname: str | None = None, extra: Iterable[str] = ()
) -> ServingFiles:
    """The state dir's CA and a serving certificate valid for `listen_host` (see module doc).

    A state dir made by an older keel (no `tls/`) gets them on its next start."""
    directory = state_dir / TLS_DIR
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = directory / "ca.crt", directory / "ca.key"
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    created = False
    if ca_cert_path.is_file() and ca_key_path.is_file():
        ca_cert, ca_key = _load_ca(ca_cert_path, ca_key_path)
    else:
        ca_cert, ca_key = _make_ca(f"keel-ca@{int(_now().timestamp())}")
        _write_private(ca_key_path, _key_pem(ca_key))
        _write_public(ca_cert_path, ca_cert.public_bytes(serialization.Encoding.PEM))
        created = True
    want = sans_for(listen_host, socket.gethostname() if hostname is None else hostname)
    for name in extra:
        if name:
            want = _merge(want, sans_for(name, ""))
    issued = False
    if created or _needs_reissue(cert_path, key_path, want, ca_cert):
        if not created and cert_path.is_file():
            # keep what the old certificate served too: a client may still use those names
            try:
                old = certificate_sans(x509.load_pem_x509_certificate(cert_path.read_bytes()))
                want = _merge(want, old)
            except ValueError:
                pass
        cert, key = _issue(ca_cert, ca_key, want)
        _write_private(key_path, _key_pem(key))
        _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        issued = True
    return ServingFiles(ca_cert_path, ca_key_path, cert_path, key_path, created, issued)


def _merge(a: Sans, b: Sans) -> Sans:
    return Sans(a.dns | b.dns, a.ips | b.ips)
