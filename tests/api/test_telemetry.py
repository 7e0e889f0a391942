"""Telemetry bodies are validated naming the field, and held in memory with TTLs and bounds,
in virtual time."""

from __future__ import annotations

from typing import Any

import pytest
from support import ManualClock

from keel.api.telemetry import (
    DEFAULT_TTL,
    EVENTS,
    INSTANCEUSAGES,
    NODEHEARTBEATS,
    TelemetryError,
    TelemetryStore,
    decode,
    key_of,
    subject_node,
    ttl_of,
    validate,
)

T0 = "2024-05-01T12:00:00Z"


def heartbeat(node: str = "n1", **extra: Any) -> dict[str, Any]:
    return {"node": node, "cpuUsage": "250m", "memoryUsage": "128Mi", "time": T0, **extra}


def usage(instance: str = "web-1", node: str = "n1", **extra: Any) -> dict[str, Any]:
    body = {"instance": instance, "node": node, "cpu": 0.5, "memory": 1048576, "restarts": 0}
    return {**body, **extra}


def event(name: str = "web-1", kind: str = "Instance", **extra: Any) -> dict[str, Any]:
    body = {
        "involvedObject": {"kind": kind, "namespace": "default", "name": name},
        "reason": "Started",
        "message": "process started",
        "type": "Normal",
        "time": T0,
    }
    return {**body, **extra}


# --------------------------------------------------------------------------- validation


def test_valid_bodies_pass_unchanged() -> None:
    assert validate(NODEHEARTBEATS, heartbeat()) == heartbeat()
    assert validate(INSTANCEUSAGES, usage(time=T0))["restarts"] == 0
    assert validate(EVENTS, event(source="agent", node="n1")) == event(source="agent", node="n1")
    assert (
        decode(
            NODEHEARTBEATS, b'{"node":"n1","cpuUsage":1,"memoryUsage":2,"time":"%s"}' % T0.encode()
        )["node"]
        == "n1"
    )


@pytest.mark.parametrize(
    ("kind", "body", "field", "message"),
    [
        (
            NODEHEARTBEATS,
            {"node": "n1", "cpuUsage": "1", "memoryUsage": "1"},
            "time",
            "nodeheartbeats: time: Object missing required field `time`",
        ),
        (NODEHEARTBEATS, heartbeat(extra=1), "extra", "unknown field `extra`"),
        (NODEHEARTBEATS, heartbeat(node="Bad_Name"), "node", "matching regex"),
        (NODEHEARTBEATS, heartbeat(cpuUsage="lots"), "cpuUsage", "cpuUsage"),
        (NODEHEARTBEATS, heartbeat(memoryUsage=-1), "memoryUsage", ">= 0"),
        (NODEHEARTBEATS, heartbeat(time="yesterday"), "time", "matching regex"),
        (INSTANCEUSAGES, usage(restarts=-1), "restarts", "restarts: Expected `int` >= 0"),
        (INSTANCEUSAGES, usage(restarts="3"), "restarts", "Expected `int`, got `str`"),
        (
            INSTANCEUSAGES,
            {"instance": "a", "node": "n1", "cpu": 1, "memory": 1},
            "restarts",
            "missing required field `restarts`",
        ),
        (EVENTS, event(type="Info"), "type", "Invalid enum value 'Info': expected Normal or"),
        (
            EVENTS,
            {**event(), "involvedObject": {"kind": "Instance"}},
            "involvedObject.name",
            "events: involvedObject.name: Object missing required field `name`",
        ),
        (
            EVENTS,
            {**event(), "involvedObject": {"kind": "X", "name": "a", "uid": "1"}},
            "involvedObject.uid",
            "unknown field `uid`",
        ),
        (EVENTS, event(reason=""), "reason", "length >= 1"),
        (EVENTS, [1, 2], "", "Expected `object`, got `array`"),
    ],
)
def test_invalid_bodies_are_rejected_naming_the_field(
    kind: str, body: object, field: str, message: str
) -> None:
    with pytest.raises(TelemetryError) as info:
        validate(kind, body)
    assert info.value.field == field
    assert message in str(info.value)


