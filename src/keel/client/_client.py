"""`KeelClient`: typed, async access to the keel.dev/v1 API through a pluggable transport.

Objects go out and come back as the frozen msgspec models of `keel.api.resources`; the kind
(a model class or any name `keel.api.registry.lookup` knows) picks the model and the path.
Watches resume by themselves; writes inside `fenced()` carry the fencing token.
"""

from __future__ import annotations

import builtins
import os
import random
import socket
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, NamedTuple, TypeVar, cast, overload
from urllib.parse import quote

import msgspec

from keel.api.registry import BY_KIND, KindInfo, lookup
from keel.api.resources import (
    Binding,
    BindingPlan,
    DeleteOptions,
    Eviction,
    Instance,
    Lease,
    LeaseRenewal,
    LeaseSpec,
    NodeTarget,
    ObjectMeta,
    PlanBinding,
    PlanResult,
    Precondition,
    Resource,
    Status,
)
from keel.client._backoff import Backoff
from keel.client._errors import (
    ApiError,
    ApiUnavailable,
    Expired,
    FencingTokenRejected,
    NotFound,
    ServerError,
    TooManyRequests,
    status_error,
)
from keel.client._kubeconfig import load_kubeconfig
from keel.client._registration import Registration, registration_lease, registration_lease_name
from keel.client._transport import (
    AiohttpTransport,
    HttpRequest,
    HttpTransport,
    Requests,
    RetryPolicy,
    SSLArg,
    TransportError,
    iter_lines,
)
from keel.client._watch import Bookmark, RawEvent, WatchCursor, WatchEvent
from keel.clock import Clock, SystemClock

R = TypeVar("R", bound=Resource)
T = TypeVar("T")

KindRef = str | type[Resource] | KindInfo
PatchType = Literal["merge", "json"]
Selector = str | Mapping[str, str]

FENCING_HEADER = "Keel-Fencing-Token"
FIELD_MANAGER_HEADER = "Keel-Field-Manager"
TELEMETRY_PREFIX = "/apis/telemetry.keel.dev/v1"
APPLY_CONTENT_TYPE = "application/apply-patch+yaml"
_PATCH_CONTENT_TYPES: dict[str, str] = {
    "merge": "application/merge-patch+json",
    "json": "application/json-patch+json",
}


def fencing_header_value(namespace: str, lease: str, token: int) -> str:
    """`Keel-Fencing-Token` value: `{namespace}/{lease}={token}`."""
    if not namespace or not lease or "/" in namespace or "=" in lease or "/" in lease:
        raise ValueError(f"fencing: bad lease reference {namespace!r}/{lease!r}")
    if isinstance(token, bool) or not isinstance(token, int) or token <= 0:
        raise ValueError(f"fencing: token must be a positive integer, got {token!r}")
    return f"{namespace}/{lease}={token}"


def selector_string(selector: Selector | None) -> str | None:
    """A label selector from a string (as is) or a mapping (`k=v,k2=v2`)."""
    if selector is None or isinstance(selector, str):
        return selector or None
    return ",".join(f"{key}={value}" for key, value in selector.items()) or None


class ListResult(NamedTuple, Generic[R]):
    """A complete list: `items, resource_version = await client.list(...)`; watch from
    `resource_version` to see every later change."""

    items: builtins.list[R]
    resource_version: str


class Page(NamedTuple, Generic[R]):
    """One page of a list; `continue_token` asks for the next one ("" on the last page)."""

    items: builtins.list[R]
    resource_version: str
    continue_token: str


@dataclass(frozen=True, slots=True)
class Preconditions:
    """DELETE only if the object still has this uid and/or resourceVersion."""

    uid: str = ""
    resource_version: str = ""


class _Preconditions(msgspec.Struct, omit_defaults=True, rename="camel"):
    uid: str = ""
    resource_version: str = ""


class _DeleteOptions(msgspec.Struct, omit_defaults=True, rename="camel"):
    preconditions: _Preconditions | None = None
    propagation_policy: str | None = None
    api_version: str = "v1"
    kind: str = "DeleteOptions"


class _ListMeta(msgspec.Struct, rename="camel"):
    resource_version: str = ""
    continue_: str = msgspec.field(default="", name="continue")


class _ListBody(msgspec.Struct, Generic[T]):
    items: builtins.list[T] | None = None
    metadata: _ListMeta = msgspec.field(default_factory=_ListMeta)


class _Probe(msgspec.Struct):
    """Enough of an answer to tell a Status from an object: a Status may omit its `kind`
    (a default), but has a `code` or a string `status`, where objects have a mapping."""

    kind: str = ""
    status: object = None
    code: object = None


