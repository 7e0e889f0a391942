"""The real platform under simulation: Keel's controllers, scheduler replicas and one real
agent per node, on the real API server in memory, in virtual time, under seeded faults."""

from __future__ import annotations

from keel.sim import FaultMix
from keel.sim.platform import PlatformShape, simulate_platform


def test_the_platform_converges_without_faults() -> None:
    result = simulate_platform(0, faults=FaultMix.none(), duration=10.0)
    assert result.ok, result.explain()
