"""Watch events and the resume bookkeeping of a long-running watch.

`WatchCursor` is the pure part: it remembers the last resourceVersion seen (objects and
bookmarks), whether a relist is due after `410 Expired`, and how many attempts in a row made
no progress (which sets the backoff). The client's watch loop is the I/O shell around it.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

import msgspec

from keel.api.resources import Resource
from keel.client._backoff import Backoff

R = TypeVar("R", bound=Resource)

EventType = Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK", "RELIST"]


@dataclass(frozen=True, slots=True)
class WatchEvent(Generic[R]):
    """One change seen by a watch.

    - ADDED / MODIFIED / DELETED: `object` is the object (for DELETED its last state).
    - BOOKMARK (only with `emit_bookmarks=True`): `object` is None; the watch has seen
      everything up to `resource_version`.
    - RELIST: the watch fell out of the server's history (410 Expired) and listed again.
      `objects` is the complete current state at `resource_version`; an ADDED event for each
      of them follows. Anything a consumer holds that is not in `objects` was deleted while
      the watch was away (those DELETED events are lost for good).
    """

    type: EventType
    object: R | None
    resource_version: str
    objects: tuple[R, ...] = field(default=())


class RawEvent(msgspec.Struct):
    """A watch line, with the object left undecoded until its type is known."""

    type: str
    object: msgspec.Raw


class _RVMeta(msgspec.Struct, rename="camel"):
    resource_version: str = ""


class Bookmark(msgspec.Struct):
    """The object of a BOOKMARK line: only its resourceVersion matters."""

    metadata: _RVMeta = msgspec.field(default_factory=_RVMeta)


RELIST_SPREAD = 1.0  # seconds over which simultaneous relists are spread


@dataclass
class WatchCursor:
    """Where a watch stands, and what it must do next after a connection ends."""

    resource_version: str
    relist_needed: bool = False
    failures: int = 0  # consecutive connections (or relists) that delivered nothing
    progressed: bool = False  # the current connection delivered at least one line

    def connecting(self) -> None:
        self.progressed = False

    def observed(self, resource_version: str) -> None:
        """A line arrived (an object or a bookmark)."""
        if resource_version:
            self.resource_version = resource_version
        self.progressed = True
        self.failures = 0

    def ended(self, *, expired: bool = False) -> None:
        """The connection ended: cleanly, by an error, or with 410 Expired."""
        if expired:
            self.relist_needed = True
        if not self.progressed:
            self.failures += 1
        self.progressed = False

    def relisted(self, resource_version: str) -> None:
        self.resource_version = resource_version
        self.relist_needed = False

    def delay(self, backoff: Backoff, rng: random.Random) -> float:
        """Seconds to wait before the next connection or relist.

        A connection that delivered something and then ended is resumed at once; only
        attempts that made no progress back off, exponentially and with jitter. A relist
        after 410 always waits a random time in [0, max(RELIST_SPREAD, backoff)]: after an
        API-server restart every watcher gets 410 at once, and lists are the expensive call.
        """
        if self.relist_needed:
            return rng.uniform(0.0, max(RELIST_SPREAD, backoff.ceiling(self.failures)))
        if self.failures == 0:
            return 0.0
        return backoff.delay(self.failures - 1, rng)
