"""Kubeconfig loading: server URL, bearer token and TLS settings, found as kubectl finds them.

Which files: `--kubeconfig FILE` (the `path` argument) first, then `$KEEL_KUBECONFIG` (one
file, Keel's own override), then `$KUBECONFIG` (a list separated by `os.pathsep`, merged as
kubectl merges it: the first file to name a cluster, user or context wins, as does the first
`current-context`), then `.keel/kubeconfig`. Which context: `--context`, else
`current-context`, else `clusters[0]` and `users[0]` (the shape `keel up` writes). Pure apart
from reading the files; errors name the file and the field.
"""

from __future__ import annotations

import base64
import binascii
import os
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ENV_VAR = "KEEL_KUBECONFIG"
KUBECONFIG_VAR = "KUBECONFIG"
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
    """`$KEEL_KUBECONFIG` when set, else the first file of `$KUBECONFIG`, else
    `.keel/kubeconfig` in the working directory."""
    files = kubeconfig_files(None)
    return files[0] if files else DEFAULT_PATH


def kubeconfig_files(
    path: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> list[Path]:
    """The files to read, in precedence order (see the module doc). Pure over `environ`."""
    env = os.environ if environ is None else environ
    if path is not None:
        return [Path(path)]
    if env.get(ENV_VAR):
        return [Path(env[ENV_VAR])]
    if env.get(KUBECONFIG_VAR):
        return [Path(p) for p in env[KUBECONFIG_VAR].split(os.pathsep) if p]
    return [DEFAULT_PATH]


def load_kubeconfig(
    path: str | os.PathLike[str] | None = None, *, context: str | None = None
) -> Kubeconfig:
    """Read the kubeconfig (`path`, else the files `kubeconfig_files` names, merged)."""
    files = kubeconfig_files(path)
    from_list = (
        path is None and not os.environ.get(ENV_VAR) and bool(os.environ.get(KUBECONFIG_VAR))
    )
    documents: list[tuple[Path, Any]] = []
    for file in files:
        try:
            text = file.read_text()
        except FileNotFoundError:
            if from_list:
                continue  # as kubectl: a file of $KUBECONFIG that does not exist is skipped
            hint = (
                ""
                if path is not None
                else f" (set ${ENV_VAR} or ${KUBECONFIG_VAR}, or pass a path)"
            )
            raise KubeconfigError(f"{file}: no such kubeconfig{hint}") from None
        except OSError as exc:
            raise KubeconfigError(f"{file}: cannot read: {exc.strerror}") from None
        try:
            documents.append((file, yaml.safe_load(text)))
        except yaml.YAMLError as exc:
            raise KubeconfigError(f"{file}: not valid YAML: {exc}") from None
    if not documents:
        shown = os.pathsep.join(str(f) for f in files)
        raise KubeconfigError(f"${KUBECONFIG_VAR}={shown}: none of its files exists")
    if len(documents) == 1:
        file, document = documents[0]
        return parse_kubeconfig(document, source=file, context=context)
    return parse_kubeconfig(merge_kubeconfigs(documents), source=documents[0][0], context=context)


_PATH_FIELDS = {
    "clusters": ("cluster", ("certificate-authority",)),
    "users": ("user", ("tokenFile", "client-certificate", "client-key")),
}


def merge_kubeconfigs(documents: Sequence[tuple[Path, Any]]) -> dict[str, Any]:
    """One document from several, as kubectl merges `$KUBECONFIG`: named entries and
    `current-context` from the first file that has them. Relative paths are made relative
    to the file that holds them first (pure)."""
    merged: dict[str, Any] = {"clusters": [], "users": [], "contexts": []}
    seen: dict[str, set[str]] = {section: set() for section in merged}
    for file, document in documents:
        if not isinstance(document, dict):
            raise KubeconfigError(f"{file}: $: expected a mapping")
        if not merged.get("current-context") and document.get("current-context"):
            merged["current-context"] = document["current-context"]
        for section in ("clusters", "users", "contexts"):
            entries = document.get(section) or []
            if not isinstance(entries, list):
                raise KubeconfigError(f"{file}: {section}: expected a list")
            for entry in entries:
                if not isinstance(entry, dict) or entry.get("name") in seen[section]:
                    continue
                seen[section].add(str(entry.get("name")))
                merged[section].append(_absolute_paths(section, entry, file))
    return merged


def _absolute_paths(section: str, entry: dict[str, Any], source: Path) -> dict[str, Any]:
    if section not in _PATH_FIELDS:
        return entry
    body_key, fields = _PATH_FIELDS[section]
    body = entry.get(body_key)
    if not isinstance(body, dict):
        return entry
    fixed = dict(body)
    for field in fields:
        if isinstance(fixed.get(field), str) and fixed[field]:
            fixed[field] = str(_relative_to(Path(fixed[field]), source))
    return {**entry, body_key: fixed}


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
