"""Manifests: YAML/JSON files (or directories of them) turned into typed, validated objects.

Pure apart from reading files. Each document keeps its file and index, so an error says
`FILE: document 2: spec.replicas: ...`; a `kind: List` contributes each of its items.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import yaml

from keel.api.registry import BY_KIND, KindInfo, lookup
from keel.api.resources import Resource
from keel.cli._common import CommandError, plain

SUFFIXES = (".yaml", ".yml", ".json")
# Set by the server: ignored in a manifest, so `get -o yaml` output can be applied again.
SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp")


class _Loader(yaml.SafeLoader):
    """SafeLoader that keeps timestamps as the strings the API expects."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


@dataclass(frozen=True)
class Document:
    """One object of a manifest, still untyped, and where it came from."""

    source: str  # the file as the user named it
    index: int  # 1-based position in the file (items of a List count on)
    body: dict[str, Any]

    @property
    def where(self) -> str:
        return f"{self.source}: document {self.index}"


class ManifestError(CommandError):
    """A document that cannot be read or does not validate; names file, index and field."""


def manifest_files(path: str) -> list[Path]:
    """The file itself, or the `.yaml/.yml/.json` files of a directory in name order."""
    target = Path(path)
    if target.is_dir():
        files = sorted(p for p in target.iterdir() if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise CommandError(f"{path}: no .yaml, .yml or .json files in this directory")
        return files
    if not target.exists():
        raise CommandError(f"{path}: no such file or directory")
    return [target]


def read_documents(paths: list[str]) -> list[Document]:
    """Every non-empty document of the files, in order (`-` reads standard input)."""
    documents: list[Document] = []
    for path in paths:
        if path == "-":
            documents.extend(parse_documents("<stdin>", sys.stdin.read()))
            continue
        for file in manifest_files(path):
            documents.extend(parse_documents(str(file), _read(file)))
    return documents


def _read(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except OSError as exc:
        raise CommandError(f"{file}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise CommandError(f"{file}: not UTF-8 text") from None


def parse_documents(source: str, text: str) -> list[Document]:
    """The documents of one file's text (multi-document YAML; JSON is YAML too)."""
    try:
        loaded = list(yaml.load_all(text, Loader=_Loader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" (line {mark.line + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"{source}: not valid YAML{at}: {problem}") from None
    documents: list[Document] = []
    index = 0
    for body in loaded:
        if body is None:
            continue
        index += 1
        if not isinstance(body, dict):
            raise ManifestError(f"{source}: document {index}: expected a mapping (an object)")
        if body.get("kind") == "List" and isinstance(body.get("items"), list):
            for item in body["items"]:
                if not isinstance(item, dict):
                    raise ManifestError(f"{source}: document {index}: expected a mapping")
                documents.append(Document(source, index, item))
                index += 1
            index -= 1
            continue
        documents.append(Document(source, index, body))
    return documents


def document_kind(document: Document) -> KindInfo:
    kind = document.body.get("kind")
    if not isinstance(kind, str) or not kind:
        raise ManifestError(f"{document.where}: kind: required")
    info = BY_KIND.get(kind) or lookup(kind)
    if info is None:
        known = ", ".join(sorted(BY_KIND))
        raise ManifestError(f"{document.where}: kind: unknown kind {kind!r} (known: {known})")
    return info


def document_name(document: Document) -> str:
    metadata = document.body.get("metadata")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        raise ManifestError(f"{document.where}: metadata.name: required")
    return name


def document_namespace(document: Document) -> str:
    metadata = document.body.get("metadata")
    namespace = metadata.get("namespace") if isinstance(metadata, dict) else None
    return namespace if isinstance(namespace, str) else ""


_AT = re.compile(r"^(?P<msg>.*?)(?: - at `\$(?P<path>[^`]*)`)?$", re.S)
_FIELD = re.compile(r"field `(?P<name>[^`]+)`")


def validation_path(message: str) -> str:
    """msgspec's `... - at `$.spec.replicas`` as `spec.replicas: ...`."""
    match = _AT.match(message)
    if match is None:  # pragma: no cover - the pattern matches any text
        return plain(message)
    text, path = match["msg"], (match["path"] or "").lstrip(".")
    named = _FIELD.search(text)
    if named and ("unknown field" in text or "missing required field" in text):
        path = f"{path}.{named['name']}" if path else named["name"]
    text = plain(text)
    return f"{path}: {text}" if path else text


def decode(document: Document, info: KindInfo) -> Resource:
    """The document as its kind's model, validated as strictly as the server would."""
    document_name(document)  # a manifest names its object; the server would not guess
    body = dict(document.body)
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        body["metadata"] = {k: v for k, v in metadata.items() if k not in SERVER_FIELDS}
    try:
        return msgspec.convert(body, type=info.model)
    except msgspec.ValidationError as exc:
        raise ManifestError(f"{document.where}: {validation_path(str(exc))}") from None
