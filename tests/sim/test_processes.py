"""Simulated processes (`keel.sim.processes`): they behave as the agent expects of real ones
(signals, exit codes, adoption by a new agent, health checks), every start and stop is in the
room's history, and the overlap checker finds two copies of an exclusive instance at once."""

from __future__ import annotations

import asyncio

from keel.agent import Exited, ProcessDriver, Started, StartFailed, Workload
from keel.api.resources import HealthCheck, InstanceSpec, LivenessCheck, PortSpec
from keel.clock import ManualClock
from keel.sim.processes import Overlap, SimMachineRoom, Transition, overlaps


def workload(name: str, *, exclusive: bool = False, ports: int = 0) -> Workload:
    spec = InstanceSpec(
        command=["serve"],
        exclusive=exclusive,
        ports=[PortSpec(name=f"p{i}") for i in range(ports)],
    )
    return Workload(namespace="default", name=name, spec=spec, ports={}, log_path="")


def start(driver: ProcessDriver, name: str, *, exclusive: bool = False) -> Started:
    started = driver.start(workload(name, exclusive=exclusive))
    assert isinstance(started, Started)
    return started


def test_term_ends_a_process_after_the_delay_and_kill_at_once() -> None:
    clock = ManualClock()
    room = SimMachineRoom(clock, term_delay=0.5)
    driver: ProcessDriver = room.driver("n1")
    a, b = start(driver, "a"), start(driver, "b")
    assert a.pid != b.pid
    assert driver.poll(a.pid, a.proc_start) is None

    assert driver.signal(a.pid, "TERM")
    clock.advance(0.4)
    assert driver.alive(a.pid, a.proc_start)
    assert driver.signal(b.pid, "KILL")
    assert driver.poll(b.pid, b.proc_start) == Exited(-9)
    clock.advance(0.1)
    assert driver.poll(a.pid, a.proc_start) == Exited(-15)
    assert not driver.signal(a.pid, "KILL")  # nothing left to signal
    assert room.running() == {}


def test_a_process_that_ignores_term_runs_until_killed() -> None:
    clock = ManualClock()
    room = SimMachineRoom(clock)
    room.script("default/stubborn").ignore_term = True
    driver = room.driver("n1")
    p = start(driver, "stubborn")
    driver.signal(p.pid, "TERM")
    clock.advance(60)
    assert driver.alive(p.pid, p.proc_start)
    driver.signal(p.pid, "KILL")
    assert driver.poll(p.pid, p.proc_start) == Exited(-9)


def test_scripted_start_failures_exits_and_crashes() -> None:
    clock = ManualClock()
    room = SimMachineRoom(clock)
    room.script("default/broken").start_error = "no such file: serve"
    room.script("default/short").exit_after = 2.0
    room.script("default/short").exit_code = 3
    driver = room.driver("n1")
    assert driver.start(workload("broken")) == StartFailed("no such file: serve")
    short, web = start(driver, "short"), start(driver, "web")
    clock.advance(2.0)
    assert driver.poll(short.pid, short.proc_start) == Exited(3)
    assert room.crash("default/web", code=137) == [web.pid]
    assert driver.poll(web.pid, web.proc_start) == Exited(137)


def test_a_new_agent_sees_the_old_agents_processes_but_not_their_exit_codes() -> None:
    clock = ManualClock()
    room = SimMachineRoom(clock)
    p = start(room.driver("n1"), "web")
    later = room.driver("n1")  # the agent restarted; the machine did not
    assert later.alive(p.pid, p.proc_start)
    assert not later.alive(p.pid, p.proc_start + 1)  # a reused PID is another process
    assert not room.driver("n2").alive(p.pid, p.proc_start)  # another machine
    later.signal(p.pid, "KILL")
    assert later.poll(p.pid, p.proc_start) == Exited(None)


