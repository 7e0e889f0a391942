"""Endpoints: for each Service, an Endpoints object of the same name listing every Running
Instance its selector picks that reports a hostIP and the target port (one subset per Service
port), and beside them the external endpoints registered for it: Leases with
`spec.registration` naming the Service (`keel register`, `KeelClient.register_endpoint`).

One object, so consumers watch one place. A registered address carries `lease: NAME` and no
`instance`; it is listed while its Lease lives and dropped on the Lease's DELETED event (the
store expires it when its owner stops renewing). Written only when it changes. A Service
without a selector gets Endpoints once it has a registration; until then it is left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from keel.api.resources import (
    API_VERSION,
    EndpointAddress,
    EndpointRegistration,
    Endpoints,
    EndpointSubset,
    Instance,
    Lease,
    ObjectMeta,
    OwnerReference,
    Resource,
    Service,
    ServicePort,
)
from keel.client import AlreadyExists, KeelClient
from keel.runtime.controller import Context, Related, Result
from keel.runtime.informer import Indexer, object_key

__all__ = [
    "CreateEndpoints",
    "EndpointsController",
    "ReplaceEndpoints",
    "desired_subsets",
    "execute",
    "plan",
    "registrations_of",
    "selects",
]


@dataclass(frozen=True)
class CreateEndpoints:
    endpoints: Endpoints


@dataclass(frozen=True)
class ReplaceEndpoints:
    endpoints: Endpoints  # carries the resourceVersion it was planned on


Action = CreateEndpoints | ReplaceEndpoints


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    """An empty selector selects nothing here: a Service must say what it routes to."""
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _target(port: ServicePort) -> str | int:
    """What names an Instance's port: targetPort, else the Service port's name, else its
    number."""
    target = port.target_port
    if isinstance(target, int):
        return target if target else (port.name or port.port)
    if target.isdigit():
        return int(target)
    return target or port.name or port.port


def _instance_port(instance: Instance, target: str | int) -> int | None:
    for status in instance.status.ports:
        if (status.name == target) if isinstance(target, str) else (status.port == target):
            return status.port
    return None


def _address(instance: Instance, port: int) -> EndpointAddress:
    ready = any(c.type == "Ready" and c.status == "True" for c in instance.status.conditions)
    return EndpointAddress(
        ip=instance.status.host_ip,
        port=port,
        instance=instance.metadata.name,
        node=instance.spec.node_name,
        ready=ready,
    )


def registrations_of(service: Service, leases: Iterable[Lease]) -> list[Lease]:
    """The live Leases registering an endpoint of `service`, by name."""
    return sorted(
        (
            lease
            for lease in leases
            if lease.spec.registration is not None
            and lease.spec.registration.service == service.metadata.name
            and lease.metadata.namespace == service.metadata.namespace
            and not lease.metadata.deletion_timestamp
        ),
        key=lambda lease: lease.metadata.name,
    )


def _registered(lease: Lease, registration: EndpointRegistration) -> EndpointAddress:
    return EndpointAddress(
        ip=registration.address,
        port=registration.port,
        ready=registration.ready,
        lease=lease.metadata.name,
    )


def desired_subsets(
    service: Service, instances: Sequence[Instance], registrations: Sequence[Lease] = ()
) -> list[EndpointSubset]:
    """One subset per Service port (or one unnamed subset with each Instance's first port if
    the Service lists none): the selected Instances' addresses sorted by Instance name, then
    the registered ones sorted by Lease name. A registration joins the subset of its
    `portName` (none: the first), and none if the Service lost that port."""
    selector = service.spec.selector or {}
    members = sorted(
        (
            i
            for i in instances
            if i.metadata.namespace == service.metadata.namespace
            and not i.metadata.deletion_timestamp
            and i.status.phase == "Running"
            and i.status.host_ip
            and selects(selector, i.metadata.labels)
        ),
        key=lambda i: i.metadata.name,
    )
    registered = [
        (lease, lease.spec.registration)
        for lease in registrations_of(service, registrations)
        if lease.spec.registration is not None
    ]
    if not service.spec.ports:
        addresses = [_address(i, i.status.ports[0].port) for i in members if i.status.ports]
        addresses += [_registered(lease, r) for lease, r in registered]
        return [EndpointSubset(addresses=addresses)]
    subsets = []
    for index, service_port in enumerate(service.spec.ports):
        target = _target(service_port)
        addresses = []
        for instance in members:
            port = _instance_port(instance, target)
            if port is not None:
                addresses.append(_address(instance, port))
        for lease, registration in registered:
            wanted = registration.port_name
            if (wanted == service_port.name) if wanted else index == 0:
                addresses.append(_registered(lease, registration))
        subsets.append(EndpointSubset(addresses=addresses, name=service_port.name))
    return subsets


def _owner(service: Service) -> OwnerReference:
    return OwnerReference(
        api_version=API_VERSION,
        kind="Service",
        name=service.metadata.name,
        uid=service.metadata.uid,
        controller=True,
    )


def plan(
    service: Service | None,
    endpoints: Endpoints | None,
    instances: Sequence[Instance],
    registrations: Sequence[Lease] = (),
) -> list[Action]:
    """Create or replace the Endpoints of `service` when its addresses (or its owner
    reference to the Service) differ from what is stored. Nothing for a Service that is gone
    (the garbage collector removes Endpoints owned by it), nor for one without a selector
    that has no registrations, unless we wrote its Endpoints (they converge to empty)."""
    if service is None or service.metadata.deletion_timestamp:
        return []
    owner = _owner(service)
    refs = endpoints.metadata.owner_references if endpoints is not None else []
    owned = any(r.kind == "Service" and r.uid == owner.uid for r in refs)
    if service.spec.selector is None and not registrations_of(service, registrations) and not owned:
        return []
    subsets = desired_subsets(service, instances, registrations)
    if endpoints is None:
        meta = ObjectMeta(
            name=service.metadata.name,
            namespace=service.metadata.namespace,
            owner_references=[owner],
        )
        return [CreateEndpoints(Endpoints(kind="Endpoints", metadata=meta, subsets=subsets))]
    if endpoints.subsets == subsets and owned:
        return []
    if not owned:
        refs = [*(r for r in refs if not (r.kind == "Service" and r.controller)), owner]
    meta = msgspec.structs.replace(endpoints.metadata, owner_references=refs)
    return [ReplaceEndpoints(msgspec.structs.replace(endpoints, metadata=meta, subsets=subsets))]


async def execute(client: KeelClient, action: Action) -> None:
    """Apply one action. A replace is conditional on the planned resourceVersion (`Conflict`:
    look again); a create may find the name taken (`AlreadyExists`, left to the caller)."""
    match action:
        case CreateEndpoints(endpoints=endpoints):
            await client.create(endpoints)
        case ReplaceEndpoints(endpoints=endpoints):
            await client.replace(endpoints)


class EndpointsController:
    """Maintains the Endpoints of Services: see the module docstring."""

    name = "endpoints"
    primary = Service

    def __init__(self, cache: Callable[[type[Any]], Indexer[Any]]) -> None:
        self._cache = cache
        self.related = (
            Related(Instance, self._services_of_instance),
            Related(Endpoints, self._service_of_endpoints),
            # A registration's DELETED event (its Lease expired or was released) requeues
            # its Service at once: expiry reaches Endpoints without polling.
            Related(Lease, self._service_of_registration),
        )

    def _services_of_instance(self, instance: Resource) -> Iterable[str]:
        services: Indexer[Service] = self._cache(Service)
        labels = instance.metadata.labels
        return [
            object_key(service)
            for service in services.by_index("namespace", instance.metadata.namespace)
            if service.spec.selector is not None and selects(service.spec.selector, labels)
        ]

    @staticmethod
    def _service_of_endpoints(endpoints: Resource) -> Iterable[str]:
        return (object_key(endpoints),)

    @staticmethod
    def _service_of_registration(lease: Resource) -> Iterable[str]:
        registration = getattr(getattr(lease, "spec", None), "registration", None)
        if registration is None:
            return ()
        return (f"{lease.metadata.namespace}/{registration.service}",)

    async def reconcile(self, ctx: Context, key: str) -> Result:
        service: Service | None = ctx.cache(Service).get(key)
        if service is None:
            return Result()
        namespace = service.metadata.namespace
        endpoints: Endpoints | None = ctx.cache(Endpoints).get(key)
        instances: list[Instance] = (
            ctx.cache(Instance).by_index("namespace", namespace)
            if service.spec.selector is not None
            else []
        )
        leases: list[Lease] = ctx.cache(Lease).by_index("namespace", namespace)
        for action in plan(service, endpoints, instances, leases):
            try:
                await execute(ctx.client, action)
            except AlreadyExists:
                # The cache had not seen it yet: replace it on the next look.
                endpoints = await ctx.client.get(
                    Endpoints, key.split("/", 1)[1], namespace=namespace
                )
                for retry in plan(service, endpoints, instances, leases):
                    await execute(ctx.client, retry)
        return Result()
