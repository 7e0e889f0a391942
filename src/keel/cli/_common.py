"""What the client commands (apply, get, describe, delete, logs, top) share: connection
options, the kubeconfig, one error line.

A command is an async function of (args, Session); `command()` turns it into the
`run(args) -> int` that argparse calls, mapping every expected failure to `error: ...`.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec

from keel.api.registry import KindInfo, lookup
from keel.client import (
    ApiError,
    ApiUnavailable,
    Backoff,
    Invalid,
    KeelClient,
    KeelClientError,
    Kubeconfig,
    KubeconfigError,
    RetryPolicy,
    load_kubeconfig,
)

GROUP = "keel.dev"
# ApiUnavailable says `GET http://...: why`; the server is named once, by us.
_REQUEST_PREFIX = re.compile(r"^[A-Z]+ \S+: ")


class CommandError(Exception):
    """A failure the user caused or can fix; printed as one `error:` line."""


@dataclass
class Session:
    """One command's connection: the loaded kubeconfig and a client for its server."""

    config: Kubeconfig
    client: KeelClient
    namespace: str  # -n, else the kubeconfig context's namespace
    explicit_namespace: bool  # whether -n was given

    @property
    def state_dir(self) -> Path:
        """The directory of the kubeconfig: `keel up` keeps its state there."""
        path = self.config.path or Path(".keel") / "kubeconfig"
        return path.resolve().parent


def add_connection_args(parser: argparse.ArgumentParser, *, all_namespaces: bool = False) -> None:
    parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="kubeconfig (default $KEEL_KUBECONFIG, then $KUBECONFIG, then .keel/kubeconfig)",
    )
    parser.add_argument(
        "--context", metavar="NAME", help="kubeconfig context (default its current-context)"
    )
    parser.add_argument("-n", "--namespace", help='namespace (default "default")')
    if all_namespaces:
        parser.add_argument(
            "-A", "--all-namespaces", action="store_true", help="list across all namespaces"
        )


CommandFn = Callable[[argparse.Namespace, Session], Awaitable[int]]


def command(fn: CommandFn) -> Callable[[argparse.Namespace], int]:
    """`run(args) -> int` for argparse: loads the kubeconfig, runs `fn` on a fresh event
    loop, and turns expected failures into one line on stderr and exit code 1."""

    def run(args: argparse.Namespace) -> int:
        try:
            config = load_kubeconfig(
                getattr(args, "kubeconfig", None), context=getattr(args, "context", None)
            )
        except KubeconfigError as exc:
            return fail(str(exc))
        try:
            return asyncio.run(_run(fn, args, config))
        except KeyboardInterrupt:
            return 130
        except CommandError as exc:
            return fail(str(exc))
        except ApiUnavailable as exc:
            reason = _REQUEST_PREFIX.sub("", exc.message)
            return fail(f"cannot reach the API server at {config.server}: {reason}")
        except ApiError as exc:
            return fail(describe_api_error(exc))
        except KeelClientError as exc:
            return fail(str(exc))
        except BrokenPipeError:
            return 1

    return run


async def _run(fn: CommandFn, args: argparse.Namespace, config: Kubeconfig) -> int:
    namespace_arg: str | None = getattr(args, "namespace", None)
    client = KeelClient(
        config.server,
        token=config.token,
        ssl=config.ssl_context(),
        namespace=namespace_arg or config.namespace,
        timeout=30.0,
        # A person is waiting: give up on a dead server after a second or two.
        retry=RetryPolicy(backoff=Backoff(initial=0.2, maximum=1.0), max_unavailable_retries=2),
    )
    session = Session(
        config=config,
        client=client,
        namespace=namespace_arg or config.namespace,
        explicit_namespace=namespace_arg is not None,
    )
    try:
        return await fn(args, session)
    finally:
        await client.close()


def fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return 1


def describe_api_error(exc: ApiError) -> str:
    """The server's message; for 422 every cause as `field: message`."""
    if isinstance(exc, Invalid) and exc.causes:
        return "; ".join(
            f"{cause.field}: {plain(cause.message)}" if cause.field else plain(cause.message)
            for cause in exc.causes
        )
    return plain(exc.message) or str(exc)


def plain(message: str) -> str:
    """msgspec quotes types in backticks (Expected `int`); users read plain words."""
    return message.replace("`", "")


def resolve_kind(name: str) -> KindInfo:
    info = lookup(name)
    if info is None:
        raise CommandError(f'the server doesn\'t have a resource type "{name}"')
    return info


def qualified(info: KindInfo, name: str) -> str:
    """`deployment.keel.dev/hello`, as apply and delete print it."""
    return f"{info.singular}.{GROUP}/{name}"


def to_builtins(obj: object) -> object:
    """An object as JSON-ready builtins (camelCase names, defaults written out)."""
    return msgspec.to_builtins(obj)
