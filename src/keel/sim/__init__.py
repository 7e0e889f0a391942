"""Deterministic simulation of controllers: virtual time, an in-memory API double with the
server's semantics, seeded faults (watch, crash, pause, lease expiry) and `simulate()`, which
checks convergence and that no dangerous action ran twice. A seed replays exactly.
"""

from keel.sim.double import Mutation, SimApi, SimClient, SimWatch
from keel.sim.faults import FaultMix, FaultScheduler, WatchDecision
from keel.sim.harness import (
    ProcessEnv,
    SimEnv,
    SimResult,
    check_fencing,
    check_once,
    manager_process,
    simulate,
)
from keel.sim.loop import (
    SimClock,
    SimulationDeadlock,
    SimulationRunaway,
    VirtualEventLoop,
    run_virtual,
)
from keel.sim.trace import Trace

__all__ = [
    "FaultMix",
    "FaultScheduler",
    "Mutation",
    "ProcessEnv",
    "SimApi",
    "SimClient",
    "SimClock",
    "SimEnv",
    "SimResult",
    "SimWatch",
    "SimulationDeadlock",
    "SimulationRunaway",
    "Trace",
    "VirtualEventLoop",
    "WatchDecision",
    "check_fencing",
    "check_once",
    "manager_process",
    "run_virtual",
    "simulate",
]
