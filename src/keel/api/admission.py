"""Per-client admission: a token bucket per principal, so one busy client cannot starve the
others. Pure logic over an injected clock; the server turns a refusal into 429 + Retry-After.
Memory is bounded: idle clients are forgotten, and at most `max_clients` are tracked.
"""

from __future__ import annotations

from collections import OrderedDict

from keel.clock import Clock, SystemClock

DEFAULT_RATE = 200.0  # requests per second, per principal
DEFAULT_BURST = 400
DEFAULT_MAX_CLIENTS = 10_000
_SYSTEM_CLOCK = SystemClock()


class TokenBucketAdmission:
    """`admit(client)` returns 0.0 when admitted, else the seconds until a token is available.

    Each client's bucket holds up to `burst` tokens and refills at `rate` per second. A client
    whose bucket has refilled completely is indistinguishable from a new one, so it is
    dropped; beyond `max_clients` the least recently seen client is dropped (it then starts
    with a full bucket again, which errs on the side of admitting).
    """

    def __init__(
        self,
        rate: float = DEFAULT_RATE,
        burst: int = DEFAULT_BURST,
        clock: Clock = _SYSTEM_CLOCK,
        *,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        if not rate > 0:
            raise ValueError(f"rate: expected a positive number of requests per second, got {rate}")
        if burst < 1:
            raise ValueError(f"burst: expected at least 1, got {burst}")
        if max_clients < 1:
            raise ValueError(f"max_clients: expected at least 1, got {max_clients}")
        self.rate = float(rate)
        self.burst = float(burst)
        self.max_clients = max_clients
        self._clock = clock
        self._refill_time = self.burst / self.rate  # from empty to full
        # client -> (tokens, time of last update); least recently seen first
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def __len__(self) -> int:
        """How many clients are tracked."""
        return len(self._buckets)

    def admit(self, client: str, cost: float = 1.0) -> float:
        now = self._clock.now()
        self._forget_idle(now)
        tokens, last = self._buckets.pop(client, (self.burst, now))
        tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
        if tokens >= cost:
            tokens -= cost
            wait = 0.0
        else:
            wait = (cost - tokens) / self.rate
        self._buckets[client] = (tokens, now)  # most recently seen last
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
        return wait

    def _forget_idle(self, now: float) -> None:
        # Amortised: look at the two least recently seen clients on every call. Any client
        # not seen for `refill_time` has a full bucket again, so forgetting it changes nothing.
        for _ in range(2):
            if not self._buckets:
                return
            client, (_, last) = next(iter(self._buckets.items()))
            if now - last < self._refill_time:
                return
            del self._buckets[client]
