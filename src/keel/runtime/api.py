"""`ApiClient`: the part of `keel.client.KeelClient` that the runtime and controllers use.

It is the seam between controllers and the API: `KeelClient` satisfies it structurally (the
signatures are copied from it), and `keel.sim`'s in-memory double implements it for
deterministic simulation.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol, TypeVar, overload

from keel.api.registry import KindInfo
from keel.api.resources import Instance, Lease, Resource
from keel.client import ListResult, Preconditions, WatchEvent

__all__ = ["ApiClient", "KindRef", "PatchType", "Selector", "WatchStream"]

R = TypeVar("R", bound=Resource)

# The same aliases as keel.client._client (structural, so equal by definition).
KindRef = str | type[Resource] | KindInfo
PatchType = Literal["merge", "json"]
Selector = str | Mapping[str, str]


class WatchStream(Protocol[R]):
    """An endless, self-resuming watch (`keel.client.Watch` is one): iterate it for events,
    `resource_version` is the last one seen, `aclose()` ends it."""

    @property
    def resource_version(self) -> str: ...

    def __aiter__(self) -> AsyncIterator[WatchEvent[R]]: ...

    async def __anext__(self) -> WatchEvent[R]: ...

    async def aclose(self) -> None: ...


class ApiClient(Protocol):
    """Reads, OCC writes, leases, fenced views and watches of the keel.dev/v1 API."""

    @overload
    async def get(self, kind: type[R], name: str, *, namespace: str | None = None) -> R: ...
    @overload
    async def get(
        self, kind: str | KindInfo, name: str, *, namespace: str | None = None
    ) -> Resource: ...

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

    async def create(self, obj: R) -> R: ...

    async def replace(self, obj: R) -> R: ...

    async def update_status(self, obj: R) -> R: ...

    async def bind(
        self, namespace: str, instance: str, node: str, *, resource_version: str = ""
    ) -> Instance | None: ...

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

    @overload
    async def delete(
        self,
        kind: type[R],
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Preconditions | None = None,
    ) -> R | None: ...
    @overload
    async def delete(
        self,
        kind: str | KindInfo,
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Preconditions | None = None,
    ) -> Resource | None: ...

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
    ) -> WatchStream[R]: ...
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
    ) -> WatchStream[Resource]: ...

    async def acquire_lease(
        self,
        namespace: str,
        name: str,
        holder: str,
        duration: int,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> Lease: ...

    async def renew_lease(self, lease: Lease) -> Lease: ...

    async def release_lease(self, lease: Lease) -> bool: ...

    def fenced(
        self, namespace: str, lease_name: str, token: int
    ) -> AbstractAsyncContextManager[ApiClient]: ...
