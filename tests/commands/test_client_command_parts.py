"""The pure parts of the client commands: manifests, ages, units, and log following."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from keel.api.columns import age
from keel.api.registry import lookup
from keel.cli._manifests import ManifestError, decode, document_kind, parse_documents
from keel.cli._units import cpu, memory, show_capacity, show_memory
from keel.cli.logs import Follower


def test_multi_document_yaml_keeps_positions_and_unpacks_lists() -> None:
    text = """
apiVersion: keel.dev/v1
kind: Namespace
metadata: {name: a}
---
---
apiVersion: v1
kind: List
items:
- {apiVersion: keel.dev/v1, kind: Namespace, metadata: {name: b}}
- {apiVersion: keel.dev/v1, kind: Namespace, metadata: {name: c}}
"""
    documents = parse_documents("x.yaml", text)
    assert [(d.index, d.body["metadata"]["name"]) for d in documents] == [
        (1, "a"),
        (2, "b"),
        (3, "c"),
    ]


def test_timestamps_stay_strings_and_server_fields_are_ignored() -> None:
    [document] = parse_documents(
        "t.yaml",
        "apiVersion: keel.dev/v1\nkind: Namespace\nmetadata:\n  name: a\n"
        "  creationTimestamp: 2026-01-01T00:00:00Z\n  resourceVersion: '7'\n  uid: u\n",
    )
    assert document.body["metadata"]["creationTimestamp"] == "2026-01-01T00:00:00Z"
    obj = decode(document, document_kind(document))
    assert (obj.metadata.resource_version, obj.metadata.uid) == ("", "")


def test_validation_errors_name_file_document_and_field() -> None:
    text = (
        "apiVersion: keel.dev/v1\nkind: Namespace\nmetadata: {name: ok}\n---\n"
        "apiVersion: keel.dev/v1\nkind: Instance\nmetadata: {name: x}\n"
        "spec: {command: [a], ports: [{name: http, port: 70000}]}\n"
    )
    second = parse_documents("f.yaml", text)[1]
    info = document_kind(second)
    assert info is lookup("instances")
    with pytest.raises(ManifestError) as caught:
        decode(second, info)
    assert str(caught.value) == "f.yaml: document 2: spec.ports[0].port: Expected int <= 65535"

    with pytest.raises(ManifestError, match=r"f.yaml: document 1: kind: unknown kind 'Pod'"):
        document_kind(parse_documents("f.yaml", "kind: Pod\nmetadata: {name: p}\n")[0])
    with pytest.raises(ManifestError, match=r"f.yaml: not valid YAML \(line 2\)"):
        parse_documents("f.yaml", "a: b\n  c: [\n")


def test_ages_read_like_kubectl() -> None:
    now = datetime(2026, 1, 10, tzinfo=UTC)

    def ago(delta: timedelta) -> str:
        return age((now - delta).strftime("%Y-%m-%dT%H:%M:%SZ"), now)

    assert ago(timedelta(seconds=42)) == "42s"
    assert ago(timedelta(minutes=3, seconds=5)) == "3m5s"
    assert ago(timedelta(minutes=45)) == "45m"
    assert ago(timedelta(hours=5, minutes=2)) == "5h2m"
    assert ago(timedelta(days=3)) == "3d"
    assert age(None, now) == "<unknown>"


def test_units_accept_quantities_and_plain_numbers() -> None:
    assert (cpu("250m"), cpu(0.5), cpu("2"), cpu("nonsense")) == (250, 500, 2000, None)
    assert (memory("128Mi"), memory(1024.0), memory(True)) == (128 * 2**20, 1024, None)
    assert show_memory(512 * 2**20) == "512Mi"
    assert show_capacity("8Gi") == "8Gi"
    assert show_capacity("24684096Ki") == "23.5Gi"


def test_follower_copies_appends_rotation_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "a.log"
    path.write_bytes(b"one\n")
    out = io.BytesIO()
    with path.open("rb") as file:
        file.read()
        follower = Follower(path, file, out)
        assert not follower.step()
        with path.open("ab") as f:
            f.write(b"two\n")
        while follower.step():
            pass
        with path.open("ab") as f:
            f.write(b"three\n")
        path.rename(tmp_path / "a.log.1")
        path.write_bytes(b"four\n")
        while follower.step():
            pass
        path.write_bytes(b"")  # truncated in place
        follower.step()
        with path.open("ab") as f:
            f.write(b"five\n")
        while follower.step():
            pass
        follower.close()
    assert out.getvalue() == b"two\nthree\nfour\nfive\n"