_encoder = msgspec.json.Encoder()
_probe_decoder = msgspec.json.Decoder(_Probe)
_status_decoder = msgspec.json.Decoder(Status)
_raw_event_decoder = msgspec.json.Decoder(RawEvent)
_bookmark_decoder = msgspec.json.Decoder(Bookmark)
_any_decoder = msgspec.json.Decoder()
_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}
_list_decoders: dict[type[Any], msgspec.json.Decoder[Any]] = {}


_plan_decoder = msgspec.json.Decoder(BindingPlan)


def _decoder(model: type[R]) -> msgspec.json.Decoder[R]:
    decoder = _decoders.get(model)
    if decoder is None:
        decoder = _decoders[model] = msgspec.json.Decoder(model)
    return decoder


def _list_decoder(model: type[R]) -> msgspec.json.Decoder[_ListBody[R]]:
    decoder = _list_decoders.get(model)
    if decoder is None:
        decoder = _list_decoders[model] = msgspec.json.Decoder(_ListBody[model])  # type: ignore[valid-type]
    return decoder


def kind_info(kind: KindRef) -> KindInfo:
    """The registry entry of a kind given as a model class, a KindInfo or a name."""
    if isinstance(kind, KindInfo):
        return kind
    if isinstance(kind, str):
        info = lookup(kind)
        if info is None:
            raise ValueError(f"unknown kind {kind!r}")
        return info
    info = BY_KIND.get(kind.kind_name)
    if info is None:
        raise ValueError(f"{kind.__name__} is not a registered kind")
    return info


