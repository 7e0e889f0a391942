"""External service registrations: the endpoints plan merging registration Leases with
selected Instances (pure tables), the registration Lease on the wire (validation, the Service
must exist, only `ready` may change, who may register, renewals are not writes), and the
Endpoints controller following registrations on a real `keel apiserver`."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import msgspec
import pytest
from controllers.test_endpoints import running, service
from scheduler.keel_platform import platform
from support import V1, ApiServer, wait_for_async

from keel.api.resources import (
    SERVICE_LABEL,
    EndpointAddress,
    EndpointRegistration,
    Endpoints,
    EndpointSubset,
    Lease,
    LeaseSpec,
    ObjectMeta,
    OwnerReference,
    Service,
    ServicePort,
    ServiceSpec,
)
from keel.cli.boundary import parse_store_writes
from keel.client import Forbidden, Invalid, KeelClient, NotFound
from keel.controllers.endpoints import CreateEndpoints, ReplaceEndpoints, desired_subsets, plan

NS = "default"


def registration(
    name: str,
    address: str = "10.0.0.5",
    port: int = 8080,
    *,
    service: str = "web",
    port_name: str = "",
    ready: bool = True,
    namespace: str = NS,
) -> Lease:
    return Lease(
        metadata=ObjectMeta(name=f"{service}.{name}", namespace=namespace),
        spec=LeaseSpec(
            holder_identity="me",
            lease_duration_seconds=10,
            registration=EndpointRegistration(
                service=service, address=address, port=port, port_name=port_name, ready=ready
            ),
        ),
    )


def addresses(subsets: list[EndpointSubset]) -> list[tuple[str, str, str, int, bool]]:
    """(subset, instance, lease, port, ready) of every address."""
    return [(s.name, a.instance, a.lease, a.port, a.ready) for s in subsets for a in s.addresses]


# ------------------------------------------------------------------ the plan, pure


def test_registered_addresses_follow_the_selected_ones_marked_by_their_lease() -> None:
    subsets = desired_subsets(
        service(), [running("a", port=1)], [registration("z", port=3), registration("b", port=2)]
    )
    assert addresses(subsets) == [
        ("http", "a", "", 1, True),
        ("http", "", "web.b", 2, True),
        ("http", "", "web.z", 3, True),
    ]
    assert subsets[0].addresses[1] == EndpointAddress(
        ip="10.0.0.5", port=2, ready=True, lease="web.b"
    )


@pytest.mark.parametrize(
    ("port_name", "expected"),
    [
        ("", [("http", "", "web.r", 8080, True)]),  # no port name: the first port
        ("grpc", [("grpc", "", "web.r", 8080, True)]),
        ("admin", []),  # the Service lost that port: listed nowhere
    ],
)
def test_a_registration_joins_the_subset_of_its_port_name(
    port_name: str, expected: list[object]
) -> None:
    svc = service(ports=[ServicePort(name="http", port=80), ServicePort(name="grpc", port=90)])
    assert addresses(desired_subsets(svc, [], [registration("r", port_name=port_name)])) == (
        expected
    )


def test_only_live_registrations_of_this_service_and_namespace_count() -> None:
    other_service = registration("x", service="api")
    other_namespace = registration("y", namespace="elsewhere")
    deleting = registration("z")
    deleting = msgspec.structs.replace(
        deleting,
        metadata=msgspec.structs.replace(
            deleting.metadata, deletion_timestamp="2026-01-01T00:00:00Z"
        ),
    )
    plain = Lease(
        metadata=ObjectMeta(name="web.plain", namespace=NS),
        spec=LeaseSpec(holder_identity="me", lease_duration_seconds=10),
    )
    subsets = desired_subsets(service(), [], [other_service, other_namespace, deleting, plain])
    assert addresses(subsets) == []


def test_a_failing_check_lists_the_address_as_not_ready() -> None:
    subsets = desired_subsets(service(), [], [registration("r", ready=False)])
    assert addresses(subsets) == [("http", "", "web.r", 8080, False)]


def test_external_service_gets_endpoints_from_its_first_registration_until_none_are_left() -> None:
    svc = service()
    external = msgspec.structs.replace(svc, spec=msgspec.structs.replace(svc.spec, selector=None))
    assert plan(external, None, [running("a")], []) == []  # nothing registered: left alone
    created = plan(external, None, [running("a")], [registration("r")])
    assert len(created) == 1 and isinstance(created[0], CreateEndpoints)
    stored = created[0].endpoints
    assert addresses(stored.subsets) == [("http", "", "web.r", 8080, True)]  # no Instances
    assert plan(external, stored, [], [registration("r")]) == []
    emptied = plan(external, stored, [], [])  # the last one expired: we wrote it, we empty it
    assert len(emptied) == 1 and isinstance(emptied[0], ReplaceEndpoints)
    assert addresses(emptied[0].endpoints.subsets) == []
    # Endpoints someone else wrote for a Service without a selector stay theirs.
    hand_written = Endpoints(metadata=ObjectMeta(name="web", namespace=NS), subsets=[])
    assert plan(external, hand_written, [], []) == []


def test_registration_taking_over_hand_written_endpoints_owns_them() -> None:
    svc = service()
    external = msgspec.structs.replace(svc, spec=msgspec.structs.replace(svc.spec, selector=None))
    hand_written = Endpoints(metadata=ObjectMeta(name="web", namespace=NS), subsets=[])
    actions = plan(external, hand_written, [], [registration("r")])
    assert isinstance(actions[0], ReplaceEndpoints)
    assert actions[0].endpoints.metadata.owner_references == [
        OwnerReference(api_version="keel.dev/v1", kind="Service", name="web", uid="svc-uid",
                       controller=True)
    ]  # fmt: skip


# ------------------------------------------------------------------ the API, real server


def lease_body(name: str, registration: dict[str, Any], ttl: int = 10) -> dict[str, Any]:
    return {
        "apiVersion": "keel.dev/v1",
        "kind": "Lease",
        "metadata": {"name": name, "labels": {SERVICE_LABEL: "x"}},
        "spec": {
            "holderIdentity": "me",
            "leaseDurationSeconds": ttl,
            "registration": registration,
        },
    }


def causes(body: dict[str, Any]) -> list[str]:
    return [c["field"] for c in body["details"]["causes"]]


async def make_service(
    client: KeelClient, name: str, *, selector: dict[str, str] | None = None
) -> Service:
    return await client.create(
        Service(
            metadata=ObjectMeta(name=name, namespace=NS),
            spec=ServiceSpec(
                selector=selector,
                ports=[ServicePort(name="http", port=80, target_port="http")],
            ),
        )
    )


async def test_raw_http_registration_is_a_lease_with_spec_registration(
    apiserver: ApiServer, name: str
) -> None:
    async with apiserver.client() as admin:
        await make_service(admin, name)
    http = apiserver.http("controller")
    path = f"{V1}/namespaces/{NS}/leases"
    good = {"service": name, "address": "10.1.2.3", "port": 8080}
    created = http.post(path, lease_body(f"{name}.a", good))
    assert created.status == 201, created.body
    lease = created.json
    assert lease["spec"]["registration"] == {**good, "portName": "", "ready": True}
    renewal = {"holderIdentity": "me", "fencingToken": lease["status"]["fencingToken"]}
    assert http.post(f"{path}/{name}.a/renew", renewal).status == 200
    assert http.delete(f"{path}/{name}.a").status == 200


@pytest.mark.parametrize(
    ("registration", "ttl", "field", "says"),
    [
        ({"address": "not an address", "port": 80}, 10, "spec.registration.address",
         "IP address or a DNS name"),
        ({"address": "10.0.0.1", "port": 0}, 10, "spec.registration.port", ">= 1"),
        ({"address": "10.0.0.1", "port": 70000}, 10, "spec.registration.port", "<= 65535"),
        ({"address": "10.0.0.1", "port": 80}, 1, "spec.leaseDurationSeconds", ">= 2"),
        ({"address": "10.0.0.1", "port": 80, "portName": "nope"}, 10,
         "spec.registration.portName", "no port named 'nope'"),
    ],
)  # fmt: skip
async def test_bad_registrations_are_rejected_naming_the_field(
    apiserver: ApiServer,
    name: str,
    *,
    registration: dict[str, Any],
    ttl: int,
    field: str,
    says: str,
) -> None:
    async with apiserver.client() as admin:
        await make_service(admin, name)
    answer = apiserver.http().post(
        f"{V1}/namespaces/{NS}/leases",
        lease_body(f"{name}.a", {"service": name, **registration}, ttl),
    )
    assert answer.status == 422, answer.body
    assert causes(answer.json) == [field]
    assert says in answer.json["message"]


async def test_registration_for_a_missing_service_is_rejected(apiserver: ApiServer) -> None:
    async with apiserver.client() as admin:
        with pytest.raises(Invalid) as caught:
            await admin.register_endpoint("no-such-service", "10.0.0.1", 80, ttl=5)
    assert [c.field for c in caught.value.causes] == ["spec.registration.service"]
    assert 'Service "no-such-service" not found in namespace "default"' in caught.value.message


async def test_only_readiness_of_a_registration_may_change(apiserver: ApiServer, name: str) -> None:
    async with apiserver.client() as admin:
        await make_service(admin, name)
        async with await admin.register_endpoint(name, "10.0.0.1", 80, name="a") as handle:
            await handle.set_ready(False)
            stored = await admin.get(Lease, f"{name}.a", namespace=NS)
            assert stored.spec.registration is not None
            assert stored.spec.registration.ready is False
            with pytest.raises(Invalid) as caught:
                await admin.patch(
                    Lease, f"{name}.a", {"spec": {"registration": {"port": 81}}}, namespace=NS
                )
            assert [c.field for c in caught.value.causes] == ["spec.registration"]


async def test_admin_and_controllers_may_register_viewers_and_nodes_may_not(
    apiserver: ApiServer, name: str
) -> None:
    async with apiserver.client() as admin:
        await make_service(admin, name)
    async with apiserver.client("controller") as controller:
        handle = await controller.register_endpoint(name, "10.0.0.1", 80)
        await handle.close()
    async with apiserver.client("viewer") as viewer:
        with pytest.raises(Forbidden):
            await viewer.register_endpoint(name, "10.0.0.1", 80)


async def test_renewals_are_keep_alives_not_store_writes(apiserver: ApiServer, name: str) -> None:
    async with apiserver.client() as admin:
        await make_service(admin, name)
        handle = await admin.register_endpoint(name, "10.0.0.1", 80, ttl=2)
        try:
            before = lease_writes(apiserver)
            await wait_for_async("three renewals", lambda: handle.renewals >= 3, timeout=10)
            assert lease_writes(apiserver) == before
            assert handle.reregistrations == 0
        finally:
            assert await handle.close()
        with pytest.raises(NotFound):
            await admin.get(Lease, handle.lease_name, namespace=NS)


def lease_writes(apiserver: ApiServer) -> dict[str, int]:
    metrics = apiserver.http().get("/metrics").body.decode()
    return parse_store_writes(metrics).get("Lease", {})


async def test_an_abandoned_registration_expires_within_its_ttl(
    apiserver: ApiServer, name: str
) -> None:
    async with apiserver.client() as admin:
        await make_service(admin, name)
        abandoned = await admin.register_endpoint(name, "10.0.0.1", 80, ttl=2, name="gone")
        abandoned._task.cancel()  # the owner stops renewing, as if it hung
        t0 = time.monotonic()

        async def lease_gone() -> bool:
            try:
                await admin.get(Lease, abandoned.lease_name, namespace=NS)
            except NotFound:
                return True
            return False

        await wait_for_async("the abandoned lease to expire", lease_gone, timeout=10)
        assert time.monotonic() - t0 <= 3.0


async def test_a_running_handle_stops_when_its_registration_is_removed(
    apiserver: ApiServer, name: str
) -> None:
    async with apiserver.client() as admin:
        await make_service(admin, name)
        handle = await admin.register_endpoint(name, "10.0.0.2", 80, ttl=2, name="a")
        await admin.deregister_endpoint(name, "a")  # within a TTL of its last renewal
        await asyncio.wait_for(handle.wait_removed(), 5)
        assert handle.removed and handle.reregistrations == 0
        with pytest.raises(NotFound):
            await admin.get(Lease, handle.lease_name, namespace=NS)
        assert not await handle.close()


async def test_deregister_by_name(apiserver: ApiServer, name: str) -> None:
    async with apiserver.client() as admin:
        await make_service(admin, name)
        handle = await admin.register_endpoint(name, "10.0.0.1", 80, name="a")
        await admin.deregister_endpoint(name, "a")
        with pytest.raises(NotFound):
            await admin.deregister_endpoint(name, "a")
        assert not await handle.close()  # it was gone already


# ------------------------------------------------------------------ the controller


async def test_endpoints_merge_selected_instances_and_registrations(
    apiserver: ApiServer, name: str
) -> None:
    async with (
        apiserver.client() as admin,
        platform(apiserver, ("endpoints",), scheduler=False),
    ):
        from controllers.test_endpoints import set_status

        from keel.api.resources import Instance, InstanceSpec

        await make_service(admin, name, selector={"app": name})
        await admin.create(
            Instance(
                metadata=ObjectMeta(name=f"{name}-0", namespace=NS, labels={"app": name}),
                spec=InstanceSpec(command=["x"]),
            )
        )
        await admin.bind(NS, f"{name}-0", "n1")
        await set_status(admin, f"{name}-0", 9001, ready=True)

        async def listed() -> list[tuple[str, str, int, bool]]:
            try:
                ep = await admin.get(Endpoints, name, namespace=NS)
            except NotFound:
                return []
            return [(a.instance, a.lease, a.port, a.ready) for s in ep.subsets for a in s.addresses]

        async def listed_is(wanted: list[tuple[str, str, int, bool]]) -> bool:
            return await listed() == wanted

        await wait_for_async("the instance", lambda: listed_is([(f"{name}-0", "", 9001, True)]))
        handle = await admin.register_endpoint(name, "10.9.9.9", 7000, name="ext", ttl=2)
        both = [(f"{name}-0", "", 9001, True), ("", f"{name}.ext", 7000, True)]
        await wait_for_async("instance and registration side by side", lambda: listed_is(both))
        await handle.set_ready(False)
        await wait_for_async(
            "the registration withdrawn",
            lambda: listed_is([(f"{name}-0", "", 9001, True), ("", f"{name}.ext", 7000, False)]),
        )
        handle._task.cancel()  # stop renewing: the store expires it, its DELETED event drops it
        t0 = time.monotonic()
        await wait_for_async(
            "the registration expired", lambda: listed_is([(f"{name}-0", "", 9001, True)])
        )
        elapsed = time.monotonic() - t0
        print(f"registration expiry (ttl 2 s, renewals stopped) -> gone from Endpoints: "
              f"{elapsed:.2f} s")  # fmt: skip
        assert elapsed <= 3.0
