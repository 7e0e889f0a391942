"""The HTTP API of DESIGN.md section 4 as an ASGI app (Starlette routing, uvicorn serving).

Handlers stay thin: parse the request (`parse_path`, `decode_body`, selectors), authorize,
then call `Storage` for writes and the `WatchCache` for reads and watches. Every failure is
answered as a Kubernetes `Status` with the usual code and reason.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import json
import logging
import math
import platform
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any, cast, get_args

import msgspec
import yaml
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from keel.api import auth, core, discovery, protobuf, tables
from keel.api import scale as scale_mod
from keel.api import telemetry as telemetry_mod
from keel.api.admission import TokenBucketAdmission
from keel.api.columns import Extras
from keel.api.compactor import Compactor
from keel.api.managedfields import fields_of
from keel.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from keel.api.metrics import ApiMetrics
from keel.api.ownership import Writer
from keel.api.patch import PatchError, PatchTestFailed, json_patch, merge_patch
from keel.api.registry import (
    BY_KIND,
    BY_PLURAL,
    KINDS,
    REGISTRY_PREFIX,
    TELEMETRY_GROUP,
    KindInfo,
)
from keel.api.resources import (
    API_GROUP,
    API_VERSION,
    Binding,
    BindingPlan,
    Deployment,
    EndpointRegistration,
    Eviction,
    Lease,
    LeaseRenewal,
    ListMeta,
    ObjectMeta,
    PlanResult,
    PropagationPolicy,
    Resource,
    Service,
    Status,
    StatusCause,
    StatusDetails,
)
from keel.api.selectors import (
    SelectorError,
    parse_field_selector,
    parse_label_selector,
    supported_fields,
)
from keel.api.storage import (
    DEFAULT_MAX_OBJECT_BYTES,
    ApiError,
    BindingOutcome,
    Fencing,
    PlannedBinding,
    Preconditions,
    Storage,
    WriteCounter,
    bad_request,
    from_kv,
    invalid,
    not_found,
    registration_causes,
    too_large,
)
from keel.api.ui import ui_routes
from keel.api.watchcache import CachedObject, Expired, WatchCache, encode_object, expired_line
from keel.clock import Clock, SystemClock
from keel.store import (
    CompactedError,
    LeaseNotFound,
    Store,
    StoreError,
    Unavailable,
    ValueTooLarge,
)

log = logging.getLogger("keel.apiserver")

VERSION = "0.1.0"
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
APPLY_PATCH = ("application/apply-patch+yaml", "application/apply-patch+json")
FENCING_HEADER = "keel-fencing-token"
BINARY_MEDIA_TYPES = frozenset(
    {"application/vnd.kubernetes.protobuf", "application/cbor", "application/apply-patch+cbor"}
)
# How deep the arrays and objects of a request body may nest. Keel's deepest object nests
# about ten levels; the decoders and the patch code recurse once per level, and a thousand
# levels exhaust Python's stack (Kubernetes, in Go, stops at 10,000).
MAX_BODY_DEPTH = 100

PROPAGATION_POLICIES: tuple[str, ...] = get_args(PropagationPolicy)


# ------------------------------------------------------------------------- pure parsing


@dataclass(frozen=True, slots=True)
class Target:
    """What a /apis/keel.dev/v1/... path addresses."""

    info: KindInfo
    namespace: str | None
    name: str | None
    subresource: str | None


# A JSON string, escapes included (unrolled, so long strings cost no backtracking).
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.S)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = [1 if chr(b) in "[{" else -1 for b in range(256)]


def nesting_depth(body: bytes) -> int:
    """How deep the arrays and objects of a JSON text nest; brackets inside strings do not
    count. For malformed text, a number the decoder's own error will make moot."""
    brackets = _JSON_STRING.sub(b"", body).translate(None, _NOT_BRACKETS)
    return max(accumulate(map(_STEP.__getitem__, brackets)), default=0)


def too_deep(body: bytes, limit: int = MAX_BODY_DEPTH) -> bool:
    """Whether `body` nests deeper than `limit`, checked before any decoder recurses into it
    (deep enough, one would fail with RecursionError)."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return False  # too few brackets to nest that deep: most bodies, and no scan
    return nesting_depth(body) > limit


def _no_route(path: str) -> ApiError:
    return ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")


def parse_path(rest: str) -> Target:
    """`[namespaces/{ns}/]{plural}[/{name}[/{subresource}]]`, checked against the registry."""
    segments = [s for s in rest.split("/") if s]
    namespace: str | None = None
    if len(segments) >= 3 and segments[0] == "namespaces":
        candidate = BY_PLURAL.get(segments[2])
        if candidate is not None and candidate.namespaced:
            namespace = segments[1]
            segments = segments[2:]
    if not segments or len(segments) > 3:
        raise _no_route(rest)
    info = BY_PLURAL.get(segments[0])
    if info is None:
        raise _no_route(rest)
    name = segments[1] if len(segments) > 1 else None
    sub = segments[2] if len(segments) > 2 else None
    if namespace is not None and not info.namespaced:
        raise _no_route(rest)
    if info.namespaced and namespace is None and name is not None:
        raise _no_route(rest)
    if sub is not None and sub not in subresources(info):
        raise _no_route(rest)
    return Target(info, namespace, name, sub)


def subresources(info: KindInfo) -> tuple[str, ...]:
    return (*info.subresources, "renew") if info.kind == "Lease" else info.subresources


class _HeadMeta(msgspec.Struct, rename="camel"):
    name: str = ""
    namespace: str = ""


class _Head(msgspec.Struct, rename="camel"):
    """The identifying fields of a body, read before strict decoding."""

    api_version: str = ""
    kind: str = ""
    metadata: _HeadMeta = msgspec.field(default_factory=_HeadMeta)


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_FIELD_NAME = re.compile(r"field `(?P<name>[^`]+)`")
_PREFIX = re.compile(r"^(?P<field>[A-Za-z][A-Za-z0-9_.\[\]]*): (?P<rest>.*)$", re.S)


def validation_cause(message: str) -> StatusCause:
    """A msgspec validation message as a Status cause naming the field path."""
    match = _AT.match(message)
    assert match is not None
    text = match["msg"]
    path = (match["path"] or "").lstrip(".")
    named = _FIELD_NAME.search(text)
    if named and ("unknown field" in text or "missing required field" in text):
        path = f"{path}.{named['name']}" if path else named["name"]
        reason = "FieldValueNotSupported" if "unknown" in text else "FieldValueRequired"
        return StatusCause(path, text, reason)
    prefixed = _PREFIX.match(text)
    if prefixed:
        own = prefixed["field"]
        first = own.split(".")[0]
        if not path:
            path = own
        elif path == first or path.endswith("." + first):
            path = path[: len(path) - len(first)] + own
        else:
            path = f"{path}.{own}"
        text = prefixed["rest"]
    return StatusCause(path, text, "FieldValueInvalid")


def strict_decoding_error(kind: str, exc: ApiError) -> ApiError:
    """Under `fieldValidation=Strict` (what kubectl sends), unknown fields are answered as
    kube-apiserver does: 400 `strict decoding error: unknown field "spec.x"`, so kubectl
    reports them in its own words. Other errors are left as they are."""
    causes = exc.details.causes if exc.details is not None else []
    if exc.code != 422 or not causes:
        return exc
    if any(
        c.reason != "FieldValueNotSupported" or "unknown field" not in c.message for c in causes
    ):
        return exc
    fields = ", ".join(f'unknown field "{c.field}"' for c in causes)
    return ApiError(
        400,
        "BadRequest",
        f'{kind} in version "v1" cannot be handled as a {kind}: strict decoding error: {fields}',
        details=exc.details,
    )


_decoders: dict[type[Resource], msgspec.json.Decoder[Any]] = {}


def body_name(body: bytes) -> str:
    """metadata.name of a body, or "" when it has none or is not an object."""
    try:
        return msgspec.json.decode(body, type=_Head).metadata.name
    except (msgspec.DecodeError, msgspec.ValidationError):
        return ""


def decode_body(
    info: KindInfo, body: bytes, *, namespace: str | None, name: str | None, max_bytes: int
) -> Resource:
    """Decode a request body into the kind's model, strictly. Identity mismatches with the
    URL are 400; unknown or ill-typed fields are 422 naming the field path."""
    if len(body) > 3 * max_bytes:
        raise too_large(len(body), max_bytes)
    try:
        head = msgspec.json.decode(body, type=_Head)
    except msgspec.DecodeError as exc:
        raise bad_request(f"request body is not a JSON object: {exc}") from None
    if head.api_version and head.api_version != API_VERSION:
        raise bad_request(
            f"apiVersion {head.api_version!r} does not match the URL's {API_VERSION!r}"
        )
    if head.kind and head.kind != info.kind:
        raise bad_request(f"kind {head.kind!r} does not match the URL's {info.kind!r}")
    if info.namespaced and head.metadata.namespace and head.metadata.namespace != namespace:
        raise bad_request(
            f"the namespace of the object ({head.metadata.namespace!r}) does not match the "
            f"namespace of the request ({namespace!r})"
        )
    if name is not None and head.metadata.name and head.metadata.name != name:
        raise bad_request(
            f"the name of the object ({head.metadata.name!r}) does not match the name in "
            f"the URL ({name!r})"
        )
    decoder = _decoders.get(info.model)
    if decoder is None:
        decoder = _decoders[info.model] = msgspec.json.Decoder(info.model)
    try:
        obj: Resource = decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise invalid(info, name or head.metadata.name, [validation_cause(str(exc))]) from None
    meta = obj.metadata
    fixed = msgspec.structs.replace(
        meta,
        name=meta.name or (name or ""),
        namespace=(namespace or "") if info.namespaced else "",
    )
    return msgspec.structs.replace(obj, kind=info.kind, metadata=fixed)


def _unexpected(request: Request, exc: Exception) -> Response:
    """The answer to a failure that is not an ApiError: the store's, or a bug (500)."""
    if isinstance(exc, StoreError):
        return _error(store_error(exc))
    log.exception("internal error on %s %s", request.method, request.url.path)
    return _error(ApiError(500, "InternalError", f"internal error: {exc!r}"))


