"""The fencing header a fenced client sends: exactly `{namespace}/{lease}={token}`, and no
malformed header ever leaves the client (the server would answer 400)."""

from __future__ import annotations

import pytest

from keel.client import FENCING_HEADER, fencing_header_value


def test_fencing_header_is_namespace_slash_lease_equals_token() -> None:
    assert FENCING_HEADER == "Keel-Fencing-Token"
    assert fencing_header_value("keel-system", "controller-manager", 1234) == (
        "keel-system/controller-manager=1234"
    )


@pytest.mark.parametrize(
    ("namespace", "lease", "token"),
    [
        ("", "lease", 1),
        ("ns", "", 1),
        ("a/b", "lease", 1),
        ("ns", "le=ase", 1),
        ("ns", "lease", 0),
        ("ns", "lease", -5),
        ("ns", "lease", True),
        ("ns", "lease", "7"),
    ],
)
def test_malformed_fencing_references_are_refused_before_sending(
    namespace: str, lease: str, token: object
) -> None:
    with pytest.raises(ValueError, match="fencing"):
        fencing_header_value(namespace, lease, token)  # type: ignore[arg-type]
