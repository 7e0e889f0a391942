"""The files a state dir holds for the serving commands: the token file (an admin and one
token per default role, created on first use and reused afterwards) and kubeconfigs that
point at the server. `keel apiserver`, `keel up` and `keel boundary` share them.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import yaml

from keel.api.auth import TokenFile

DEFAULT_STATE_DIR = ".keel"
TOKEN_FILE = "tokens.csv"
KUBECONFIG = "kubeconfig"
# Roles given a token when a state dir is first used; `keel up` hands them to components.
DEFAULT_PRINCIPALS = (
    ("controller", "controller"),
    ("scheduler", "scheduler"),
    ("viewer", "viewer"),
)


def read_tokens(path: Path) -> dict[str, tuple[str, str]]:
    """token -> (name, role) from a token file (the server itself only keeps digests)."""
    tokens: dict[str, tuple[str, str]] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3:
            tokens[parts[0]] = (parts[1], parts[2])
    return tokens


def ensure_tokens(path: Path) -> str:
    """Create the token file on first use (admin, controller, scheduler, viewer), reuse it
    afterwards; returns an admin token."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        admin = TokenFile.create(path)
        for name, role in DEFAULT_PRINCIPALS:
            TokenFile.append(path, name, role)
        return admin
    for token, (_, role) in read_tokens(path).items():
        if role == "admin":
            return token
    raise ValueError(f"{path}: no admin token in the token file")


def write_kubeconfig(path: Path, server: str, token: str, ca_pem: bytes | None = None) -> None:
    """A kubeconfig (mode 0600, replaced atomically) for `server` with a bearer token, and
    the CA that signed the server's certificate as `certificate-authority-data` (kubectl
    sends a bearer token only over a TLS connection it can verify)."""
    cluster: dict[str, Any] = {"server": server}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode("ascii")
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "keel", "cluster": cluster}],
        "users": [{"name": "admin", "user": {"token": token}}],
        "contexts": [{"name": "keel", "context": {"cluster": "keel", "user": "admin"}}],
        "current-context": "keel",
    }
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        yaml.safe_dump(config, f, sort_keys=False)
    tmp.replace(path)


def load_kubeconfig(path: Path) -> tuple[str, str, bytes | None]:
    """(server, token, CA certificates as PEM or None) of a kubeconfig written by
    `write_kubeconfig` (or by an older keel, which named a CA file)."""
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    try:
        cluster = config["clusters"][0]["cluster"]
        token = config["users"][0]["user"]["token"]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"{path}: not a kubeconfig with clusters[0] and users[0]") from None
    ca: bytes | None = None
    if cluster.get("certificate-authority-data"):
        ca = base64.b64decode(cluster["certificate-authority-data"])
    elif cluster.get("certificate-authority"):
        ca = Path(cluster["certificate-authority"]).read_bytes()
    return str(cluster["server"]), str(token), ca
