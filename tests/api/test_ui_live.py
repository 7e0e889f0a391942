"""The consensus boundary as the dashboard shows it (keel.api.ui.live) and the log tail's
file rules: pure functions, no I/O."""

from __future__ import annotations

from keel.api.ui import log_file_allowed, tail_lines
from keel.api.ui.live import BoundaryWindow


def test_writes_per_minute_slide_out_of_the_window() -> None:
    window = BoundaryWindow()
    window.note("Instance", "update", 1000.0)
    window.note("Instance", "update", 1030.0)
    window.note("Node", "update", 1050.0)
    assert window.per_minute(1055.0) == {"Instance": {"update": 2}, "Node": {"update": 1}}
    assert window.per_minute(1070.0) == {"Instance": {"update": 1}, "Node": {"update": 1}}
    assert window.per_minute(1200.0) == {}


def test_writes_in_a_minute_without_desired_state_changes_count_as_idle_writes() -> None:
    window = BoundaryWindow()
    window.note("Deployment", "update", 60.0)  # minute 1: someone changed the desired state
    window.note("Instance", "create", 61.0)
    window.note("Node", "update", 130.0)  # minute 2: nothing desired changed
    window.note("Instance", "update", 131.0)
    snap = window.snapshot(190.0, {("Node", "update"): 1})  # minute 3 has begun
    assert snap["idleWrites"] == 2
    assert snap["idleMinutes"] == 1
    assert snap["totals"] == {"Node": {"update": 1}}
    assert snap["secondsSinceWrite"] == 59.0


def test_a_quiet_minute_is_idle_and_costs_no_idle_writes() -> None:
    window = BoundaryWindow()
    window.note("Service", "create", 0.0)
    snap = window.snapshot(600.0, {})
    assert snap["idleWrites"] == 0
    assert snap["idleMinutes"] == 9


def test_the_tail_is_the_last_lines() -> None:
    assert tail_lines(b"a\nb\nc\n", 2) == b"b\nc\n"
    assert tail_lines(b"a\nb\nc", 2) == b"b\nc"
    assert tail_lines(b"a\n", 5) == b"a\n"
    assert tail_lines(b"a\nb\n", 0) == b""


def test_only_an_instances_own_log_file_is_served() -> None:
    assert log_file_allowed("/s/agents/n1/logs/default_web-0.log", "default", "web-0")
    assert not log_file_allowed("/etc/shadow", "default", "web-0")
    assert not log_file_allowed("/s/agents/n1/logs/default_other.log", "default", "web-0")
    assert not log_file_allowed("/s/x/default_web-0.log", "default", "web-0")
    assert log_file_allowed(".keel/agents/n1/logs/default_web-0.log", "default", "web-0")
