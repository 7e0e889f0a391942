"""The Endpoints controller: its plan as tables (selection, port resolution, readiness,
writes only on change) and the real thing following Instance status on a `keel apiserver`."""

from __future__ import annotations

import msgspec
import pytest
from scheduler.keel_platform import platform
from support import ApiServer, wait_for_async

from keel.api.resources import (
    Condition,
    EndpointAddress,
    Endpoints,
    EndpointSubset,
    Instance,
    InstanceSpec,
    InstanceStatus,
    ObjectMeta,
    OwnerReference,
    PortStatus,
    Service,
    ServicePort,
    ServiceSpec,
)
from keel.client import KeelClient
from keel.controllers.endpoints import CreateEndpoints, ReplaceEndpoints, desired_subsets, plan

NS = "default"


def service(
    selector: dict[str, str] | None = None, ports: list[ServicePort] | None = None
) -> Service:
    return Service(
        metadata=ObjectMeta(name="web", namespace=NS, uid="svc-uid"),
        spec=ServiceSpec(
            selector={"app": "web"} if selector is None else selector,
            ports=[ServicePort(name="http", port=80, target_port="http")]
            if ports is None
            else ports,
        ),
    )


def running(
    name: str,
    *,
    labels: dict[str, str] | None = None,
    port: int = 8000,
    ready: bool = True,
    phase: str = "Running",
    host_ip: str = "127.0.0.1",
) -> Instance:
    return Instance(
        metadata=ObjectMeta(
            name=name, namespace=NS, labels={"app": "web"} if labels is None else labels
        ),
        spec=InstanceSpec(command=["x"], node_name="n1"),
        status=InstanceStatus(
            phase=phase,  # type: ignore[arg-type]
            host_ip=host_ip,
            ports=[PortStatus(name="http", port=port)],
            conditions=[Condition(type="Ready", status="True" if ready else "False")],
        ),
    )


def addresses(svc: Service, instances: list[Instance]) -> list[tuple[str, int, bool]]:
    subsets = desired_subsets(svc, instances)
    return [(a.instance, a.port, a.ready) for s in subsets for a in s.addresses]


@pytest.mark.parametrize(
    ("instances", "expected"),
    [
        ([running("b", port=2), running("a", port=1)], [("a", 1, True), ("b", 2, True)]),
        ([running("a", ready=False)], [("a", 8000, False)]),
        ([running("a", labels={"app": "other"})], []),
        ([running("a", phase="Scheduled")], []),
        ([running("a", host_ip="")], []),
    ],
)
def test_addresses_of_selected_running_instances(
    instances: list[Instance], expected: list[tuple[str, int, bool]]
) -> None:
    assert addresses(service(), instances) == expected


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        (ServicePort(name="http", port=80, target_port="http"), [("a", 8000, True)]),
        (ServicePort(name="web", port=80, target_port=8000), [("a", 8000, True)]),
        (ServicePort(name="web", port=80, target_port="8000"), [("a", 8000, True)]),
        (ServicePort(name="http", port=80), [("a", 8000, True)]),  # by the port's name
        (ServicePort(name="admin", port=80, target_port="admin"), []),  # no such port
    ],
)
def test_target_port_by_name_or_number(port: ServicePort, expected: list[object]) -> None:
    assert addresses(service(ports=[port]), [running("a")]) == expected


def test_service_without_selector_or_gone_is_left_alone() -> None:
    external = msgspec.structs.replace(service(), spec=ServiceSpec(selector=None))
    assert plan(external, None, [running("a")]) == []
    assert plan(None, None, [running("a")]) == []


def test_created_once_then_written_only_on_change() -> None:
    svc = service()
    actions = plan(svc, None, [running("a")])
    assert len(actions) == 1 and isinstance(actions[0], CreateEndpoints)
    stored = actions[0].endpoints
    assert stored.metadata.owner_references[0].uid == "svc-uid"
    assert plan(svc, stored, [running("a")]) == []
    changed = plan(svc, stored, [running("a", ready=False)])
    assert len(changed) == 1 and isinstance(changed[0], ReplaceEndpoints)
    assert changed[0].endpoints.subsets[0].addresses[0].ready is False


