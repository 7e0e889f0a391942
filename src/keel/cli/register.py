"""`keel register SERVICE --address HOST:PORT --ttl S [--check URL]` and `keel deregister
SERVICE --name ID`: an external endpoint of a Service, kept alive by this foreground process.

`register` holds a Lease (see `keel.client.Registration`) until it is stopped: Ctrl-C or
SIGTERM deregisters at once; a crash leaves the endpoint to expire within the TTL. With
`--check`, the URL is probed every `--check-interval` seconds and the endpoint is listed as
not ready while a probe fails (any answer but 2xx/3xx, or none within `--check-timeout`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from typing import Any

import aiohttp

from keel.api.resources import valid_host
from keel.cli._common import CommandError, Session, add_connection_args, command
from keel.client import AlreadyExists, NotFound, Registration
from keel.client._registration import registration_lease_name

__all__ = ["add_register_commands", "parse_address"]


def parse_address(text: str) -> tuple[str, int]:
    """`HOST:PORT` or `[IPv6]:PORT` -> (host, port); ValueError naming --address."""
    host, sep, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"--address: expected HOST:PORT (e.g. 10.0.0.5:8080), got {text!r}")
    port = int(port_text)
    if not 1 <= port <= 65535:
        raise ValueError(f"--address: port must be between 1 and 65535, got {port}")
    if not valid_host(host):
        raise ValueError(f"--address: expected an IP address or a DNS name, got {host!r}")
    return host, port


def _positive(name: str, low: float, high: float) -> Any:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: expected seconds, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{name}: expected between {low:g} and {high:g} seconds, got {text}"
            )
        return value

    return parse


def _ttl(text: str) -> int:
    if not text.isdigit() or not 2 <= int(text) <= 3600:
        raise argparse.ArgumentTypeError(
            f"--ttl: expected whole seconds between 2 and 3600, got {text!r}"
        )
    return int(text)


def add_register_commands(commands: Any) -> None:
    register: argparse.ArgumentParser = commands.add_parser(
        "register",
        help="keep an external endpoint in a Service's Endpoints while this runs",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    register.add_argument("service", metavar="SERVICE")
    register.add_argument("--address", required=True, metavar="HOST:PORT")
    register.add_argument(
        "--ttl", type=_ttl, default=10, help="seconds the endpoint outlives its last renewal"
    )
    register.add_argument("--name", metavar="ID", help="registration id (default: generated)")
    register.add_argument(
        "--port-name", default="", metavar="NAME", help="the Service port it serves"
    )
    register.add_argument("--check", metavar="URL", help="HTTP(S) URL that must answer 2xx/3xx")
    register.add_argument(
        "--check-interval",
        type=_positive("--check-interval", 0.1, 3600),
        default=2.0,
        metavar="S",
        help="seconds between checks (default 2)",
    )
    register.add_argument(
        "--check-timeout",
        type=_positive("--check-timeout", 0.1, 3600),
        default=1.0,
        metavar="S",
        help="seconds a check may take (default 1)",
    )
    add_connection_args(register)
    register.set_defaults(run=command(_register))

    deregister: argparse.ArgumentParser = commands.add_parser(
        "deregister", help="remove a registration of `keel register` now"
    )
    deregister.add_argument("service", metavar="SERVICE")
    deregister.add_argument("--name", required=True, metavar="ID", help="registration id")
    add_connection_args(deregister)
    deregister.set_defaults(run=command(_deregister))


async def _probe(http: aiohttp.ClientSession, url: str, timeout: float) -> str | None:
    """None when the check passes, else why it failed."""
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            if 200 <= response.status < 400:
                return None
            return f"HTTP {response.status}"
    except TimeoutError:
        return f"no answer within {timeout:g}s"
    except aiohttp.ClientError as exc:
        return str(exc) or type(exc).__name__


async def _check_forever(
    registration: Registration,
    http: aiohttp.ClientSession,
    url: str,
    interval: float,
    timeout: float,
) -> None:
    while True:
        await asyncio.sleep(interval)
        failure = await _probe(http, url, timeout)
        if (failure is None) == registration.ready:
            continue
        await registration.set_ready(failure is None)
        if failure is None:
            print(f"check passed: {url}; endpoint ready again", flush=True)
        else:
            print(f"check failed: {url}: {failure}; endpoint withdrawn", flush=True)


async def _register(args: argparse.Namespace, session: Session) -> int:
    try:
        host, port = parse_address(args.address)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with aiohttp.ClientSession() as http:
        ready = True
        if args.check:
            failure = await _probe(http, args.check, args.check_timeout)
            ready = failure is None
            if failure is not None:
                print(f"check failed: {args.check}: {failure}; registering as not ready")
        try:
            registration = await session.client.register_endpoint(
                args.service,
                host,
                port,
                ttl=args.ttl,
                name=args.name,
                namespace=session.namespace,
                port_name=args.port_name,
                ready=ready,
            )
        except AlreadyExists:
            lease = registration_lease_name(args.service, args.name or "")
            raise CommandError(
                f'registration "{args.name}" of service "{args.service}" already exists '
                f"(Lease {session.namespace}/{lease}); stop its owner, `keel deregister "
                f"{args.service} --name {args.name}`, or wait up to its TTL for it to expire"
            ) from None
        print(
            f"registered {host}:{port} as {registration.name!r} of service "
            f"{session.namespace}/{args.service} (Lease {registration.lease_name}, ttl "
            f"{args.ttl}s, renewed every {registration.interval:.1f}s); Ctrl-C deregisters",
            flush=True,
        )
        checking = None
        if args.check:
            checking = asyncio.create_task(
                _check_forever(
                    registration, http, args.check, args.check_interval, args.check_timeout
                )
            )
        removed = asyncio.create_task(registration.wait_removed())
        stopped = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait({removed, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            removed.cancel()
            stopped.cancel()
            if checking is not None:
                checking.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await checking
            released = await registration.close()
    if registration.removed:
        print(f"{registration.name!r} was deregistered by someone else; stopping", flush=True)
    elif released:
        print(f"deregistered {registration.name!r}", flush=True)
    else:
        print(f"{registration.name!r} had already expired", flush=True)
    return 0


async def _deregister(args: argparse.Namespace, session: Session) -> int:
    try:
        await session.client.deregister_endpoint(
            args.service, args.name, namespace=session.namespace
        )
    except NotFound:
        raise CommandError(
            f'no registration "{args.name}" of service "{args.service}" in namespace '
            f'"{session.namespace}"'
        ) from None
    print(f"deregistered {args.name!r} of service {session.namespace}/{args.service}")
    return 0