def plan_result(outcome: BindingOutcome) -> PlanResult:
    binding = outcome.binding
    if outcome.error is not None:
        return PlanResult(
            binding.namespace,
            binding.name,
            binding.node,
            code=outcome.error.code,
            reason=outcome.error.reason,
            message=outcome.error.message,
        )
    meta = outcome.bound.metadata if outcome.bound is not None else ObjectMeta()
    return PlanResult(
        binding.namespace,
        binding.name,
        binding.node,
        bound=True,
        uid=meta.uid,
        resource_version=meta.resource_version,
    )


def decode_record(model: type[Any], body: bytes, what: str) -> Any:
    try:
        return msgspec.json.decode(body, type=model)
    except msgspec.ValidationError as exc:  # a DecodeError too: an unknown field is a 422
        cause = validation_cause(str(exc))
        raise ApiError(
            422,
            "Invalid",
            f"{what} is invalid: {cause.field}: {cause.message}",
            details=StatusDetails(kind=what, causes=[cause]),
        ) from None
    except msgspec.DecodeError as exc:
        raise bad_request(f"{what}: request body is not valid JSON: {exc}") from None


# Components write as themselves whatever they claim: a node's agent, the scheduler; each
# controller names itself (Keel-Field-Manager). They are held to the registry's field
# owners. Users name their manager (fieldManager, or the client's); they are recorded only.
FIELD_MANAGER_HEADER = "keel-field-manager"
_ROLE_MANAGERS = {"node": "agent", "scheduler": "scheduler"}


def writer_of(request: Request, principal: auth.Principal) -> Writer:
    fixed = _ROLE_MANAGERS.get(principal.role)
    if fixed is not None:
        return Writer(fixed, enforced=True)
    named = request.query_params.get("fieldManager") or request.headers.get(FIELD_MANAGER_HEADER)
    if principal.role == "controller":
        return Writer(named or "controller", enforced=True)
    agent = request.headers.get("user-agent", "").split("/")[0].strip()
    return Writer(named or agent or principal.name)


