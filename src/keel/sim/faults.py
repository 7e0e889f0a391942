"""The seeded fault scheduler: what goes wrong, and when, in a simulation.

Watch faults are decided per delivered event (delay, connection drop, redelivery after a
reconnect from an older resourceVersion, 410 Expired), stalls per write, lost answers per
request; process faults (crash, pause, partition, lease expiry) are Poisson arrivals in
virtual time.
All from the seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Literal

from keel.sim.trace import Trace

__all__ = ["FaultMix", "FaultScheduler", "ProcessFault", "WatchDecision"]

WatchAction = Literal["deliver", "delay", "drop", "duplicate", "expire"]
ProcessAction = Literal["crash", "pause", "partition", "expire-lease"]


@dataclass(frozen=True)
class FaultMix:
    """Fault probabilities. Watch ones are per delivered event; process ones per virtual
    second (each a Poisson rate); `latency` is the largest one-way delay of an API call."""

    delay: float = 0.0  # the event (and the stream behind it) arrives late
    max_delay: float = 0.5
    drop: float = 0.0  # the connection fails before the event: resume, or relist on 410
    duplicate: float = 0.0  # after the event, resume from an older resourceVersion
    max_rewind: int = 5  # how many events back such a resume may start
    expire: float = 0.0  # the connection fails and resuming answers 410 Expired
    crash: float = 0.0  # a controller process is killed and a fresh one started
    pause: float = 0.0  # a controller process (the leader, usually) stops running
    max_pause: float = 6.0
    partition: float = 0.0  # a process is cut off from the API server (its requests time out)
    max_partition: float = 15.0
    lease_expiry: float = 0.0  # a held lease is expired by force (keep-alive lost)
    stall: float = 0.0  # per write: the writer pauses just before its request is sent
    lose: float = 0.0  # per request: the server acts, but its answer never arrives
    latency: float = 0.0

    @classmethod
    def none(cls) -> FaultMix:
        return cls()

    @classmethod
    def watch_chaos(cls) -> FaultMix:
        return cls(delay=0.1, drop=0.05, duplicate=0.05, expire=0.02, latency=0.005)

    @classmethod
    def process_chaos(cls) -> FaultMix:
        return cls(crash=0.05, pause=0.05, lease_expiry=0.03, stall=0.02, latency=0.005)

    @classmethod
    def network_chaos(cls) -> FaultMix:
        return cls(lose=0.03, latency=0.02)

    @classmethod
    def everything(cls) -> FaultMix:
        return replace(
            cls.watch_chaos(), crash=0.05, pause=0.05, lease_expiry=0.03, stall=0.02, lose=0.01
        )


@dataclass(frozen=True)
class WatchDecision:
    action: WatchAction
    delay: float = 0.0
    rewind: int = 0


@dataclass(frozen=True)
class ProcessFault:
    """The next process fault: `after` virtual seconds, do `action` (a pause lasts
    `duration`); `pick` chooses the victim among the candidates."""

    after: float
    action: ProcessAction
    duration: float
    pick: float  # in [0, 1)


_DELIVER = WatchDecision("deliver")


class FaultScheduler:
    """Draws faults from one seed. `active` is switched off when the fault period ends, so
    that convergence can be checked on a healed system."""

    def __init__(self, seed: int, mix: FaultMix, trace: Trace | None = None) -> None:
        self.mix = mix
        self.trace = trace
        self.active = True
        # One stream per purpose: a change in how often one is consulted does not reshuffle
        # the others.
        self._watch = random.Random(f"{seed}:watch")
        self._process = random.Random(f"{seed}:process")
        self._latency = random.Random(f"{seed}:latency")
        self._stall = random.Random(f"{seed}:stall")
        self._lose = random.Random(f"{seed}:lose")

    def on_watch_event(self) -> WatchDecision:
        """What happens to the next event a watch is about to deliver."""
        if not self.active:
            return _DELIVER
        mix, rng = self.mix, self._watch
        roll = rng.random()
        for action, p in (
            ("drop", mix.drop),
            ("expire", mix.expire),
            ("duplicate", mix.duplicate),
            ("delay", mix.delay),
        ):
            if roll < p:
                if action == "delay":
                    return WatchDecision("delay", delay=rng.uniform(0.0, mix.max_delay))
                if action == "duplicate":
                    return WatchDecision("duplicate", rewind=rng.randint(1, mix.max_rewind))
                return WatchDecision(action)  # type: ignore[arg-type]
            roll -= p
        return _DELIVER

    def reconnect_delay(self) -> float:
        """How long a dropped watch takes to reconnect (the client's quick resume)."""
        return self._watch.uniform(0.0, 0.05) if self.active else 0.0

    def stall_write(self) -> float:
        """How long a process stalls before sending this write (0: it does not)."""
        if not self.active or self.mix.stall <= 0:
            return 0.0
        rng = self._stall
        if rng.random() >= self.mix.stall:
            return 0.0
        return rng.uniform(0.5, self.mix.max_pause)

    def lose_answer(self) -> bool:
        """Whether the answer to this request is lost on its way back (the request was
        applied; the client cannot know)."""
        if not self.active or self.mix.lose <= 0:
            return False
        return self._lose.random() < self.mix.lose

    def latency(self) -> float:
        if not self.active or self.mix.latency <= 0:
            return 0.0
        return self._latency.uniform(0.0, self.mix.latency)

    def next_process_fault(self) -> ProcessFault | None:
        """The next crash/pause/partition/lease expiry, or None when the mix has none."""
        mix = self.mix
        rates: list[tuple[ProcessAction, float]] = [
            ("crash", mix.crash),
            ("pause", mix.pause),
            ("partition", mix.partition),
            ("expire-lease", mix.lease_expiry),
        ]
        total = sum(rate for _, rate in rates)
        if total <= 0:
            return None
        rng = self._process
        after = rng.expovariate(total)
        roll = rng.random() * total
        action: ProcessAction = rates[-1][0]
        for name, rate in rates:
            if roll < rate:
                action = name
                break
            roll -= rate
        duration = 0.0
        if action == "pause":
            duration = rng.uniform(0.5, mix.max_pause)
        elif action == "partition":
            duration = rng.uniform(1.0, mix.max_partition)
        return ProcessFault(after, action, duration, rng.random())
