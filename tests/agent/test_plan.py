"""The agent's pure decisions: what `plan` does for each combination of desired Instance,
observed process and lease state, and how exits, probes and backoff update a record."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime

import pytest
from msgspec.structs import replace

from keel.agent import (
    Forget,
    Kill,
    Probe,
    Record,
    Report,
    Start,
    Stop,
    View,
    backoff_delay,
    new_record,
    next_wakeup,
    observe_deleted,
    observe_exit,
    observe_liveness,
    observe_probe,
    observe_start_failed,
    observe_started,
    observe_stopping,
    plan,
    status_to_write,
)
from keel.api.resources import (
    Condition,
    HealthCheck,
    Instance,
    InstanceSpec,
    InstanceStatus,
    LivenessCheck,
    ObjectMeta,
    PortSpec,
    PortStatus,
)

NODE = "n1"
KEY = "default/web"
T0 = 1_000_000.0
VIEW = View(node=NODE, host_ip="127.0.0.1", synced=True, exclusive_ok=True)


def vw(**changes: object) -> View:
    return dataclasses.replace(VIEW, **changes)  # type: ignore[arg-type]


def inst(
    *,
    node: str = NODE,
    uid: str = "u1",
    policy: str = "Always",
    exclusive: bool = False,
    check: HealthCheck | None = None,
    live: LivenessCheck | None = None,
    deleting: bool = False,
    status: InstanceStatus | None = None,
) -> Instance:
    return Instance(
        kind="Instance",
        metadata=ObjectMeta(
            name="web",
            namespace="default",
            uid=uid,
            resource_version="5",
            deletion_timestamp="2026-01-01T00:00:00Z" if deleting else None,
        ),
        spec=InstanceSpec(
            command=["sleep", "100"],
            node_name=node,
            ports=[PortSpec(name="http")],
            restart_policy=policy,  # type: ignore[arg-type]
            exclusive=exclusive,
            health_check=check,
            liveness_check=live,
            termination_grace_period_seconds=7,
        ),
        status=status or InstanceStatus(phase="Scheduled"),
    )


def running(instance: Instance | None = None, at: float = T0) -> Record:
    record = new_record(instance or inst(), {"http": 4242}, "/tmp/web.log")
    return observe_started(record, pid=100, proc_start=55, now=at)


def exited(record: Record, code: int | None, at: float) -> Record:
    return observe_exit(record, code, at)


LIVE = LivenessCheck(type="http", port="http", period_seconds=2, failure_threshold=3)


def failing(record: Record, times: int, reason: str = "GET :4242/: HTTP 500") -> Record:
    """`times` liveness check failures in a row, one period apart from T0 on."""
    for i in range(times):
        record = observe_liveness(record, False, reason, T0 + 2 * i)
    return record


def killed(record: Record, code: int | None, at: float) -> Record:
    """Stopped for its failed liveness check (as `plan` asks), then exited with `code`."""
    return observe_exit(observe_stopping(record, "liveness", 7.0, at - 1), code, at)


def kinds(actions: Sequence[object]) -> list[str]:
    return [type(a).__name__ for a in actions]


# (case, desired instance or None, record or None, view, now, expected action kinds)
CASES = [
    ("new bound instance starts", inst(), None, VIEW, T0, ["Start"]),
    ("instance bound elsewhere is ignored", inst(node="n2"), None, VIEW, T0, []),
    ("deleting instance is not started, and said to be over", inst(deleting=True), None, VIEW,
     T0, ["Report"]),
    ("deleting instance never started, said so: nothing more",
     inst(deleting=True, status=InstanceStatus(phase="Failed")), None, VIEW, T0, []),
    ("deleting instance bound elsewhere is none of ours", inst(node="n2", deleting=True), None,
     VIEW, T0, []),
    ("finished instance without record is left alone",
     inst(status=InstanceStatus(phase="Succeeded")), None, VIEW, T0, []),
    ("exclusive waits for a fresh lease", inst(exclusive=True), None,
     vw(exclusive_ok=False), T0, []),
    ("exclusive starts with a fresh lease", inst(exclusive=True), None, VIEW, T0, ["Start"]),
    ("exclusive waits for bindings as new as the lease", inst(exclusive=True), None,
     vw(bindings_fresh=False), T0, []),
    ("a running exclusive instance needs only a fresh lease", inst(exclusive=True),
     running(inst(exclusive=True)), vw(bindings_fresh=False), T0, ["Report"]),
    ("running process reports Running", inst(), running(), VIEW, T0, ["Report"]),
    ("deleted instance is stopped", None, running(), VIEW, T0, ["Stop"]),
    ("deletionTimestamp stops it", inst(deleting=True), running(), VIEW, T0, ["Stop"]),
    ("stopped for its deletion: the terminal phase is reported", inst(deleting=True),
     exited(observe_stopping(running(), "deleted", 7.0, T0), -15, T0 + 1), VIEW, T0 + 1,
     ["Report"]),
    ("stopped for its deletion, reported: forget", inst(deleting=True, status=InstanceStatus(
     phase="Failed")), exited(observe_stopping(running(), "deleted", 7.0, T0), -15, T0 + 1),
     VIEW, T0 + 1, ["Forget"]),
    ("deleted while fenced: the fenced stop is reported as the end", inst(exclusive=True,
     deleting=True), exited(observe_stopping(running(inst(exclusive=True)), "fenced", 1.5, T0),
     -15, T0 + 1), VIEW, T0 + 1, ["Report"]),
    ("deleted while backing off after a crash: reported, not restarted", inst(deleting=True),
     exited(running(), 1, T0 + 1), VIEW, T0 + 5, ["Report"]),
    ("deleted while the agent shuts down: stopped for the shutdown", inst(deleting=True),
     running(), vw(stopping_all=True), T0, ["Stop"]),
    ("deleted, then the Instance went: forget", None,
     exited(observe_stopping(running(), "deleted", 7.0, T0), -15, T0 + 1), VIEW, T0 + 1,
     ["Forget"]),
    ("rebound elsewhere stops it", inst(node="n2"), running(), VIEW, T0, ["Stop"]),
    ("same name, new uid: the old process stops", inst(uid="u2"), running(), VIEW, T0, ["Stop"]),
    ("unknown desired state keeps it running (static stability)", None, running(),
     vw(synced=False), T0, []),
    ("stale lease stops an exclusive instance", inst(exclusive=True),
     running(inst(exclusive=True)), vw(exclusive_ok=False), T0, ["Stop"]),
    ("stale lease leaves a normal instance alone", inst(), running(),
     vw(exclusive_ok=False), T0, ["Report"]),
    ("grace period over: kill", None,
     observe_stopping(running(), "unwanted", 7.0, T0), VIEW, T0 + 7.0, ["Kill"]),
    ("within grace period: wait", None,
     observe_stopping(running(), "unwanted", 7.0, T0), VIEW, T0 + 6.9, []),
    ("stopped and unwanted: forget", None,
     exited(observe_stopping(running(), "unwanted", 7.0, T0), -15, T0 + 1), VIEW, T0 + 1,
     ["Forget"]),
    ("gone while control plane unknown: keep the record", None,
     exited(running(), 1, T0 + 1), vw(synced=False), T0 + 2, ["Start"]),
    ("crash waits for backoff", inst(), exited(running(), 1, T0 + 1), VIEW, T0 + 1.5,
     ["Report"]),
    ("backoff over: restart", inst(), exited(running(), 1, T0 + 1), VIEW, T0 + 2.0, ["Start"]),
    ("Never: exit 0 is Succeeded, reported", inst(policy="Never"),
     exited(running(inst(policy="Never")), 0, T0 + 1), VIEW, T0 + 5, ["Report"]),
    ("OnFailure: exit 0 is not restarted", inst(policy="OnFailure"),
     exited(running(inst(policy="OnFailure")), 0, T0 + 1), VIEW, T0 + 100, ["Report"]),
    ("health check due: probe", inst(check=HealthCheck(type="tcp")),
     running(inst(check=HealthCheck(type="tcp"))), VIEW, T0, ["Probe", "Report"]),
    ("initial delay: no probe yet", inst(check=HealthCheck(type="tcp", initial_delay_seconds=5)),
     running(inst(check=HealthCheck(type="tcp", initial_delay_seconds=5))), VIEW, T0 + 4,
     ["Report"]),
    ("liveness check due: probe", inst(live=LIVE), running(inst(live=LIVE)), VIEW, T0,
     ["Probe", "Report"]),
    ("liveness threshold reached: stop", inst(live=LIVE), failing(running(inst(live=LIVE)), 3),
     VIEW, T0 + 6, ["Stop"]),
    ("liveness failing, below the threshold: probe on", inst(live=LIVE),
     failing(running(inst(live=LIVE)), 2), VIEW, T0 + 4, ["Probe", "Report"]),
    ("liveness stop: restarted after the backoff", inst(live=LIVE),
     killed(failing(running(inst(live=LIVE)), 3), 0, T0 + 7), VIEW, T0 + 8, ["Start"]),
    ("liveness stop under Never: Failed, reported, not restarted", inst(policy="Never", live=LIVE),
     killed(failing(running(inst(policy="Never", live=LIVE)), 3), 0, T0 + 7), VIEW, T0 + 100,
     ["Report"]),
    ("shutdown stops everything", inst(), running(), vw(stopping_all=True), T0,
     ["Stop"]),
    ("shutdown keeps the records of stopped processes", inst(),
     exited(observe_stopping(running(), "shutdown", 7, T0), -15, T0 + 1),
     vw(stopping_all=True), T0 + 1, []),
    ("after shutdown: started again at once", inst(),
     exited(observe_stopping(running(), "shutdown", 7, T0), -15, T0 + 1), VIEW, T0 + 1,
     ["Start"]),
    ("fenced stop: restarted once the lease is fresh", inst(exclusive=True),
     exited(observe_stopping(running(inst(exclusive=True)), "fenced", 1.5, T0), -15, T0 + 1),
     VIEW, T0 + 1, ["Start"]),
    ("fenced stop: not restarted before the bindings are fresh", inst(exclusive=True),
     exited(observe_stopping(running(inst(exclusive=True)), "fenced", 1.5, T0), -15, T0 + 1),
     vw(bindings_fresh=False), T0 + 1, []),
    ("fenced stop: not restarted while the lease is stale", inst(exclusive=True),
     exited(observe_stopping(running(inst(exclusive=True)), "fenced", 1.5, T0), -15, T0 + 1),
     vw(exclusive_ok=False), T0 + 1, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("desired", "record", "view", "now", "expected"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_plan_table(
    desired: Instance | None, record: Record | None, view: View, now: float, expected: list[str]
) -> None:
    actions = plan({KEY: desired} if desired else {}, {KEY: record} if record else {}, now, view)
    assert kinds(actions) == expected
    assert all(a.key == KEY for a in actions)


def test_start_of_a_new_instance_carries_it() -> None:
    (action,) = plan({KEY: inst()}, {}, T0, VIEW)
    assert action == Start(KEY, inst())


def test_restart_uses_the_recorded_spec() -> None:
    (action,) = plan({}, {KEY: exited(running(), 1, T0)}, T0 + 5, vw(synced=False))
    assert action == Start(KEY, None)


def test_fencing_stop_ends_before_the_lease_does() -> None:
    record = running(inst(exclusive=True))
    view = vw(exclusive_ok=False, fence_grace=1.5)
    (action,) = plan({KEY: inst(exclusive=True)}, {KEY: record}, T0, view)
    assert action == Stop(KEY, 1.5, "fenced")


def test_a_deleted_instance_is_stopped_for_its_deletion() -> None:
    (action,) = plan({KEY: inst(deleting=True)}, {KEY: running()}, T0, VIEW)
    assert action == Stop(KEY, 7.0, "deleted")


# (why the agent stopped it, exit code) -> what the Instance ends as: the STOPS table's rows
@pytest.mark.parametrize(
    ("reason", "code", "terminal", "message"),
    [
        ("deleted", -15, "Failed", "stopped: the instance was deleted"),
        ("deleted", 0, "Succeeded", "stopped: the instance was deleted"),
        ("deleted", None, "Failed", "stopped: the instance was deleted"),
        ("fenced", -15, "", "stopped: the node lease could not be renewed (self-fencing)"),
        ("shutdown", -15, "", "stopped: the agent shut down"),
        ("unwanted", -15, "", "stopped: no longer bound to this node"),
    ],
)
def test_what_a_stop_leaves_behind(
    reason: str, code: int | None, terminal: str, message: str
) -> None:
    record = exited(observe_stopping(running(), reason, 7.0, T0), code, T0 + 1)  # type: ignore[arg-type]
    assert (record.terminal, record.message) == (terminal, message)
    assert record.next_start_at == 0.0 and record.crashes == 0


@pytest.mark.parametrize(
    ("record", "phase", "message"),
    [
        (exited(observe_stopping(running(), "deleted", 7.0, T0), 0, T0 + 1), "Succeeded",
         "stopped: the instance was deleted"),
        (exited(observe_stopping(running(), "fenced", 1.5, T0), -15, T0 + 1), "Failed",
         "stopped: the instance was deleted"),
        (exited(running(inst(policy="Never")), 3, T0 + 1), "Failed", "exited with code 3"),
        (None, "Failed", "deleted before it started on this node"),
    ],
    ids=["stopped for the deletion", "fenced, then deleted", "over before", "never started"],
)  # fmt: skip
def test_a_deleted_instance_reports_a_terminal_phase_once_its_process_is_gone(
    record: Record | None, phase: str, message: str
) -> None:
    """The terminal phase is the agent's word that no copy runs here: it is what releases
    the `keel.dev/stop-confirmed` finalizer of an exclusive Instance."""
    deleting = inst(exclusive=True, deleting=True, status=InstanceStatus(phase="Running"))
    (action,) = plan({KEY: deleting}, {KEY: record} if record else {}, T0 + 2, VIEW)
    assert isinstance(action, Report)
    assert (action.status.phase, action.status.message) == (phase, message)
    assert [(c.type, c.status) for c in action.status.conditions] == [("Ready", "False")]
    assert observe_deleted(deleting, record).terminal == phase


def test_a_deleting_instance_is_never_started_again() -> None:
    stopped = exited(observe_stopping(running(), "deleted", 7.0, T0), -15, T0 + 1)
    for view in (VIEW, vw(synced=False), vw(bindings_fresh=False)):
        actions = plan({KEY: inst(deleting=True)}, {KEY: stopped}, T0 + 100, view)
        assert not any(isinstance(a, Start) for a in actions)


def test_unwanted_stop_uses_the_termination_grace_period() -> None:
    (action,) = plan({}, {KEY: running()}, T0, VIEW)
    assert action == Stop(KEY, 7.0, "unwanted")


def test_kill_is_sent_once() -> None:
    record = replace(observe_stopping(running(), "unwanted", 1.0, T0), killed=True)
    assert plan({}, {KEY: record}, T0 + 5, VIEW) == []


@pytest.mark.parametrize(
    ("crashes", "delay"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (50, 60.0)]
)
def test_backoff_doubles_from_one_second_to_a_minute(crashes: int, delay: float) -> None:
    assert backoff_delay(crashes) == delay


def test_quick_crashes_grow_the_backoff_and_ten_healthy_seconds_reset_it() -> None:
    record = running()
    now = T0
    delays = []
    for _ in range(4):
        record = exited(record, 1, now + 0.5)
        delays.append(record.next_start_at - (now + 0.5))
        now = record.next_start_at
        record = observe_started(record, 100, 55, now)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    record = exited(record, 1, now + 10.0)
    assert record.next_start_at - (now + 10.0) == 1.0
    assert record.restarts == 4


@pytest.mark.parametrize(
    ("policy", "code", "terminal", "restarts"),
    [
        ("Always", 0, "", True),
        ("Always", 1, "", True),
        ("OnFailure", 0, "Succeeded", False),
        ("OnFailure", 3, "", True),
        ("OnFailure", None, "", True),
        ("Never", 0, "Succeeded", False),
        ("Never", 2, "Failed", False),
        ("Never", None, "Failed", False),
    ],
)
def test_restart_policy_table(policy: str, code: int | None, terminal: str, restarts: bool) -> None:
    record = exited(running(inst(policy=policy)), code, T0 + 1)
    assert record.terminal == terminal
    assert (record.next_start_at > 0) == restarts
    assert not record.running


def test_our_own_stop_is_not_a_crash() -> None:
    record = exited(observe_stopping(running(), "fenced", 1.5, T0), -9, T0 + 1)
    assert record.crashes == 0 and record.next_start_at == 0.0 and record.terminal == ""
    assert "self-fencing" in record.message


def test_start_failure_follows_the_restart_policy() -> None:
    never = observe_start_failed(new_record(inst(policy="Never"), {}, ""), "no such file", T0)
    assert never.terminal == "Failed" and "no such file" in never.message
    always = observe_start_failed(new_record(inst(), {}, ""), "no such file", T0)
    assert always.terminal == "" and always.next_start_at == T0 + 1.0


def test_health_thresholds_drive_ready() -> None:
    check = HealthCheck(type="http", success_threshold=2, failure_threshold=3, period_seconds=5)
    record = running(inst(check=check))
    assert not record.ready
    record = observe_probe(record, True, T0)
    assert not record.ready and record.next_probe_at == T0 + 5
    record = observe_probe(record, True, T0 + 5)
    assert record.ready
    for i in range(2):
        record = observe_probe(record, False, T0 + 10 + i)
        assert record.ready
    record = observe_probe(record, False, T0 + 20)
    assert not record.ready


def test_no_health_check_means_ready_once_running() -> None:
    assert running().ready


def test_status_reports_running_ready_ports_and_host_ip() -> None:
    status = status_to_write(running(), InstanceStatus(phase="Scheduled"), "127.0.0.1", T0)
    assert status is not None
    assert status.phase == "Running"
    assert status.host_ip == "127.0.0.1"
    assert status.ports == [PortStatus(name="http", port=4242)]
    assert status.started_at is not None
    assert datetime.fromisoformat(status.started_at).timestamp() == T0  # when it started
    assert [(c.type, c.status) for c in status.conditions] == [("Ready", "True")]


def test_status_is_written_only_on_a_transition() -> None:
    record = running()
    first = status_to_write(record, InstanceStatus(phase="Scheduled"), "127.0.0.1", T0)
    assert first is not None
    assert status_to_write(record, first, "127.0.0.1", T0 + 30) is None
    unhealthy = replace(record, ready=False)
    second = status_to_write(unhealthy, first, "127.0.0.1", T0 + 31)
    assert second is not None
    assert [c.status for c in second.conditions] == ["False"]


def test_other_conditions_are_kept() -> None:
    scheduled = Condition(type="Scheduled", status="True")
    status = status_to_write(
        running(), InstanceStatus(phase="Scheduled", conditions=[scheduled]), "127.0.0.1", T0
    )
    assert status is not None and status.conditions[0] == scheduled


def test_nothing_is_reported_before_the_first_start_or_while_stopping() -> None:
    fresh = new_record(inst(), {}, "")
    assert status_to_write(fresh, InstanceStatus(), "127.0.0.1", T0) is None
    stopping = observe_stopping(running(), "shutdown", 5, T0)
    assert status_to_write(stopping, InstanceStatus(), "127.0.0.1", T0) is None


def test_failed_instance_reports_phase_and_message() -> None:
    record = exited(running(inst(policy="Never")), 3, T0 + 1)
    status = status_to_write(record, InstanceStatus(phase="Running"), "127.0.0.1", T0)
    assert status is not None
    assert status.phase == "Failed" and status.message == "exited with code 3"


def test_plan_is_deterministic_over_many_instances() -> None:
    desired = {f"default/i{i}": replace(inst(), metadata=ObjectMeta(
        name=f"i{i}", namespace="default", uid=f"u{i}")) for i in range(5)}  # fmt: skip
    first = plan(desired, {}, T0, VIEW)
    assert first == plan(dict(reversed(desired.items())), {}, T0, VIEW)
    assert [a.key for a in first] == sorted(desired)


def test_next_wakeup_is_the_earliest_deadline() -> None:
    stopping = observe_stopping(running(), "unwanted", 3.0, T0)
    backing_off = exited(running(), 1, T0)
    assert next_wakeup([stopping], T0) == T0 + 3.0
    assert next_wakeup([backing_off, stopping], T0) == T0 + 1.0
    assert next_wakeup([], T0) == T0 + 60.0


def test_action_types_are_the_documented_ones() -> None:
    assert {Start, Stop, Kill, Probe, Forget, Report}  # the shell dispatches on these


# --------------------------------------------------------------------------- liveness


def test_reaching_the_liveness_failure_threshold_stops_the_process_for_a_restart() -> None:
    record = running(inst(live=LIVE))
    desired = {KEY: inst(live=LIVE)}
    record = failing(record, 2)
    assert record.live_failures == 2 and not record.liveness_failure
    assert Probe(KEY, "liveness") in plan(desired, {KEY: record}, T0 + 4, VIEW)
    record = observe_liveness(record, False, "GET :4242/: HTTP 500", T0 + 4)
    assert record.liveness_failure == "GET :4242/: HTTP 500"
    # Stopped gracefully, with its own termination grace period; nothing else meanwhile.
    assert plan(desired, {KEY: record}, T0 + 4, VIEW) == [Stop(KEY, 7.0, "liveness")]
    record = observe_stopping(record, "liveness", 7.0, T0 + 4)
    assert plan(desired, {KEY: record}, T0 + 10.9, VIEW) == []
    assert plan(desired, {KEY: record}, T0 + 11, VIEW) == [Kill(KEY)]

    record = observe_exit(record, -15, T0 + 5)
    assert record.terminal == "" and record.next_start_at == T0 + 6  # the 1 s backoff
    assert record.message == "killed: liveness check failed: GET :4242/: HTTP 500; restarting"
    assert plan(desired, {KEY: record}, T0 + 6, VIEW) == [Start(KEY, None)]
    record = observe_started(record, 101, 56, T0 + 6)
    assert record.restarts == 1
    assert record.live_failures == 0 and not record.liveness_failure


def test_a_liveness_success_resets_the_failure_count() -> None:
    record = failing(running(inst(live=LIVE)), 2)
    record = observe_liveness(record, True, "", T0 + 4)
    assert record.live_failures == 0
    record = failing(record, 2)
    assert not record.liveness_failure  # 2 + 2 failures, but never 3 in a row
    assert observe_liveness(record, False, "down", T0 + 9).liveness_failure == "down"


@pytest.mark.parametrize("check", ["readiness", "liveness"])
def test_no_check_runs_before_its_initial_delay(check: str) -> None:
    if check == "liveness":
        instance = inst(live=replace(LIVE, initial_delay_seconds=15))
    else:
        instance = inst(check=HealthCheck(type="tcp", initial_delay_seconds=15))
    record = running(instance)
    probe = Probe(KEY, check)  # type: ignore[arg-type]
    assert probe not in plan({KEY: instance}, {KEY: record}, T0 + 14.9, VIEW)
    assert next_wakeup([record], T0 + 14.9) == T0 + 15
    assert probe in plan({KEY: instance}, {KEY: record}, T0 + 15, VIEW)


def test_readiness_failures_turn_ready_off_and_never_stop_the_process() -> None:
    check = HealthCheck(type="http", failure_threshold=3, period_seconds=1)
    instance = inst(check=check, live=LIVE)
    record = running(instance)
    record = observe_liveness(observe_probe(record, True, T0), True, "", T0)
    assert record.ready
    for i in range(100):
        record = observe_probe(record, False, T0 + 1 + i)
        record = observe_liveness(record, True, "", T0 + 1 + i)
        actions = plan({KEY: instance}, {KEY: record}, T0 + 1 + i, VIEW)
        assert not any(isinstance(a, Stop | Kill) for a in actions)
    assert not record.ready and record.running and record.starts == 1


@pytest.mark.parametrize(
    ("policy", "code", "terminal", "restarts"),
    [
        ("Always", -15, "", True),
        ("Always", 0, "", True),
        # A liveness kill is a failure whatever the exit code its SIGTERM handler chose.
        ("OnFailure", 0, "", True),
        ("OnFailure", -9, "", True),
        ("Never", 0, "Failed", False),
        ("Never", -15, "Failed", False),
        ("Never", None, "Failed", False),  # ended while the agent was away
    ],
)
def test_a_liveness_kill_follows_the_restart_policy_as_a_failure(
    policy: str, code: int | None, terminal: str, restarts: bool
) -> None:
    record = killed(failing(running(inst(policy=policy, live=LIVE)), 3), code, T0 + 7)
    assert record.terminal == terminal
    assert (record.next_start_at > 0) == restarts
    assert "liveness check failed: GET :4242/: HTTP 500" in record.message
    if terminal:
        status = status_to_write(record, InstanceStatus(phase="Running"), "127.0.0.1", T0 + 7)
        assert status is not None and status.phase == "Failed"


def test_a_process_that_is_never_live_backs_off_and_one_live_for_long_starts_over() -> None:
    record = running(inst(live=LIVE))
    delays = []
    for _ in range(4):
        stop_at = record.started_at + 30  # ran 30 s, never passing its liveness check
        record = killed(replace(record, liveness_failure="down"), -15, stop_at)
        delays.append(record.next_start_at - stop_at)
        record = observe_started(record, 100, 55, record.next_start_at)
    assert delays == [1.0, 2.0, 4.0, 8.0]
    # Live for a minute before it failed: the backoff starts over.
    record = observe_liveness(record, True, "", record.started_at + 60)
    stop_at = record.started_at + 70
    record = killed(replace(record, liveness_failure="down"), -15, stop_at)
    assert record.next_start_at - stop_at == 1.0


def test_liveness_results_are_ignored_once_the_process_is_stopping_or_gone() -> None:
    record = observe_stopping(running(inst(live=LIVE)), "unwanted", 7.0, T0)
    assert observe_liveness(record, False, "x", T0) == record
    gone = exited(running(inst(live=LIVE)), 1, T0 + 1)
    assert observe_liveness(gone, False, "x", T0 + 1) == gone