def test_health_checks_answer_from_the_script_while_the_process_runs() -> None:
    async def main() -> None:
        room = SimMachineRoom()
        driver = room.driver("n1")
        check = HealthCheck(type="tcp")
        live = LivenessCheck(type="tcp")
        web = workload("web")
        assert not (await driver.check_health(web, check)).ok  # not running
        p = start(driver, "web")
        assert (await driver.check_health(web, check)).ok
        room.set_healthy("default/web", False)
        assert not (await driver.check_health(web, check)).ok
        assert (await driver.check_health(web, live)).ok  # liveness answers on its own
        room.set_live("default/web", False)
        assert not (await driver.check_health(web, live)).ok
        room.set_healthy("default/web", True)
        assert (await driver.check_health(web, check)).ok
        driver.signal(p.pid, "KILL")
        assert not (await driver.check_health(web, check)).ok

    asyncio.run(main())


def test_ports_usage_and_power_off() -> None:
    clock = ManualClock()
    room = SimMachineRoom(clock, cpu=0.5, memory=1000)
    n1, n2 = room.driver("n1"), room.driver("n2")
    spec = workload("web", ports=2).spec
    assert n1.assign_ports(spec, taken={30000}) == {"p0": 30001, "p1": 30002}
    assert n1.assign_ports(spec, taken=()) == {"p0": 30003, "p1": 30004}
    assert n2.assign_ports(spec, taken=()) == {"p0": 30000, "p1": 30001}  # its own ports
    p = start(n1, "web")
    clock.advance(4.0)
    usage = n1.usage(p.pid)
    assert (usage.cpu_seconds, usage.memory_bytes) == (2.0, 1000)
    start(n2, "web")
    assert room.running() == {"default/web": ["n1", "n2"]}
    assert room.power_off("n1") == [p.pid]
    assert room.running() == {"default/web": ["n2"]}
    assert n1.usage(p.pid).memory_bytes == 0


def test_the_history_shows_an_exclusive_instance_running_twice() -> None:
    clock = ManualClock()
    room = SimMachineRoom(clock, term_delay=1.0)
    n1, n2 = room.driver("n1"), room.driver("n2")
    first = start(n1, "solo", exclusive=True)
    start(n1, "plain")
    clock.advance(5)
    n1.signal(first.pid, "TERM")
    second = start(n2, "solo", exclusive=True)  # too early: the first is still stopping
    start(n2, "plain")  # not exclusive: two copies are fine
    clock.advance(1)
    assert room.overlaps() == [
        Overlap("default/solo", 5.0, 6.0, ("n1", "n2"), (first.pid, second.pid))
    ]
    kinds = [(t.time, t.node, t.instance, t.kind) for t in room.history()]
    assert kinds == [
        (0.0, "n1", "default/solo", "start"),
        (0.0, "n1", "default/plain", "start"),
        (5.0, "n2", "default/solo", "start"),
        (5.0, "n2", "default/plain", "start"),
        (6.0, "n1", "default/solo", "stop"),
    ]


def test_a_copy_starting_as_another_stops_is_no_overlap() -> None:
    history = [
        Transition(0.0, "n1", "ns/x", "start", 1, True),
        Transition(3.0, "n2", "ns/x", "start", 2, True),
        Transition(3.0, "n1", "ns/x", "stop", 1, True),
        Transition(4.0, "n3", "ns/x", "start", 3, True),
    ]
    assert overlaps(history) == [Overlap("ns/x", 4.0, None, ("n2", "n3"), (2, 3))]


def test_a_copy_killed_the_instant_it_started_never_overlaps() -> None:
    """Found by the platform simulation: a start and a KILL at one instant sort stop-first,
    and must not leave a phantom copy running."""
    history = [
        Transition(0.0, "n1", "ns/x", "start", 1, True),
        Transition(5.0, "n1", "ns/x", "stop", 1, True),
        Transition(9.0, "n2", "ns/x", "start", 2, True),
        Transition(9.0, "n2", "ns/x", "stop", 2, True),
        Transition(10.0, "n2", "ns/x", "start", 3, True),
    ]
    assert overlaps(history) == []
