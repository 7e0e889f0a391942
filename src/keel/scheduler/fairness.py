"""Weighted dominant-resource fairness (DRF) across namespaces, for the scheduler's queue.

A namespace (a tenant) holds, of each resource, what its placed Instances request; its
dominant share is the largest fraction of the schedulable capacity it holds of any one
resource, divided by its weight (`spec.scheduling.weight`). The pending Instance placed next
is the one of highest priority (as kube-scheduler's activeQ) and, among equal priorities,
the first of the namespace with the lowest weighted dominant share, so a namespace flooding
the queue cannot starve another: freed room goes to whoever is furthest below its share.
Pure: no I/O, no clock; the scheduler feeds it the allocations `ClusterState` keeps.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Mapping

__all__ = ["FairLane", "dominant_share", "next_tenant", "weighted_share"]


def dominant_share(used: Mapping[str, int], capacity: Mapping[str, int]) -> float:
    """The largest fraction of `capacity` that `used` holds of any one resource (cpu,
    memory, extended); a resource the cluster offers none of does not count."""
    share = 0.0
    for resource, amount in used.items():
        total = capacity.get(resource, 0)
        if total > 0 and amount > 0:
            share = max(share, amount / total)
    return share


def weighted_share(used: Mapping[str, int], capacity: Mapping[str, int], weight: float) -> float:
    """The dominant share divided by the tenant's weight (> 0): what DRF equalizes."""
    return dominant_share(used, capacity) / weight


def next_tenant(heads: Mapping[str, tuple[int, int]], share: Callable[[str], float]) -> str | None:
    """The tenant whose pending Instance goes next. `heads` maps each tenant with pending
    work to (priority, arrival) of its own first Instance. Highest priority first, whatever
    the tenant; among the tenants at that priority, the lowest `share(tenant)`; then the
    earliest arrival (so with one tenant, or equal shares, the order is the arrival order)."""
    top: int | None = None
    candidates: list[str] = []
    for tenant, (priority, _arrival) in heads.items():
        if top is None or priority > top:
            top, candidates = priority, [tenant]
        elif priority == top:
            candidates.append(tenant)
    if len(candidates) <= 1:
        return candidates[0] if candidates else None
    return min(candidates, key=lambda t: (share(t), heads[t][1], t))


class FairLane:
    """A work-queue lane (`keel.runtime.workqueue.ReadyLane`) in fair order.

    `classify(key)` says what a key is when it is added: `(namespace, priority)` of a
    pending Instance, or None for other work (a bound Instance to look after, one that is
    gone), which goes first, in arrival order: it takes no capacity and is quick. Pending
    keys wait in one sub-queue per namespace (priority, then arrival); `popleft` serves the
    namespace `next_tenant` picks, asking `share(namespace)` at that moment, so each
    decision sees the allocations of the ones before it. Cost per pop: the namespaces with
    pending work, not the pending Instances.
    """

    def __init__(
        self,
        classify: Callable[[str], tuple[str, int] | None],
        share: Callable[[str], float],
    ) -> None:
        self._classify = classify
        self._share = share
        self._other: deque[tuple[str, int]] = deque()
        self._tenants: dict[str, list[tuple[int, int, str]]] = {}  # heap of (-prio, seq, key)
        self._size = 0

    def append(self, item: tuple[str, int], /) -> None:
        key, seq = item
        kind = self._classify(key)
        if kind is None:
            self._other.append(item)
        else:
            tenant, priority = kind
            heapq.heappush(self._tenants.setdefault(tenant, []), (-priority, seq, key))
        self._size += 1

    def popleft(self) -> tuple[str, int]:
        if self._other:
            self._size -= 1
            return self._other.popleft()
        heads = {t: (-heap[0][0], heap[0][1]) for t, heap in self._tenants.items()}
        tenant = next_tenant(heads, self._share)
        if tenant is None:
            raise IndexError("pop from an empty lane")
        heap = self._tenants[tenant]
        _priority, seq, key = heapq.heappop(heap)
        if not heap:
            del self._tenants[tenant]
        self._size -= 1
        return key, seq

    def clear(self) -> None:
        self._other.clear()
        self._tenants.clear()
        self._size = 0

    def __len__(self) -> int:
        return self._size
