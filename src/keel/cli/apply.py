"""`keel apply -f FILE|DIR`: server-side apply of each manifest's object, as field manager
`keel` (`--field-manager` to change it): the object is created, or the fields the manifest
sets are merged into it (labels and annotations key by key); fields `keel` applied before
and the manifest no longer sets are removed; a field another manager (a controller, kubectl
scale, kubectl edit) set to another value is a conflict, reported with its owner, unless
`--force-conflicts` takes it over.

Every document is validated before anything is sent; each object is one write, so none is
half-applied.
"""

from __future__ import annotations

import argparse
from typing import Any

import msgspec

from keel.api.registry import KindInfo
from keel.api.resources import API_VERSION, Resource
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
from keel.client import ApiError, Invalid, KeelClient, NotFound

# Kinds other objects live in go first, so one apply can create a namespace and its contents.
_FIRST = {"Namespace": 0, "Cluster": 1}
FIELD_MANAGER = "keel"


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
        "--field-manager",
        default=FIELD_MANAGER,
        metavar="NAME",
        help=f"the field manager the applied fields belong to (default {FIELD_MANAGER})",
    )
    parser.add_argument(
        "--force-conflicts",
        action="store_true",
        help="take over fields another manager set to another value, instead of failing",
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
            outcome = await apply_one(
                session.client,
                info,
                obj,
                document.body,
                field_manager=args.field_manager,
                force=args.force_conflicts,
            )
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


async def apply_one(
    client: KeelClient,
    info: KindInfo,
    obj: Resource,
    body: dict[str, Any],
    *,
    field_manager: str = FIELD_MANAGER,
    force: bool = False,
) -> str:
    """Server-side apply of the manifest `body` (`obj` is it validated, with its namespace
    settled); "created", "configured" or "unchanged"."""
    name, namespace = obj.metadata.name, obj.metadata.namespace or None
    document = dict(body)
    metadata = dict(document.get("metadata") or {})
    if namespace:
        metadata["namespace"] = namespace
    document["metadata"] = metadata
    document.setdefault("apiVersion", API_VERSION)
    document.setdefault("kind", info.kind)
    try:
        before: str | None = (
            await client.get(info, name, namespace=namespace)
        ).metadata.resource_version
    except NotFound:
        before = None
    applied = await client.apply(info, document, field_manager=field_manager, force=force)
    if before is None:
        return "created"
    return "unchanged" if applied.metadata.resource_version == before else "configured"