def test_existing_endpoints_get_the_owner_reference() -> None:
    svc = service()
    subsets = desired_subsets(svc, [running("a")])
    stored = Endpoints(metadata=ObjectMeta(name="web", namespace=NS), subsets=subsets)
    actions = plan(svc, stored, [running("a")])
    assert isinstance(actions[0], ReplaceEndpoints)
    assert actions[0].endpoints.metadata.owner_references == [
        OwnerReference(api_version="keel.dev/v1", kind="Service", name="web", uid="svc-uid",
                       controller=True)
    ]  # fmt: skip


# ------------------------------------------------------------------ real API server


async def test_endpoints_follow_instance_status(apiserver: ApiServer, name: str) -> None:
    async with (
        KeelClient.from_kubeconfig(apiserver.kubeconfig) as admin,
        platform(apiserver, ("endpoints",), scheduler=False),
    ):
        await admin.create(
            Service(
                metadata=ObjectMeta(name=name, namespace=NS),
                spec=ServiceSpec(
                    selector={"app": name},
                    ports=[ServicePort(name="http", port=80, target_port="http")],
                ),
            )
        )
        external = f"{name}-ext"
        await admin.create(
            Service(metadata=ObjectMeta(name=external, namespace=NS), spec=ServiceSpec())
        )
        instances = [f"{name}-{i}" for i in range(2)]
        for instance in instances:
            await admin.create(
                Instance(
                    metadata=ObjectMeta(name=instance, namespace=NS, labels={"app": name}),
                    spec=InstanceSpec(command=["x"]),
                )
            )
            await admin.bind(NS, instance, "n1")

        async def addresses_are(wanted: list[tuple[str, int, bool]]) -> bool:
            try:
                ep = await admin.get(Endpoints, name, namespace=NS)
            except Exception:
                return False
            got = [(a.instance, a.port, a.ready) for s in ep.subsets for a in s.addresses]
            return got == wanted

        await wait_for_async("empty Endpoints", lambda: addresses_are([]))
        for port, instance in enumerate(instances, start=9001):
            await set_status(admin, instance, port, ready=False)
        await wait_for_async(
            "two not-ready addresses",
            lambda: addresses_are([(instances[0], 9001, False), (instances[1], 9002, False)]),
        )
        await set_status(admin, instances[0], 9001, ready=True)
        await wait_for_async(
            "the first address ready",
            lambda: addresses_are([(instances[0], 9001, True), (instances[1], 9002, False)]),
        )
        await admin.delete(Instance, instances[1], namespace=NS)
        await wait_for_async(
            "the deleted one gone", lambda: addresses_are([(instances[0], 9001, True)])
        )
        ep = await admin.get(Endpoints, name, namespace=NS)
        assert ep.subsets == [
            EndpointSubset(
                name="http",
                addresses=[
                    EndpointAddress(
                        ip="127.0.0.1", port=9001, instance=instances[0], node="n1", ready=True
                    )
                ],
            )
        ]
        # Idle: no rewrites.
        before = ep.metadata.resource_version
        await set_status(admin, instances[0], 9001, ready=True, message="unrelated")
        await wait_for_async("unchanged", lambda: addresses_are([(instances[0], 9001, True)]))
        after = await admin.get(Endpoints, name, namespace=NS)
        assert after.metadata.resource_version == before
        # The Service without a selector got no Endpoints from us.
        listed = await admin.list(Endpoints, namespace=NS)
        assert external not in {e.metadata.name for e in listed.items}


async def set_status(
    client: KeelClient, name: str, port: int, *, ready: bool, message: str = ""
) -> None:
    current = await client.get(Instance, name, namespace=NS)
    status = InstanceStatus(
        phase="Running",
        host_ip="127.0.0.1",
        ports=[PortStatus(name="http", port=port)],
        conditions=[Condition(type="Ready", status="True" if ready else "False")],
        message=message,
    )
    await client.update_status(msgspec.structs.replace(current, status=status))
