"""`keel apply -f FILE|DIR`: create each manifest's object, or bring the live one in line.

Every document is validated before anything is sent; each object is one write (a create, or
a replace on the live resourceVersion keeping the live status), so none is half-applied.
"""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from keel.api.registry import KindInfo
from keel.api.resources import Instance, Resource
from keel.cli._common import (
    CommandError,
    Session,
    add_connection_args,
    command,
    describe_api_error,
    fail,
    qualified,
)
from keel.cli._manifests import (
    Document,
    ManifestError,
    decode,
    document_kind,
    read_documents,
)
from keel.client import AlreadyExists, ApiError, Conflict, Invalid, KeelClient, NotFound

# Kinds other objects live in go first, so one apply can create a namespace and its contents.
_FIRST = {"Namespace": 0, "Cluster": 1}
_CONFLICT_RETRIES = 5
SYSTEM_PREFIX = "keel.dev/"


def add_apply_command(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "apply",
        help="create or update objects from YAML/JSON manifests",
        description="Create or update the objects of manifest files (multi-document YAML) "
        "or of every .yaml/.yml/.json file of a directory.",
    )
    parser.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE|DIR",
        help="manifest file, directory, or - for standard input (repeatable)",
    )
    parser.add_argument(
        "--wait",
        action="store_true",
        help="then wait until every object is ready (Deployments rolled out, Nodes Ready)",
    )
    parser.add_argument(
        "--timeout",
        type=_timeout,
        default=300.0,
        metavar="S",
        help="with --wait: give up after S seconds (default 300)",
    )
    add_connection_args(parser)
    parser.set_defaults(run=command(_apply))


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


async def _apply(args: argparse.Namespace, session: Session) -> int:
    documents = read_documents(args.filename)
    if not documents:
        raise CommandError(f"{', '.join(args.filename)}: no objects to apply")
    decoded: list[tuple[Document, KindInfo, Resource]] = []
    for document in documents:
        info = document_kind(document)
        try:
            obj = _with_namespace(decode(document, info), info, session)
        except ManifestError:
            raise
        except CommandError as exc:
            raise ManifestError(f"{document.where}: {exc}") from None
        decoded.append((document, info, obj))
    decoded.sort(key=lambda item: _FIRST.get(item[1].kind, 2))

    failed = 0
    applied: list[tuple[KindInfo, Resource]] = []
    for document, info, obj in decoded:
        try:
            outcome = await apply_one(session.client, info, obj)
        except ApiError as exc:
            failed += 1
            fail(f"{document.where}: {_write_error(info, obj, exc)}")
            continue
        print(f"{qualified(info, obj.metadata.name)} {outcome}", flush=True)
        applied.append((info, obj))
    if failed:
        return 1
    if args.wait:
        from keel.cli._progress import Progress
        from keel.cli._wait import wait_ready

        reason = await wait_ready(session.client, applied, args.timeout, Progress())
        if reason is not None:
            return fail(reason)
    return 0


def _with_namespace(obj: Resource, info: KindInfo, session: Session) -> Resource:
    if not info.namespaced:
        if obj.metadata.namespace:
            raise CommandError(f"metadata.namespace: {info.kind} is cluster-scoped: remove it")
        return obj
    namespace = obj.metadata.namespace or session.namespace
    if session.explicit_namespace and namespace != session.namespace:
        raise CommandError(
            f"metadata.namespace: {namespace!r} differs from -n {session.namespace!r}"
        )
    if namespace == obj.metadata.namespace:
        return obj
    return msgspec.structs.replace(
        obj, metadata=msgspec.structs.replace(obj.metadata, namespace=namespace)
    )


def _write_error(info: KindInfo, obj: Resource, exc: ApiError) -> str:
    if isinstance(exc, NotFound) and exc.details is not None and exc.details.kind == "namespaces":
        return f'namespaces "{obj.metadata.namespace}" not found (create the Namespace first)'
    if isinstance(exc, Invalid):
        return describe_api_error(exc)
    return f"{qualified(info, obj.metadata.name)}: {describe_api_error(exc)}"


async def apply_one(client: KeelClient, info: KindInfo, obj: Resource) -> str:
    """Create `obj`, or replace the live object with it; "created", "configured" or
    "unchanged". A replace that races another writer is retried on the new version."""
    name, namespace = obj.metadata.name, obj.metadata.namespace or None
    try:
        await client.create(obj)
        return "created"
    except AlreadyExists:
        pass
    for _ in range(_CONFLICT_RETRIES):
        try:
            live = await client.get(info, name, namespace=namespace)
        except NotFound:  # deleted meanwhile: create it again
            try:
                await client.create(obj)
                return "created"
            except AlreadyExists:
                continue
        desired = merged(live, obj)
        if _same(desired, live):
            return "unchanged"
        try:
            await client.replace(desired)
            return "configured"
        except Conflict:
            continue
    raise CommandError(
        f"{qualified(info, name)}: changed by another writer {_CONFLICT_RETRIES} times "
        "in a row; try again"
    )


def merged(live: Resource, manifest: Resource) -> Resource:
    """The manifest's object on top of the live one: the manifest's spec (and every other
    desired field), labels and annotations; the live identity, resourceVersion, status,
    owners and finalizers unless the manifest names its own, and the live `keel.dev/`
    labels and annotations the manifest does not mention (those belong to the system)."""
    meta = manifest.metadata
    metadata = msgspec.structs.replace(
        live.metadata,
        labels=_system_keys(live.metadata.labels) | meta.labels,
        annotations=_system_keys(live.metadata.annotations) | meta.annotations,
        owner_references=meta.owner_references or live.metadata.owner_references,
        finalizers=meta.finalizers or live.metadata.finalizers,
    )
    changes: dict[str, Any] = {"metadata": metadata, "kind": live.kind or manifest.kind}
    if "status" in live.__struct_fields__:
        changes["status"] = live.status  # type: ignore[attr-defined]
    if (
        isinstance(live, Instance)
        and isinstance(manifest, Instance)
        and live.spec.node_name
        and not manifest.spec.node_name
    ):
        # The binding is the scheduler's: a manifest without a node keeps it.
        changes["spec"] = msgspec.structs.replace(manifest.spec, node_name=live.spec.node_name)
    return msgspec.structs.replace(manifest, **changes)


def _system_keys(values: dict[str, str]) -> dict[str, str]:
    return {key: value for key, value in values.items() if key.startswith(SYSTEM_PREFIX)}


def _same(desired: Resource, live: Resource) -> bool:
    return bool(msgspec.to_builtins(desired) == msgspec.to_builtins(live))
