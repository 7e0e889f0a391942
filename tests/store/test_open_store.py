"""Store URLs: what opens, and the clear errors for what does not."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keel.store import StoreClosed, open_store
from keel.store._open import sqlite_path


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("postgres://x", "unknown scheme 'postgres'"),
        ("sqlite:", "expected sqlite:///PATH or etcd://HOST:PORT"),
        ("sqlite://", "expected sqlite:///PATH or etcd://HOST:PORT"),
        ("sqlite:///", "expected sqlite:///PATH"),
        ("etcd://", "expected sqlite:///PATH or etcd://HOST:PORT"),
        ("etcd://localhost", "'localhost' is not HOST:PORT"),
        ("etcd://h:1,h:x", "'h:x' is not HOST:PORT"),
        ("memory://shared", "memory:// takes no host or path"),
        ("memory://?progress_interval=0", "progress_interval must be seconds > 0"),
        ("memory://?durable=1", "unknown memory option 'durable'"),
    ],
)
async def test_bad_urls_are_refused_with_a_message_naming_the_problem(
    url: str, message: str
) -> None:
    with pytest.raises(ValueError, match="store url") as caught:
        await open_store(url)
    assert message in str(caught.value)


def test_sqlite_paths_follow_the_three_and_four_slash_convention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("u", "/.keel/keel.db") == ".keel/keel.db"
    assert sqlite_path("u", "//var/lib/keel.db") == "/var/lib/keel.db"
    # no ./tmp here, but /tmp exists: the writer meant the absolute path
    assert sqlite_path("u", "/tmp/keel.db") == "/tmp/keel.db"
    os.mkdir("tmp")
    assert sqlite_path("u", "/tmp/keel.db") == "tmp/keel.db"


async def test_a_store_is_an_async_context_manager_and_refuses_use_after_close(
    tmp_path: Path,
) -> None:
    async with await open_store(f"sqlite:///{tmp_path / 'k.db'}") as store:
        await store.put(b"k", b"v")
    with pytest.raises(StoreClosed):
        await store.get(b"k")
    async with await open_store(f"sqlite:///{tmp_path / 'k.db'}") as again:
        kv = await again.get(b"k")
        assert kv is not None
        assert kv.value == b"v"


async def test_every_memory_url_opens_a_new_empty_store() -> None:
    async with await open_store("memory://") as first:
        await first.put(b"k", b"v")
        async with await open_store("memory://?watch_buffer=5") as second:
            assert await second.get(b"k") is None
            assert (await second.status()).revision == 1
        kv = await first.get(b"k")
        assert kv is not None
        assert kv.value == b"v"
    with pytest.raises(StoreClosed):
        await first.get(b"k")