def test_invalid_json_and_unknown_kinds_are_explained() -> None:
    with pytest.raises(TelemetryError, match="invalid JSON"):
        decode(EVENTS, b"{")
    with pytest.raises(TelemetryError, match="unknown telemetry kind 'pods'"):
        validate("pods", {})


def test_the_url_name_must_agree_with_the_body() -> None:
    assert key_of(NODEHEARTBEATS, None, "n1", heartbeat("n1")) == "n1"
    assert key_of(NODEHEARTBEATS, None, None, heartbeat("n1")) == "n1"
    assert key_of(INSTANCEUSAGES, "default", "web-1", usage("web-1")) == "web-1"
    assert key_of(EVENTS, "default", None, event("web-1")) == "web-1"
    with pytest.raises(TelemetryError, match="node: 'n2' differs from the URL's name 'n1'"):
        key_of(NODEHEARTBEATS, None, "n1", heartbeat("n2"))
    with pytest.raises(TelemetryError, match="instance"):
        key_of(INSTANCEUSAGES, "default", "web-2", usage("web-1"))
    with pytest.raises(TelemetryError, match=r"involvedObject\.namespace") as info:
        key_of(EVENTS, "prod", None, event())
    assert info.value.field == "involvedObject.namespace"


def test_subject_node_is_the_node_the_telemetry_is_about() -> None:
    assert subject_node(NODEHEARTBEATS, heartbeat("n7")) == "n7"
    assert subject_node(INSTANCEUSAGES, usage(node="n3")) == "n3"
    assert subject_node(EVENTS, event(node="n2")) == "n2"
    node_event = event("n4", kind="Node")
    node_event["involvedObject"]["namespace"] = ""
    assert subject_node(EVENTS, node_event) == "n4"
    assert subject_node(EVENTS, event()) is None


# --------------------------------------------------------------------------- store


def test_latest_heartbeat_replaces_the_previous_one() -> None:
    store = TelemetryStore(ManualClock())
    store.put(NODEHEARTBEATS, None, "n1", heartbeat(cpuUsage="1"))
    store.put(NODEHEARTBEATS, None, "n1", heartbeat(cpuUsage="2"))
    assert store.get(NODEHEARTBEATS, None, "n1") == heartbeat(cpuUsage="2")
    assert store.count(NODEHEARTBEATS) == 1


def test_entries_expire_after_their_ttl() -> None:
    clock = ManualClock()
    store = TelemetryStore(clock)
    store.put(NODEHEARTBEATS, None, "n1", heartbeat(), ttl=10)
    clock.advance(9.9)
    assert store.get(NODEHEARTBEATS, None, "n1") is not None
    clock.advance(0.1)
    assert store.get(NODEHEARTBEATS, None, "n1") is None
    assert store.count(NODEHEARTBEATS) == 0  # dropped on access


def test_default_ttls_hold_a_heartbeat_for_a_minute_and_events_for_an_hour() -> None:
    clock = ManualClock()
    store = TelemetryStore(clock)
    store.put(NODEHEARTBEATS, None, "n1", heartbeat())
    store.put(EVENTS, "default", "web-1", event())
    clock.advance(DEFAULT_TTL[NODEHEARTBEATS])
    assert store.get(NODEHEARTBEATS, None, "n1") is None
    assert store.get(EVENTS, "default", "web-1") == event()
    clock.advance(3600 - 60)
    assert store.events("default", "web-1") == []


def test_a_renewed_heartbeat_lives_on() -> None:
    clock = ManualClock()
    store = TelemetryStore(clock)
    for _ in range(10):
        store.put(NODEHEARTBEATS, None, "n1", heartbeat(), ttl=10)
        clock.advance(5)
    assert store.get(NODEHEARTBEATS, None, "n1") is not None


def test_list_returns_live_entries_of_one_namespace_or_all() -> None:
    clock = ManualClock()
    store = TelemetryStore(clock)
    store.put(INSTANCEUSAGES, "prod", "b", usage("b"))
    store.put(INSTANCEUSAGES, "default", "z", usage("z"))
    store.put(INSTANCEUSAGES, "default", "a", usage("a"), ttl=1)
    assert [u["instance"] for u in store.list(INSTANCEUSAGES, "default")] == ["a", "z"]
    assert [u["instance"] for u in store.list(INSTANCEUSAGES)] == ["a", "z", "b"]
    clock.advance(1)
    assert [u["instance"] for u in store.list(INSTANCEUSAGES)] == ["z", "b"]


