"""`keel cordon|uncordon|drain NODE`: stop placing new Instances on a node, and move what runs
there elsewhere through the API's `eviction` subresource.

The API server decides every eviction against the owning Deployment's disruption budget (see
keel.api.disruption); drain only asks again until the budget allows, and waits for what it
evicted to stop. `survey` (pure) says where a drain stands; `_drain` is its loop.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from keel.api.columns import parse_time
from keel.api.resources import Instance, Node
from keel.cli._common import CommandError, Session, add_connection_args, command
from keel.client import (
    ApiError,
    Conflict,
    KeelClientError,
    NotFound,
    Preconditions,
    is_budget_refusal,
)

POLL_SECONDS = 0.5
# What the agent reports once a process is gone (telemetry events).
STOP_REASONS = frozenset({"Stopped", "Exited", "Killed"})


def add_drain_commands(commands: Any) -> None:
    cordon: argparse.ArgumentParser = commands.add_parser(
        "cordon",
        help="mark a node unschedulable",
        description="Mark NODE unschedulable: the scheduler places no new Instances on it; "
        "what runs there keeps running.",
    )
    cordon.add_argument("node", metavar="NODE")
    add_connection_args(cordon)
    cordon.set_defaults(run=command(_cordon))

    uncordon: argparse.ArgumentParser = commands.add_parser(
        "uncordon",
        help="mark a node schedulable again",
        description="Mark NODE schedulable again.",
    )
    uncordon.add_argument("node", metavar="NODE")
    add_connection_args(uncordon)
    uncordon.set_defaults(run=command(_uncordon))

    drain: argparse.ArgumentParser = commands.add_parser(
        "drain",
        help="cordon a node and evict everything on it, within disruption budgets",
        description="Cordon NODE, then evict every Instance on it. The API server refuses an "
        "eviction that would leave a Deployment with more than its rolling update's "
        "maxUnavailable replicas unavailable; drain then waits for the replacements to be "
        "Ready elsewhere and tries again. Instances without an owning Deployment are "
        "evicted without a budget check. Exits 0 once nothing is left on the node.",
    )
    drain.add_argument("node", metavar="NODE")
    drain.add_argument(
        "--timeout",
        type=float,
        default=0.0,
        metavar="S",
        help="give up after S seconds, naming what is left (default 0: wait as long as it takes)",
    )
    add_connection_args(drain)
    drain.set_defaults(run=command(_drain))


# ----------------------------------------------------------------------------- pure core


@dataclass(frozen=True)
class Evicted:
    """An Instance this drain evicted: where and when, and how long it may take to stop."""

    namespace: str
    name: str
    uid: str
    at: float  # monotonic seconds
    wall: float  # epoch seconds, to compare with the agent's event times
    grace: float

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class Survey:
    """Where a drain stands: what is still to evict, what is terminating on the node (its
    deletion waits for a finalizer), and what was evicted and may still be stopping."""

    to_evict: list[Instance] = field(default_factory=list)
    terminating: list[Instance] = field(default_factory=list)
    stopping: list[Evicted] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (self.to_evict or self.terminating or self.stopping)


def survey(
    on_node: Sequence[Instance],
    evicted: Mapping[str, Evicted],
    stopped: set[str],
    now: float,
) -> Survey:
    """`on_node`: the Instances bound to the node now; `evicted` by uid; `stopped`: uids the
    agent reported stopped. An evicted Instance gone from the API is stopping until its
    agent says it stopped or its grace period is over (the agent has killed it by then)."""
    present = {i.metadata.uid for i in on_node}
    result = Survey()
    for instance in sorted(on_node, key=_key):
        if instance.metadata.deletion_timestamp:
            result.terminating.append(instance)
        elif instance.metadata.uid not in evicted:
            result.to_evict.append(instance)
        else:
            result.terminating.append(instance)  # evicted; the deletion is on its way
    for uid, gone in sorted(evicted.items(), key=lambda item: item[1].key):
        if uid not in present and uid not in stopped and now < gone.at + gone.grace:
            result.stopping.append(gone)
    return result


def stopped_after(events: Sequence[Mapping[str, Any]], node: str, wall: float) -> bool:
    """Whether the node's agent reported the process stopped at or after `wall`."""
    for event in events:
        if event.get("reason") not in STOP_REASONS or event.get("node") != node:
            continue
        when = parse_time(str(event.get("time") or ""))
        if when is not None and when.timestamp() >= wall - 1.0:  # clocks a little apart
            return True
    return False


