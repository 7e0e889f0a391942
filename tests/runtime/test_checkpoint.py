"""Checkpoint files: round trip, atomic replacement, and None for anything unusable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from keel.api.resources import Deployment, Node, NodeSpec, ObjectMeta, OwnerReference
from keel.runtime.checkpoint import MAGIC, Checkpoint


def nodes(count: int) -> list[Node]:
    return [
        Node(
            metadata=ObjectMeta(
                name=f"node-{i}",
                uid=f"uid-{i}",
                resource_version=str(100 + i),
                labels={"zone": f"z{i % 3}"},
                owner_references=[
                    OwnerReference(api_version="keel.dev/v1", kind="Cluster", name="c", uid="c1")
                ],
            ),
            spec=NodeSpec(cluster="c", unschedulable=i % 2 == 0),
        )
        for i in range(count)
    ]


def test_objects_and_resource_version_round_trip(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path / "nodes.ckpt")
    objects = nodes(50)
    checkpoint.save("149", objects, scope="ns=")
    loaded = checkpoint.load(Node, scope="ns=")
    assert loaded == ("149", objects)


def test_an_empty_cache_round_trips_for_its_kind_only(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path / "empty.ckpt")
    checkpoint.save("7", [], kind=Node)
    assert checkpoint.load(Node) == ("7", [])
    assert checkpoint.load(Deployment) is None


def test_an_absent_file_loads_as_none(tmp_path: Path) -> None:
    assert Checkpoint(tmp_path / "missing.ckpt").load(Node) is None


def test_another_kind_or_scope_loads_as_none(tmp_path: Path) -> None:
    checkpoint = Checkpoint(tmp_path / "nodes.ckpt")
    checkpoint.save("10", nodes(3), scope="ns=a")
    assert checkpoint.load(Deployment, scope="ns=a") is None
    assert checkpoint.load(Node, scope="ns=b") is None
    assert checkpoint.load(Node, scope="ns=a") is not None


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param(lambda data: data[: len(data) // 2], id="truncated"),
        pytest.param(lambda data: data[:5], id="shorter-than-the-header"),
        pytest.param(lambda data: b"", id="empty"),
        pytest.param(lambda data: b"{}" + data, id="not-a-checkpoint"),
        pytest.param(lambda data: data[:-10] + bytes(10), id="zeroed-tail"),
        pytest.param(
            lambda data: data[:40] + bytes([data[40] ^ 0xFF]) + data[41:], id="flipped-byte"
        ),
        pytest.param(
            lambda data: MAGIC + (2**31).to_bytes(4, "big") + data[12:], id="bad-header-length"
        ),
    ],
)
def test_a_corrupt_file_loads_as_none(tmp_path: Path, damage: object) -> None:
    path = tmp_path / "nodes.ckpt"
    Checkpoint(path).save("10", nodes(20))
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    assert Checkpoint(path).load(Node) is None


def test_another_format_version_loads_as_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keel.runtime.checkpoint as module

    path = tmp_path / "nodes.ckpt"
    monkeypatch.setattr(module, "FORMAT", 2)
    Checkpoint(path).save("10", nodes(2))
    monkeypatch.setattr(module, "FORMAT", 1)
    assert Checkpoint(path).load(Node) is None


def test_save_replaces_atomically_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "nodes.ckpt"
    checkpoint = Checkpoint(path)
    checkpoint.save("10", nodes(5))
    inode = path.stat().st_ino
    checkpoint.save("20", nodes(8))
    assert path.stat().st_ino != inode  # a new file renamed over the old one
    assert os.listdir(tmp_path) == ["nodes.ckpt"]
    loaded = checkpoint.load(Node)
    assert loaded is not None and loaded[0] == "20" and len(loaded[1]) == 8


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "nodes.ckpt"
    checkpoint = Checkpoint(path)
    checkpoint.save("10", nodes(5))

    class Unencodable:
        pass

    with pytest.raises(TypeError):
        checkpoint.save("20", [*nodes(2), Unencodable()])  # type: ignore[list-item]
    assert os.listdir(tmp_path) == ["nodes.ckpt"]
    loaded = checkpoint.load(Node)
    assert loaded is not None and loaded[0] == "10"


def test_gc_relaxed_restores_the_thresholds_after_interleaved_blocks() -> None:
    import gc

    from keel.runtime.checkpoint import RELAXED_THRESHOLD, gc_relaxed

    before = gc.get_threshold()
    first, second = gc_relaxed(), gc_relaxed()
    first.__enter__()
    second.__enter__()
    assert gc.get_threshold() == RELAXED_THRESHOLD and gc.isenabled()
    first.__exit__(None, None, None)  # blocks of two tasks may end in any order
    assert gc.get_threshold() == RELAXED_THRESHOLD
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before


def test_a_late_save_of_an_older_version_does_not_replace_a_newer_one(tmp_path: Path) -> None:
    """A periodic save still running in a thread may finish after the save on shutdown."""
    checkpoint = Checkpoint(tmp_path / "nodes.ckpt")
    checkpoint.save("20", nodes(3))
    checkpoint.save("10", nodes(1))
    loaded = checkpoint.load(Node)
    assert loaded is not None and loaded[0] == "20" and len(loaded[1]) == 3


def test_peek_reads_the_version_from_the_header_only(tmp_path: Path) -> None:
    path = tmp_path / "nodes.ckpt"
    checkpoint = Checkpoint(path)
    assert checkpoint.peek(Node) is None
    checkpoint.save("42", nodes(10), scope="s")
    assert checkpoint.peek(Node, scope="s") == "42"
    assert checkpoint.peek(Node, scope="other") is None
    assert checkpoint.peek(Deployment, scope="s") is None
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))
    assert checkpoint.peek(Node, scope="s") == "42"  # the items are not read...
    assert checkpoint.load(Node, scope="s") is None  # ...load has the last word
    path.write_bytes(data[:6])
    assert checkpoint.peek(Node, scope="s") is None