def full_builtins(value: Any) -> Any:
    """Like msgspec.to_builtins, but keeping fields equal to their defaults: a patch must
    see (and may test or replace) every field, not only the non-default ones."""
    if isinstance(value, msgspec.Struct):
        return {
            f.encode_name: full_builtins(getattr(value, f.name))
            for f in msgspec.structs.fields(value)
        }
    if isinstance(value, dict):
        return {k: full_builtins(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [full_builtins(v) for v in value]
    return value


def pointer_field(pointer: str) -> str:
    """A JSON pointer as a field path: /spec/ports/0/name -> spec.ports[0].name."""
    out = ""
    for raw in pointer.split("/")[1:]:
        token = raw.replace("~1", "/").replace("~0", "~")
        out += f"[{token}]" if token.isdigit() else (f".{token}" if out else token)
    return out


def encode_continue(revision: int, last_key: bytes) -> str:
    raw = json.dumps({"rv": revision, "start": base64.b64encode(last_key).decode()})
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_continue(token: str) -> tuple[int, bytes]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
        return int(data["rv"]), base64.b64decode(data["start"])
    except (ValueError, KeyError, TypeError):
        raise bad_request("invalid continue token") from None


def watch_line(kind: str, obj_json: bytes) -> bytes:
    return b'{"type":"' + kind.encode() + b'","object":' + obj_json + b"}\n"


def encode_status(status: Status) -> bytes:
    """A Status with every field a client looks for (the model omits its defaults)."""
    fields = msgspec.to_builtins(status)
    fields.update(
        kind="Status", apiVersion="v1", status=status.status, code=status.code, metadata={}
    )
    return msgspec.json.encode(fields)


def list_body(info: KindInfo, items: list[bytes], meta: ListMeta) -> bytes:
    head = (
        b'{"apiVersion":"'
        + API_VERSION.encode()
        + b'","kind":"'
        + info.kind.encode()
        + b'List","metadata":'
        + msgspec.json.encode(meta)
        + b',"items":['
    )
    return head + b",".join(items) + b"]}"


def initial_events_end_line(kind: str, revision: int) -> bytes:
    """The bookmark that ends a watch-list's initial events (`k8s.io/initial-events-end`)."""
    event = {
        "type": "BOOKMARK",
        "object": {
            "apiVersion": API_VERSION,
            "kind": kind,
            "metadata": {
                "resourceVersion": str(revision),
                "annotations": {"k8s.io/initial-events-end": "true"},
            },
        },
    }
    return msgspec.json.encode(event) + b"\n"


def verb_of(method: str, target: Target, watch: bool) -> str:
    if target.subresource == "renew":
        return "renew"
    if target.subresource in ("binding", "eviction"):
        return "create"
    if method == "GET":
        if target.name is None:
            return "watch" if watch else "list"
        return "get"
    return {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}.get(
        method, "unknown"
    )


# ------------------------------------------------------------------------- the server


def _json(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type=JSON)


def _json_as(data: Any, media_type: str, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type=media_type)


def _error(exc: ApiError) -> Response:
    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
    return Response(
        encode_status(exc.status()), status_code=exc.code, media_type=JSON, headers=headers
    )


def store_error(exc: StoreError) -> ApiError:
    if isinstance(exc, ValueTooLarge):
        return ApiError(
            413,
            "RequestEntityTooLarge",
            f"the store refused the write: {exc}; nothing was stored",
        )
    if isinstance(exc, Unavailable):
        if exc.ambiguous:
            return ApiError(
                504,
                "Timeout",
                f"the store did not answer in time and the outcome is unknown (the write may "
                f"or may not have been applied; read back before retrying): {exc}",
                retry_after=1,
            )
        return ApiError(
            503, "ServiceUnavailable", f"the store is unavailable: {exc}", retry_after=1
        )
    if isinstance(exc, CompactedError):
        return ApiError(410, "Expired", f"the requested revision is no longer available: {exc}")
    if isinstance(exc, LeaseNotFound):
        return ApiError(404, "NotFound", f"the object's store lease is gone: {exc}")
    return ApiError(500, "InternalError", f"store error: {exc}")


class ApiServer:
    """One API server process: stateless apart from its watch cache and telemetry."""

    def __init__(
        self,
        store: Store,
        tokens: auth.Authenticator,
        *,
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
        admission: TokenBucketAdmission | None = None,
        metrics: ApiMetrics | None = None,
        cache: WatchCache | None = None,
        telemetry: telemetry_mod.TelemetryStore | None = None,
        compaction_interval: float = 60.0,
        compaction_retention: float = 300.0,
        ready_timeout: float = 10.0,
        clock: Clock | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.clock: Clock = clock or SystemClock()
        self.store = store
        self.tokens = tokens
        self.max_object_bytes = max_object_bytes
        self.metrics = metrics if metrics is not None else ApiMetrics()
        self.writes = WriteCounter(
            listeners=[lambda kind, verb: self.metrics.store_writes.labels(kind, verb).inc()]
        )
        self.storage = Storage(
            store,
            max_object_bytes=max_object_bytes,
            writes=self.writes,
            clock=self.clock,
            rng=rng,
        )
        # Admission, the watch cache's history, telemetry TTLs and compaction all run on
        # `clock` (virtual in a simulation, where real time barely passes).
        self.admission = (
            admission if admission is not None else TokenBucketAdmission(clock=self.clock)
        )
        self.cache = cache if cache is not None else WatchCache(store, clock=self.clock)
        # Bindings are checked against node room as this cache knows it (OCC in the txn).
        self.cache.follow(BY_KIND["Node"], self.storage.rooms.on_node)
        self.cache.follow(BY_KIND["Instance"], self.storage.rooms.on_instance)
        self.storage.fresh = self.cache.wait_fresh
        self.telemetry = (
            telemetry if telemetry is not None else telemetry_mod.TelemetryStore(self.clock)
        )
        self.compaction_interval = compaction_interval
        self.compaction_retention = compaction_retention
        self.ready_timeout = ready_timeout  # how long a read waits for the cache at boot
        self.ready = asyncio.Event()
        self.boot_error: BaseException | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._openapi_docs: dict[str, tuple[bytes, str]] | None = None
        self._compactor: Compactor | None = None
        self._predicates: dict[
            tuple[str, str | None, str | None], Callable[[CachedObject], bool] | None
        ] = {}
        self.app = self._build_app()

    # -- lifecycle

    async def start(self) -> None:
        """Begin booting in the background; /readyz says when reads can be served."""
        self._tasks.append(asyncio.create_task(self._boot(), name="keel-apiserver-boot"))

    async def _boot(self) -> None:
        delay = 0.2
        while True:
            try:
                await self.storage.ensure_namespaces()
                await self.cache.start()
                break
            except (StoreError, OSError) as exc:
                self.boot_error = exc
                log.warning("boot: %s; retrying in %.1fs", exc, delay)
                await self.clock.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.boot_error = None
        self._start_compactor()
        self.metrics.registry.add_collector(self._collect)
        self._tasks.append(asyncio.create_task(self._sweep_telemetry(), name="keel-telemetry"))
        self.ready.set()

    async def _sweep_telemetry(self, interval: float = 30.0) -> None:
        """Expired telemetry is never served; the sweep also gives its memory back."""
        while True:
            await self.clock.sleep(interval)
            self.telemetry.sweep()

    def _start_compactor(self) -> None:
        self._compactor = Compactor(
            self.store,
            interval=self.compaction_interval,
            retention=self.compaction_retention,
            clock=self.clock,
            on_compact=self.cache.note_compacted,
        )
        self._compactor.start()

    async def end_watches(self) -> None:
        """Finish every open watch stream (the first step of a clean shutdown), so the
        HTTP server is not left waiting for streams that never end on their own."""
        self.ready.clear()
        with contextlib.suppress(Exception):
            await self.cache.stop()

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._compactor is not None:
            await self._compactor.stop()
        with contextlib.suppress(Exception):
            await self.cache.stop()

    def _collect(self) -> None:
        for kind, stats in self.cache.stats().items():
            self.metrics.watchers.labels(kind).set(stats.watchers)
            self.metrics.cache_objects.labels(kind).set(stats.objects)
            self.metrics.cache_events.labels(kind).set(stats.events)
        self.metrics.compacted_revision.set(self.cache.compacted)

    # -- app

    def _build_app(self) -> Starlette:
        methods = ["GET", "POST", "PUT", "PATCH", "DELETE"]
        routes = [
            # the hot path first: Starlette tries routes in order
            Route(f"/apis/{API_GROUP}/v1/bindingplans", self.binding_plans, methods=methods),
            Route(f"/apis/{API_GROUP}/v1/{{rest:path}}", self.resource_endpoint, methods=methods),
            Route("/healthz", self.healthz, methods=["GET"]),
            Route("/livez", self.healthz, methods=["GET"]),
            Route("/readyz", self.readyz, methods=["GET"]),
            Route("/version", self.version, methods=["GET"]),
            Route("/api", self.guarded(self.api_versions), methods=["GET"]),
            Route("/api/v1", self.guarded(self.api_core), methods=["GET"]),
            Route("/api/v1/{rest:path}", self.core_endpoint, methods=methods),
            Route("/apis", self.guarded(self.api_groups), methods=["GET"]),
            Route(f"/apis/{API_GROUP}", self.guarded(self.api_group), methods=["GET"]),
            Route(f"/apis/{API_GROUP}/v1", self.guarded(self.api_resources), methods=["GET"]),
            Route(f"/apis/{TELEMETRY_GROUP}", self.guarded(self.telemetry_group), methods=["GET"]),
            Route(
                f"/apis/{TELEMETRY_GROUP}/v1",
                self.guarded(self.telemetry_resources),
                methods=["GET"],
            ),
            Route(
                f"/apis/{TELEMETRY_GROUP}/v1/{{rest:path}}",
                self.telemetry_endpoint,
                methods=methods,
            ),
            Route("/metrics", self.guarded(self.metrics_endpoint), methods=["GET"]),
            Route("/openapi/v3", self.guarded(self.openapi), methods=["GET"]),
            *ui_routes(self),  # the web dashboard, /ui (keel.api.ui)
            Route("/openapi/v3/{rest:path}", self.guarded(self.openapi_document), methods=["GET"]),
        ]

        async def http_error(request: Request, exc: Exception) -> Response:
            assert isinstance(exc, HTTPException)
            if exc.status_code == 405:
                return _error(
                    ApiError(405, "MethodNotAllowed", f"{request.method} is not supported here")
                )
            return _error(_no_route(request.url.path))

        return Starlette(routes=routes, exception_handlers={HTTPException: http_error})

    # -- plumbing

    def _authenticate(self, request: Request) -> auth.Principal:
        principal = self.tokens.authenticate(request.headers.get("authorization"))
        if principal is None:
            raise ApiError(401, "Unauthorized", "a valid bearer token is required")
        wait = self.admission.admit(principal.name)
        if wait > 0:
            seconds = max(1, math.ceil(wait))
            raise ApiError(
                429,
                "TooManyRequests",
                f"too many requests from {principal.name}; retry in {seconds}s",
                details=StatusDetails(retry_after_seconds=seconds),
                retry_after=seconds,
            )
        return principal

    @staticmethod
    def _authorize(principal: auth.Principal, request: auth.Request) -> None:
        reason = auth.authorize(principal, request)
        if reason is not None:
            raise ApiError(403, "Forbidden", f"{principal.name} is not allowed: {reason}")

    def guarded(
        self, handler: Callable[[Request], Awaitable[Response]]
    ) -> Callable[[Request], Awaitable[Response]]:
        """Any authenticated principal may read discovery, metrics and the schema."""

        async def endpoint(request: Request) -> Response:
            try:
                self._authenticate(request)
                return await handler(request)
            except ApiError as exc:
                return _error(exc)

        return endpoint

    async def _ensure_ready(self) -> None:
        if self.ready.is_set():
            return
        try:
            await asyncio.wait_for(self.ready.wait(), self.ready_timeout)
        except TimeoutError:
            raise ApiError(
                503, "ServiceUnavailable", "the watch cache is not ready yet", retry_after=1
            ) from None

    async def _fresh(self) -> bool:
        """Make the cache at least as fresh as a quorum read; False if it cannot be soon."""
        revision = (await self.store.range(REGISTRY_PREFIX, limit=1)).revision
        return await self.cache.wait_fresh(revision)

    # -- simple endpoints

    async def healthz(self, request: Request) -> Response:
        return Response(b"ok", media_type="text/plain")

    async def readyz(self, request: Request) -> Response:
        if self.ready.is_set():
            return Response(b"ok", media_type="text/plain")
        detail = f": {self.boot_error}" if self.boot_error else ""
        return Response(
            f"not ready: the watch cache is not synced{detail}".encode(),
            status_code=503,
            media_type="text/plain",
        )

    async def version(self, request: Request) -> Response:
        return _json(
            {
                "major": "0",
                "minor": "1",
                "gitVersion": f"v{VERSION}",
                "platform": f"{platform.system().lower()}/{platform.machine()}",
                "pythonVersion": platform.python_version(),
            }
        )

    async def api_versions(self, request: Request) -> Response:
        aggregated = discovery.aggregated_version(request.headers.get("accept", ""))
        if aggregated is not None:
            return _json_as(
                discovery.aggregated_core(aggregated), discovery.content_type(aggregated)
            )
        return _json(discovery.api_versions(request.url.netloc))

    async def api_core(self, request: Request) -> Response:
        return _json(discovery.resource_list("v1", discovery.core_resources()))

    async def api_groups(self, request: Request) -> Response:
        aggregated = discovery.aggregated_version(request.headers.get("accept", ""))
        if aggregated is not None:
            return _json_as(
                discovery.aggregated_groups(aggregated), discovery.content_type(aggregated)
            )
        return _json(discovery.group_list())

    async def api_group(self, request: Request) -> Response:
        return _json({"kind": "APIGroup", "apiVersion": "v1", **discovery.group(API_GROUP)})

    async def telemetry_group(self, request: Request) -> Response:
        return _json({"kind": "APIGroup", "apiVersion": "v1", **discovery.group(TELEMETRY_GROUP)})

    async def api_resources(self, request: Request) -> Response:
        return _json(discovery.resource_list(API_VERSION, discovery.keel_resources()))

    async def telemetry_resources(self, request: Request) -> Response:
        return _json(
            discovery.resource_list(f"{TELEMETRY_GROUP}/v1", discovery.telemetry_resources())
        )

    async def metrics_endpoint(self, request: Request) -> Response:
        return Response(self.metrics.render().encode(), media_type=METRICS_CONTENT_TYPE)

    def _openapi_documents(self) -> dict[str, tuple[bytes, str]]:
        """Group-version -> (encoded document, hash), built once."""
        if self._openapi_docs is None:
            import hashlib

            from keel.api.openapi import build_openapi, core_openapi

            keel_doc = build_openapi(KINDS)
            docs = {f"apis/{API_VERSION}": keel_doc, "api/v1": core_openapi(keel_doc)}
            self._openapi_docs = {}
            for gv, doc in docs.items():
                data = msgspec.json.encode(doc)
                self._openapi_docs[gv] = (data, hashlib.sha512(data).hexdigest()[:64].upper())
        return self._openapi_docs

    async def openapi(self, request: Request) -> Response:
        """`/openapi/v3`: the index of group-version documents, as kube-apiserver serves it."""
        from keel.api.openapi import openapi_index

        docs = self._openapi_documents()
        return _json(openapi_index({gv: digest for gv, (_, digest) in docs.items()}))

    async def openapi_document(self, request: Request) -> Response:
        """`/openapi/v3/apis/keel.dev/v1` and `/openapi/v3/api/v1`."""
        found = self._openapi_documents().get(request.path_params["rest"].strip("/"))
        if found is None:
            raise _no_route(request.url.path)
        data, digest = found
        headers = {"Etag": f'"{digest}"'}
        if request.query_params.get("hash") == digest:
            headers["Cache-Control"] = "public, immutable"
        return Response(data, media_type=JSON, headers=headers)

    # -- resources

    async def resource_endpoint(self, request: Request) -> Response:
        started = time.perf_counter()
        verb, kind, code = request.method.lower(), "unknown", 500
        try:
            target = parse_path(request.path_params["rest"])
            kind = target.info.kind
            watch = request.query_params.get("watch", "").lower() in ("true", "1")
            verb = verb_of(request.method, target, watch)
            principal = self._authenticate(request)
            if request.method != "GET" and request.query_params.get("dryRun"):
                # `kubectl diff` and `--dry-run=server` must not change anything: refuse
                # rather than write what was only to be tried.
                raise bad_request("dryRun is not supported: nothing was changed")
            response = await self._dispatch(request, principal, target, verb)
        except ApiError as exc:
            if request.query_params.get("fieldValidation") == "Strict":
                exc = strict_decoding_error(kind, exc)
            response = _error(exc)
        except Exception as exc:
            response = _unexpected(request, exc)
        code = response.status_code
        self.metrics.observe_request(verb, kind, code, time.perf_counter() - started)
        return response

    async def _dispatch(
        self, request: Request, principal: auth.Principal, target: Target, verb: str
    ) -> Response:
        info, method = target.info, request.method
        if target.name is None:
            if method == "GET":
                self._authorize(principal, self._auth_request(verb, target))
                if verb == "watch":
                    return await self.watch(request, target)
                return await self.list(request, target)
            if method == "POST":
                if info.namespaced and target.namespace is None:
                    raise ApiError(
                        405,
                        "MethodNotAllowed",
                        f"{info.plural} are namespaced: POST to "
                        f"/apis/{API_VERSION}/namespaces/{{namespace}}/{info.plural}",
                    )
                return await self.create(request, principal, target)
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on a collection")
        if target.subresource == "binding":
            if method != "POST":
                raise ApiError(405, "MethodNotAllowed", "binding takes POST")
            self._authorize(principal, self._auth_request("create", target))
            return await self.bind(request, target, writer=writer_of(request, principal))
        if target.subresource == "eviction":
            if method != "POST":
                raise ApiError(405, "MethodNotAllowed", "eviction takes POST")
            self._authorize(principal, self._auth_request("create", target))
            return await self.evict(request, target)
        if target.subresource == "renew":
            if method != "POST":
                raise ApiError(405, "MethodNotAllowed", "renew takes POST")
            self._authorize(principal, self._auth_request("renew", target))
            return await self.renew(request, target)
        if target.subresource == "scale":
            # Scaling is writing the Deployment's spec.replicas: the Deployment's own rules.
            scale_target = Target(info, target.namespace, target.name, None)
            self._authorize(principal, self._auth_request(verb, scale_target))
            return await self.scale(request, target, writer=writer_of(request, principal))
        node_name = None
        if target.subresource == "status" and info.kind == "Instance":
            node_name = await self._stored_node_name(target)
        self._authorize(principal, self._auth_request(verb, target, node_name=node_name))
        if method == "GET":
            return await self.get(request, target)
        if method == "PUT":
            return await self.replace(request, target, writer=writer_of(request, principal))
        if method == "PATCH":
            return await self.patch(request, target, writer=writer_of(request, principal))
        if method == "DELETE":
            if target.subresource is not None:
                raise ApiError(405, "MethodNotAllowed", "DELETE of a subresource")
            return await self.delete(request, target)
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    @staticmethod
    def _auth_request(
        verb: str, target: Target, *, name: str | None = None, node_name: str | None = None
    ) -> auth.Request:
        return auth.Request(
            verb=verb,  # type: ignore[arg-type]
            kind=target.info,
            namespace=target.namespace,
            name=name if name is not None else target.name,
            # renewal is its own verb on the Lease itself
            subresource=None if target.subresource == "renew" else target.subresource,
            node_name=node_name,
        )

    async def _stored_node_name(self, target: Target) -> str | None:
        await self._ensure_ready()
        cached = self.cache.get(target.info, target.namespace or "", target.name or "")
        if cached is None:
            stored = await self.storage.read(target.info, target.namespace or "", target.name or "")
            return getattr(getattr(stored, "spec", None), "node_name", None) if stored else None
        return getattr(getattr(cached.obj, "spec", None), "node_name", None)

    @staticmethod
    def _fencing(request: Request) -> Fencing | None:
        header = request.headers.get(FENCING_HEADER)
        return Fencing.parse(header) if header is not None else None

    @staticmethod
    def _object(obj: Resource, status: int = 200) -> Response:
        return Response(encode_object(obj), status_code=status, media_type=JSON)

    # -- reads

    async def get(self, request: Request, target: Target) -> Response:
        await self._ensure_ready()
        info, namespace, name = target.info, target.namespace or "", target.name or ""
        if request.query_params.get("resourceVersion") == "0" or await self._fresh():
            cached = self.cache.get(info, namespace, name)
            if cached is None:
                raise not_found(info, name)
            if self._table_version(request):
                return self._table(request, info, namespace, [(cached.obj, cached.data)], None)
            return Response(cached.data, media_type=JSON)
        stored = await self.storage.read(info, namespace, name)
        if stored is None:
            raise not_found(info, name)
        if self._table_version(request):
            return self._table(request, info, namespace, [(stored, None)], None)
        return self._object(stored)

    # -- Tables (kubectl get): the columns of `keel get`, from keel.api.columns

    @staticmethod
    def _table_version(request: Request) -> str | None:
        return tables.table_version(request.headers.get("accept", ""))

    def _extras(self, info: KindInfo, namespace: str | None) -> Extras:
        now = datetime.fromtimestamp(self.clock.wall(), UTC)
        if info.kind != "Instance":
            return Extras(now=now)
        usages = self.telemetry.list(telemetry_mod.INSTANCEUSAGES, namespace or None)
        return Extras(now=now, restarts=tables.restarts_from_usage(usages))

    def _table_body(
        self,
        request: Request,
        info: KindInfo,
        namespace: str | None,
        objects: list[tuple[Resource, bytes | None]],
        meta: ListMeta | None,
    ) -> tuple[dict[str, Any], str]:
        version = self._table_version(request) or "v1"
        include = request.query_params.get("includeObject", "") or "Metadata"
        if include not in tables.INCLUDE_OBJECT:
            raise bad_request(
                f"includeObject: expected one of {', '.join(tables.INCLUDE_OBJECT)}, "
                f"got {include!r}"
            )
        body = tables.table(
            info.kind,
            objects,
            self._extras(info, namespace),
            version=version,
            include=include,
            list_meta=msgspec.to_builtins(meta) if meta is not None else None,
        )
        return body, version

    def _table(
        self,
        request: Request,
        info: KindInfo,
        namespace: str | None,
        objects: list[tuple[Resource, bytes | None]],
        meta: ListMeta | None,
    ) -> Response:
        body, version = self._table_body(request, info, namespace, objects, meta)
        return _json_as(body, tables.content_type(version))

    def _table_lines(
        self, request: Request, info: KindInfo, namespace: str | None, chunk: bytes
    ) -> bytes:
        """Watch lines with each event's object as a one-row Table (bookmarks and errors
        pass as they are)."""
        out: list[bytes] = []
        for line in chunk.splitlines():
            if not line.strip():
                continue
            event = msgspec.json.decode(line)
            kind = event.get("type")
            if kind in ("ADDED", "MODIFIED", "DELETED"):
                data = msgspec.json.encode(event["object"])
                obj = msgspec.json.decode(data, type=info.model)
                table, _ = self._table_body(request, info, namespace, [(obj, data)], None)
                event = {"type": kind, "object": table}
                out.append(msgspec.json.encode(event) + b"\n")
            else:
                out.append(line + b"\n")
        return b"".join(out)

    def _predicate(self, request: Request, info: KindInfo) -> Callable[[Resource], bool] | None:
        try:
            labels = parse_label_selector(request.query_params.get("labelSelector"))
            fields = parse_field_selector(
                request.query_params.get("fieldSelector"), supported_fields(info.model)
            )
        except SelectorError as exc:
            raise bad_request(str(exc)) from None
        if labels.empty and fields.empty:
            return None

        def matches(obj: Resource) -> bool:
            return labels.matches(obj.metadata.labels) and fields.matches(obj)

        return matches

    def _shared_cache_predicate(
        self, request: Request, info: KindInfo
    ) -> Callable[[CachedObject], bool] | None:
        """One predicate object per (kind, selectors), so the watch cache evaluates it once
        per change for all the watchers that share it, not once per watcher."""
        params = request.query_params
        key = (info.plural, params.get("labelSelector"), params.get("fieldSelector"))
        if key in self._predicates:
            return self._predicates[key]
        predicate = self._cached_predicate(self._predicate(request, info))
        if len(self._predicates) >= 1024:
            self._predicates.pop(next(iter(self._predicates)))
        self._predicates[key] = predicate
        return predicate

    @staticmethod
    def _cached_predicate(
        predicate: Callable[[Resource], bool] | None,
    ) -> Callable[[CachedObject], bool] | None:
        if predicate is None:
            return None
        return lambda cached: predicate(cached.obj)

    async def list(self, request: Request, target: Target) -> Response:
        await self._ensure_ready()
        info = target.info
        params = request.query_params
        predicate = self._predicate(request, info)
        limit_text = params.get("limit", "")
        try:
            limit = int(limit_text) if limit_text else 0
        except ValueError:
            raise bad_request(f"limit: expected an integer, got {limit_text!r}") from None
        if limit < 0:
            raise bad_request("limit: expected a non-negative integer")
        token = params.get("continue", "")
        if token:
            revision, after = decode_continue(token)
            return await self._list_from_store(
                request, target, predicate=predicate, limit=limit, revision=revision, after=after
            )
        if params.get("resourceVersion") != "0" and not await self._fresh():
            return await self._list_from_store(
                request, target, predicate=predicate, limit=limit, revision=None, after=b""
            )
        objects, revision = self.cache.list(
            info, target.namespace, self._cached_predicate(predicate)
        )
        meta = ListMeta(resource_version=str(revision))
        if limit and len(objects) > limit:
            page = objects[:limit]
            meta = ListMeta(
                resource_version=str(revision),
                continue_=encode_continue(revision, page[-1].key),
                remaining_item_count=len(objects) - limit,
            )
            objects = page
        if self._table_version(request):
            return self._table(
                request, info, target.namespace, [(c.obj, c.data) for c in objects], meta
            )
        return Response(list_body(info, [c.data for c in objects], meta), media_type=JSON)

    async def _list_from_store(
        self,
        request: Request,
        target: Target,
        *,
        predicate: Callable[[Resource], bool] | None,
        limit: int,
        revision: int | None,
        after: bytes,
    ) -> Response:
        """Continue pages (and lists the cache cannot serve fresh enough) read the store, at
        the first page's revision so that the pages form one snapshot."""
        info = target.info
        # Without a selector the store pages for us: one key past `after`, one item more
        # than the page to know whether there is more. With one, read on and filter.
        page_limit = limit + 1 if limit and predicate is None else None
        try:
            result = await self.store.range(
                info.key_prefix(target.namespace),
                revision=revision,
                limit=page_limit,
                start=after + b"\0" if after else None,
            )
        except CompactedError:
            raise ApiError(
                410,
                "Expired",
                "the continue token is too old: its revision has been compacted; "
                "list again from the start",
            ) from None
        at = revision if revision is not None else result.revision
        items: list[Resource] = []
        more = False
        last_key = b""
        for kv in result.kvs:
            if limit and len(items) >= limit:
                more = True
                break
            obj = from_kv(info, kv)
            if predicate is not None and not predicate(obj):
                continue
            items.append(obj)
            last_key = kv.key
        meta = ListMeta(resource_version=str(at))
        if more:
            meta = ListMeta(resource_version=str(at), continue_=encode_continue(at, last_key))
        if self._table_version(request):
            return self._table(request, info, target.namespace, [(o, None) for o in items], meta)
        return Response(list_body(info, [encode_object(o) for o in items], meta), media_type=JSON)

    async def watch(self, request: Request, target: Target) -> Response:
        await self._ensure_ready()
        info = target.info
        params = request.query_params
        predicate = self._shared_cache_predicate(request, info)
        bookmarks = params.get("allowWatchBookmarks", "").lower() in ("true", "1")
        timeout_text = params.get("timeoutSeconds", "")
        try:
            timeout = float(timeout_text) if timeout_text else None
        except ValueError:
            raise bad_request(f"timeoutSeconds: expected a number, got {timeout_text!r}") from None
        rv_text = params.get("resourceVersion", "")
        initial: list[bytes] = []
        # A watch-list (client-go's WatchListClient): the current state as ADDED events, then
        # a bookmark saying the initial events are complete, then the changes.
        send_initial = params.get("sendInitialEvents", "").lower() == "true"
        if rv_text in ("", "0") or send_initial:
            if rv_text != "0" and not await self._fresh():
                raise ApiError(
                    504,
                    "Timeout",
                    "the watch cache could not catch up with the store",
                    retry_after=1,
                )
            objects, start = self.cache.list(info, target.namespace, predicate)
            initial = [watch_line("ADDED", c.data) for c in objects]
            if send_initial:
                initial.append(initial_events_end_line(info.kind, start))
        else:
            try:
                start = int(rv_text)
            except ValueError:
                raise bad_request(
                    f"resourceVersion: expected an integer, got {rv_text!r}"
                ) from None
            if start > self.cache.revision:
                await self.cache.wait_fresh(start)
        try:
            stream = self.cache.watch(info, target.namespace, start, predicate, bookmarks=bookmarks)
        except Expired as exc:
            message = (
                f"too old resource version: {start} (the oldest a watch may start from is "
                f"{exc.oldest})"
            )
            return Response(expired_line(message), media_type=JSON)

        authorization = request.headers.get("authorization")
        if self._table_version(request):
            self._table_body(request, info, target.namespace, [], None)  # check the query
            initial = [self._table_lines(request, info, target.namespace, line) for line in initial]

        def table_lines(chunk: bytes) -> bytes:
            return self._table_lines(request, info, target.namespace, chunk)

        convert = table_lines if self._table_version(request) else None

        async def body() -> AsyncIterator[bytes]:
            deadline = self.clock.now() + timeout if timeout else None
            try:
                if initial:
                    yield b"".join(initial)
                iterator = stream.__aiter__()
                while True:
                    if deadline is None:
                        line = await iterator.__anext__()
                    else:
                        remaining = deadline - self.clock.now()
                        if remaining <= 0:
                            return
                        try:
                            line = await asyncio.wait_for(iterator.__anext__(), remaining)
                        except TimeoutError:
                            return
                    if self.tokens.authenticate(authorization) is None:
                        return  # its token was revoked: the next request gets 401
                    yield line if convert is None else convert(line)
            except StopAsyncIteration:
                return
            finally:
                stream.close()

        return StreamingResponse(body(), media_type=JSON)

    # -- writes

    async def _body(self, request: Request) -> bytes:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media in BINARY_MEDIA_TYPES:
            # client-go sends built-in kinds as protobuf (or CBOR) first and, told 415,
            # sends them again as JSON.
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the server speaks JSON: {media} is not supported; send application/json",
            )
        length = request.headers.get("content-length")
        limit = 3 * self.max_object_bytes
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_large(int(length), self.max_object_bytes)
        chunks: list[bytes] = []
        size = 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise too_large(size, self.max_object_bytes)
            chunks.append(chunk)
        body = b"".join(chunks)
        if too_deep(body):
            raise bad_request(
                f"request body nests deeper than {MAX_BODY_DEPTH} levels of arrays and objects"
            )
        return body

    async def create(self, request: Request, principal: auth.Principal, target: Target) -> Response:
        info = target.info
        body = await self._body(request)
        # authorize before validating: who may not create gets 403 whatever the body says
        self._authorize(principal, self._auth_request("create", target, name=body_name(body)))
        obj = decode_body(
            info, body, namespace=target.namespace, name=None, max_bytes=self.max_object_bytes
        )
        if isinstance(obj, Lease) and obj.spec.registration is not None:
            await self._check_registration(info, obj, obj.spec.registration, target)
        fencing = self._fencing(request)
        writer = writer_of(request, principal)
        with contextlib.suppress(ValueError):  # decoded above: it is JSON
            sent = json.loads(body)
            if isinstance(sent, dict):
                writer = dataclasses.replace(writer, sent=fields_of(sent))
        created = await self.storage.create(
            info, obj, namespace=target.namespace or "", fencing=fencing, writer=writer
        )
        return self._object(created, 201)

    async def _check_registration(
        self, info: KindInfo, lease: Lease, registration: EndpointRegistration, target: Target
    ) -> None:
        """A registration names a Service that exists (a linearizable read)."""
        namespace = target.namespace or ""
        service = await self.storage.read(BY_KIND["Service"], namespace, registration.service)
        assert service is None or isinstance(service, Service)
        causes = registration_causes(registration, service, namespace)
        if causes:
            raise invalid(info, lease.metadata.name or lease.metadata.generate_name, causes)

    async def replace(
        self, request: Request, target: Target, *, writer: Writer | None = None
    ) -> Response:
        info = target.info
        body = await self._body(request)
        obj = decode_body(
            info,
            body,
            namespace=target.namespace,
            name=target.name,
            max_bytes=self.max_object_bytes,
        )
        updated = await self.storage.update(
            info,
            target.namespace or "",
            target.name or "",
            lambda current: obj,
            subresource=target.subresource,
            fencing=self._fencing(request),
            verb="status" if target.subresource == "status" else "update",
            writer=writer,
        )
        return self._object(updated)

    async def patch(
        self, request: Request, target: Target, *, writer: Writer | None = None
    ) -> Response:
        info = target.info
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type in APPLY_PATCH and writer is not None:
            return await self.apply(request, target, writer)
        if content_type not in (MERGE_PATCH, JSON_PATCH):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of a PATCH must be {MERGE_PATCH}, {JSON_PATCH} or "
                f"{APPLY_PATCH[0]}, not {content_type or 'unspecified'!r}",
            )
        body = await self._body(request)
        try:
            patch_doc = json.loads(body)
        except ValueError as exc:
            raise bad_request(f"the patch is not valid JSON: {exc}") from None
        if content_type == MERGE_PATCH and not isinstance(patch_doc, dict):
            raise bad_request("a merge patch must be a JSON object")

        def mutate(current: Resource) -> Resource:
            document = full_builtins(current)
            try:
                if content_type == MERGE_PATCH:
                    patched = merge_patch(document, patch_doc)
                else:
                    patched = json_patch(document, patch_doc)
            except PatchTestFailed as exc:
                raise ApiError(409, "Conflict", f"the patch's test failed: {exc}") from None
            except PatchError as exc:
                raise ApiError(
                    422,
                    "Invalid",
                    f"the patch cannot be applied: {exc}",
                    details=StatusDetails(
                        name=target.name or "",
                        kind=info.plural,
                        causes=[
                            StatusCause(pointer_field(exc.path), str(exc), "FieldValueInvalid")
                        ],
                    ),
                ) from None
            encoded = msgspec.json.encode(patched)
            if too_deep(encoded):  # a JSON patch can add a deep value at a deep path
                raise invalid(
                    info,
                    target.name or "",
                    [
                        StatusCause(
                            "",
                            f"the patched object nests deeper than {MAX_BODY_DEPTH} levels "
                            "of arrays and objects",
                            "FieldValueInvalid",
                        )
                    ],
                )
            return decode_body(
                info,
                encoded,
                namespace=target.namespace,
                name=target.name,
                max_bytes=self.max_object_bytes,
            )

        updated = await self.storage.update(
            info,
            target.namespace or "",
            target.name or "",
            mutate,
            subresource=target.subresource,
            fencing=self._fencing(request),
            verb="status" if target.subresource == "status" else "patch",
            writer=writer,
        )
        return self._object(updated)

    async def apply(self, request: Request, target: Target, writer: Writer) -> Response:
        """Server-side apply (`application/apply-patch+yaml`): the body is the field
        manager's whole intent for the object (YAML or JSON); `fieldManager` is required,
        `force=true` takes conflicting fields over. 201 when it created the object."""
        info = target.info
        if target.subresource is not None:
            raise ApiError(405, "MethodNotAllowed", "server-side apply of a subresource")
        manager = request.query_params.get("fieldManager", "")
        if not manager:
            raise bad_request("fieldManager: required for apply requests (e.g. ?fieldManager=me)")
        force = request.query_params.get("force", "").lower()
        if force not in ("", "true", "false"):
            raise bad_request(f"force: expected true or false, not {force!r}")
        body = await self._body(request)
        try:
            document = yaml.safe_load(body.decode("utf-8")) if body.strip() else None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            raise bad_request(f"the apply body is not valid YAML or JSON: {exc}") from None
        if not isinstance(document, dict):
            raise bad_request("the apply body must be an object (a manifest)")

        def decode(encoded: bytes) -> Resource:
            return decode_body(
                info,
                encoded,
                namespace=target.namespace,
                name=target.name,
                max_bytes=self.max_object_bytes,
            )

        decode(msgspec.json.encode(document))  # the intent alone must be valid: 422s name it
        obj, created = await self.storage.apply(
            info,
            target.namespace or "",
            target.name or "",
            document,
            writer=Writer(manager if not writer.enforced else writer.manager, writer.enforced),
            force=force == "true",
            decode=decode,
            fencing=self._fencing(request),
        )
        return self._object(obj, 201 if created else 200)

    async def scale(
        self, request: Request, target: Target, *, writer: Writer | None = None
    ) -> Response:
        """GET/PUT/PATCH `deployments/NAME/scale` (autoscaling/v1 Scale)."""
        info, namespace, name = target.info, target.namespace or "", target.name or ""
        if request.method == "GET":
            await self._ensure_ready()
            current = await self.storage.read(info, namespace, name)
            if not isinstance(current, Deployment):
                raise not_found(info, name)
            return _json(scale_mod.scale_of(current))
        if request.method not in ("PUT", "PATCH"):
            raise ApiError(405, "MethodNotAllowed", "scale takes GET, PUT or PATCH")
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if request.method == "PATCH" and content_type not in (MERGE_PATCH, JSON_PATCH):
            raise ApiError(
                415,
                "UnsupportedMediaType",
                f"the body of a PATCH must be {MERGE_PATCH} or {JSON_PATCH}, "
                f"not {content_type or 'unspecified'!r}",
            )
        body = await self._body(request)

        def decode(document: bytes) -> scale_mod.Scale:
            scale: scale_mod.Scale = decode_record(scale_mod.Scale, document, "Scale")
            problem = scale_mod.check_identity(scale, name, namespace)
            if problem is not None:
                raise bad_request(problem)
            return scale

        wanted = decode(body) if request.method == "PUT" else None
        if request.method == "PATCH":
            try:
                patch_doc = json.loads(body)
            except ValueError as exc:
                raise bad_request(f"the patch is not valid JSON: {exc}") from None

        def mutate(current: Resource) -> Resource:
            assert isinstance(current, Deployment)
            scale = wanted
            if scale is None:
                document = scale_mod.scale_of(current)
                try:
                    if content_type == MERGE_PATCH:
                        patched = merge_patch(document, patch_doc)
                    else:
                        patched = json_patch(document, patch_doc)
                except PatchTestFailed as exc:
                    raise ApiError(409, "Conflict", f"the patch's test failed: {exc}") from None
                except PatchError as exc:
                    raise bad_request(f"the patch cannot be applied: {exc}") from None
                scale = decode(msgspec.json.encode(patched))
            return scale_mod.scaled(current, scale)

        updated = await self.storage.update(
            info,
            namespace,
            name,
            mutate,
            fencing=self._fencing(request),
            verb="update",
            writer=writer,
        )
        assert isinstance(updated, Deployment)
        return _json(scale_mod.scale_of(updated))

    async def delete(self, request: Request, target: Target) -> Response:
        body = await self._body(request)
        pre = Preconditions()
        propagation: str | None = request.query_params.get("propagationPolicy")
        if body.strip():
            try:
                options = json.loads(body)
            except ValueError as exc:
                raise bad_request(f"DeleteOptions: not valid JSON: {exc}") from None
            raw = options.get("preconditions") if isinstance(options, dict) else None
            if raw is not None and not isinstance(raw, dict):
                raise bad_request("DeleteOptions.preconditions must be an object")
            if raw:
                pre = Preconditions(
                    uid=raw.get("uid") or None, resource_version=raw.get("resourceVersion") or None
                )
            if isinstance(options, dict) and options.get("propagationPolicy") is not None:
                propagation = options["propagationPolicy"]
        if propagation is not None and propagation not in PROPAGATION_POLICIES:
            raise bad_request(
                f"DeleteOptions.propagationPolicy: {propagation!r} is not one of "
                + ", ".join(PROPAGATION_POLICIES)
            )
        obj, _gone = await self.storage.delete(
            target.info,
            target.namespace or "",
            target.name or "",
            preconditions=pre,
            fencing=self._fencing(request),
            propagation=cast("PropagationPolicy | None", propagation),
        )
        return self._object(obj)

    async def binding_plans(self, request: Request) -> Response:
        """`POST /apis/keel.dev/v1/bindingplans`: a scheduler's bindings, committed in one
        store transaction (those still valid) with a result per binding (`BindingPlan`).
        Whoever may create instances/binding in every namespace of the plan may send it."""
        started = time.perf_counter()
        try:
            if request.method != "POST":
                raise ApiError(405, "MethodNotAllowed", "bindingplans take POST")
            principal = self._authenticate(request)
            plan: BindingPlan = decode_record(BindingPlan, await self._body(request), "BindingPlan")
            info = BY_KIND["Instance"]
            for namespace in sorted({b.namespace for b in plan.bindings}):
                target = Target(info, namespace, None, "binding")
                self._authorize(principal, self._auth_request("create", target))
            outcomes = await self.storage.bind_plan(
                info,
                [
                    PlannedBinding(b.namespace, b.name, b.node, b.resource_version)
                    for b in plan.bindings
                ],
                fencing=self._fencing(request),
                writer=writer_of(request, principal),
            )
            response = _json(BindingPlan(results=[plan_result(o) for o in outcomes]), 201)
        except ApiError as exc:
            response = _error(exc)
        except Exception as exc:
            response = _unexpected(request, exc)
        elapsed = time.perf_counter() - started
        self.metrics.observe_request("create", "BindingPlan", response.status_code, elapsed)
        return response

    async def bind(
        self, request: Request, target: Target, *, writer: Writer | None = None
    ) -> Response:
        binding: Binding = decode_record(Binding, await self._body(request), "Binding")
        if binding.metadata.name and binding.metadata.name != target.name:
            raise bad_request(
                f"the binding's name ({binding.metadata.name!r}) does not match the "
                f"instance in the URL ({target.name!r})"
            )
        bound = await self.storage.bind(
            target.info,
            target.namespace or "",
            target.name or "",
            binding.target.name,
            resource_version=binding.metadata.resource_version,
            fencing=self._fencing(request),
            writer=writer,
        )
        return self._object(bound, 201)

    async def evict(self, request: Request, target: Target) -> Response:
        """Delete an Instance gracefully if its Deployment's disruption budget allows (429
        naming the budget if not); 201 with a Success Status saying what was checked."""
        body = await self._body(request)
        eviction = decode_record(Eviction, body, "Eviction") if body.strip() else Eviction()
        if eviction.kind != "Eviction" or eviction.api_version not in (API_VERSION, "policy/v1"):
            raise bad_request(
                f"expected kind Eviction of {API_VERSION} (or policy/v1), got kind "
                f"{eviction.kind!r} of {eviction.api_version!r}"
            )
        if eviction.metadata.name and eviction.metadata.name != target.name:
            raise bad_request(
                f"the eviction's name ({eviction.metadata.name!r}) does not match the "
                f"instance in the URL ({target.name!r})"
            )
        options = eviction.delete_options
        given = options.preconditions if options is not None else None
        pre = Preconditions()
        if given is not None:
            pre = Preconditions(
                uid=given.uid or None, resource_version=given.resource_version or None
            )
        name = target.name or ""
        _obj, decision = await self.storage.evict(
            target.namespace or "", name, preconditions=pre, fencing=self._fencing(request)
        )
        status = Status(
            status="Success",
            code=201,
            message=f"evicted instance {name}: {decision.message}",
            details=StatusDetails(name=name, kind=target.info.plural),
        )
        return Response(encode_status(status), status_code=201, media_type=JSON)

    async def renew(self, request: Request, target: Target) -> Response:
        renewal: LeaseRenewal = decode_record(
            LeaseRenewal, await self._body(request), "LeaseRenewal"
        )
        lease = await self.storage.renew(
            target.namespace or "",
            target.name or "",
            renewal.holder_identity,
            renewal.fencing_token,
        )
        return self._object(lease)

    # -- the core group: Namespaces (keel.dev's, one source of truth) and Events (telemetry)

    async def core_endpoint(self, request: Request) -> Response:
        """`/api/v1/namespaces[/NAME[/status]]` served by the keel.dev handler with
        `apiVersion: v1`; `/api/v1/namespaces/NS/events` and `/api/v1/events` from telemetry."""
        rest = request.path_params["rest"]
        segments = [s for s in rest.split("/") if s]
        if segments == ["events"] or (
            len(segments) == 3 and segments[0] == "namespaces" and segments[2] == "events"
        ):
            started = time.perf_counter()
            try:
                principal = self._authenticate(request)
                response = await self._core_events(
                    request, principal, segments[1] if len(segments) == 3 else None
                )
            except ApiError as exc:
                response = _error(exc)
            self.metrics.observe_request(
                "list", "Event", response.status_code, time.perf_counter() - started
            )
            return response
        if not segments or segments[0] != "namespaces" or len(segments) > 3:
            return _error(_no_route(request.url.path))
        body = b""
        scope = dict(request.scope)
        scope["path_params"] = {"rest": rest}
        if request.method != "GET":
            try:
                body = await self._core_body(request, scope)
            except ApiError as exc:
                return _error(exc)
            if request.method in ("POST", "PUT"):
                body = core.to_keel_body(body)
        sent = False

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        response = await self.resource_endpoint(Request(scope, receive))
        return core.to_core_response(response)

    async def _core_body(self, request: Request, scope: dict[str, Any]) -> bytes:
        """The body of a core-group write; a protobuf Namespace (what client-go sends) is read
        as JSON, and the forwarded request says so."""
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if media != protobuf.MEDIA_TYPE or request.method not in ("POST", "PUT"):
            return await self._body(request)
        raw = await request.body()
        if len(raw) > 3 * self.max_object_bytes:
            raise too_large(len(raw), self.max_object_bytes)
        try:
            document = protobuf.decode_namespace(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(415, "UnsupportedMediaType", f"{exc}; send application/json") from None
        scope["headers"] = [
            (k, v) for k, v in request.scope["headers"] if k.lower() != b"content-type"
        ] + [(b"content-type", JSON.encode())]
        return json.dumps(document).encode()

    async def _core_events(
        self, request: Request, principal: auth.Principal, namespace: str | None
    ) -> Response:
        """Events of the core group, kept in telemetry (never stored): list and watch, and
        POST from an event recorder (as client-go's and the Python client's post them)."""
        if request.method == "POST":
            return await self._post_core_event(request, principal, namespace)
        if request.method != "GET":
            raise ApiError(405, "MethodNotAllowed", "events take GET (list, watch) and POST")
        self._authorize(
            principal,
            auth.Request(verb="list", kind=None, namespace=namespace, name=None, subresource=None),
        )
        try:
            wanted = core.event_filter(request.query_params.get("fieldSelector", ""))
        except ValueError as exc:
            raise bad_request(str(exc)) from None
        version = self._table_version(request)
        if request.query_params.get("watch", "").lower() in ("1", "true"):
            return self._watch_core_events(request, namespace, wanted, version)
        records = self.telemetry.list(telemetry_mod.EVENTS, namespace)
        events = [e for e in core.core_events(records) if wanted(e)]
        now = datetime.fromtimestamp(self.clock.wall(), UTC)
        _, seq = self.telemetry.events_since(1 << 62)
        if version:
            return _json_as(core.event_table(events, now, version), tables.content_type(version))
        return _json(core.event_list(events, str(seq)))

    async def _post_core_event(
        self, request: Request, principal: auth.Principal, namespace: str | None
    ) -> Response:
        if namespace is None:
            raise ApiError(405, "MethodNotAllowed", "POST events to /api/v1/namespaces/NS/events")
        self._authorize(
            principal,
            auth.Request(
                verb="create", kind=None, namespace=namespace, name=None, subresource=None
            ),
        )
        try:
            sent = json.loads(await self._body(request))
        except ValueError as exc:
            raise bad_request(f"the event is not valid JSON: {exc}") from None
        if not isinstance(sent, dict):
            raise bad_request("an Event must be a JSON object")
        stamp = datetime.fromtimestamp(self.clock.wall(), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        try:
            record = telemetry_mod.validate(
                telemetry_mod.EVENTS, core.telemetry_event(sent, namespace, stamp)
            )
            key = telemetry_mod.key_of(telemetry_mod.EVENTS, namespace, None, record)
        except telemetry_mod.TelemetryError as exc:
            raise ApiError(422, "Invalid", f"Event: {exc}") from None
        self.telemetry.put(telemetry_mod.EVENTS, namespace, key, record, None)
        return _json(core.core_event(record), 201)

    def _watch_core_events(
        self,
        request: Request,
        namespace: str | None,
        wanted: Callable[[dict[str, Any]], bool],
        version: str | None,
    ) -> Response:
        """Events recorded from now (or after `resourceVersion`, a telemetry sequence) as
        watch lines, each checked every half second; ends after `timeoutSeconds`."""
        _, newest = self.telemetry.events_since(1 << 62)
        start = request.query_params.get("resourceVersion", "")
        seq = int(start) if start.isdigit() and int(start) <= newest else newest
        timeout = request.query_params.get("timeoutSeconds", "")
        limit = float(timeout) if timeout.isdigit() else 1800.0

        async def lines() -> AsyncIterator[bytes]:
            nonlocal seq
            deadline = time.monotonic() + limit
            while time.monotonic() < deadline:
                records, seq = self.telemetry.events_since(seq)
                now = datetime.fromtimestamp(self.clock.wall(), UTC)
                for record in records:
                    ns = record.get("involvedObject", {}).get("namespace") or ""
                    if namespace is not None and ns != namespace:
                        continue
                    event = core.core_event(record)
                    if not wanted(event):
                        continue
                    shown = core.event_table([event], now, version) if version else event
                    yield json.dumps({"type": "ADDED", "object": shown}).encode() + b"\n"
                await asyncio.sleep(0.5)

        media = tables.content_type(version) if version else JSON
        return StreamingResponse(lines(), media_type=media)

    # -- telemetry

    async def telemetry_endpoint(self, request: Request) -> Response:
        started = time.perf_counter()
        verb = request.method.lower()
        try:
            principal = self._authenticate(request)
            response = await self._telemetry(request, principal)
        except ApiError as exc:
            response = _error(exc)
        self.metrics.observe_request(
            verb, "telemetry", response.status_code, time.perf_counter() - started
        )
        return response

    async def _telemetry(self, request: Request, principal: auth.Principal) -> Response:
        segments = [s for s in request.path_params["rest"].split("/") if s]
        namespace: str | None = None
        if len(segments) >= 3 and segments[0] == "namespaces":
            namespace, segments = segments[1], segments[2:]
        if not segments or len(segments) > 2 or segments[0] not in telemetry_mod.MODELS:
            raise _no_route(request.url.path)
        kind = segments[0]
        if telemetry_mod.NAMESPACED[kind] != (namespace is not None) and request.method != "GET":
            scope = "namespaced" if telemetry_mod.NAMESPACED[kind] else "cluster-scoped"
            raise _no_route(f"{request.url.path} ({kind} is {scope})")
        name = segments[1] if len(segments) == 2 else None
        method = request.method
        if method == "GET":
            self._authorize(
                principal,
                auth.Request(
                    verb="get" if name else "list",
                    kind=None,
                    namespace=namespace,
                    name=name,
                    subresource=None,
                ),
            )
            version = self._table_version(request)
            if version and name is None:
                return self._telemetry_table(kind, namespace, version)
            return self._telemetry_read(kind, namespace, name)
        if method not in ("PUT", "POST"):
            raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on telemetry")
        raw = await self._body(request)
        try:
            body = telemetry_mod.decode(kind, raw)
            key = telemetry_mod.key_of(kind, namespace, name, body)
        except telemetry_mod.TelemetryError as exc:
            raise ApiError(
                422,
                "Invalid",
                str(exc),
                details=StatusDetails(
                    kind=kind, causes=[StatusCause(exc.field, str(exc), "FieldValueInvalid")]
                ),
            ) from None
        self._authorize(
            principal,
            auth.Request(
                verb="create" if method == "POST" else "update",
                kind=None,
                namespace=namespace,
                name=key,
                subresource=None,
                telemetry_node=telemetry_mod.subject_node(kind, body),
            ),
        )
        ttl_text = request.query_params.get("ttlSeconds")
        try:
            ttl = float(ttl_text) if ttl_text else None
        except ValueError:
            raise bad_request(f"ttlSeconds: expected a number, got {ttl_text!r}") from None
        self.telemetry.put(kind, namespace, key, body, ttl)
        return _json(body, 201 if method == "POST" else 200)

    def _telemetry_table(self, kind: str, namespace: str | None, version: str) -> Response:
        """`kubectl get` of telemetry: heartbeats and usages in columns, events as core's."""
        records = self.telemetry.list(kind, namespace)
        if kind == telemetry_mod.EVENTS:
            now = datetime.fromtimestamp(self.clock.wall(), UTC)
            body = core.event_table(core.core_events(records), now, version)
        else:
            body = tables.telemetry_table(kind, records, version)
        return _json_as(body, tables.content_type(version))

    def _telemetry_read(self, kind: str, namespace: str | None, name: str | None) -> Response:
        if name is None:
            items = self.telemetry.list(kind, namespace)
            return _json(
                {
                    "apiVersion": telemetry_mod.TELEMETRY_GROUP_VERSION,
                    "kind": "List",
                    "metadata": {},
                    "items": items,
                }
            )
        if kind == telemetry_mod.EVENTS:
            events = self.telemetry.events(namespace, name)
            return _json(
                {
                    "apiVersion": telemetry_mod.TELEMETRY_GROUP_VERSION,
                    "kind": "List",
                    "metadata": {},
                    "items": events,
                }
            )
        item = self.telemetry.get(kind, namespace, name)
        if item is None:
            raise ApiError(
                404,
                "NotFound",
                f'{kind} "{name}" not found (telemetry expires when not refreshed)',
                details=StatusDetails(name=name, kind=kind),
            )
        return _json(item)
