"""Just enough of Kubernetes' protobuf encoding to read a core/v1 Namespace, which client-go
(`kubectl create namespace`) sends as `application/vnd.kubernetes.protobuf` and nothing else.
Pure: bytes in, the JSON-shaped dict out; anything else is a ValueError (the server answers
415 and asks for JSON).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

MAGIC = b"k8s\x00"
MEDIA_TYPE = "application/vnd.kubernetes.protobuf"


def _varint(data: bytes, at: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if at >= len(data):
            raise ValueError("protobuf: truncated varint")
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, at
        shift += 7
        if shift > 63:
            raise ValueError("protobuf: varint too long")


def fields(data: bytes) -> Iterator[tuple[int, int, bytes | int]]:
    """(field number, wire type, value) of each field of a message."""
    at = 0
    while at < len(data):
        key, at = _varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = _varint(data, at)
            yield number, wire, value
        elif wire == 2:
            size, at = _varint(data, at)
            if at + size > len(data):
                raise ValueError("protobuf: truncated field")
            yield number, wire, data[at : at + size]
            at += size
        elif wire == 1:
            at += 8
        elif wire == 5:
            at += 4
        else:
            raise ValueError(f"protobuf: unsupported wire type {wire}")


def _text(value: bytes | int) -> str:
    if not isinstance(value, bytes):
        raise ValueError("protobuf: expected a string")
    return value.decode("utf-8")


def _map_entry(value: bytes | int) -> tuple[str, str]:
    if not isinstance(value, bytes):
        raise ValueError("protobuf: expected a map entry")
    key = val = ""
    for number, _, item in fields(value):
        if number == 1:
            key = _text(item)
        elif number == 2:
            val = _text(item)
    return key, val


def _object_meta(data: bytes) -> dict[str, Any]:
    meta: dict[str, Any] = {}
    for number, _, value in fields(data):
        if number == 1:
            meta["name"] = _text(value)
        elif number == 2:
            meta["generateName"] = _text(value)
        elif number == 6:
            meta["resourceVersion"] = _text(value)
        elif number == 11:
            key, val = _map_entry(value)
            meta.setdefault("labels", {})[key] = val
        elif number == 12:
            key, val = _map_entry(value)
            meta.setdefault("annotations", {})[key] = val
        elif number == 14:
            meta.setdefault("finalizers", []).append(_text(value))
    return meta


def decode_namespace(body: bytes) -> dict[str, Any]:
    """A protobuf-encoded core/v1 Namespace as its JSON form."""
    if not body.startswith(MAGIC):
        raise ValueError("protobuf: missing the k8s envelope")
    raw = b""
    api_version = kind = ""
    for number, _, value in fields(body[len(MAGIC) :]):
        if number == 1 and isinstance(value, bytes):
            for sub, _, item in fields(value):
                if sub == 1:
                    api_version = _text(item)
                elif sub == 2:
                    kind = _text(item)
        elif number == 2 and isinstance(value, bytes):
            raw = value
    if (api_version, kind) != ("v1", "Namespace"):
        raise ValueError(f"protobuf: only v1 Namespace is understood, not {api_version} {kind}")
    namespace: dict[str, Any] = {"apiVersion": "v1", "kind": "Namespace", "metadata": {}}
    for number, _, value in fields(raw):
        if number == 1 and isinstance(value, bytes):
            namespace["metadata"] = _object_meta(value)
        elif number == 2 and isinstance(value, bytes):
            finalizers = [_text(v) for n, _, v in fields(value) if n == 1]
            if finalizers:
                namespace["spec"] = {"finalizers": finalizers}
    return namespace
