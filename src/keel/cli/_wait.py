"""`keel apply --wait`: until every applied object is ready, with one live progress line.

Ready means: a Deployment's rollout is complete (as `keel rollout status` judges it: the
spec observed, every replica updated and available); a Node is Ready; anything else exists.
`readiness` is pure (objects in, verdict out); `wait_ready` polls the API and reports.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from keel.api.registry import KindInfo
from keel.api.resources import Deployment, Instance, Node, Resource
from keel.cli._common import qualified
from keel.cli._progress import Progress
from keel.cli.rollout import describe, replica_failure
from keel.client import KeelClient, NotFound

__all__ = ["Readiness", "not_ready_instances", "readiness", "wait_ready"]

POLL = 0.5
MAX_INSTANCES_SHOWN = 5


@dataclass(frozen=True)
class Readiness:
    ready: bool
    failed: bool  # will not become ready by waiting (a failed or rolled-back rollout)
    summary: str  # a few words for the progress line
    reason: str = ""  # why it is not ready (for the error message)
    warning: str = ""  # a problem waiting may outlast (a Deployment's creates refused)


class _Condition(Protocol):
    @property
    def type(self) -> str: ...


C = TypeVar("C", bound=_Condition)


def _condition(conditions: Sequence[C], kind: str) -> C | None:
    return next((c for c in conditions if c.type == kind), None)


def not_ready_instances(deployment: Deployment, instances: Sequence[Instance]) -> list[str]:
    """One phrase per Instance of `deployment` that is not Ready, saying why."""
    uid = deployment.metadata.uid
    found: list[str] = []
    for instance in sorted(instances, key=lambda i: i.metadata.name):
        if not any(o.uid == uid for o in instance.metadata.owner_references):
            continue
        status = instance.status
        ready = _condition(status.conditions, "Ready")
        if ready is not None and ready.status == "True":
            continue
        where = f" on {instance.spec.node_name}" if instance.spec.node_name else ""
        words = [f"instance {instance.metadata.name} is {status.phase}{where}"]
        scheduled = _condition(status.conditions, "Scheduled")
        if not instance.spec.node_name and scheduled is not None and scheduled.status == "False":
            words.append(f"unschedulable: {scheduled.message}")
        if status.message:
            words.append(status.message)
        elif ready is not None and ready.message:
            words.append(f"{ready.reason}: {ready.message}")
        found.append(": ".join(words))
    return found


def readiness(
    info: KindInfo, obj: Resource | None, instances: Sequence[Instance] = ()
) -> Readiness:
    """Whether `obj` (None: not found) is ready, for the kind `info` names."""
    name = qualified(info, obj.metadata.name) if obj is not None else info.singular
    if obj is None:
        return Readiness(False, False, f"{name} not found", f"{name} does not exist")
    if isinstance(obj, Deployment):
        short = f"deployment/{obj.metadata.name}"
        line, done = describe(obj)
        status = obj.status
        counts = f"{status.available_replicas}/{obj.spec.replicas} available"
        if done is True:
            return Readiness(True, False, f"{short} ready")
        progressing = _condition(status.conditions, "Progressing")
        why = [line]
        message = progressing.message if progressing is not None else ""
        if message and message not in line:
            why.append(f"Progressing: {message}")
        stuck = not_ready_instances(obj, instances)
        if stuck:
            more = len(stuck) - MAX_INSTANCES_SHOWN
            shown = stuck[:MAX_INSTANCES_SHOWN] + ([f"and {more} more"] if more > 0 else [])
            why.append("; ".join(shown))
        failure = replica_failure(obj)
        summary = f"{short} {counts}" + (" (ReplicaFailure)" if failure else "")
        warning = f"{short} cannot create instances: {failure}" if failure else ""
        return Readiness(False, done is False, summary, "; ".join(why), warning)
    if isinstance(obj, Node):
        ready = _condition(obj.status.conditions, "Ready")
        state = ready.status if ready is not None else "Unknown"
        if state == "True":
            return Readiness(True, False, f"node/{obj.metadata.name} Ready")
        detail = ""
        if ready is not None and ready.message:
            detail = f" ({ready.reason}: {ready.message})"
        return Readiness(
            False,
            False,
            f"node/{obj.metadata.name} NotReady",
            f"node {obj.metadata.name} is not Ready (Ready={state}){detail}",
        )
    return Readiness(True, False, f"{name} exists")


async def _look(
    client: KeelClient, info: KindInfo, obj: Resource, *, explain: bool = False
) -> Readiness:
    """The object's readiness now; with `explain`, a Deployment that is not ready lists its
    Instances too, to say which are not Ready and why (one list, only when reporting)."""
    namespace = obj.metadata.namespace or None
    try:
        live = await client.get(info, obj.metadata.name, namespace=namespace)
    except NotFound:
        return readiness(info, None)
    verdict = readiness(info, live)
    if explain and isinstance(live, Deployment) and not verdict.ready:
        listed = await client.list(Instance, namespace=live.metadata.namespace)
        return readiness(info, live, listed.items)
    return verdict


async def wait_ready(
    client: KeelClient,
    objects: Sequence[tuple[KindInfo, Resource]],
    timeout: float,
    progress: Progress,
) -> str | None:
    """Poll until every object is ready: None then, else the reason it is not (a failed
    rollout at once, anything else once `timeout` seconds have passed)."""
    started = time.monotonic()
    verdicts: dict[int, Readiness] = {}
    warned: dict[int, str] = {}
    total = len(objects)
    progress.step(f"waiting for {total} object(s) to become ready")
    while True:
        for index, (info, obj) in enumerate(objects):
            if index in verdicts and verdicts[index].ready:
                continue
            verdicts[index] = await _look(client, info, obj)
            warning = verdicts[index].warning
            if warning and warned.get(index) != warning:
                # A line of its own, at once, on a terminal or not: waiting may not end it.
                progress.line(f"warning: {warning}")
            warned[index] = warning
        elapsed = time.monotonic() - started
        failed = [i for i, v in verdicts.items() if v.failed]
        waiting = [i for i, v in verdicts.items() if not v.ready]
        if not waiting:
            progress.done(f"{total} object(s) ready in {elapsed:.1f} s")
            return None
        if failed or elapsed >= timeout:
            culprits = failed or waiting
            explained = [await _look(client, *objects[i], explain=True) for i in culprits]
            reasons = [v.reason for v in explained if not v.ready] or ["it became ready just now"]
            if failed:
                progress.done("rollout failed")
                return "; ".join(reasons)
            progress.done(f"{total - len(waiting)}/{total} object(s) ready")
            return f"timed out after {timeout:g} s waiting for readiness: {'; '.join(reasons)}"
        waiting_verdicts = [verdicts[i] for i in waiting]
        shown = ", ".join(v.summary for v in waiting_verdicts[:3])
        if len(waiting) > 3:
            shown += f", and {len(waiting) - 3} more"
        progress.update(f"waiting: {total - len(waiting)}/{total} ready; {shown} ({elapsed:.0f} s)")
        await asyncio.sleep(min(POLL, max(0.0, timeout - elapsed)))
