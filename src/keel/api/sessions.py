"""Login codes and dashboard sessions, derived from bearer tokens: pure, no I/O, no state.

A code or session is `PREFIX.KID.EXPIRES.NONCE.MAC`: KID names the token it stands for (a
hash of the token's digest, so the server finds it among digests it keeps anyway), MAC is an
HMAC keyed by that digest. Nothing is stored: a session survives an API server restart, works
on every API server sharing the token file, and dies with its token (`keel node revoke`, or
a line removed from the token file). Login codes (`keel up` prints a link carrying one) live
minutes and are redeemed once (`OneTimeCodes`); sessions live hours.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from typing import Literal

Purpose = Literal["login", "session"]
PREFIX: dict[Purpose, str] = {"login": "kl1", "session": "ks1"}
LOGIN_TTL = 15 * 60.0  # a login link is for opening now, not for keeping
SESSION_TTL = 12 * 3600.0  # a working day in the browser tab


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def key_id(digest: bytes) -> str:
    """The public name of a token: says nothing about the token or its digest."""
    return _b64(hashlib.sha256(b"keel-kid\0" + digest).digest()[:9])


def _mac(digest: bytes, text: str) -> str:
    return _b64(hmac.new(digest, text.encode(), hashlib.sha256).digest()[:18])


def mint(digest: bytes, purpose: Purpose, expires: float, nonce: str | None = None) -> str:
    """A code (`login`) or session token (`session`) for the token whose SHA-256 is `digest`,
    valid until the Unix time `expires`."""
    body = f"{PREFIX[purpose]}.{key_id(digest)}.{int(expires)}.{nonce or secrets.token_hex(8)}"
    return f"{body}.{_mac(digest, body)}"


@dataclass(frozen=True)
class Parsed:
    purpose: Purpose
    kid: str
    expires: int
    nonce: str
    body: str
    mac: str


def parse(text: str) -> Parsed | None:
    """The parts of a code or session token, or None when `text` is not one."""
    parts = text.split(".")
    if len(parts) != 5 or not parts[2].isdigit():
        return None
    for purpose, prefix in PREFIX.items():
        if parts[0] == prefix:
            return Parsed(purpose, parts[1], int(parts[2]), parts[3], ".".join(parts[:4]), parts[4])
    return None


def verify(parsed: Parsed, digest: bytes, now: float) -> str | None:
    """None when `parsed` was minted for `digest` and has not expired, else why not."""
    if not hmac.compare_digest(_mac(digest, parsed.body), parsed.mac):
        return "its signature does not match"
    if now >= parsed.expires:
        return "it has expired"
    return None


@dataclass
class OneTimeCodes:
    """The login codes already redeemed (until they would have expired anyway)."""

    used: dict[str, int] = field(default_factory=dict)  # nonce -> expires

    def redeem(self, parsed: Parsed, now: float) -> bool:
        """True the first time a code is redeemed; False ever after."""
        for nonce, expires in list(self.used.items()):
            if expires <= now:
                del self.used[nonce]
        if parsed.nonce in self.used:
            return False
        self.used[parsed.nonce] = parsed.expires
        return True


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def login_link(base_url: str, token: str, now: float, ttl: float = LOGIN_TTL) -> str:
    """The dashboard link for `token`, carrying a login code valid for `ttl` seconds. The code
    travels in the fragment: browsers do not send it to servers or proxies, nor log it."""
    code = mint(token_digest(token), "login", now + ttl)
    return f"{base_url.rstrip('/')}/ui/#login={code}"
