"""Where a `keel drain` stands, decided without a server: what is still to evict, what is
terminating, and what was evicted and may still be stopping."""

from __future__ import annotations

from keel.api.resources import Instance, InstanceSpec, ObjectMeta
from keel.cli.drain import Evicted, stopped_after, survey


def on_n1(name: str, *, terminating: bool = False) -> Instance:
    return Instance(
        metadata=ObjectMeta(
            name=name,
            namespace="default",
            uid=f"{name}-uid",
            deletion_timestamp="2026-01-01T00:00:00Z" if terminating else None,
        ),
        spec=InstanceSpec(command=["sleep", "1"], node_name="n1"),
    )


def evicted(name: str, at: float = 100.0, grace: float = 10.0) -> Evicted:
    return Evicted("default", name, f"{name}-uid", at=at, wall=1_767_225_600.0, grace=grace)


def test_what_is_on_the_node_and_not_evicted_is_to_evict() -> None:
    state = survey([on_n1("b"), on_n1("a")], {}, set(), now=0.0)
    assert [i.metadata.name for i in state.to_evict] == ["a", "b"]
    assert not state.empty


def test_a_terminating_instance_is_waited_for_not_evicted_again() -> None:
    state = survey([on_n1("a", terminating=True)], {}, set(), now=0.0)
    assert state.to_evict == [] and len(state.terminating) == 1


def test_an_evicted_instance_stops_by_report_or_at_the_end_of_its_grace_period() -> None:
    gone = {"a-uid": evicted("a")}
    assert [g.name for g in survey([], gone, set(), now=105.0).stopping] == ["a"]
    assert survey([], gone, {"a-uid"}, now=105.0).empty  # its agent said it stopped
    assert survey([], gone, set(), now=110.0).empty  # the agent has killed it by now


def test_a_replacement_of_the_same_name_is_another_instance() -> None:
    replacement = on_n1("a")
    replacement = Instance(
        metadata=ObjectMeta(name="a", namespace="default", uid="new-uid"),
        spec=replacement.spec,
    )
    state = survey([replacement], {"a-uid": evicted("a")}, {"a-uid"}, now=200.0)
    assert [i.metadata.uid for i in state.to_evict] == ["new-uid"]


def test_only_a_stop_reported_by_that_node_after_the_eviction_counts() -> None:
    wall = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    before = {"reason": "Exited", "node": "n1", "time": "2025-12-31T23:00:00Z"}
    elsewhere = {"reason": "Stopped", "node": "n2", "time": "2026-01-01T00:00:05Z"}
    started = {"reason": "Started", "node": "n1", "time": "2026-01-01T00:00:05Z"}
    assert not stopped_after([before, elsewhere, started], "n1", wall)
    stopped = {"reason": "Stopped", "node": "n1", "time": "2026-01-01T00:00:01Z"}
    assert stopped_after([before, stopped], "n1", wall)
