"""`SyncClient`: every `KeelClient` call for plain threaded code, without redeclaring them.

A private event loop runs in a background thread and owns one `KeelClient` (`.aio`). Any of
its coroutine methods called on the `SyncClient` runs there and is waited for; `watch` and
`fenced` become a blocking iterator and a plain context manager. For full static types, hand
the coroutine itself to `run`: `sync.run(sync.aio.get(Node, "n1"))`.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any, Generic, TypeVar

from keel.api.resources import Resource
from keel.client._client import KeelClient, Watch
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
    """Blocking twin of `KeelClient`: the same methods, arguments and answers.

    `SyncClient(server, **options)` takes `KeelClient`'s arguments. Use as
    `with SyncClient(server, token=...) as client:` or call `close()`.
    """

    def __init__(self, server: str, **options: Any) -> None:
        self._loop = _LoopThread()
        self.aio = KeelClient(server, **options)
        self._owner = True

    @classmethod
    def from_kubeconfig(
        cls, path: str | os.PathLike[str] | None = None, *, context: str | None = None
    ) -> SyncClient:
        """As `KeelClient.from_kubeconfig`."""
        sync = cls.__new__(cls)
        sync._loop = _LoopThread()
        sync.aio = KeelClient.from_kubeconfig(path, context=context)
        sync._owner = True
        return sync

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one coroutine of `self.aio` (or any) on the client's loop and return its
        result: the statically typed way to make any call."""
        return self._loop.run(coro)

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.aio, name)
        if not inspect.iscoroutinefunction(method):
            return method  # plain attributes and properties: server, namespace, ...

        @functools.wraps(method)
        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self._loop.run(method(*args, **kwargs))

        return blocking

    def watch(self, kind: Any, **options: Any) -> SyncWatch[Any]:
        """As `KeelClient.watch`, as a plain (blocking) iterator."""
        return SyncWatch(self._loop, self.aio.watch(kind, **options))

    @contextmanager
    def fenced(self, namespace: str, lease_name: str, token: int) -> Iterator[SyncClient]:
        """As `KeelClient.fenced`: a view whose writes carry the fencing token."""
        view = SyncClient.__new__(SyncClient)
        view._loop = self._loop
        view.aio = self.aio._fenced_view(namespace, lease_name, token)
        view._owner = False
        try:
            yield view
        finally:
            view.aio._view_open = False

    def close(self) -> None:
        if self._owner and not self._loop.loop.is_closed():
            self._loop.run(self.aio.close())
            self._loop.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