def test_sweep_drops_every_expired_entry() -> None:
    clock = ManualClock()
    store = TelemetryStore(clock)
    for i in range(100):
        store.put(NODEHEARTBEATS, None, f"n{i}", heartbeat(f"n{i}"), ttl=10 if i % 2 else 100)
        store.put(EVENTS, "default", f"o{i}", event(f"o{i}"), ttl=10 if i % 2 else 100)
    clock.advance(10)
    assert store.sweep() == 100
    assert store.count(NODEHEARTBEATS) == 50 and store.count(EVENTS) == 50
    assert store.sweep() == 0


def test_events_append_per_object_and_keep_the_last_100() -> None:
    store = TelemetryStore(ManualClock())
    for i in range(250):
        store.put(EVENTS, "default", "web-1", event(message=f"m{i}"))
    store.put(EVENTS, "default", "web-2", event("web-2"))
    kept = store.events("default", "web-1")
    assert [e["message"] for e in kept] == [f"m{i}" for i in range(150, 250)]
    assert store.get(EVENTS, "default", "web-1") == event(message="m249")
    assert store.count(EVENTS) == 101


def test_event_list_is_in_arrival_order_across_objects() -> None:
    store = TelemetryStore(ManualClock())
    for i in range(6):
        store.put(EVENTS, "default", f"o{i % 3}", event(f"o{i % 3}", message=str(i)))
    store.put(EVENTS, "prod", "x", event("x"))
    assert [e["message"] for e in store.list(EVENTS, "default")] == [str(i) for i in range(6)]
    assert len(store.list(EVENTS)) == 7


def test_each_kind_is_bounded_dropping_the_least_recently_written() -> None:
    store = TelemetryStore(ManualClock(), max_entries=10)
    for i in range(25):
        store.put(NODEHEARTBEATS, None, f"n{i}", heartbeat(f"n{i}"))
    store.put(NODEHEARTBEATS, None, "n15", heartbeat("n15"))  # rewritten: now the newest
    store.put(NODEHEARTBEATS, None, "n25", heartbeat("n25"))
    names = {h["node"] for h in store.list(NODEHEARTBEATS)}
    assert store.count(NODEHEARTBEATS) == 10
    assert names == {f"n{i}" for i in (*range(17, 26), 15)}


def test_events_in_total_are_bounded_dropping_the_oldest_objects_events() -> None:
    store = TelemetryStore(ManualClock(), max_entries=50, max_events_per_object=20)
    for i in range(1000):
        store.put(EVENTS, "default", f"o{i % 7}", event(f"o{i % 7}", message=str(i)))
    assert store.count(EVENTS) == 50
    messages = [int(e["message"]) for e in store.list(EVENTS)]
    assert len(messages) == 50 and max(messages) == 999
    assert min(messages) >= 1000 - 7 * 20


def test_unknown_kinds_are_refused() -> None:
    store = TelemetryStore(ManualClock())
    with pytest.raises(TelemetryError, match="unknown telemetry kind"):
        store.put("pods", "default", "p", {})
    with pytest.raises(TelemetryError, match="unknown telemetry kind"):
        store.list("pods")


def test_a_writer_may_choose_the_ttl_within_a_day() -> None:
    clock = ManualClock()
    store = TelemetryStore(clock)
    body = validate(NODEHEARTBEATS, heartbeat(ttlSeconds=5))
    assert ttl_of(body) == 5.0 and ttl_of(heartbeat()) is None
    store.put(NODEHEARTBEATS, None, "n1", body, ttl_of(body))
    clock.advance(5)
    assert store.get(NODEHEARTBEATS, None, "n1") is None
    for bad in (0, -1, 86401):
        with pytest.raises(TelemetryError) as info:
            validate(NODEHEARTBEATS, heartbeat(ttlSeconds=bad))
        assert info.value.field == "ttlSeconds"
