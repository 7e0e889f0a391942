"""`keel rollout status|history|undo|pause|resume|promote|abort deployment/NAME` (kubectl's
form; a bare NAME works too). `status -w` follows the rollout, step by step and wave by wave,
until it completes (exit 0), fails or is rolled back (exit 1), so scripts and CI can wait
on it. `undo` writes a Revision's template back into the Deployment; `promote` and `abort`
annotate it for the step it stands at; the deployment controller does the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import time
from typing import Any

import msgspec

from keel.api.registry import BY_KIND
from keel.api.resources import (
    ABORT_ANNOTATION,
    PROMOTE_ANNOTATION,
    STABLE_ANNOTATION,
    Deployment,
    Revision,
)
from keel.cli._common import CommandError, Session, add_connection_args, command, qualified
from keel.cli._tables import Printer
from keel.client import NotFound

__all__ = ["add_rollout_commands"]

_KINDS = ("deployment", "deployments", "deploy")


def add_rollout_commands(commands: Any) -> None:
    rollout = commands.add_parser(
        "rollout", help="manage a Deployment's rollout: status, history, undo, pause, resume"
    )
    actions = rollout.add_subparsers(dest="rollout_command", metavar="ACTION")
    actions.required = True

    def target(name: str, help_text: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = actions.add_parser(name, help=help_text)
        parser.add_argument("target", metavar="deployment/NAME", help="the Deployment")
        add_connection_args(parser)
        return parser

    status = target("status", "show the rollout's progress; -w follows it to the end")
    status.add_argument(
        "-w", "--watch", action="store_true", help="follow until complete (0) or failed (1)"
    )
    status.add_argument(
        "--timeout", type=float, default=0.0, metavar="S", help="with -w: give up after S s"
    )
    status.set_defaults(run=command(_status))
    history = target("history", "list the Deployment's revisions")
    history.add_argument("--revision", type=int, default=0, help="show one revision's template")
    history.set_defaults(run=command(_history))
    undo = target("undo", "roll back to the previous revision (or --to-revision N)")
    undo.add_argument("--to-revision", type=int, default=0, metavar="N")
    undo.set_defaults(run=command(_undo))
    target("pause", "stop the rollout's progress (scaling still works)").set_defaults(
        run=command(_pause)
    )
    target("resume", "let a paused rollout go on").set_defaults(run=command(_resume))
    promote = target("promote", "skip the canary step (or wave bake) the rollout waits at")
    promote.add_argument(
        "--full", action="store_true", help="skip every remaining step and wave: roll out now"
    )
    promote.set_defaults(run=command(_promote))
    target("abort", "return to the stable revision; this template is not retried").set_defaults(
        run=command(_abort)
    )


def deployment_name(target: str) -> str:
    """`deployment/NAME`, `deploy/NAME` or `NAME`."""
    kind, slash, name = target.partition("/")
    if not slash:
        return target
    if kind.lower().split(".")[0] not in _KINDS:
        raise CommandError(f"rollout works on deployments, not {kind!r}")
    if not name:
        raise CommandError(f"name the deployment: {target}/NAME")
    return name


async def _get(session: Session, name: str) -> Deployment:
    try:
        return await session.client.get(Deployment, name, namespace=session.namespace)
    except NotFound:
        raise CommandError(
            f'deployment "{name}" not found in namespace "{session.namespace}"'
        ) from None


async def _revisions(session: Session, deployment: Deployment) -> list[Revision]:
    listed = await session.client.list(Revision, namespace=session.namespace)
    uid = deployment.metadata.uid
    owned = [r for r in listed.items if any(o.uid == uid for o in r.metadata.owner_references)]
    return sorted(owned, key=lambda r: r.spec.revision)


def replica_failure(deployment: Deployment) -> str:
    """Why the Deployment cannot create its Instances (its ReplicaFailure condition, e.g. a
    ResourceQuota refusing them), or "" when it can."""
    failure = next((c for c in deployment.status.conditions if c.type == "ReplicaFailure"), None)
    if failure is None or failure.status != "True":
        return ""
    return f"{failure.reason}: {failure.message}" if failure.message else failure.reason


def describe(deployment: Deployment) -> tuple[str, bool | None]:
    """One line on the rollout and whether it is over: True done, False failed, None not yet;
    a rollout not done that cannot create its Instances says why (ReplicaFailure)."""
    line, done = _describe(deployment)
    failure = replica_failure(deployment)
    if failure and done is not True:
        line = f"{line} ReplicaFailure: {failure}"
    return line, done


def _describe(deployment: Deployment) -> tuple[str, bool | None]:
    name = deployment.metadata.name
    status = deployment.status
    spec = deployment.spec
    progress = (
        f"{status.updated_replicas}/{spec.replicas} updated, {status.ready_replicas} ready, "
        f"{status.available_replicas} available"
    )
    if status.observed_generation < deployment.metadata.generation:
        return f'Waiting for deployment "{name}" spec update to be observed...', None
    progressing = next((c for c in status.conditions if c.type == "Progressing"), None)
    why = f": {progressing.message}" if progressing and progressing.message else ""
    match status.phase:
        case "Complete" if status.available_replicas < spec.replicas:
            # The revision is rolled out, but replicas are being replaced (a drain, a node
            # failure): kubectl's `rollout status` waits for them too.
            return (
                f'Waiting for deployment "{name}" rollout to finish: {status.available_replicas}'
                f" of {spec.replicas} updated replicas are available...",
                None,
            )
        case "Complete":
            return f'deployment "{name}" successfully rolled out ({progress})', True
        case "Failed" if progressing is not None and progressing.reason == "WaveFailed":
            return f'deployment "{name}" failed{why}', False
        case "Failed":
            return f'deployment "{name}" failed: progress deadline exceeded{why}', False
        case "RolledBack":
            rolled = next((c for c in status.conditions if c.type == "RolledBack"), None)
            cause = f" ({rolled.reason}: {rolled.message})" if rolled else ""
            return f'deployment "{name}" was rolled back{cause}', False
        case "RollingBack":
            return f'deployment "{name}" is rolling back{why} ({progress})', None
        case "Paused":
            return f'deployment "{name}" rollout is paused ({progress})', None
    where = position(deployment)
    at = f" [{where}]" if where else ""
    return f'Waiting for deployment "{name}" rollout to finish{at}: {progress}...', None


def position(deployment: Deployment) -> str:
    """Where a canary or wave rollout stands: "step 2/4 pause (promote to go on), wave
    1/3 c1, 2/10 updated [##--------]"; empty for a plain rollout."""
    strategy, status = deployment.spec.strategy, deployment.status
    steps = strategy.canary.steps if strategy.canary is not None else []
    stepped = bool(status.stable_revision) and status.stable_revision != status.update_revision
    if not stepped or (not steps and not strategy.waves):
        return ""
    parts: list[str] = []
    if status.current_step < len(steps):
        item = steps[status.current_step]
        if item.set_weight is not None:
            what = f"setWeight {item.set_weight}%"
        elif item.pause is not None and item.pause.duration is None:
            what = "pause (promote to go on)"
        elif item.pause is not None:
            what = f"pause {item.pause.duration}s"
        else:
            what = "analysis"
        parts.append(f"step {status.current_step + 1}/{len(steps)} {what}")
    if status.current_wave < len(strategy.waves):
        wave = strategy.waves[status.current_wave]
        label = wave.name or ",".join(wave.clusters) or "selected clusters"
        parts.append(f"wave {status.current_wave + 1}/{len(strategy.waves)} {label}")
    replicas = max(1, deployment.spec.replicas)
    filled = round(10 * min(status.updated_replicas, replicas) / replicas)
    parts.append(f"[{'#' * filled}{'-' * (10 - filled)}]")
    return ", ".join(parts)


async def _status(args: argparse.Namespace, session: Session) -> int:
    name = deployment_name(args.target)
    deployment = await _get(session, name)
    line, done = describe(deployment)
    print(line, flush=True)
    if done is not None or not args.watch:
        return 1 if done is False else 0
    deadline = time.monotonic() + args.timeout if args.timeout > 0 else None
    last = line
    while True:
        if deadline is not None and time.monotonic() > deadline:
            print(f"error: timed out waiting for the rollout of {name}", flush=True)
            return 1
        await _wait_for_change(session, deployment)
        deployment = await _get(session, name)
        line, done = describe(deployment)
        if line != last:
            print(line, flush=True)
            last = line
        if done is not None:
            return 0 if done else 1


async def _wait_for_change(session: Session, deployment: Deployment) -> None:
    """Until the Deployment changes (a watch from its resourceVersion), or a second passes."""
    watch = session.client.watch(
        Deployment,
        namespace=session.namespace,
        resource_version=deployment.metadata.resource_version,
        field_selector=f"metadata.name={deployment.metadata.name}",
    )
    with contextlib.suppress(TimeoutError, StopAsyncIteration):
        async with asyncio.timeout(1.0):
            async for _ in watch:
                break
    with contextlib.suppress(Exception):
        await watch.aclose()


async def _history(args: argparse.Namespace, session: Session) -> int:
    name = deployment_name(args.target)
    deployment = await _get(session, name)
    revisions = await _revisions(session, deployment)
    if args.revision:
        chosen = _find(revisions, args.revision, name)
        print(msgspec.json.encode(msgspec.to_builtins(chosen.spec.template)).decode())
        return 0
    status = deployment.status
    rows = []
    for revision in revisions:
        digest = revision.metadata.labels.get("keel.dev/template-hash", "")
        notes = []
        if digest == status.update_revision:
            notes.append("update")
        if digest == status.current_revision:
            notes.append("current")
        if digest == status.stable_revision:
            notes.append("stable")
        if digest == status.failed_revision:
            notes.append("rolled back")
        command = " ".join(revision.spec.template.spec.command)
        rows.append(
            [
                str(revision.spec.revision),
                digest,
                revision.metadata.annotations.get(STABLE_ANNOTATION, "") or "-",
                ",".join(notes) or "-",
                command,
            ]
        )
    print(f"deployment.keel.dev/{name}")
    for line in Printer(["REVISION", "HASH", "STABLE-SINCE", "STATE", "COMMAND"]).render(rows):
        print(line)
    return 0


def _find(revisions: list[Revision], number: int, name: str) -> Revision:
    for revision in revisions:
        if revision.spec.revision == number:
            return revision
    known = ", ".join(str(r.spec.revision) for r in revisions) or "none"
    raise CommandError(f"deployment {name} has no revision {number} (known: {known})")


async def _undo(args: argparse.Namespace, session: Session) -> int:
    name = deployment_name(args.target)
    deployment = await _get(session, name)
    revisions = await _revisions(session, deployment)
    update = deployment.status.update_revision
    if args.to_revision:
        chosen = _find(revisions, args.to_revision, name)
    else:
        # The previous revision: the newest one that is not the revision the spec asks for.
        older = [r for r in revisions if r.metadata.labels.get("keel.dev/template-hash") != update]
        if not older:
            raise CommandError(f"deployment {name} has no previous revision to roll back to")
        chosen = older[-1]
    template = msgspec.to_builtins(chosen.spec.template)
    patch = [{"op": "replace", "path": "/spec/template", "value": template}]
    await session.client.patch(Deployment, name, patch, namespace=session.namespace, type="json")
    print(f"{qualified_deployment(name)} rolled back to revision {chosen.spec.revision}")
    return 0


def qualified_deployment(name: str) -> str:
    return qualified(BY_KIND["Deployment"], name)


async def _set_paused(args: argparse.Namespace, session: Session, paused: bool) -> int:
    name = deployment_name(args.target)
    deployment = await _get(session, name)
    if deployment.spec.paused == paused:
        print(f"{qualified_deployment(name)} is already {'paused' if paused else 'resumed'}")
        return 0
    await session.client.patch(
        Deployment, name, {"spec": {"paused": paused}}, namespace=session.namespace
    )
    print(f"{qualified_deployment(name)} {'paused' if paused else 'resumed'}")
    return 0


async def _pause(args: argparse.Namespace, session: Session) -> int:
    return await _set_paused(args, session, True)


async def _resume(args: argparse.Namespace, session: Session) -> int:
    return await _set_paused(args, session, False)


async def _promote(args: argparse.Namespace, session: Session) -> int:
    name = deployment_name(args.target)
    deployment = await _get(session, name)
    status, strategy = deployment.status, deployment.spec.strategy
    if not (strategy.canary or strategy.waves):
        raise CommandError(f"deployment {name} has no canary steps or waves to promote")
    if status.phase not in ("Progressing", "Paused"):
        raise CommandError(f"deployment {name} has no rollout to promote (phase {status.phase})")
    at = "full" if args.full else f"{status.current_step}.{status.current_wave}"
    value = f"{status.update_revision}/{at}"
    patch = {"metadata": {"annotations": {PROMOTE_ANNOTATION: value}}}
    await session.client.patch(Deployment, name, patch, namespace=session.namespace)
    what = "fully promoted" if args.full else "promoted"
    print(f"{qualified_deployment(name)} {what}")
    return 0


async def _abort(args: argparse.Namespace, session: Session) -> int:
    name = deployment_name(args.target)
    deployment = await _get(session, name)
    status = deployment.status
    if status.phase not in ("Progressing", "Paused", "Failed"):
        raise CommandError(f"deployment {name} has no rollout to abort (phase {status.phase})")
    if not status.stable_revision or status.stable_revision == status.update_revision:
        raise CommandError(f"deployment {name} has no stable revision to return to")
    patch = {"metadata": {"annotations": {ABORT_ANNOTATION: status.update_revision}}}
    await session.client.patch(Deployment, name, patch, namespace=session.namespace)
    print(f"{qualified_deployment(name)} aborted: returning to the stable revision")
    return 0
