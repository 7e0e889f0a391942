"""Kubeconfig loading: server URL, bearer token and TLS settings from a `--kubeconfig` file.

Honours `current-context` when present, else takes `clusters[0]` and `users[0]` (the shape
`keel up` writes). Pure apart from reading the file; errors name the file and the field.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ENV_VAR = "KEEL_KUBECONFIG"
DEFAULT_PATH = Path(".keel") / "kubeconfig"


class KubeconfigError(ValueError):
    """The kubeconfig is missing, unreadable or lacks a field the client needs."""


@dataclass(frozen=True)
class Kubeconfig:
    server: str
    token: str | None = None
    namespace: str = "default"
    certificate_authority: Path | None = None
    certificate_authority_data: bytes | None = None  # PEM
    insecure_skip_tls_verify: bool = False
    path: Path | None = None

    def ssl_context(self) -> ssl.SSLContext | bool | None:
        """What to pass as `ssl=`: a context trusting the CA, False to skip checks, or None."""
        if self.insecure_skip_tls_verify:
            return False
        if self.certificate_authority is None and self.certificate_authority_data is None:
            return None
        context = ssl.create_default_context(
            cafile=str(self.certificate_authority) if self.certificate_authority else None,
            cadata=(
                self.certificate_authority_data.decode("ascii")
                if self.certificate_authority_data
                else None
            ),
        )
        return context


def default_kubeconfig_path() -> Path:
    """`$KEEL_KUBECONFIG` when set, else `.keel/kubeconfig` in the working directory."""
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else DEFAULT_PATH


def load_kubeconfig(
    path: str | os.PathLike[str] | None = None, *, context: str | None = None
) -> Kubeconfig:
    """Read a kubeconfig file (default: `default_kubeconfig_path()`)."""
    file = Path(path) if path is not None else default_kubeconfig_path()
    try:
        text = file.read_text()
    except FileNotFoundError:
        hint = "" if path is not None else f" (set ${ENV_VAR} or pass a path)"
        raise KubeconfigError(f"{file}: no such kubeconfig{hint}") from None
    except OSError as exc:
        raise KubeconfigError(f"{file}: cannot read: {exc.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise KubeconfigError(f"{file}: not valid YAML: {exc}") from None
    return parse_kubeconfig(document, source=file, context=context)


def parse_kubeconfig(
    document: Any, *, source: Path | None = None, context: str | None = None
) -> Kubeconfig:
    """Turn a loaded kubeconfig document into a `Kubeconfig` (pure)."""
    where = str(source) if source is not None else "kubeconfig"

    def fail(field: str, problem: str) -> KubeconfigError:
        return KubeconfigError(f"{where}: {field}: {problem}")

    if not isinstance(document, dict):
        raise fail("$", "expected a mapping")
    wanted = context if context is not None else document.get("current-context") or None
    namespace = "default"
    if wanted is not None:
        ctx = _named(document, "contexts", str(wanted), fail)
        ctx_body = ctx.get("context")
        if not isinstance(ctx_body, dict):
            raise fail(f"contexts[{wanted}].context", "expected a mapping")
        cluster_name = ctx_body.get("cluster")
        user_name = ctx_body.get("user")
        if not isinstance(cluster_name, str):
            raise fail(f"contexts[{wanted}].context.cluster", "missing")
        cluster_entry = _named(document, "clusters", cluster_name, fail)
        user_entry = (
            _named(document, "users", user_name, fail) if isinstance(user_name, str) else {}
        )
        cluster_field = f"clusters[{cluster_name}].cluster"
        user_field = f"users[{user_name}].user"
        if isinstance(ctx_body.get("namespace"), str) and ctx_body["namespace"]:
            namespace = ctx_body["namespace"]
    else:
        cluster_entry = _first(document, "clusters", fail)
        users = document.get("users")
        user_entry = _first(document, "users", fail) if users else {}
        cluster_field = "clusters[0].cluster"
        user_field = "users[0].user"

    cluster = cluster_entry.get("cluster")
    if not isinstance(cluster, dict):
        raise fail(cluster_field, "expected a mapping")
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise fail(f"{cluster_field}.server", "missing")
    if not server.startswith(("http://", "https://")):
        raise fail(f"{cluster_field}.server", f"expected an http(s) URL, got {server!r}")

    user = user_entry.get("user", {}) if user_entry else {}
    if not isinstance(user, dict):
        raise fail(user_field, "expected a mapping")
    token = user.get("token")
    if token is not None and not isinstance(token, str):
        raise fail(f"{user_field}.token", "expected a string")
    token_file = user.get("tokenFile")
    if token is None and isinstance(token_file, str):
        token_path = _relative_to(Path(token_file), source)
        try:
            token = token_path.read_text().strip()
        except OSError as exc:
            raise fail(
                f"{user_field}.tokenFile", f"cannot read {token_path}: {exc.strerror}"
            ) from None

    ca_path = cluster.get("certificate-authority")
    ca_data = cluster.get("certificate-authority-data")
    ca_bytes: bytes | None = None
    if isinstance(ca_data, str) and ca_data:
        try:
            ca_bytes = base64.b64decode(ca_data, validate=True)
        except (binascii.Error, ValueError):
            raise fail(f"{cluster_field}.certificate-authority-data", "not base64") from None
    return Kubeconfig(
        server=server.rstrip("/"),
        token=token or None,
        namespace=namespace,
        certificate_authority=(
            _relative_to(Path(ca_path), source) if isinstance(ca_path, str) and ca_path else None
        ),
        certificate_authority_data=ca_bytes,
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
        path=source,
    )


def _relative_to(path: Path, source: Path | None) -> Path:
    # As kubectl: relative paths in a kubeconfig are relative to the file itself.
    if path.is_absolute() or source is None:
        return path
    return source.parent / path


Fail = Callable[[str, str], KubeconfigError]


def _first(document: dict[str, Any], section: str, fail: Fail) -> dict[str, Any]:
    entries = document.get(section)
    if not isinstance(entries, list) or not entries:
        raise fail(section, "missing or empty")
    entry = entries[0]
    if not isinstance(entry, dict):
        raise fail(f"{section}[0]", "expected a mapping")
    return entry


def _named(document: dict[str, Any], section: str, name: str, fail: Fail) -> dict[str, Any]:
    entries = document.get(section)
    if not isinstance(entries, list):
        raise fail(section, "missing")
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    raise fail(section, f"no entry named {name!r}")
