"""`--metrics-listen HOST:PORT` of the component commands (controller-manager, scheduler,
agent): serve their Prometheus metrics at http://HOST:PORT/metrics while they run."""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from keel.metrics import MetricsServer, parse_listen

__all__ = ["add_metrics_argument", "serving_metrics"]

log = logging.getLogger("keel.metrics")


def _listen(text: str) -> str:
    try:
        parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_metrics_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-listen",
        type=_listen,
        default=None,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (default: off; port 0: "
        "any free port). Unauthenticated: keep it on loopback or a trusted network",
    )


@contextlib.asynccontextmanager
async def serving_metrics(listen: str | None, render: Callable[[], str]) -> AsyncIterator[None]:
    """Serve `render()` at /metrics on `listen` (nothing when None) for the block's length.
    A port that cannot be bound raises OSError naming it."""
    if listen is None:
        yield
        return
    host, port = parse_listen(listen)
    server = MetricsServer(render, host, port)
    try:
        await server.start()
    except OSError as exc:
        raise OSError(f"--metrics-listen {listen}: {exc.strerror or exc}") from None
    log.info("metrics at %s", server.url)
    try:
        yield
    finally:
        await server.stop()
