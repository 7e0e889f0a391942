"""Node room at binding time, without I/O: the fit check names each short resource, and the
index follows Nodes and Instances as the watch cache applies them (terminal Instances and
deleted ones give their room back)."""

from __future__ import annotations

import pytest

from keel.api.allocation import NodeRooms, shortfall
from keel.api.resources import (
    Instance,
    InstanceSpec,
    InstanceStatus,
    Node,
    NodeSpec,
    ObjectMeta,
    ResourceList,
)


@pytest.mark.parametrize(
    ("offer", "used", "want", "expected"),
    [
        ({"cpu": 1000}, {}, {"cpu": 1000}, ""),
        ({"cpu": 1000}, {"cpu": 1}, {"cpu": 1000}, "cpu (requested 1, free 999m of 1)"),
        ({"cpu": 1000, "memory": 2**30}, {"memory": 2**30}, {"cpu": 0, "memory": 1}, "memory"),
        ({"cpu": 1000}, {}, {"gpu": 1}, "gpu (requested 1, free 0 of 0)"),
        ({"gpu": 2}, {"gpu": 1}, {"gpu": 1}, ""),
        ({}, {}, {"cpu": 0, "memory": 0}, ""),  # asking for nothing always fits
    ],
)
def test_shortfall_names_every_short_resource(
    offer: dict[str, int], used: dict[str, int], want: dict[str, int], expected: str
) -> None:
    found = shortfall("n1", offer, used, want)
    if expected:
        assert found.startswith("node 'n1' has insufficient ")
        assert expected in found
    else:
        assert found == ""


def instance(name: str, node: str, cpu: str, phase: str = "Pending") -> Instance:
    return Instance(
        metadata=ObjectMeta(name=name, namespace="default"),
        spec=InstanceSpec(command=["x"], node_name=node, resources=ResourceList(cpu=cpu)),
        status=InstanceStatus(phase=phase),  # type: ignore[arg-type]
    )


def test_rooms_follow_nodes_and_instances() -> None:
    rooms = NodeRooms()
    node = Node(metadata=ObjectMeta(name="n1"), spec=NodeSpec(capacity=ResourceList(cpu="1")))
    rooms.on_node(b"/registry/nodes/n1", node)
    assert rooms.check("n1", {"cpu": 1000}) == ""
    rooms.on_instance(b"/i/a", instance("a", "n1", "600m"))
    assert "free 400m of 1" in rooms.check("n1", {"cpu": 500})
    assert rooms.check("n1", {"cpu": 300}) == ""
    assert "cpu" in rooms.check("n1", {"cpu": 300}, staged={"cpu": 200})  # earlier in a plan
    rooms.on_instance(b"/i/a", instance("a", "n1", "600m", phase="Succeeded"))  # done: freed
    assert rooms.check("n1", {"cpu": 1000}) == ""
    rooms.on_instance(b"/i/b", instance("b", "n1", "1"))
    rooms.on_instance(b"/i/b", None)  # deleted: freed
    assert rooms.check("n1", {"cpu": 1000}) == ""
    rooms.on_instance(b"/i/c", instance("c", "", "1"))  # unbound: takes nothing
    assert rooms.check("n1", {"cpu": 1000}) == ""
    rooms.on_node(b"/registry/nodes/n1", None)
    assert rooms.check("n1", {"cpu": 10**6}) == ""  # unknown here: nothing to check against
