"""Every manifest under examples/ is valid as shipped: a user's first `keel apply -f` of an
example must not fail validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.cli._manifests import decode, document_kind, read_documents

EXAMPLES = sorted((Path(__file__).parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_decodes(path: Path) -> None:
    documents = read_documents([str(path)])
    assert documents
    for document in documents:
        decode(document, document_kind(document))


def test_the_examples_are_there() -> None:
    assert {p.name for p in EXAMPLES} >= {"hello.yaml", "canary.yaml"}
