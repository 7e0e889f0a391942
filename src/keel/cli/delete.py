"""`keel delete KIND NAME...` or `keel delete -f FILE|DIR`: delete objects by name, or the
objects a manifest names. Every name is tried; any failure makes the exit code 1.
"""

from __future__ import annotations

import argparse
from typing import Any

from keel.api.registry import KindInfo
from keel.cli._common import (
    CommandError,
    Session,
    add_connection_args,
    command,
    describe_api_error,
    fail,
    qualified,
    resolve_kind,
)
from keel.cli._manifests import (
    document_kind,
    document_name,
    document_namespace,
    read_documents,
)
from keel.client import ApiError


def add_delete_command(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "delete",
        help="delete objects by kind and name, or those of a manifest",
        description="Delete objects: `keel delete KIND NAME...` or `keel delete -f FILE|DIR`.",
    )
    parser.add_argument("kind", metavar="KIND", nargs="?")
    parser.add_argument("names", metavar="NAME", nargs="*")
    parser.add_argument(
        "-f", "--filename", action="append", metavar="FILE|DIR", help="delete what it names"
    )
    parser.add_argument(
        "--cascade",
        choices=("background", "foreground", "orphan"),
        default="background",
        help="dependents: deleted after the owner (background, the default), before it "
        "(foreground: the owner waits for those that block it), or kept (orphan)",
    )
    add_connection_args(parser)
    parser.set_defaults(run=command(_delete))


async def _delete(args: argparse.Namespace, session: Session) -> int:
    targets: list[tuple[KindInfo, str, str | None]] = []
    if args.filename:
        if args.kind:
            raise CommandError("give either -f FILE or KIND NAME..., not both")
        for document in reversed(read_documents(args.filename)):
            info = document_kind(document)
            in_namespace = document_namespace(document) or session.namespace
            scope = in_namespace if info.namespaced else None
            targets.append((info, document_name(document), scope))
    else:
        if not args.kind or not args.names:
            raise CommandError("name what to delete: KIND NAME... or -f FILE")
        info = resolve_kind(args.kind)
        targets = [
            (info, name, session.namespace if info.namespaced else None) for name in args.names
        ]

    failed = 0
    for info, name, namespace in targets:
        try:
            await session.client.delete(
                info,
                name,
                namespace=namespace,
                propagation_policy=None
                if args.cascade == "background"
                else args.cascade.capitalize(),
            )
        except ApiError as exc:
            failed += 1
            fail(describe_api_error(exc))
            continue
        print(f"{qualified(info, name)} deleted", flush=True)
    return 1 if failed else 0
