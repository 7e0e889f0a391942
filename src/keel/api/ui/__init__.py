"""The web dashboard at `/ui`: static files packaged with Keel (no build step, no CDN) and the
few endpoints the browser needs beside the Kubernetes-style API it reads everything else from.

- `POST /ui/api/session`: a login code (from the link `keel up` prints) or a bearer token in
  exchange for a session token (keel.api.sessions), which the page keeps in sessionStorage
  and sends as its bearer token: same authentication and roles as every other request.
- `GET /ui/api/live?topics=...`: one stream of JSON lines for what has no watch (it is not in
  the store): the consensus boundary (writes per kind and verb), lease renewals, events, node
  heartbeats and instance usages. Objects themselves come from the watch API.
- `GET /ui/api/logs/{namespace}/{name}?tail=N`: the tail of an instance's log on this machine.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from keel.api import auth, sessions
from keel.api import telemetry as telemetry_mod
from keel.api.registry import BY_PLURAL, KINDS, TELEMETRY_KINDS
from keel.api.storage import ApiError, bad_request
from keel.api.ui.live import BoundaryWindow

if TYPE_CHECKING:
    from keel.api.server import ApiServer

JSON = "application/json"
STATIC = resources.files(__package__) / "static"
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
TOPICS = ("boundary", "leases", "events", "heartbeats", "usages")
PUSH_INTERVAL = 1.0  # seconds between pushes of what changed
SLOW_TOPICS_INTERVAL = 5.0  # heartbeats and usages: thousands of entries
EVENTS_BACKLOG = 500  # events a new stream starts with
MAX_TAIL = 2000
# A page must never be framed by another site, nor load anything but its own files.
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def static_files() -> dict[str, bytes]:
    """Every packaged file by its path under /ui/ (read once: a handful of small files)."""
    files: dict[str, bytes] = {}

    def walk(node: Any, prefix: str) -> None:
        for child in node.iterdir():
            if child.is_dir():
                walk(child, f"{prefix}{child.name}/")
            elif Path(child.name).suffix in CONTENT_TYPES:
                files[prefix + child.name] = child.read_bytes()

    walk(STATIC, "")
    return files


def storage_classes() -> list[dict[str, str]]:
    rows = [{"kind": i.kind, "storage": i.storage.value, "why": i.why} for i in KINDS]
    rows += [
        {"kind": name, "storage": "memory", "why": why + " (never stored)"}
        for name, why in TELEMETRY_KINDS.items()
    ]
    return rows


def tail_lines(data: bytes, lines: int) -> bytes:
    """The last `lines` lines of `data`."""
    if lines <= 0:
        return b""
    end = len(data) - 1 if data.endswith(b"\n") else len(data)
    start = end
    for _ in range(lines):
        start = data.rfind(b"\n", 0, start)
        if start < 0:
            return data
    return data[start + 1 :]


def log_file_allowed(path: str, namespace: str, name: str) -> bool:
    """Only an instance's own log file (`.../logs/NS_NAME.log`) is served, whatever path a
    node published: a node token must not make the API server read other files."""
    p = Path(path)  # relative: to the working directory agents and `keel up` share
    return p.name == f"{namespace}_{name}.log" and p.parent.name == "logs"


class Dashboard:
    """The /ui routes of one API server."""

    def __init__(self, server: ApiServer) -> None:
        self.server = server
        self.files = static_files()
        self.codes = sessions.OneTimeCodes()
        self.boundary = BoundaryWindow()
        server.writes.listeners.append(
            lambda kind, verb: self.boundary.note(kind, verb, server.clock.wall())
        )

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/ui", self.redirect, methods=["GET"]),
            Route("/ui/api/session", self.session, methods=["POST"]),
            Route("/ui/api/whoami", self.guard(self.whoami), methods=["GET"]),
            Route("/ui/api/live", self.guard(self.live), methods=["GET"]),
            Route("/ui/api/logs/{namespace}/{name}", self.guard(self.logs), methods=["GET"]),
            Route("/ui/{path:path}", self.static, methods=["GET"]),
        ]

    # -- plumbing

    def guard(
        self, handler: Callable[[Request, auth.Principal], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            try:
                principal = self.server._authenticate(request)
                return await handler(request, principal)
            except ApiError as exc:
                return error(exc)

        return endpoint

    # -- pages

    async def redirect(self, request: Request) -> Response:
        return RedirectResponse("ui/", status_code=308)  # relative: http and https alike

    async def static(self, request: Request) -> Response:
        path = request.path_params["path"] or "index.html"
        data = self.files.get(path)
        if data is None:
            return error(ApiError(404, "NotFound", f"no such dashboard file: /ui/{path}"))
        media = CONTENT_TYPES[Path(path).suffix]
        return Response(data, media_type=media, headers=SECURITY_HEADERS)

    # -- sessions

    async def session(self, request: Request) -> Response:
        """A session token for a login code (`{"code": ...}`) or for the bearer token sent."""
        try:
            tokens = self.server.tokens
            if not isinstance(tokens, auth.SessionTokens):
                raise ApiError(501, "NotImplemented", "this server's tokens cannot make sessions")
            now = self.server.clock.wall()
            body = await request.body()
            code = ""
            if body.strip():
                try:
                    parsed_body = json.loads(body)
                except ValueError:
                    raise bad_request('body: expected JSON like {"code": "kl1..."}') from None
                if not isinstance(parsed_body, dict) or not isinstance(
                    parsed_body.get("code", ""), str
                ):
                    raise bad_request("code: expected a string")
                code = parsed_body.get("code", "")
            if code:
                try:
                    principal, digest, parsed = tokens.check_login_code(code, now)
                except ValueError as exc:
                    raise ApiError(401, "Unauthorized", f"login code refused: {exc}") from None
                if not self.codes.redeem(parsed, now):
                    raise ApiError(
                        401,
                        "Unauthorized",
                        "login code refused: it was used already (a code works once; "
                        "run `keel ui` for a new link)",
                    )
            else:
                found = tokens.lookup(auth.bearer(request.headers.get("authorization")), now)
                if found is None:
                    raise ApiError(401, "Unauthorized", "a valid bearer token is required")
                principal, digest = found
            expires = now + sessions.SESSION_TTL
            return json_response(
                {
                    "token": sessions.mint(digest, "session", expires),
                    "expires": int(expires),
                    **who(principal),
                }
            )
        except ApiError as exc:
            return error(exc)

    async def whoami(self, request: Request, principal: auth.Principal) -> Response:
        return json_response(who(principal))

    # -- logs

    async def logs(self, request: Request, principal: auth.Principal) -> Response:
        namespace = request.path_params["namespace"]
        name = request.path_params["name"]
        reason = auth.authorize(
            principal,
            auth.Request("get", BY_PLURAL["instances"], namespace, name, None),
        )
        if reason is not None:
            raise ApiError(403, "Forbidden", f"{principal.name} is not allowed: {reason}")
        tail_text = request.query_params.get("tail", "200")
        if not tail_text.isdigit():
            raise bad_request(f"tail: expected a whole number of lines, got {tail_text!r}")
        tail = min(int(tail_text), MAX_TAIL)
        usage = self.server.telemetry.get(telemetry_mod.INSTANCEUSAGES, namespace, name)
        path = usage.get("logPath") if usage else None
        if not isinstance(path, str) or not log_file_allowed(path, namespace, name):
            raise ApiError(
                404,
                "NotFound",
                f"no log of instance {namespace}/{name} is known here (its agent publishes "
                "the log's path with its usage; `keel logs` reads it on the agent's machine)",
            )
        try:
            data = await asyncio.to_thread(read_tail, path, tail)
        except OSError as exc:
            raise ApiError(404, "NotFound", f"log of {namespace}/{name}: {exc}") from None
        return Response(data, media_type="text/plain; charset=utf-8")

    # -- the live stream

    async def live(self, request: Request, principal: auth.Principal) -> Response:
        wanted = [t for t in request.query_params.get("topics", "").split(",") if t]
        unknown = [t for t in wanted if t not in TOPICS]
        if unknown:
            raise bad_request(f"topics: unknown {', '.join(unknown)}; expected {', '.join(TOPICS)}")
        topics = set(wanted or TOPICS)
        authorization = request.headers.get("authorization")
        return StreamingResponse(self._live(topics, authorization), media_type=JSON)

    async def _live(self, topics: set[str], authorization: str | None) -> AsyncIterator[bytes]:
        server = self.server
        clock = server.clock
        sent: dict[str, Any] = {}
        seen: dict[str, dict[tuple[str, str], int]] = {"heartbeats": {}, "usages": {}}
        event_seq = 0
        if "events" in topics:
            backlog, event_seq = server.telemetry.events_since(0)
            yield line({"type": "events", "items": backlog[-EVENTS_BACKLOG:], "reset": True})
        if "boundary" in topics:
            yield line({"type": "storage", "items": storage_classes()})
        slow_at = -SLOW_TOPICS_INTERVAL
        while True:
            if server.tokens.authenticate(authorization) is None:
                return  # revoked or expired: the page's next request gets 401
            now = clock.wall()
            out: list[dict[str, Any]] = []
            if "boundary" in topics:
                snap = self.boundary.snapshot(now, dict(server.writes.counts))
                key = json.dumps([snap["perMinute"], snap["totals"], snap["idleWrites"]])
                if sent.get("boundary") != key or int(now) % 10 == 0:
                    sent["boundary"] = key
                    out.append({"type": "boundary", **snap})
            if "leases" in topics:  # what changed since the last push (all, the first time)
                known: dict[str, float] = sent.setdefault("leases", {})
                renewed = {
                    f"{ns}/{n}": t
                    for (ns, n), t in list(server.storage.renewals.items())
                    if known.get(f"{ns}/{n}") != t
                }
                if renewed or "renewals" not in sent:
                    sent["renewals"] = True
                    known.update(renewed)
                    out.append({"type": "renewals", "items": renewed})
            if "events" in topics:
                fresh, event_seq = server.telemetry.events_since(event_seq)
                if fresh:
                    out.append({"type": "events", "items": fresh[-EVENTS_BACKLOG:]})
            if clock.now() - slow_at >= SLOW_TOPICS_INTERVAL:
                slow_at = clock.now()
                for topic, kind in (
                    ("heartbeats", telemetry_mod.NODEHEARTBEATS),
                    ("usages", telemetry_mod.INSTANCEUSAGES),
                ):
                    if topic in topics:
                        changed = changed_entries(seen[topic], server.telemetry.latest(kind))
                        if changed or not sent.get(topic):
                            sent[topic] = True
                            out.append({"type": topic, "items": changed})
            out.append({"type": "tick", "now": now})
            yield b"".join(line(item) for item in out)
            await clock.sleep(PUSH_INTERVAL)


def changed_entries(
    seen: dict[tuple[str, str], int], latest: dict[tuple[str, str], dict[str, Any]]
) -> list[dict[str, Any]]:
    """Entries of `latest` not sent before (told apart by identity: bodies are replaced, not
    changed), remembering them in `seen`; entries gone come back as `{"gone": key}`."""
    changed: list[dict[str, Any]] = []
    for key, body in latest.items():
        if seen.get(key) != id(body):
            seen[key] = id(body)
            changed.append({**body, "namespace": key[0], "name": key[1]})
    for key in [k for k in seen if k not in latest]:
        del seen[key]
        changed.append({"gone": True, "namespace": key[0], "name": key[1]})
    return changed


def read_tail(path: str, lines: int) -> bytes:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        f.seek(max(0, size - 256 * 1024))  # the tail is in the last 256 KiB
        return tail_lines(f.read(), lines)


def who(principal: auth.Principal) -> dict[str, Any]:
    role = f"node:{principal.node}" if principal.role == "node" else principal.role
    return {"name": principal.name, "role": role, "canAct": principal.role == "admin"}


def line(data: dict[str, Any]) -> bytes:
    return msgspec.json.encode(data) + b"\n"


def json_response(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type=JSON)


def error(exc: ApiError) -> Response:
    from keel.api.server import _error

    return _error(exc)


def ui_routes(server: ApiServer) -> list[BaseRoute]:
    """The dashboard's routes, for the API server's app."""
    return Dashboard(server).routes()
