"""The listen-address policy: bearer tokens must not cross a network in clear text. The
serving commands use TLS by default (their own CA's certificate, `keel.api.certs`, or the
`--tls-cert-file`/`--tls-key-file` given); plain HTTP needs an explicit `--insecure`.
Pure checks plus the uvicorn keyword arguments; `load_context` is the one function doing I/O.
"""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

CERT_FLAG = "--tls-cert-file"
KEY_FLAG = "--tls-key-file"
INSECURE_FLAG = "--insecure"

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost", "ip6-loopback"})


def split_listen(listen: str) -> tuple[str, int]:
    """`HOST:PORT` (IPv6 as `[::1]:7070`) -> (host, port); ValueError naming what is wrong."""
    host, sep, port_text = listen.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"listen address {listen!r}: expected HOST:PORT, like 127.0.0.1:7070")
    port = int(port_text)
    if port > 65535:
        raise ValueError(f"listen address {listen!r}: port must be 0..65535")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"listen address {listen!r}: write an IPv6 host in brackets, [::1]:7070")
    return host, port


def is_loopback(host: str) -> bool:
    """True only for addresses that cannot be reached from another machine.

    Host names other than localhost count as non-loopback: resolving them is I/O, and a
    name may resolve differently later.
    """
    host = host.strip().strip("[]").lower()
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def check_pair(certfile: str | Path | None, keyfile: str | Path | None) -> None:
    """Both TLS files or neither."""
    if bool(certfile) != bool(keyfile):
        given, missing = (CERT_FLAG, KEY_FLAG) if certfile else (KEY_FLAG, CERT_FLAG)
        raise ValueError(f"{given} was given without {missing}: TLS needs both")


def uvicorn_ssl_kwargs(certfile: str | Path | None, keyfile: str | Path | None) -> dict[str, str]:
    """Keyword arguments for `uvicorn.Config` serving TLS (empty for plain HTTP)."""
    if not certfile and not keyfile:
        return {}
    if not certfile or not keyfile:
        raise ValueError(f"TLS needs both {CERT_FLAG} and {KEY_FLAG}")
    return {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)}


def load_context(certfile: str | Path, keyfile: str | Path) -> ssl.SSLContext:
    """A server context from the files, so a bad certificate fails at start-up, clearly."""
    for flag, path in ((CERT_FLAG, certfile), (KEY_FLAG, keyfile)):
        if not Path(path).is_file():
            raise ValueError(f"{flag} {path}: no such file")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(certfile), str(keyfile))
    except ssl.SSLError as exc:
        raise ValueError(
            f"{CERT_FLAG} {certfile} / {KEY_FLAG} {keyfile}: not a matching PEM certificate "
            f"and private key ({exc.reason or exc})"
        ) from None
    return context
