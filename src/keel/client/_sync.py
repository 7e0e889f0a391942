"""`SyncClient`: the `KeelClient` calls for plain threaded code.

A private event loop runs in a background thread; each call is handed to it and waited for.
Watches become ordinary iterators. Nothing here decides anything: it only forwards.
"""

from __future__ import annotations

import asyncio
import builtins
import os
import threading
from collections.abc import Coroutine, Iterator, Mapping
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Generic, TypeVar, overload

from keel.api.registry import KindInfo
from keel.api.resources import Instance, Lease, Resource
from keel.client._client import (
    KeelClient,
    ListResult,
    PatchType,
    Preconditions,
    Selector,
    Watch,
)
from keel.client._transport import RetryPolicy, SSLArg
from keel.client._watch import WatchEvent

R = TypeVar("R", bound=Resource)
T = TypeVar("T")


class _LoopThread:
    """An event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="keel-client-loop", daemon=True
        )
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("SyncClient called from its own event loop thread")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class SyncWatch(Generic[R]):
    """A `Watch` as a blocking iterator; `close()` (or `with`) ends it."""

    def __init__(self, loop: _LoopThread, watch: Watch[R]) -> None:
        self._loop = loop
        self._watch = watch

    @property
    def resource_version(self) -> str:
        return self._watch.resource_version

    def __iter__(self) -> Iterator[WatchEvent[R]]:
        return self

    def __next__(self) -> WatchEvent[R]:
        try:
            return self._loop.run(self._watch.__anext__())
        except StopAsyncIteration:
            raise StopIteration from None

    def close(self) -> None:
        self._loop.run(self._watch.aclose())

    def __enter__(self) -> SyncWatch[R]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncClient:
    """Blocking twin of `KeelClient` (same method names and arguments).

    Use as `with SyncClient(server, token=...) as client:` or call `close()`.
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
    ) -> None:
        self._loop = _LoopThread()
        self._client = KeelClient(
            server, token=token, ssl=ssl, namespace=namespace, timeout=timeout, retry=retry
        )
        self._owner = True

    @classmethod
    def from_kubeconfig(
        cls, path: str | os.PathLike[str] | None = None, *, context: str | None = None
    ) -> SyncClient:
        """As `KeelClient.from_kubeconfig`."""
        from keel.client._kubeconfig import load_kubeconfig

        config = load_kubeconfig(path, context=context)
        return cls(
            config.server,
            token=config.token,
            ssl=config.ssl_context(),
            namespace=config.namespace,
        )

    @property
    def server(self) -> str:
        return self._client.server

    @property
    def namespace(self) -> str:
        return self._client.namespace

    def close(self) -> None:
        if self._owner:
            if not self._loop.loop.is_closed():
                self._loop.run(self._client.close())
                self._loop.stop()
        else:
            self._client._view_open = False

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ----------------------------------------------------------------- reads

    @overload
    def get(self, kind: type[R], name: str, *, namespace: str | None = None) -> R: ...
    @overload
    def get(self, kind: str | KindInfo, name: str, *, namespace: str | None = None) -> Resource: ...
    def get(
        self, kind: type[Resource] | str | KindInfo, name: str, *, namespace: str | None = None
    ) -> Resource:
        return self._loop.run(self._client.get(kind, name, namespace=namespace))

    @overload
    def list(
        self,
        kind: type[R],
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
    ) -> ListResult[R]: ...
    @overload
    def list(
        self,
        kind: str | KindInfo,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
    ) -> ListResult[Resource]: ...
    def list(
        self,
        kind: type[Resource] | str | KindInfo,
        *,
        namespace: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        limit: int | None = None,
    ) -> ListResult[Any]:
        return self._loop.run(
            self._client.list(
                kind,
                namespace=namespace,
                label_selector=label_selector,
                field_selector=field_selector,
                limit=limit,
            )
        )

    # ----------------------------------------------------------------- writes

    def create(self, obj: R) -> R:
        return self._loop.run(self._client.create(obj))

    def replace(self, obj: R) -> R:
        return self._loop.run(self._client.replace(obj))

    def update_status(self, obj: R) -> R:
        return self._loop.run(self._client.update_status(obj))

    @overload
    def patch(
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
    def patch(
        self,
        kind: str | KindInfo,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        type: PatchType = "merge",
        subresource: str | None = None,
    ) -> Resource: ...
    def patch(
        self,
        kind: type[Resource] | str | KindInfo,
        name: str,
        patch: Any,
        *,
        namespace: str | None = None,
        type: PatchType = "merge",
        subresource: str | None = None,
    ) -> Resource:
        return self._loop.run(
            self._client.patch(
                kind,
                name,
                patch,
                namespace=namespace,
                type=type,
                subresource=subresource,
            )
        )

    @overload
    def delete(
        self,
        kind: type[R],
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Preconditions | None = None,
    ) -> R | None: ...
    @overload
    def delete(
        self,
        kind: str | KindInfo,
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Preconditions | None = None,
    ) -> Resource | None: ...
    def delete(
        self,
        kind: type[Resource] | str | KindInfo,
        name: str,
        *,
        namespace: str | None = None,
        preconditions: Preconditions | None = None,
    ) -> Resource | None:
        return self._loop.run(
            self._client.delete(
                kind,
                name,
                namespace=namespace,
                preconditions=preconditions,
            )
        )

    def bind(
        self, namespace: str, instance: str, node: str, *, resource_version: str = ""
    ) -> Instance | None:
        return self._loop.run(
            self._client.bind(namespace, instance, node, resource_version=resource_version)
        )

    # ----------------------------------------------------------------- leases

    def acquire_lease(
        self,
        namespace: str,
        name: str,
        holder: str,
        duration: int,
        *,
        labels: Mapping[str, str] | None = None,
    ) -> Lease:
        return self._loop.run(
            self._client.acquire_lease(namespace, name, holder, duration, labels=labels)
        )

    def renew_lease(self, lease: Lease) -> Lease:
        return self._loop.run(self._client.renew_lease(lease))

    def release_lease(self, lease: Lease) -> bool:
        return self._loop.run(self._client.release_lease(lease))

    @contextmanager
    def fenced(self, namespace: str, lease_name: str, token: int) -> Iterator[SyncClient]:
        """As `KeelClient.fenced`: a view whose writes carry the fencing token."""
        view = SyncClient.__new__(SyncClient)
        view._loop = self._loop
        view._client = self._client._fenced_view(namespace, lease_name, token)
        view._owner = False
        try:
            yield view
        finally:
            view._client._view_open = False

    # ----------------------------------------------------------------- telemetry

    def put_telemetry(
        self,
        kind: str,
        body: Mapping[str, Any],
        *,
        name: str | None = None,
        namespace: str | None = None,
        ttl: float | None = None,
    ) -> None:
        self._loop.run(
            self._client.put_telemetry(kind, body, name=name, namespace=namespace, ttl=ttl)
        )

    def get_telemetry(
        self, kind: str, name: str | None = None, *, namespace: str | None = None
    ) -> Any:
        return self._loop.run(self._client.get_telemetry(kind, name, namespace=namespace))

    def record_event(self, event: Mapping[str, Any], *, namespace: str | None = None) -> None:
        self._loop.run(self._client.record_event(event, namespace=namespace))

    def events(
        self, namespace: str | None = None, name: str | None = None
    ) -> builtins.list[dict[str, Any]]:
        return self._loop.run(self._client.events(namespace, name))

    def ready(self) -> bool:
        return self._loop.run(self._client.ready())

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
    ) -> SyncWatch[R]: ...
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
    ) -> SyncWatch[Resource]: ...
    def watch(
        self,
        kind: type[Resource] | str | KindInfo,
        *,
        namespace: str | None = None,
        resource_version: str | None = None,
        label_selector: Selector | None = None,
        field_selector: str | None = None,
        bookmarks: bool = True,
        emit_bookmarks: bool = False,
        idle_timeout: float | None = None,
    ) -> SyncWatch[Any]:
        """As `KeelClient.watch`, as a plain (blocking) iterator."""
        watch = self._client.watch(
            kind,
            namespace=namespace,
            resource_version=resource_version,
            label_selector=label_selector,
            field_selector=field_selector,
            bookmarks=bookmarks,
            emit_bookmarks=emit_bookmarks,
            idle_timeout=idle_timeout,
        )
        return SyncWatch(self._loop, watch)
