"""Dashboard login codes and sessions (keel.api.sessions, keel.api.auth): pure, no I/O."""

from __future__ import annotations

from pathlib import Path

import pytest

from keel.api import sessions
from keel.api.auth import TokenFile, WatchedTokenFile, revoke_role

NOW = 1_767_225_600.0
FILE = "admin-token,admin,admin\nviewer-token,viewer,viewer\n"


def bearer(token: str) -> str:
    return f"Bearer {token}"


def test_a_session_authenticates_as_the_token_it_was_minted_for() -> None:
    tokens = TokenFile.parse(FILE)
    found = tokens.lookup("viewer-token", NOW)
    assert found is not None
    principal, digest = found
    session = sessions.mint(digest, "session", NOW + 60)
    assert tokens.authenticate(bearer(session), NOW) == principal
    assert principal.role == "viewer"


def test_an_expired_or_altered_session_is_refused() -> None:
    tokens = TokenFile.parse(FILE)
    digest = sessions.token_digest("admin-token")
    session = sessions.mint(digest, "session", NOW + 60)
    assert tokens.authenticate(bearer(session), NOW + 60) is None
    expires = session.split(".")[2]
    forged = session.replace(f".{expires}.", f".{int(expires) + 3600}.")
    assert tokens.authenticate(bearer(forged), NOW) is None


def test_a_session_dies_with_its_token(tmp_path: Path) -> None:
    path = tmp_path / "tokens.csv"
    path.write_text(FILE)
    clock = [0.0]
    tokens = WatchedTokenFile(path, interval=0.0, clock=lambda: clock[0])
    session = sessions.mint(sessions.token_digest("viewer-token"), "session", 2e9)
    assert tokens.authenticate(bearer(session)) is not None
    text, removed = revoke_role(path.read_text(), "viewer")
    assert removed == 1
    path.write_text(text + "# changed\n")
    assert tokens.authenticate(bearer(session)) is None


def test_a_login_code_is_not_a_bearer_token_and_names_its_principal() -> None:
    tokens = TokenFile.parse(FILE)
    code = sessions.mint(sessions.token_digest("admin-token"), "login", NOW + 60)
    assert tokens.authenticate(bearer(code), NOW) is None
    principal, _, parsed = tokens.check_login_code(code, NOW)
    assert principal.name == "admin"
    with pytest.raises(ValueError, match="expired"):
        tokens.check_login_code(code, NOW + 61)
    with pytest.raises(ValueError, match="not a login code"):
        tokens.check_login_code("admin-token", NOW)
    other = TokenFile.parse("other,admin,admin\n")
    with pytest.raises(ValueError, match="not \\(or no longer\\) in the token file"):
        other.check_login_code(code, NOW)
    assert parsed.purpose == "login"


def test_a_login_code_is_redeemed_once() -> None:
    code = sessions.parse(sessions.mint(b"k" * 32, "login", NOW + 60))
    assert code is not None
    used = sessions.OneTimeCodes()
    assert used.redeem(code, NOW)
    assert not used.redeem(code, NOW + 1)
    used.redeem(sessions.parse(sessions.mint(b"k" * 32, "login", NOW + 120)) or code, NOW + 61)
    assert code.nonce not in used.used, "forgotten once it would have expired anyway"


def test_the_login_link_carries_the_code_in_the_fragment() -> None:
    link = sessions.login_link("https://127.0.0.1:7070/", "admin-token", NOW)
    assert link.startswith("https://127.0.0.1:7070/ui/#login=kl1.")
    code = link.split("#login=")[1]
    principal, _, parsed = TokenFile.parse(FILE).check_login_code(code, NOW)
    assert principal.role == "admin"
    assert parsed.expires == int(NOW + sessions.LOGIN_TTL)
