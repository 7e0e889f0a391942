"""Conformance: keys, revisions, ranges, txns and limits, identical on every backend."""

from __future__ import annotations

import asyncio

import pytest

from keel.store import (
    MAX_REQUEST_BYTES,
    CompactedError,
    Compare,
    DeleteResponse,
    FutureRevisionError,
    InvalidRequest,
    Op,
    PutResponse,
    RangeResult,
    Store,
    ValueTooLarge,
)


async def test_each_mutation_raises_the_revision_by_one(store: Store, prefix: bytes) -> None:
    before = (await store.status()).revision
    r1 = await store.put(prefix + b"a", b"1")
    r2 = await store.put(prefix + b"b", b"2")
    r3 = await store.delete(prefix + b"a")
    assert (r1, r2, r3) == (before + 1, before + 2, before + 3)
    assert (await store.status()).revision == r3


async def test_versions_and_create_revision_follow_the_key_lifecycle(
    store: Store, prefix: bytes
) -> None:
    key = prefix + b"k"
    r1 = await store.put(key, b"v1")
    r2 = await store.put(key, b"v2")
    kv = await store.get(key)
    assert kv is not None
    assert (kv.value, kv.create_revision, kv.mod_revision, kv.version, kv.lease) == (
        b"v2",
        r1,
        r2,
        2,
        0,
    )
    await store.delete(key)
    assert await store.get(key) is None
    r4 = await store.put(key, b"v3")
    kv = await store.get(key)
    assert kv is not None
    assert (kv.create_revision, kv.version) == (r4, 1)


async def test_deleting_an_absent_key_changes_nothing(store: Store, prefix: bytes) -> None:
    before = (await store.status()).revision
    assert await store.delete(prefix + b"never") == before
    assert (await store.status()).revision == before


async def test_range_returns_the_prefix_sorted_with_limit_and_more(
    store: Store, prefix: bytes
) -> None:
    for name in (b"c", b"a", b"b", b"d"):
        await store.put(prefix + name, name)
    await store.put(prefix[:-1] + b"0", b"outside")  # sorts right after the prefix
    result = await store.range(prefix)
    assert [kv.key for kv in result.kvs] == [prefix + n for n in (b"a", b"b", b"c", b"d")]
    assert result.more is False
    assert result.revision == (await store.status()).revision
    limited = await store.range(prefix, limit=2)
    assert [kv.value for kv in limited.kvs] == [b"a", b"b"]
    assert limited.more is True
    assert (await store.range(prefix, limit=4)).more is False


async def test_range_pages_from_a_start_key_now_and_in_history(store: Store, prefix: bytes) -> None:
    for name in (b"a", b"b", b"c", b"d", b"e"):
        await store.put(prefix + name, name)
    old = (await store.status()).revision
    await store.put(prefix + b"f", b"f")
    page = await store.range(prefix, limit=2, start=prefix + b"b\0")
    assert [kv.value for kv in page.kvs] == [b"c", b"d"]
    assert page.more is True
    rest = await store.range(prefix, start=prefix + b"d\0")
    assert [kv.value for kv in rest.kvs] == [b"e", b"f"]
    assert rest.more is False
    past = await store.range(prefix, revision=old, start=prefix + b"c")
    assert [kv.value for kv in past.kvs] == [b"c", b"d", b"e"]
    # a start below the prefix changes nothing; one past it gives nothing
    assert len((await store.range(prefix, start=b"")).kvs) == 6
    assert (await store.range(prefix, start=prefix[:-1] + b"0")).kvs == []


async def test_range_reads_history_at_an_old_revision(store: Store, prefix: bytes) -> None:
    r1 = await store.put(prefix + b"x", b"old")
    await store.put(prefix + b"x", b"new")
    await store.put(prefix + b"y", b"later")
    await store.delete(prefix + b"x")
    past = await store.range(prefix, revision=r1)
    assert [(kv.key, kv.value) for kv in past.kvs] == [(prefix + b"x", b"old")]
    assert past.kvs[0].mod_revision == r1
    now = await store.range(prefix)
    assert [kv.key for kv in now.kvs] == [prefix + b"y"]


async def test_range_at_a_future_revision_is_an_error(store: Store, prefix: bytes) -> None:
    current = (await store.status()).revision
    with pytest.raises(FutureRevisionError):
        await store.range(prefix, revision=current + 1000)


async def test_compaction_makes_old_revisions_unreadable(store: Store, prefix: bytes) -> None:
    r1 = await store.put(prefix + b"k", b"1")
    r2 = await store.put(prefix + b"k", b"2")
    r3 = await store.put(prefix + b"other", b"x")
    await store.compact(r2)
    with pytest.raises(CompactedError) as caught:
        await store.range(prefix, revision=r1)
    assert caught.value.compact_revision >= r2
    at_compact = await store.range(prefix, revision=r2)
    assert [kv.value for kv in at_compact.kvs] == [b"2"]
    assert [kv.value for kv in (await store.range(prefix, revision=r3)).kvs] == [b"2", b"x"]
    with pytest.raises(CompactedError):
        await store.compact(r1)
    assert (await store.status()).revision == r3


