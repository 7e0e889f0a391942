"""Namespace quotas at admission: what an Instance requests, what a namespace's Instances use,
and whether a create (or an update raising requests) fits every ResourceQuota of the
namespace. Pure: `keel.api.storage` reads the quotas and writes the charged ledger
(`status.used`) in the same store transaction as the Instance; the quota controller
recomputes the ledger from the Instances that exist after deletions.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import msgspec

from keel.api.quantity import format_cpu, format_memory, parse_cpu, parse_memory
from keel.api.resources import (
    Instance,
    InstanceSpec,
    ResourceQuota,
    ResourceQuotaStatus,
)

__all__ = [
    "Usage",
    "amount",
    "charged",
    "exceeds",
    "hard_of",
    "ledger",
    "quota_decision",
    "raised",
    "recomputed_status",
    "requests_of",
    "show",
    "status_change",
    "usage_of",
]

# resource name -> amount in base units: millicores for cpu, bytes for memory, a count for
# instances and extended resources.
Usage = dict[str, int]
INSTANCES = "instances"


def amount(resource: str, quantity: str) -> int:
    """A quantity of `resource` in base units (rounded up)."""
    return parse_cpu(quantity) if resource == "cpu" else parse_memory(quantity)


def show(resource: str, value: int) -> str:
    if resource == "cpu":
        return format_cpu(value)
    if resource == "memory":
        shown = format_memory(value)
        if shown != str(value) or value == 0:
            return shown
        for suffix, factor in (("T", 10**12), ("G", 10**9), ("M", 10**6), ("k", 10**3)):
            if value % factor == 0:
                return f"{value // factor}{suffix}"
    return str(value)


def requests_of(spec: InstanceSpec) -> Usage:
    """What one Instance requests: one instance, and every resource in `spec.resources`
    (quantities by field name; a mapping field holds extended resources by name)."""
    found: Usage = {INSTANCES: 1}
    resources = spec.resources
    for name in resources.__struct_fields__:
        value = getattr(resources, name)
        if isinstance(value, str):
            found[name] = found.get(name, 0) + amount(name, value)
        elif isinstance(value, Mapping):
            for extended, quantity in value.items():
                if isinstance(quantity, str | int):
                    found[extended] = found.get(extended, 0) + amount(extended, str(quantity))
    return found


def usage_of(instances: Iterable[Instance]) -> Usage:
    """What the Instances request together. Every Instance that exists counts, terminating
    ones too (their processes may still run), until its object is gone."""
    total: Usage = {}
    for instance in instances:
        for name, value in requests_of(instance.spec).items():
            total[name] = total.get(name, 0) + value
    return total


def raised(old: Usage, new: Usage) -> Usage:
    """The increases from `old` to `new` (decreases free capacity later, by recomputation)."""
    return {n: value - old.get(n, 0) for n, value in new.items() if value > old.get(n, 0)}


def hard_of(quota: ResourceQuota) -> Usage:
    return {name: amount(name, value) for name, value in quota.spec.hard.items()}


def ledger(quota: ResourceQuota) -> Usage | None:
    """The usage `status.used` records for every limited resource, or None when it does not
    record all of them yet (a new quota, or a resource newly limited): then admission counts
    the namespace's Instances itself."""
    used = quota.status.used
    if any(name not in used for name in quota.spec.hard):
        return None
    return {name: amount(name, used[name]) for name in quota.spec.hard}


def exceeds(quota: ResourceQuota, used: Usage, request: Usage) -> list[str]:
    """The limited resources that `request` on top of `used` would take over the quota.
    A resource the request does not ask for is never exceeded by it."""
    hard = hard_of(quota)
    return [
        name
        for name in sorted(hard)
        if request.get(name, 0) > 0 and used.get(name, 0) + request[name] > hard[name]
    ]


def quota_decision(quotas: Sequence[tuple[ResourceQuota, Usage]], request: Usage) -> str | None:
    """None when `request` fits every quota (each with the usage it has recorded), else why
    not, naming the first quota (by name) it exceeds: requested, used and limited values of
    every resource it would take over, e.g.
    `exceeded quota "team-a": requested cpu=500m, used cpu=1800m, limited cpu=2`."""
    for quota, used in sorted(quotas, key=lambda q: q[0].metadata.name):
        over = exceeds(quota, used, request)
        if not over:
            continue
        requested = ",".join(f"{n}={show(n, request[n])}" for n in over)
        in_use = ",".join(f"{n}={show(n, used.get(n, 0))}" for n in over)
        limited = ",".join(f"{n}={quota.spec.hard[n]}" for n in over)
        return (
            f'exceeded quota "{quota.metadata.name}": requested {requested}, '
            f"used {in_use}, limited {limited}"
        )
    return None


def _status(quota: ResourceQuota, used: Usage) -> ResourceQuotaStatus:
    return ResourceQuotaStatus(
        hard=dict(quota.spec.hard),
        used={name: show(name, used.get(name, 0)) for name in sorted(quota.spec.hard)},
    )


def charged(quota: ResourceQuota, used: Usage, request: Usage) -> ResourceQuota:
    """The quota with `request` added to its ledger (admission writes it with the Instance)."""
    total = {name: used.get(name, 0) + request.get(name, 0) for name in quota.spec.hard}
    return msgspec.structs.replace(quota, status=_status(quota, total))


def recomputed_status(quota: ResourceQuota, instances: Iterable[Instance]) -> ResourceQuotaStatus:
    """The status the quota should show: its limits, and what the Instances request."""
    return _status(quota, usage_of(instances))


def status_change(
    quota: ResourceQuota, instances: Iterable[Instance]
) -> ResourceQuotaStatus | None:
    """The quota controller's decision: the new status, or None when the recorded one
    already says the same (compared as amounts: "1000m" and "1" are equal), so an idle
    quota writes nothing."""
    wanted = recomputed_status(quota, instances)
    current = quota.status
    same_hard = {n: amount(n, v) for n, v in current.hard.items()} == hard_of(quota)
    same_used = {n: amount(n, v) for n, v in current.used.items()} == {
        n: amount(n, v) for n, v in wanted.used.items()
    }
    return None if same_hard and same_used else wanted
