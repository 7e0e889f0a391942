"""Jittered exponential backoff and the client's retry policy, as pure functions.

Nothing here sleeps: callers pass the attempt number and their own random source, and do the
waiting with their own (injectable) sleep, so tests check the schedule without a clock.
"""

from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class Backoff:
    """Delay before retry number `attempt` (0-based): `initial * factor**attempt`, capped at
    `maximum`, then reduced by up to `jitter` (a fraction) so that many clients that lost the
    same server do not come back in lockstep."""

    initial: float = 0.1
    maximum: float = 10.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (self.initial > 0 and self.maximum >= self.initial and self.factor >= 1):
            raise ValueError("backoff: need 0 < initial <= maximum and factor >= 1")
        if not 0 <= self.jitter <= 1:
            raise ValueError("backoff: jitter must be within [0, 1]")

    def ceiling(self, attempt: int) -> float:
        """The delay before jitter."""
        if attempt < 0:
            raise ValueError("attempt must be >= 0")
        # Compare exponents rather than computing factor**attempt, which overflows.
        delay = self.initial
        for _ in range(attempt):
            delay *= self.factor
            if delay >= self.maximum:
                return self.maximum
        return min(delay, self.maximum)

    def delay(self, attempt: int, rng: random.Random) -> float:
        ceiling = self.ceiling(attempt)
        return ceiling * (1.0 - self.jitter * rng.random())


READ_METHODS = frozenset({"GET", "HEAD"})


def may_retry_unavailable(method: str, *, sent: bool) -> bool:
    """Whether a request that got no answer may be sent again.

    A read may always be repeated. A write may be repeated only when it never left this
    machine (the connection was refused): once sent, it may have been applied, and repeating
    a create or a fenced write blindly could apply it twice.
    """
    return method in READ_METHODS or not sent


RETRYABLE_READ_STATUSES = frozenset({502, 503, 504})
