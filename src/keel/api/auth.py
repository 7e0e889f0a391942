"""Who is calling (bearer tokens from a token file) and what each role may do.

Authentication maps `Authorization: Bearer T` to a `Principal`; authorization is the pure
function `authorize(principal, request)` over the rule table `RULES`. No HTTP here.
`WatchedTokenFile` rereads its file when it changes, so that a token removed from it (`keel
node revoke`) is refused within a second, without a restart.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, get_args, runtime_checkable

from keel.api import sessions
from keel.api.registry import KINDS, KindInfo

Role = Literal["admin", "viewer", "controller", "scheduler", "node"]
Verb = Literal["get", "list", "watch", "create", "update", "patch", "delete", "renew"]

ROLES: tuple[str, ...] = get_args(Role)
log = logging.getLogger("keel.api.auth")
NODE_LEASE_NAMESPACE = "keel-node-lease"
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    node: str | None = None  # for role node (written "node:NAME" in the token file)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role: expected one of {', '.join(ROLES)}, got {self.role!r}")
        if (self.role == "node") != (self.node is not None):
            raise ValueError("node: required for role node (node:NAME), and only for it")

    def __str__(self) -> str:
        role = f"node:{self.node}" if self.role == "node" else self.role
        return f"{self.name} ({role})"


# --------------------------------------------------------------------------- token file


class TokenFileError(ValueError):
    """A token file line that does not parse; the message names the file and line."""


def _parse_role(text: str) -> tuple[Role, str | None]:
    """`admin` -> ("admin", None); `node:n1` -> ("node", "n1"); ValueError otherwise."""
    if text.startswith("node:"):
        node = text[len("node:") :]
        if not _NAME_RE.match(node):
            raise ValueError(
                f"role {text!r}: the node name after 'node:' must be a DNS name "
                "(lowercase letters, digits, '-' and '.')"
            )
        return "node", node
    plain: dict[str, Role] = {
        "admin": "admin",
        "viewer": "viewer",
        "controller": "controller",
        "scheduler": "scheduler",
    }
    if text in plain:
        return plain[text], None
    raise ValueError(
        f"role {text!r}: expected one of admin, viewer, controller, scheduler or node:NAME"
    )


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenFile:
    """Bearer tokens, one per line: `token,name,role` (role `node:NAME` for a node agent).

    Blank lines and lines starting with '#' are ignored. Tokens are kept only as SHA-256
    digests, and looked up by digest (see `authenticate`).
    """

    def __init__(self, entries: dict[bytes, Principal]) -> None:
        self._by_digest = entries
        self._by_kid = {sessions.key_id(digest): digest for digest in entries}

    def __len__(self) -> int:
        return len(self._by_digest)

    @classmethod
    def parse(cls, text: str, source: str = "<tokens>") -> TokenFile:
        entries: dict[bytes, Principal] = {}
        for lineno, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            where = f"{source}:{lineno}"
            fields = [field.strip() for field in line.split(",")]
            if len(fields) != 3:
                raise TokenFileError(
                    f"{where}: expected 3 comma-separated fields 'token,name,role', "
                    f"got {len(fields)}"
                )
            token, name, role_text = fields
            if not token or any(c.isspace() for c in token):
                raise TokenFileError(f"{where}: expected a non-empty token without spaces")
            if not name:
                raise TokenFileError(f"{where}: expected a non-empty name in the second field")
            try:
                role, node = _parse_role(role_text)
            except ValueError as exc:
                raise TokenFileError(f"{where}: {exc}") from None
            digest = _digest(token)
            if digest in entries:
                raise TokenFileError(f"{where}: duplicate token (already given to another line)")
            entries[digest] = Principal(name, role, node)
        return cls(entries)

    @classmethod
    def load(cls, path: Path) -> TokenFile:
        return cls.parse(Path(path).read_text(encoding="utf-8"), str(path))

    @staticmethod
    def create(path: Path) -> str:
        """Write a new token file (mode 0600) holding one admin token, and return the token.

        Refuses to overwrite an existing file (FileExistsError).
        """
        token = new_token()
        _write_private(
            Path(path),
            f"# Keel API tokens: token,name,role (role: admin, viewer, controller, scheduler,"
            f" node:NAME)\n{token},admin,admin\n",
            exclusive=True,
        )
        return token

    @staticmethod
    def append(path: Path, name: str, role: str) -> str:
        """Add a line with a new random token for `name` and `role`; return the token."""
        _parse_role(role)  # validate before writing
        if not name or "," in name or "\n" in name:
            raise ValueError(f"name {name!r}: expected a non-empty name without ',' or newline")
        token = new_token()
        _write_private(Path(path), f"{token},{name},{role}\n", exclusive=False)
        return token

    def authenticate(self, authorization: str | None, now: float | None = None) -> Principal | None:
        """The principal of an `Authorization: Bearer T` header value, or None. T is a token
        of the file or a dashboard session minted from one (keel.api.sessions), valid at the
        Unix time `now` (default: the current time)."""
        found = self.lookup(bearer(authorization), now)
        return found[0] if found else None

    def lookup(self, token: str, now: float | None = None) -> tuple[Principal, bytes] | None:
        """The principal of a token or session token, and the digest of the token it is."""
        if not token:
            return None
        parsed = sessions.parse(token) if token.startswith("ks1.") else None
        if parsed is not None and parsed.purpose == "session":
            digest = self._by_kid.get(parsed.kid)
            wall = time.time() if now is None else now
            if digest is None or sessions.verify(parsed, digest, wall) is not None:
                return None
        else:
            # The lookup compares SHA-256 digests, never tokens: how long it takes can tell
            # an attacker at most how many leading bytes of a digest matched, which says
            # nothing about any token, so it is as good as a constant-time comparison.
            digest = _digest(token)
        principal = self._by_digest.get(digest)
        return (principal, digest) if principal is not None else None

    def check_login_code(self, code: str, now: float) -> tuple[Principal, bytes, sessions.Parsed]:
        """The principal a login code was minted for; ValueError saying why it is refused.
        (Whether it was used before is the caller's to know: `sessions.OneTimeCodes`.)"""
        parsed = sessions.parse(code.strip())
        if parsed is None or parsed.purpose != "login":
            raise ValueError("not a login code (expected kl1.…, as in the link keel up prints)")
        digest = self._by_kid.get(parsed.kid)
        principal = self._by_digest.get(digest) if digest is not None else None
        if digest is None or principal is None:
            raise ValueError("its token is not (or no longer) in the token file")
        reason = sessions.verify(parsed, digest, now)
        if reason is not None:
            raise ValueError(reason)
        return principal, digest, parsed


def bearer(authorization: str | None) -> str:
    """T of an `Authorization: Bearer T` header value, or "" for anything else."""
    if not authorization:
        return ""
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


class Authenticator(Protocol):
    """What the API server asks of its tokens."""

    def authenticate(self, authorization: str | None) -> Principal | None: ...


@runtime_checkable
class SessionTokens(Protocol):
    """Tokens that can stand behind dashboard sessions and login codes (the /ui)."""

    def lookup(self, token: str, now: float | None = None) -> tuple[Principal, bytes] | None: ...

    def check_login_code(
        self, code: str, now: float
    ) -> tuple[Principal, bytes, sessions.Parsed]: ...


class WatchedTokenFile:
    """A `TokenFile` that follows its file: at most every `interval` seconds (on the next
    request) it looks at the file's mtime, size and inode, and on a change rereads and
    parses it whole, then swaps it in; requests see the old tokens or the new, never a mix.
    A file that no longer parses (or is gone) keeps the old tokens and logs an error once.

    The first load happens here and raises like `TokenFile.load`."""

    def __init__(
        self,
        path: Path,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = Path(path)
        self.interval = interval
        self._clock = clock
        self._signature = self._stat()
        self.current = TokenFile.load(self.path)
        self._checked = clock()
        self._failed: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.current)

    def _stat(self) -> tuple[int, int, int]:
        st = os.stat(self.path)
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    def reload_if_changed(self) -> bool:
        """Reread the file if it changed since it was last read; whether tokens changed."""
        self._checked = self._clock()
        try:
            signature = self._stat()
        except OSError as exc:
            if self._failed != (0, 0, 0):
                log.error("token file %s: %s; keeping the tokens read before", self.path, exc)
                self._failed = (0, 0, 0)
            return False
        if signature in (self._signature, self._failed):
            return False
        try:
            fresh = TokenFile.load(self.path)
        except (OSError, UnicodeDecodeError, TokenFileError) as exc:
            log.error("token file %s: %s; keeping the tokens read before", self.path, exc)
            self._failed = signature
            return False
        self.current, self._signature, self._failed = fresh, signature, None
        log.info("token file %s reloaded: %d token(s)", self.path, len(fresh))
        return True

    def _fresh(self) -> TokenFile:
        if self._clock() - self._checked >= self.interval:
            self.reload_if_changed()
        return self.current

    def authenticate(self, authorization: str | None) -> Principal | None:
        return self._fresh().authenticate(authorization)

    def lookup(self, token: str, now: float | None = None) -> tuple[Principal, bytes] | None:
        return self._fresh().lookup(token, now)

    def check_login_code(self, code: str, now: float) -> tuple[Principal, bytes, sessions.Parsed]:
        return self._fresh().check_login_code(code, now)


def revoke_role(text: str, role: str) -> tuple[str, int]:
    """`text` of a token file without the lines granting `role` (e.g. `node:n1`), and how many
    went. Comments, blank lines and every other line are kept as they are."""
    kept: list[str] = []
    removed = 0
    for raw in text.splitlines(keepends=True):
        line = raw.strip()
        fields = [f.strip() for f in line.split(",")]
        if line and not line.startswith("#") and len(fields) == 3 and fields[2] == role:
            removed += 1
            continue
        kept.append(raw)
    return "".join(kept), removed


def replace_private(path: Path, text: str) -> None:
    """Replace `path` with `text` atomically (a sibling written, synced, renamed over it),
    mode 0600: a reader sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def new_token() -> str:
    return secrets.token_urlsafe(32)


def _write_private(path: Path, text: str, *, exclusive: bool) -> None:
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_APPEND)
    fd = os.open(path, flags, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


# --------------------------------------------------------------------------- authorization


@dataclass(frozen=True)
class Request:
    """What authorization needs to know about a request, no I/O.

    For `create`, `name` is the name of the object in the body. For telemetry `kind` is None
    and `telemetry_node` is the node the telemetry is about (see keel.api.telemetry).
    """

    verb: Verb
    kind: KindInfo | None  # None for telemetry
    namespace: str | None
    name: str | None
    subresource: str | None  # "status", "binding", "eviction", None
    node_name: str | None = None  # Instance: spec.nodeName of the stored object (status)
    telemetry_node: str | None = None


class Scope(enum.Enum):
    """Which objects a rule covers, beyond its verbs, kinds and subresources."""

    ANY = "any object"
    OWN_NODE = "its own Node"
    OWN_NODE_LEASE = f"its Lease {NODE_LEASE_NAMESPACE}/NAME"
    BOUND_INSTANCE = "Instances bound to it"
    OWN_TELEMETRY = "telemetry about itself"


def _own_node(p: Principal, r: Request) -> bool:
    return r.name is not None and r.name == p.node


def _own_node_lease(p: Principal, r: Request) -> bool:
    return r.namespace == NODE_LEASE_NAMESPACE and r.name is not None and r.name == p.node


def _bound_instance(p: Principal, r: Request) -> bool:
    return bool(r.node_name) and r.node_name == p.node


def _own_telemetry(p: Principal, r: Request) -> bool:
    return bool(r.telemetry_node) and r.telemetry_node == p.node


SCOPE_CHECKS: dict[Scope, Callable[[Principal, Request], bool]] = {
    Scope.ANY: lambda p, r: True,
    Scope.OWN_NODE: _own_node,
    Scope.OWN_NODE_LEASE: _own_node_lease,
    Scope.BOUND_INSTANCE: _bound_instance,
    Scope.OWN_TELEMETRY: _own_telemetry,
}

TELEMETRY = "telemetry"  # the rules' name for the kind of /apis/telemetry.keel.dev/v1/...
OBJECT_KINDS = frozenset(info.plural for info in KINDS)
EVERY_KIND = OBJECT_KINDS | {TELEMETRY}

READ: frozenset[Verb] = frozenset({"get", "list", "watch"})
WRITE: frozenset[Verb] = frozenset({"create", "update", "patch", "delete"})
EVERY_VERB: frozenset[Verb] = frozenset(get_args(Verb))
TELEMETRY_WRITE: frozenset[Verb] = frozenset({"create", "update"})  # POST and PUT
LEASE_WRITE: frozenset[Verb] = WRITE | {"renew"}
STATUS_WRITE: frozenset[Verb] = frozenset({"update", "patch"})

MAIN = frozenset({None})  # the object itself, no subresource
STATUS = frozenset({"status"})
BINDING = frozenset({"binding"})
EVICTION = frozenset({"eviction"})
EVERY_PART = frozenset({None, "status", "binding", "eviction"})


@dataclass(frozen=True)
class Rule:
    verbs: frozenset[Verb]
    kinds: frozenset[str]  # plurals, and TELEMETRY
    parts: frozenset[str | None]  # subresources; None = the object itself
    scope: Scope
    why: str


# fmt: off
RULES: dict[Role, tuple[Rule, ...]] = {
    "admin": (
        Rule(EVERY_VERB, EVERY_KIND, EVERY_PART, Scope.ANY, "operates the platform"),
    ),
    "viewer": (
        Rule(READ, EVERY_KIND, EVERY_PART, Scope.ANY, "read-only dashboards and humans"),
    ),
    "controller": (
        Rule(READ, EVERY_KIND, EVERY_PART, Scope.ANY, "controllers reconcile what they see"),
        Rule(WRITE, OBJECT_KINDS, MAIN | STATUS, Scope.ANY,
             "owns desired state and status of every kind; binding is the scheduler's"),
        Rule(frozenset({"create"}), frozenset({"instances"}), EVICTION, Scope.ANY,
             "moves Instances off nodes within their Deployments' disruption budgets"),
        Rule(frozenset({"renew"}), frozenset({"leases"}), MAIN, Scope.ANY,
             "its leader election"),
        Rule(TELEMETRY_WRITE, frozenset({TELEMETRY}), MAIN, Scope.ANY, "events it records"),
    ),
    "scheduler": (
        Rule(READ, EVERY_KIND, EVERY_PART, Scope.ANY, "the scheduler's snapshot"),
        Rule(frozenset({"create"}), frozenset({"instances"}), BINDING, Scope.ANY,
             "binding an Instance to a Node is the scheduler's decision"),
        Rule(STATUS_WRITE, frozenset({"instances"}), STATUS, Scope.ANY,
             "records why an Instance is unschedulable"),
        Rule(frozenset({"create"}), frozenset({"instances"}), EVICTION, Scope.ANY,
             "preempts lower-priority Instances within their Deployments' disruption budgets"),
        Rule(LEASE_WRITE, frozenset({"leases"}), MAIN, Scope.ANY, "its leader election"),
        Rule(TELEMETRY_WRITE, frozenset({TELEMETRY}), MAIN, Scope.ANY,
             "scheduling events"),
    ),
    "node": (
        Rule(READ, EVERY_KIND, EVERY_PART, Scope.ANY, "agents watch their bindings"),
        Rule(frozenset({"create", "update", "patch"}), frozenset({"nodes"}), MAIN | STATUS,
             Scope.OWN_NODE, "registers itself and reports its conditions"),
        Rule(LEASE_WRITE, frozenset({"leases"}), MAIN, Scope.OWN_NODE_LEASE,
             "its node lease is its heartbeat"),
        Rule(STATUS_WRITE, frozenset({"instances"}), STATUS, Scope.BOUND_INSTANCE,
             "reports phase and readiness of what it runs"),
        Rule(TELEMETRY_WRITE, frozenset({TELEMETRY}), MAIN, Scope.OWN_TELEMETRY,
             "heartbeats, usage and events about itself"),
    ),
}
# fmt: on

ROLE_SUMMARY: dict[Role, str] = {
    "admin": "an admin may do everything",
    "viewer": "a viewer may only get, list and watch",
    "controller": "a controller may read everything, write every kind and its status and "
    "evict Instances, but not bind them",
    "scheduler": "a scheduler may read everything, bind and evict Instances, write Instance "
    "status and Leases",
    "node": f"a node may write only its own Node, its Lease {NODE_LEASE_NAMESPACE}/NAME, "
    "the status of Instances bound to it, and telemetry about itself",
}


def _describe(request: Request) -> str:
    kind = request.kind.plural if request.kind else TELEMETRY
    target = kind
    if request.name:
        target += f"/{request.name}"
    if request.subresource:
        target += f"/{request.subresource}"
    if request.namespace:
        target += f" in namespace {request.namespace}"
    return target


def authorize(principal: Principal, request: Request) -> str | None:
    """None when `principal` may make `request`, else the reason it may not (for a 403)."""
    kind = request.kind.plural if request.kind else TELEMETRY
    for rule in RULES[principal.role]:
        if (
            request.verb in rule.verbs
            and kind in rule.kinds
            and request.subresource in rule.parts
            and SCOPE_CHECKS[rule.scope](principal, request)
        ):
            return None
    summary = ROLE_SUMMARY[principal.role]
    return f"{principal} may not {request.verb} {_describe(request)}: {summary}"