def _key(instance: Instance) -> str:
    return f"{instance.metadata.namespace}/{instance.metadata.name}"


# ----------------------------------------------------------------------------- commands


async def _set_unschedulable(session: Session, node: str, value: bool) -> bool:
    """Set spec.unschedulable; whether it changed."""
    current: Node = await session.client.get(Node, node)
    if current.spec.unschedulable == value:
        return False
    await session.client.patch(Node, node, {"spec": {"unschedulable": value}})
    return True


async def _cordon(args: argparse.Namespace, session: Session) -> int:
    changed = await _set_unschedulable(session, args.node, True)
    print(f"node/{args.node} {'cordoned' if changed else 'already cordoned'}", flush=True)
    return 0


async def _uncordon(args: argparse.Namespace, session: Session) -> int:
    changed = await _set_unschedulable(session, args.node, False)
    print(f"node/{args.node} {'uncordoned' if changed else 'already uncordoned'}", flush=True)
    return 0


async def _drain(args: argparse.Namespace, session: Session) -> int:
    node: str = args.node
    client = session.client
    changed = await _set_unschedulable(session, node, True)
    print(f"node/{node} {'cordoned' if changed else 'already cordoned'}", flush=True)
    started = time.monotonic()
    evicted: dict[str, Evicted] = {}
    stopped: set[str] = set()
    waiting: dict[str, str] = {}  # instance key -> why it is not evicted yet (last printed)
    said: set[str] = set()  # one-time progress lines already printed
    while True:
        listed = await client.list(Instance, namespace=None, field_selector=f"spec.nodeName={node}")
        now = time.monotonic()
        state = survey(listed.items, evicted, stopped, now)
        for instance in state.to_evict:
            why = await _evict(session, instance, evicted)
            key = _key(instance)
            if why is None:
                waiting.pop(key, None)
            elif waiting.get(key) != why:
                waiting[key] = why
                print(f"waiting to evict instance {key}: {why}", flush=True)
        for instance in state.terminating:
            key = _key(instance)
            if instance.metadata.deletion_timestamp and f"terminating {key}" not in said:
                said.add(f"terminating {key}")
                print(f"instance {key} terminating: waiting for its agent to stop it", flush=True)
        for gone in state.stopping:
            if await _reported_stopped(session, gone, node):
                stopped.add(gone.uid)
                print(f"instance {gone.key} stopped", flush=True)
        state = survey(listed.items, evicted, stopped, now)
        if state.empty:
            print(f"node/{node} drained", flush=True)
            return 0
        if args.timeout > 0 and now - started >= args.timeout:
            raise CommandError(
                f"drain of node {node} timed out after {args.timeout:g}s; left on it: "
                + "; ".join(_left(state, waiting))
            )
        await asyncio.sleep(POLL_SECONDS)


async def _evict(session: Session, instance: Instance, evicted: dict[str, Evicted]) -> str | None:
    """Evict one Instance; None once evicted (or gone), else why not yet."""
    meta = instance.metadata
    try:
        answer = await session.client.evict(
            meta.name, namespace=meta.namespace, preconditions=Preconditions(uid=meta.uid)
        )
    except (NotFound, Conflict):
        return None  # gone, or another incarnation of the name: not the one on this node
    except ApiError as exc:
        if is_budget_refusal(exc):
            return exc.message
        raise
    # The agent gives the process its own termination grace period, then kills it.
    grace = float(instance.spec.termination_grace_period_seconds)
    evicted[meta.uid] = Evicted(
        meta.namespace, meta.name, meta.uid, time.monotonic(), time.time(), grace
    )
    _, _, checked = answer.message.partition(": ")
    print(f"evicted instance {meta.namespace}/{meta.name}: {checked}", flush=True)
    return None


async def _reported_stopped(session: Session, gone: Evicted, node: str) -> bool:
    try:
        events = await session.client.events(gone.namespace, gone.name)
    except KeelClientError:
        return False  # telemetry is best effort; the grace period still bounds the wait
    return stopped_after(events, node, gone.wall)


def _left(state: Survey, waiting: Mapping[str, str]) -> list[str]:
    left = [f"{_key(i)} ({waiting.get(_key(i), 'not evicted yet')})" for i in state.to_evict]
    left += [
        f"{_key(i)} (terminating: waiting for its agent to confirm it stopped)"
        for i in state.terminating
    ]
    left += [f"{g.key} (evicted; its process may still be stopping)" for g in state.stopping]
    return left
