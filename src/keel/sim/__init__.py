"""Deterministic simulation of the real platform: virtual time, the real API server app on an
in-memory store, the real client over a simulated network (`ProcessNetwork`: latency, stalls,
lost answers, watch drops, rewinds and expiry), seeded process faults (crash, pause, lease
expiry), and `simulate()`, which checks convergence and that no dangerous action ran twice.
`keel.sim.platform.simulate_platform()` runs the real platform (controllers, schedulers, and
agents whose processes live in a `SimMachineRoom`) the same way. A seed replays exactly.
"""

from keel.sim.cluster import SimCluster
from keel.sim.faults import FaultMix, FaultScheduler, WatchDecision
from keel.sim.harness import (
    ProcessEnv,
    ProcessSpec,
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
from keel.sim.network import Mutation, MutationLog, ProcessNetwork
from keel.sim.processes import Overlap, SimMachineRoom, SimProcessDriver, overlaps
from keel.sim.trace import Trace
from keel.sim.transport import AppTransport

__all__ = [
    "AppTransport",
    "FaultMix",
    "FaultScheduler",
    "Mutation",
    "MutationLog",
    "Overlap",
    "ProcessEnv",
    "ProcessNetwork",
    "ProcessSpec",
    "SimClock",
    "SimCluster",
    "SimEnv",
    "SimMachineRoom",
    "SimProcessDriver",
    "SimResult",
    "SimulationDeadlock",
    "SimulationRunaway",
    "Trace",
    "VirtualEventLoop",
    "WatchDecision",
    "check_fencing",
    "check_once",
    "manager_process",
    "overlaps",
    "run_virtual",
    "simulate",
]