class KeelClient:
    """Async client of one Keel API server.

    Use as `async with KeelClient(server, token=...) as client:` (or call `close()`). A client
    holds one transport (by default `AiohttpTransport`: keep-alive HTTP(S) connections) and is
    safe to share between tasks of one event loop. `transport` plugs another one in below the
    client's retries, decoding and watch resumption, as httpx does (`keel.sim` answers from
    the real API server app in memory); `ssl`, `timeout` and `connections` configure the
    default transport only. `clock` times retry backoff and watch reconnects.
    """

    def __init__(
        self,
        server: str,
        *,
        token: str | None = None,
        ssl: SSLArg = None,
        namespace: str = "default",
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        clock: Clock | None = None,
        rng: random.Random | None = None,
        connections: int = 100,
        transport: HttpTransport | None = None,
    ) -> None:
        if transport is None:
            transport = AiohttpTransport(ssl=ssl, timeout=timeout, connections=connections)
        self._transport = Requests(
            server,
            transport,
            token=token,
            retry=retry or RetryPolicy(),
            sleep=(clock or SystemClock()).sleep,
            rng=rng or random.Random(),
        )
        self.namespace = namespace
        self._base = self._transport.server + "/apis/keel.dev/v1"
        self._write_headers: dict[str, str] = {}
        self._view_open = True
        self._is_view = False
        self._guard: _FenceGuard | None = None
        # Named on every write (header Keel-Field-Manager): the API server records the
        # fields each manager owns (metadata.managedFields) and refuses a component's write
        # to a field the registry gives another one. Empty: the server derives a name.
        self.field_manager = ""

    @classmethod
    def from_kubeconfig(
        cls,
        path: str | os.PathLike[str] | None = None,
        *,
        context: str | None = None,
        **options: Any,
    ) -> KeelClient:
        """A client for the server, token, TLS settings and namespace of a kubeconfig
        (default `$KEEL_KUBECONFIG`, then `$KUBECONFIG`, then `.keel/kubeconfig`)."""
        config = load_kubeconfig(path, context=context)
        options.setdefault("namespace", config.namespace)
        options.setdefault("ssl", config.ssl_context())
        return cls(config.server, token=config.token, **options)

    @property
    def server(self) -> str:
        return self._transport.server

    async def __aenter__(self) -> KeelClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the session (a view leaves it to the client it came from)."""
        if self._write_headers or self._is_view:
            self._view_open = False
            return
        await self._transport.close()

    # ----------------------------------------------------------------- paths

    def _namespace_for(self, info: KindInfo, namespace: str | None) -> str | None:
        if not info.namespaced:
            if namespace:
                raise ValueError(f"{info.kind} is cluster-scoped: no namespace")
            return None
        return namespace or self.namespace

    def _path(
        self,
        info: KindInfo,
        namespace: str | None,
        name: str | None = None,
        subresource: str | None = None,
    ) -> str:
        parts = [self._base]
        if namespace is not None:
            parts += ["/namespaces/", quote(namespace, safe="")]
        parts += ["/", info.plural]
        if name is not None:
            if not name:
                raise ValueError(f"{info.kind}: empty name")
            parts += ["/", quote(name, safe="")]
            if subresource:
                parts += ["/", subresource]
        return "".join(parts)

    def _object_path(self, obj: Resource, subresource: str | None = None) -> tuple[KindInfo, str]:
        info = kind_info(type(obj))
        namespace = self._namespace_for(info, obj.metadata.namespace or None)
        return info, self._path(info, namespace, obj.metadata.name, subresource)

    async def _write(
        self,
        method: str,
        url: str,
        *,
        body: bytes | None = None,
        content_type: str = "application/json",
        params: Mapping[str, str] | None = None,
    ) -> bytes:
        """Send a write with the view's fencing header. Once a write of a guarded view was
        rejected for its fencing token, every later one fails at once, without a request."""
        if not self._view_open:
            raise RuntimeError("this fenced client view was used after its `async with` ended")
        guard = self._guard
        if guard is not None and guard.rejected is not None:
            raise guard.rejected
        headers = self._write_headers
        if self.field_manager:
            headers = {**headers, FIELD_MANAGER_HEADER: self.field_manager}
        try:
            return await self._transport.request(
                method,
                url,
                params=params,
                body=body,
                content_type=content_type,
                headers=headers,
            )
        except FencingTokenRejected as exc:
            if guard is not None and guard.rejected is None:
                guard.rejected = exc
                guard.on_rejected(exc)
            raise

    # ----------------------------------------------------------------- reads

    @overload
    async def get(self, kind: type[R], name: str, *, namespace: str | None = None) -> R: ...
    @overload
    async def get(
        self, kind: str | KindInfo, name: str, *, namespace: str | None = None
    ) -> Resource: ...
    async def get(self, kind: KindRef, name: str, *, namespace: str | None = None) -> Resource:
        """One object; `NotFound` if absent."""
        info = kind_info(kind)
        url = self._path(info, self._namespace_for(info, namespace), name)
        data = await self._transport.request("GET", url)
        return _decoder(info.model).decode(data)

    async def _page(
        self,
        info: KindInfo,
        *,
        namespace: str | None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
        continue_token: str | None = None,
    ) -> Page[Any]:
        params: dict[str, str] = {}
        labels = selector_string(label_selector)
        if labels:
            params["labelSelector"] = labels
        if field_selector:
            params["fieldSelector"] = field_selector
        if limit:
            params["limit"] = str(limit)
        if continue_token:
            params["continue"] = continue_token
        ns = namespace if info.namespaced else self._namespace_for(info, namespace)
        data = await self._transport.request("GET", self._path(info, ns), params=params)
        body = _list_decoder(info.model).decode(data)
        return Page(body.items or [], body.metadata.resource_version, body.metadata.continue_)

    @overload
    def pages(
        self,
        kind: type[R],
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        limit: int = 500,
    ) -> AsyncIterator[Page[R]]: ...
    @overload
    def pages(
        self,
        kind: str | KindInfo,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        limit: int = 500,
    ) -> AsyncIterator[Page[Resource]]: ...
    async def pages(
        self,
        kind: KindRef,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        limit: int = 500,
    ) -> AsyncIterator[Page[Any]]:
        """The list one page (of at most `limit` items) at a time, following `continue`.

        `namespace=None` lists a namespaced kind across all namespaces.
        """
        info = kind_info(kind)
        token: str | None = None
        while True:
            page = await self._page(
                info,
                namespace=namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                limit=limit,
                continue_token=token,
            )
            yield page
            if not page.continue_token:
                return
            token = page.continue_token

    @overload
    async def list(
        self,
        kind: type[R],
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
    ) -> ListResult[R]: ...
    @overload
    async def list(
        self,
        kind: str | KindInfo,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
    ) -> ListResult[Resource]: ...
    async def list(
        self,
        kind: KindRef,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
    ) -> ListResult[Any]:
        """Every matching object and the list's resourceVersion (to watch from).

        `limit` is the page size; further pages are fetched until the list is complete. If a
        continue token expires midway (410), the list starts again from the first page.
        `namespace=None` lists a namespaced kind across all namespaces.
        """
        info = kind_info(kind)
        for attempt in range(3):
            items: builtins.list[Any] = []
            resource_version = ""
            token: str | None = None
            try:
                while True:
                    page = await self._page(
                        info,
                        namespace=namespace,
                        label_selector=label_selector,
                        field_selector=field_selector,
                        limit=limit,
                        continue_token=token,
                    )
                    items.extend(page.items)
                    resource_version = resource_version or page.resource_version
                    if not page.continue_token:
                        return ListResult(items, resource_version)
                    token = page.continue_token
            except Expired:
                if token is None or attempt == 2:
                    raise
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------- writes

    def _prepare(self, obj: R) -> tuple[KindInfo, str | None, R]:
        info = kind_info(type(obj))
        namespace = self._namespace_for(info, obj.metadata.namespace or None)
        changes: dict[str, Any] = {}
        if not obj.kind:
            changes["kind"] = info.kind
        if namespace is not None and obj.metadata.namespace != namespace:
            changes["metadata"] = msgspec.structs.replace(obj.metadata, namespace=namespace)
        if changes:
            obj = msgspec.structs.replace(obj, **changes)
        return info, namespace, obj

    async def create(self, obj: R) -> R:
        """POST a new object; `AlreadyExists` if the name is taken."""
        info, namespace, obj = self._prepare(obj)
        data = await self._write(
            "POST",
            self._path(info, namespace),
            body=_encoder.encode(obj),
        )
        return _decoder(type(obj)).decode(data)

    async def replace(self, obj: R) -> R:
        """PUT the whole object; `Conflict` if its `metadata.resourceVersion` is stale."""
        info, namespace, obj = self._prepare(obj)
        data = await self._write(
            "PUT",
            self._path(info, namespace, obj.metadata.name),
            body=_encoder.encode(obj),
        )
        return _decoder(type(obj)).decode(data)

    async def update_status(self, obj: R) -> R:
        """PUT the `status` subresource (only `.status` changes), with OCC."""
        info, namespace, obj = self._prepare(obj)
        data = await self._write(
            "PUT",
            self._path(info, namespace, obj.metadata.name, "status"),
            body=_encoder.encode(obj),
        )
        return _decoder(type(obj)).decode(data)

    @overload
    async def patch(
        self,
        kind: type[R],
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        type: PatchType = "merge",
        subresource: str | None = None,
    ) -> R: ...
    @overload
    async def patch(
        self,
        kind: str | KindInfo,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        type: PatchType = "merge",
        subresource: str | None = None,
    ) -> Resource: ...
    async def patch(
        self,
        kind: KindRef,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        type: PatchType = "merge",
        subresource: str | None = None,
    ) -> Resource:
        """PATCH with a JSON merge patch (a dict) or a JSON patch (a list of operations).

        `patch` may also be the encoded bytes. A JSON patch may carry its own OCC:
        `{"op": "test", "path": "/metadata/resourceVersion", "value": rv}`.
        """
        info = kind_info(kind)
        content_type = _PATCH_CONTENT_TYPES.get(type)
        if content_type is None:
            raise ValueError(f"patch type must be 'merge' or 'json', not {type!r}")
        body = patch if isinstance(patch, bytes) else _encoder.encode(patch)
        data = await self._write(
            "PATCH",
            self._path(info, self._namespace_for(info, namespace), name, subresource),
            body=body,
            content_type=content_type,
        )
        return _decoder(info.model).decode(data)

    async def apply(
        self,
        kind: KindRef,
        document: Mapping[str, Any],
        *,
        field_manager: str,
        force: bool = False,
    ) -> Resource:
        """Server-side apply of `document` (a manifest as decoded JSON/YAML: only the
        fields it sets count) as this field manager's whole intent for the object; created
        if absent. `Conflict` names the fields other managers own with another value,
        unless `force` takes them over."""
        info = kind_info(kind)
        metadata = document.get("metadata") or {}
        name = str(metadata.get("name") or "")
        namespace = str(metadata.get("namespace") or "") or None
        params = {"fieldManager": field_manager}
        if force:
            params["force"] = "true"
        data = await self._write(
            "PATCH",
            self._path(info, self._namespace_for(info, namespace), name),
            body=_encoder.encode(dict(document)),
            content_type=APPLY_CONTENT_TYPE,
            params=params,
        )
        return _decoder(info.model).decode(data)

    @overload
    async def delete(
        self,
        kind: type[R],
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Preconditions | None = None,
        propagation_policy: str | None = None,
    ) -> R | None: ...
    @overload
    async def delete(
        self,
        kind: str | KindInfo,
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Preconditions | None = None,
        propagation_policy: str | None = None,
    ) -> Resource | None: ...
    async def delete(
        self,
        kind: KindRef,
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Preconditions | None = None,
        propagation_policy: str | None = None,
    ) -> Resource | None:
        """DELETE an object; `NotFound` if absent, `Conflict` if a precondition fails.
        `propagation_policy`: Background (the default), Foreground or Orphan.

        Returns the object when the server answers with it (for example still present with a
        `deletionTimestamp` because finalizers remain), None when it answers with a Status.
        """
        info = kind_info(kind)
        body: bytes | None = None
        if preconditions is not None or propagation_policy is not None:
            pre = (
                _Preconditions(
                    uid=preconditions.uid, resource_version=preconditions.resource_version
                )
                if preconditions is not None
                else None
            )
            body = _encoder.encode(
                _DeleteOptions(preconditions=pre, propagation_policy=propagation_policy)
            )
        data = await self._write(
            "DELETE",
            self._path(info, self._namespace_for(info, namespace), name),
            body=body,
        )
        return _decode_object_or_status(info, data)

    async def bind(
        self, namespace: str, instance: str, node: str, *, resource_version: str = ""
    ) -> Instance | None:
        """Bind an Instance to a Node (the scheduler's `binding` subresource).

        `resource_version` (the Instance's, as the scheduler saw it) makes the binding
        conditional: `Conflict` if the Instance changed since. Returns the bound Instance when
        the server answers with it.
        """
        info = kind_info(Instance)
        binding = Binding(
            target=NodeTarget(name=node),
            metadata=ObjectMeta(
                name=instance, namespace=namespace, resource_version=resource_version
            ),
        )
        data = await self._write(
            "POST",
            self._path(info, namespace, instance, "binding"),
            body=_encoder.encode(binding),
        )
        result = _decode_object_or_status(info, data)
        return result if isinstance(result, Instance) else None

    async def bind_plan(self, bindings: Sequence[PlanBinding]) -> builtins.list[PlanResult]:
        """Submit bindings as one plan: the server commits every one still valid (Instance
        unchanged, room left on its Node) in one store transaction and answers per binding,
        in order. At most 50 per plan."""
        plan = BindingPlan(bindings=list(bindings))
        data = await self._write("POST", f"{self._base}/bindingplans", body=_encoder.encode(plan))
        return _plan_decoder.decode(data).results

    async def evict(
        self,
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Preconditions | None = None,
    ) -> Status:
        """Evict an Instance (its `eviction` subresource): the server deletes it gracefully
        if its Deployment's disruption budget allows, else raises `TooManyRequests` at once
        (not retried: `is_budget_refusal` tells it from throttling; try again later).

        Returns the server's Success Status, whose message says what was checked (for
        example that the Instance has no owning Deployment, so no budget applied).
        """
        info = kind_info(Instance)
        ns = self._namespace_for(info, namespace)
        options = None
        if preconditions is not None:
            options = DeleteOptions(
                preconditions=Precondition(
                    uid=preconditions.uid, resource_version=preconditions.resource_version
                )
            )
        eviction = Eviction(
            metadata=ObjectMeta(name=name, namespace=ns or ""), delete_options=options
        )
        data = await self._write(
            "POST", self._path(info, ns, name, "eviction"), body=_encoder.encode(eviction)
        )
        return _status_decoder.decode(data)

    # ----------------------------------------------------------------- leases

    async def acquire_lease(
        self,
        namespace: str,
        name: str,
        holder: str,
        duration: int,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> Lease:
        """Create the Lease, which acquires it for `duration` seconds.

        Raises `AlreadyExists` while someone holds it. The returned Lease carries
        `status.fencingToken`, to use with `fenced()`.
        """
        lease = Lease(
            kind="Lease",
            metadata=ObjectMeta(name=name, namespace=namespace, labels=dict(labels or {})),
            spec=LeaseSpec(holder_identity=holder, lease_duration_seconds=duration),
        )
        return await self.create(lease)

    async def renew_lease(self, lease: Lease) -> Lease:
        """Keep the Lease alive (a store keep-alive, not a write).

        Raises `NotFound` (expired) or `Conflict` (another holder or token): either way the
        lease is lost and the holder must stop acting on it.
        """
        info = kind_info(Lease)
        renewal = LeaseRenewal(
            holder_identity=lease.spec.holder_identity, fencing_token=lease.status.fencing_token
        )
        data = await self._transport.request(
            "POST",
            self._path(
                info, lease.metadata.namespace or self.namespace, lease.metadata.name, "renew"
            ),
            body=_encoder.encode(renewal),
        )
        return _decoder(Lease).decode(data)

    async def release_lease(self, lease: Lease) -> bool:
        """Delete the Lease if it is still this incarnation (checked with its fencing token).

        Returns False when it had already expired or passed to a new holder.
        """
        namespace = lease.metadata.namespace or self.namespace
        info = kind_info(Lease)
        headers = {
            FENCING_HEADER: fencing_header_value(
                namespace, lease.metadata.name, lease.status.fencing_token
            )
        }
        try:
            await self._transport.request(
                "DELETE", self._path(info, namespace, lease.metadata.name), headers=headers
            )
        except (NotFound, FencingTokenRejected):
            return False
        return True

    # ----------------------------------------------------------------- registrations

    async def register_endpoint(
        self,
        service: str,
        address: str,
        port: int,
        *,
        ttl: int = 10,
        name: str | None = None,
        namespace: str | None = None,
        port_name: str = "",
        ready: bool = True,
        holder: str | None = None,
        clock: Clock | None = None,
    ) -> Registration:
        """Register `address:port` as an endpoint of `service` for as long as this process
        keeps it alive: a Lease `SERVICE.NAME` (NAME generated when None) with TTL `ttl`,
        renewed every ttl/3 by the returned `Registration` until its `close()`.

        Raises `Invalid` for a bad address, port or ttl, or a Service that does not exist
        (each naming the field), and `AlreadyExists` while the name is registered.
        """
        lease = registration_lease(
            service,
            address,
            port,
            namespace=namespace or self.namespace,
            ttl=ttl,
            holder=holder or f"{socket.gethostname()}/{os.getpid()}",
            name=name,
            port_name=port_name,
            ready=ready,
        )
        clock = clock or SystemClock()
        sent = clock.now()
        created = await self.create(lease)
        return Registration(self, created, clock=clock, alive_since=sent)

    async def deregister_endpoint(
        self, service: str, name: str, *, namespace: str | None = None
    ) -> None:
        """Remove registration `name` of `service` now, whoever holds it (`NotFound` when
        there is none)."""
        namespace = namespace or self.namespace
        lease_name = registration_lease_name(service, name)
        lease = await self.get(Lease, lease_name, namespace=namespace)
        registration = lease.spec.registration
        if registration is None or registration.service != service:
            raise NotFound(
                404,
                "NotFound",
                f'no registration "{name}" of service "{service}" in namespace '
                f'"{namespace}" (lease "{lease_name}" is not one)',
            )
        await self.delete(
            Lease,
            lease_name,
            namespace=namespace,
            preconditions=Preconditions(uid=lease.metadata.uid),
        )

    @asynccontextmanager
    async def fenced(
        self, namespace: str, lease_name: str, token: int
    ) -> AsyncIterator[KeelClient]:
        """A view of this client whose writes all carry `Keel-Fencing-Token` for the lease.

        Every create/replace/patch/delete/status/binding through the view is applied only if
        the lease still has fencing token `token`; otherwise it fails with
        `FencingTokenRejected` and nothing is written. Reads are unchanged. The view shares
        this client's connections and is unusable for writes after the block.
        """
        view = self._fenced_view(namespace, lease_name, token)
        try:
            yield view
        finally:
            view._view_open = False

    def as_manager(self, name: str) -> KeelClient:
        """A view of this client (fenced or not) whose writes name `name` as their field
        manager. It shares the connections; closing it leaves them open."""
        view = KeelClient.__new__(KeelClient)
        view.__dict__.update(self.__dict__)
        view.field_manager = name
        view._is_view = True
        return view

    def guarded(self, on_rejected: Callable[[FencingTokenRejected], None]) -> KeelClient:
        """A view of this client (fenced or not) that reports the first write rejected with
        `FencingTokenRejected` to `on_rejected`, and then fails every later write at once:
        a fenced-out worker must not keep trying while its work is being torn down."""
        view = KeelClient.__new__(KeelClient)
        view.__dict__.update(self.__dict__)
        view._guard = _FenceGuard(on_rejected)
        return view

    @property
    def fencing_rejected(self) -> FencingTokenRejected | None:
        """The rejection that closed this guarded view to writes (see `guarded`), if any."""
        return self._guard.rejected if self._guard is not None else None

    def _fenced_view(self, namespace: str, lease_name: str, token: int) -> KeelClient:
        view = KeelClient.__new__(KeelClient)
        view.__dict__.update(self.__dict__)
        view._write_headers = {
            **self._write_headers,
            FENCING_HEADER: fencing_header_value(namespace, lease_name, token),
        }
        view._view_open = True
        return view

    # ----------------------------------------------------------------- telemetry

    def _telemetry_path(self, kind: str, namespace: str | None, name: str | None) -> str:
        parts = [self._transport.server, TELEMETRY_PREFIX]
        if namespace:
            parts += ["/namespaces/", quote(namespace, safe="")]
        parts += ["/", quote(kind, safe="")]
        if name:
            parts += ["/", quote(name, safe="")]
        return "".join(parts)

    async def put_telemetry(
        self,
        kind: str,
        body: Mapping[str, Any],
        *,
        name: str | None = None,
        namespace: str | None = None,
        ttl: float | None = None,
    ) -> None:
        """Report ephemeral telemetry: `nodeheartbeats` (cluster-scoped) or `instanceusages`
        (namespaced). Held in the API server's memory for `ttl` seconds (default: the
        server's per kind), never stored; the name comes from the body."""
        params = {"ttlSeconds": repr(float(ttl))} if ttl is not None else None
        await self._transport.request(
            "PUT",
            self._telemetry_path(kind, namespace, name),
            params=params,
            body=_encoder.encode(body),
        )

    async def get_telemetry(
        self, kind: str, name: str | None = None, *, namespace: str | None = None
    ) -> Any:
        """Read telemetry: one record (`NotFound` once expired), or every live record of the
        kind (in a namespace, or everywhere when `namespace` is None) when `name` is None."""
        data = await self._transport.request("GET", self._telemetry_path(kind, namespace, name))
        decoded = _any_decoder.decode(data)
        return _items(decoded) if name is None else decoded

    async def record_event(self, event: Mapping[str, Any], *, namespace: str | None = None) -> None:
        """Append an event (`involvedObject`, `reason`, `message`, `type`, `time`, ...).

        Kept in the API server's memory (the last 100 per object, for an hour). The namespace
        defaults to `involvedObject.namespace`, then the client's namespace.
        """
        involved = event.get("involvedObject")
        ns = namespace or (involved.get("namespace") if isinstance(involved, Mapping) else None)
        await self._transport.request(
            "POST",
            self._telemetry_path("events", ns or self.namespace, None),
            body=_encoder.encode(event),
        )

    async def events(
        self, namespace: str | None = None, name: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        """Recent events of the object `name` in a namespace (or of the whole namespace),
        oldest first."""
        data = await self._transport.request(
            "GET", self._telemetry_path("events", namespace or self.namespace, name)
        )
        return [item for item in _items(_any_decoder.decode(data)) if isinstance(item, dict)]

    # ----------------------------------------------------------------- misc

    async def ready(self) -> bool:
        """Whether `/readyz` answers 200 (no retries; never raises for a down server)."""
        requests = self._transport
        try:
            response = await requests.transport.send(
                HttpRequest("GET", requests.server + "/readyz", headers=requests.headers)
            )
        except TransportError:
            return False
        return response.status == 200

    # ----------------------------------------------------------------- watch

    @overload
    def watch(
        self,
        kind: type[R],
        *,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        bookmarks: bool = True,
        emit_bookmarks: bool = False,
        idle_timeout: float | None = None,
    ) -> Watch[R]: ...
    @overload
    def watch(
        self,
        kind: str | KindInfo,
        *,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        bookmarks: bool = True,
        emit_bookmarks: bool = False,
        idle_timeout: float | None = None,
    ) -> Watch[Resource]: ...
    def watch(
        self,
        kind: KindRef,
        *,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        bookmarks: bool = True,
        emit_bookmarks: bool = False,
        idle_timeout: float | None = None,
    ) -> Watch[Any]:
        """Every change after `resource_version`, as an endless async iterator of WatchEvent.

        Without `resource_version` the watch starts "now": when entered with `async with`
        (or `await watch.start()`), else at its first iteration. `resource_version="0"`
        starts with an ADDED event for every existing object (Kubernetes semantics).
        A dropped connection is resumed from the last resourceVersion seen (bookmarks
        included), after a jittered exponential backoff when reconnecting fails;
        `410 Expired` makes it relist, emit a RELIST event and ADDED events for the current
        objects (see `WatchEvent`), and go on watching from the list's resourceVersion.
        `idle_timeout` (seconds without a line; use with bookmarks) detects a silent
        connection. `namespace=None` watches a namespaced kind in all namespaces.
        Close it with `await watch.aclose()` (or `async with`).
        """
        info = kind_info(kind)
        ns = namespace if info.namespaced else self._namespace_for(info, namespace)
        options = _WatchOptions(
            info=info,
            namespace=ns,
            label_selector=selector_string(label_selector),
            field_selector=field_selector or None,
            bookmarks=bookmarks,
            emit_bookmarks=emit_bookmarks,
            idle_timeout=idle_timeout,
        )
        return Watch(self, options, resource_version or None)


@dataclass
class _FenceGuard:
    on_rejected: Callable[[FencingTokenRejected], None]
    rejected: FencingTokenRejected | None = None


@dataclass(frozen=True)
class _WatchOptions:
    info: KindInfo
    namespace: str | None
    label_selector: str | None
    field_selector: str | None
    bookmarks: bool
    emit_bookmarks: bool
    idle_timeout: float | None

    def params(self, resource_version: str) -> dict[str, str]:
        params = {"watch": "true", "resourceVersion": resource_version}
        if self.bookmarks:
            params["allowWatchBookmarks"] = "true"
        if self.label_selector:
            params["labelSelector"] = self.label_selector
        if self.field_selector:
            params["fieldSelector"] = self.field_selector
        return params


class Watch(Generic[R]):
    """An endless, self-resuming watch (async iterator of `WatchEvent`).

    `resource_version` is the last resourceVersion seen: a new watch started from it later
    continues exactly where this one stopped.
    """

    def __init__(
        self, client: KeelClient, options: _WatchOptions, resource_version: str | None
    ) -> None:
        self._client = client
        self._options = options
        self._start = resource_version
        self._cursor: WatchCursor | None = None
        self._reconnects = 0
        self._events = self._run()

    @property
    def resource_version(self) -> str:
        return self._cursor.resource_version if self._cursor else (self._start or "")

    @property
    def reconnects(self) -> int:
        """How many times the watch reconnected or relisted (for tests and metrics)."""
        return self._reconnects

    def __aiter__(self) -> Watch[R]:
        return self

    async def __anext__(self) -> WatchEvent[R]:
        return await self._events.__anext__()

    async def aclose(self) -> None:
        await self._events.aclose()

    async def __aenter__(self) -> Watch[R]:
        await self.start()
        return self

    async def start(self) -> str:
        """Fix the start of a watch created without `resource_version` at "now" (done by
        `async with` and by the first iteration); returns the start resourceVersion.

        After `start()`, every later change is delivered, even one made before the first
        event is awaited.
        """
        if self._start is None:
            # "Now" must be a definite revision, or a reconnect before the first event could
            # miss changes: a one-item list gives the current one.
            page = await self._client._page(
                self._options.info, namespace=self._options.namespace, limit=1
            )
            self._start = page.resource_version
        return self._start

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _run(self) -> AsyncGenerator[WatchEvent[R], None]:
        client, options = self._client, self._options
        transport = client._transport
        info = options.info
        model_decoder = cast("msgspec.json.Decoder[R]", _decoder(info.model))
        cursor = self._cursor = WatchCursor(await self.start())
        url = client._path(info, options.namespace)
        backoff: Backoff = transport.retry.backoff
        while True:
            delay = cursor.delay(backoff, transport.rng)
            if delay > 0:
                await transport.sleep(delay)
            if cursor.relist_needed:
                self._reconnects += 1
                try:
                    listed = await client.list(
                        info,
                        namespace=options.namespace,
                        label_selector=options.label_selector,
                        field_selector=options.field_selector,
                    )
                except (ApiUnavailable, ServerError, TooManyRequests):
                    cursor.ended(expired=True)  # still due; back off and list again
                    continue
                cursor.relisted(listed.resource_version)
                items = cast("builtins.list[R]", listed.items)
                yield WatchEvent("RELIST", None, listed.resource_version, tuple(items))
                for item in items:
                    yield WatchEvent("ADDED", item, item.metadata.resource_version)
                continue
            cursor.connecting()
            expired = False
            retry_after = 0.0
            try:
                async with transport.stream(
                    url,
                    params=options.params(cursor.resource_version),
                    idle_timeout=options.idle_timeout,
                ) as stream:
                    async for line in iter_lines(stream):
                        if line.isspace():
                            continue
                        event = _decode_watch_line(model_decoder, line)
                        if isinstance(event, ApiError):
                            if isinstance(event, Expired):
                                expired = True
                                break
                            if isinstance(event, TooManyRequests):
                                retry_after = event.retry_after
                                break
                            if isinstance(event, ServerError):
                                break
                            raise event
                        cursor.observed(event.resource_version)
                        if event.type == "BOOKMARK" and not options.emit_bookmarks:
                            continue
                        yield event
            except Expired:
                expired = True
            except TooManyRequests as exc:
                retry_after = exc.retry_after
            except (TimeoutError, ServerError, TransportError, ApiUnavailable):
                pass  # resume below
            cursor.ended(expired=expired)
            self._reconnects += 1
            if retry_after > 0:
                await transport.sleep(retry_after)


def _decode_watch_line(
    model_decoder: msgspec.json.Decoder[R], line: bytes
) -> WatchEvent[R] | ApiError:
    raw = _raw_event_decoder.decode(line)
    kind = raw.type
    if kind in ("ADDED", "MODIFIED", "DELETED"):
        obj = model_decoder.decode(raw.object)
        return WatchEvent(kind, obj, obj.metadata.resource_version)  # type: ignore[arg-type]
    if kind == "BOOKMARK":
        bookmark = _bookmark_decoder.decode(raw.object)
        return WatchEvent("BOOKMARK", None, bookmark.metadata.resource_version)
    if kind == "ERROR":
        return status_error(_status_decoder.decode(raw.object))
    raise msgspec.ValidationError(f"watch: unknown event type {kind!r}")


def _items(decoded: Any) -> builtins.list[Any]:
    """The records of a telemetry list answer (`{"items": [...]}` or a bare array)."""
    if isinstance(decoded, dict):
        items = decoded.get("items")
        return builtins.list(items) if isinstance(items, builtins.list) else []
    return builtins.list(decoded) if isinstance(decoded, builtins.list) else []


def _decode_object_or_status(info: KindInfo, data: bytes) -> Resource | None:
    if not data:
        return None
    probe = _probe_decoder.decode(data)
    if probe.kind == "Status" or (
        not probe.kind and (isinstance(probe.status, str) or isinstance(probe.code, int))
    ):
        return None
    return _decoder(info.model).decode(data)