async def test_put_with_prev_kv_in_txn_responses(store: Store, prefix: bytes) -> None:
    key = prefix + b"k"
    await store.put(key, b"one")
    result = await store.txn([], [Op.put(key, b"two"), Op.get(key)], [])
    assert result.succeeded
    put, get = result.responses
    assert isinstance(put, PutResponse)
    assert put.revision == result.revision
    assert isinstance(get, RangeResult)
    assert [kv.value for kv in get.kvs] == [b"two"]


async def test_cas_succeeds_only_on_the_expected_mod_revision(store: Store, prefix: bytes) -> None:
    key = prefix + b"cas"
    rev = await store.put(key, b"v1")
    ok = await store.txn([Compare.mod_revision(key, "==", rev)], [Op.put(key, b"v2")], [])
    assert ok.succeeded
    stale = await store.txn(
        [Compare.mod_revision(key, "==", rev)], [Op.put(key, b"v3")], [Op.get(key)]
    )
    assert not stale.succeeded
    (current,) = stale.responses
    assert isinstance(current, RangeResult)
    assert current.kvs[0].value == b"v2"
    assert current.kvs[0].mod_revision == ok.revision


async def test_create_if_absent_admits_exactly_one_of_many_racers(
    store: Store, prefix: bytes
) -> None:
    key = prefix + b"leader"

    async def claim(who: int) -> bool:
        result = await store.txn(
            [Compare.create_revision(key, "==", 0)], [Op.put(key, str(who).encode())], []
        )
        return result.succeeded

    wins = await asyncio.gather(*(claim(i) for i in range(16)))
    assert sum(wins) == 1
    kv = await store.get(key)
    assert kv is not None
    assert kv.value == str(wins.index(True)).encode()


async def test_all_compare_targets_and_operators(store: Store, prefix: bytes) -> None:
    key = prefix + b"c"
    rev = await store.put(key, b"m")
    await store.put(key, b"m")  # version 2
    cases = [
        (Compare.value(key, "==", b"m"), True),
        (Compare.value(key, "!=", b"m"), False),
        (Compare.value(key, "<", b"n"), True),
        (Compare.value(key, ">", b"n"), False),
        (Compare.version(key, "==", 2), True),
        (Compare.version(key, ">", 2), False),
        (Compare.create_revision(key, "==", rev), True),
        (Compare.create_revision(key, "<", rev), False),
        (Compare.mod_revision(key, ">", rev), True),
        (Compare.lease(key, "==", 0), True),
        (Compare.version(prefix + b"absent", "==", 0), True),
        (Compare.value(prefix + b"absent", "!=", b"x"), False),
    ]
    for compare, expected in cases:
        result = await store.txn([compare], [], [])
        assert result.succeeded is expected, compare


async def test_txn_is_atomic_and_one_revision(store: Store, prefix: bytes) -> None:
    await store.put(prefix + b"gone", b"x")
    before = (await store.status()).revision
    result = await store.txn(
        [Compare.version(prefix + b"gone", "==", 1)],
        [Op.put(prefix + b"a", b"1"), Op.put(prefix + b"b", b"2"), Op.delete(prefix + b"gone")],
        [Op.put(prefix + b"failure-branch", b"!")],
    )
    assert result.succeeded
    assert result.revision == before + 1
    kvs = (await store.range(prefix)).kvs
    assert [(kv.key, kv.mod_revision) for kv in kvs] == [
        (prefix + b"a", before + 1),
        (prefix + b"b", before + 1),
    ]
    deleted = result.responses[2]
    assert isinstance(deleted, DeleteResponse)
    assert deleted.deleted == 1


async def test_a_failed_read_only_txn_does_not_bump_the_revision(
    store: Store, prefix: bytes
) -> None:
    before = (await store.status()).revision
    result = await store.txn([Compare.version(prefix + b"x", "==", 5)], [], [Op.get(prefix)])
    assert not result.succeeded
    assert result.revision == before


async def test_a_txn_writing_one_key_twice_is_rejected(store: Store, prefix: bytes) -> None:
    with pytest.raises(InvalidRequest):
        await store.txn([], [Op.put(prefix + b"k", b"1"), Op.put(prefix + b"k", b"2")], [])
    assert await store.get(prefix + b"k") is None


async def test_values_over_the_limit_are_refused_and_nothing_is_written(
    store: Store, prefix: bytes
) -> None:
    before = (await store.status()).revision
    with pytest.raises(ValueTooLarge):
        await store.put(prefix + b"big", b"x" * (MAX_REQUEST_BYTES + 1))
    with pytest.raises(ValueTooLarge):
        await store.txn(
            [],
            [
                Op.put(prefix + b"a", b"x" * (MAX_REQUEST_BYTES // 2 + 1)),
                Op.put(prefix + b"b", b"x" * (MAX_REQUEST_BYTES // 2 + 1)),
            ],
            [],
        )
    assert (await store.status()).revision == before
    assert (await store.range(prefix)).kvs == []
    # a value just under the limit is fine
    near = MAX_REQUEST_BYTES - len(prefix) - 16
    await store.put(prefix + b"ok", b"y" * near)
    kv = await store.get(prefix + b"ok")
    assert kv is not None
    assert len(kv.value) == near


async def test_binary_keys_and_values_round_trip(store: Store, prefix: bytes) -> None:
    key = prefix + bytes(range(1, 256))
    value = bytes(range(256)) * 4
    await store.put(key, value)
    kv = await store.get(key)
    assert kv is not None
    assert kv.value == value
    assert [kv.key for kv in (await store.range(prefix)).kvs] == [key]
