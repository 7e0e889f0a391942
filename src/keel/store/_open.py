"""Turns a store URL into an open backend."""

from __future__ import annotations

import os
from urllib.parse import parse_qs, urlsplit

from keel.clock import Clock
from keel.store._protocol import Store


def sqlite_path(url: str, rest: str) -> str:
    """`sqlite:///rel/path` is relative and `sqlite:////abs/path` absolute (the SQLAlchemy
    convention), except that `sqlite:///tmp/x.db` means `/tmp/x.db` when `tmp/` does not
    exist here but `/tmp/` does, since that is what such a URL's writer meant."""
    if not rest.startswith("/") or rest in ("/", "//"):
        raise ValueError(f"store url: expected sqlite:///PATH, got {url!r}")
    relative = rest[1:]
    if not relative.startswith("/"):
        parent = os.path.dirname(relative)
        if parent and not os.path.isdir(parent) and os.path.isdir("/" + parent):
            return "/" + relative
    return relative


async def open_store(url: str, *, clock: Clock | None = None) -> Store:
    """Open `sqlite:///PATH[?options]`, `etcd://HOST:PORT[,HOST:PORT...][?options]` or
    `memory://[?options]` (a new, empty in-memory store on every call).

    `clock` (default: the system clock) runs the lease deadlines of the sqlite and memory
    backends (and the memory backend's progress notifications); etcd keeps its own time."""
    scheme, _, rest = url.partition("://")
    options = {k: v[-1] for k, v in parse_qs(urlsplit(url).query).items()}
    if scheme == "memory" and url.startswith("memory://"):
        if rest.split("?", 1)[0]:
            raise ValueError(f"store url: memory:// takes no host or path, got {url!r}")
        from keel.store._memory import MemoryStore

        return MemoryStore(options, clock=clock)
    if not rest:
        raise ValueError(f"store url: expected sqlite:///PATH or etcd://HOST:PORT, got {url!r}")
    if scheme == "sqlite":
        from keel.store._sqlite import SqliteStore

        path = sqlite_path(url, rest.split("?", 1)[0])
        return await SqliteStore.open(path, options, clock=clock)
    if scheme == "etcd":
        from keel.store._etcd import EtcdStore

        hosts = rest.split("?", 1)[0].strip("/")
        endpoints = [h for h in hosts.split(",") if h]
        if not endpoints:
            raise ValueError(f"store url: etcd needs HOST:PORT endpoints, got {url!r}")
        for endpoint in endpoints:
            host, sep, port = endpoint.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"store url: etcd endpoint {endpoint!r} is not HOST:PORT")
        return await EtcdStore.open(endpoints, options)
    raise ValueError(f"store url: unknown scheme {scheme!r}; expected sqlite, etcd or memory")
