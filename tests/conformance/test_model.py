"""Hypothesis stateful tests: each backend behaves like a plain in-memory model of etcd's KV.

The model keeps every revision's snapshot, so reads at old revisions are checked too.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from keel.store import Compare, KeyValue, Op, RangeResult, Store, open_store

T = TypeVar("T")
KEYS = st.sampled_from([b"a", b"b", b"c", b"d/e", b"d/f"])
VALUES = st.binary(max_size=8)


@dataclass
class Model:
    revision: int
    kvs: dict[bytes, KeyValue]
    history: dict[int, dict[bytes, KeyValue]]

    def commit(self, writes: list[tuple[bytes, bytes | None]]) -> None:
        """Apply puts (value) and deletes (None) as one revision, if anything changes."""
        changed = False
        next_rev = self.revision + 1
        kvs = dict(self.kvs)
        for key, value in writes:
            if value is None:
                if key in kvs:
                    del kvs[key]
                    changed = True
                continue
            old = kvs.get(key)
            kvs[key] = KeyValue(
                key=key,
                value=value,
                create_revision=old.create_revision if old else next_rev,
                mod_revision=next_rev,
                version=old.version + 1 if old else 1,
            )
            changed = True
        if changed:
            self.revision = next_rev
            self.kvs = kvs
            self.history[next_rev] = kvs


def strip(kv: KeyValue, prefix: bytes) -> KeyValue:
    return replace(kv, key=kv.key[len(prefix) :])


class StoreMachine(RuleBasedStateMachine):
    url: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.prefix = f"/model/{uuid.uuid4().hex[:10]}/".encode()
        self.store: Store = self.run(open_store(self.url))
        start = self.run(self.store.status()).revision
        self.model = Model(revision=start, kvs={}, history={start: {}})
        self.offset = 0  # revisions taken by others between our writes (none expected)

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        self.run(self.store.close())
        self.loop.close()

    def k(self, key: bytes) -> bytes:
        return self.prefix + key

    @rule(key=KEYS, value=VALUES)
    def put(self, key: bytes, value: bytes) -> None:
        revision = self.run(self.store.put(self.k(key), value))
        self.model.commit([(key, value)])
        assert revision == self.model.revision

    @rule(key=KEYS)
    def delete(self, key: bytes) -> None:
        revision = self.run(self.store.delete(self.k(key)))
        self.model.commit([(key, None)])
        assert revision == self.model.revision

    @rule(key=KEYS, value=VALUES, stale=st.booleans())
    def cas(self, key: bytes, value: bytes, stale: bool) -> None:
        current = self.model.kvs.get(key)
        expected = (current.mod_revision if current else 0) - (1 if stale else 0)
        result = self.run(
            self.store.txn(
                [Compare.mod_revision(self.k(key), "==", expected)],
                [Op.put(self.k(key), value)],
                [Op.get(self.k(key))],
            )
        )
        should = expected == (current.mod_revision if current else 0)
        assert result.succeeded is should
        if should:
            self.model.commit([(key, value)])
        else:
            (response,) = result.responses
            assert isinstance(response, RangeResult)
            got = [strip(kv, self.prefix) for kv in response.kvs]
            assert got == ([current] if current else [])
        assert result.revision == self.model.revision

    @rule(
        puts=st.lists(st.tuples(KEYS, VALUES), max_size=3, unique_by=lambda t: t[0]),
        delete_key=KEYS,
    )
    def multi_op_txn(self, puts: list[tuple[bytes, bytes]], delete_key: bytes) -> None:
        writes: list[tuple[bytes, bytes | None]] = list(puts)
        ops = [Op.put(self.k(k), v) for k, v in puts]
        if delete_key not in {k for k, _ in puts}:
            ops.append(Op.delete(self.k(delete_key)))
            writes.append((delete_key, None))
        result = self.run(self.store.txn([], ops, []))
        self.model.commit(writes)
        assert result.succeeded
        assert result.revision == self.model.revision

    @rule(key=KEYS)
    def get(self, key: bytes) -> None:
        kv = self.run(self.store.get(self.k(key)))
        assert (strip(kv, self.prefix) if kv else None) == self.model.kvs.get(key)

    @precondition(lambda self: len(self.model.history) > 1)
    @rule(data=st.data())
    def range_at_old_revision(self, data: st.DataObject) -> None:
        revision = data.draw(st.sampled_from(sorted(self.model.history)))
        result = self.run(self.store.range(self.prefix, revision=revision))
        expected = [kv for _, kv in sorted(self.model.history[revision].items())]
        assert [strip(kv, self.prefix) for kv in result.kvs] == expected

    @rule(sub=st.sampled_from([b"", b"d/", b"a"]), limit=st.none() | st.integers(1, 3))
    def range_prefix(self, sub: bytes, limit: int | None) -> None:
        result = self.run(self.store.range(self.k(sub), limit=limit))
        expected = [kv for key, kv in sorted(self.model.kvs.items()) if key.startswith(sub)]
        shown = expected if limit is None else expected[:limit]
        assert [strip(kv, self.prefix) for kv in result.kvs] == shown
        assert result.more is (len(shown) < len(expected))

    @invariant()
    def revision_matches(self) -> None:
        assert self.run(self.store.status()).revision == self.model.revision


MODEL_SETTINGS = settings(
    max_examples=15,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.mark.parametrize("backend", ["memory", "sqlite", "etcd1", "etcd3"])
def test_backend_behaves_like_the_model(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "memory":

        class Machine(StoreMachine):
            url = "memory://"  # a new, empty store for every run

    elif backend == "sqlite":
        counter = iter(range(10**6))

        class Machine(StoreMachine):  # type: ignore[no-redef]
            def __init__(self) -> None:
                type(self).url = f"sqlite:///{tmp_path / f'model-{next(counter)}.db'}"
                super().__init__()

    else:
        cluster = request.getfixturevalue(
            "etcd_cluster_1" if backend == "etcd1" else "etcd_cluster_3"
        )

        class Machine(StoreMachine):  # type: ignore[no-redef]
            url = cluster.url

    Machine.TestCase.settings = MODEL_SETTINGS
    Machine.TestCase().runTest()
