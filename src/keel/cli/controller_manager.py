"""`keel controller-manager`: run the platform controllers, and any loaded with
`--controller MODULE:FACTORY`, under leader election (or shard leases), logging every
leadership change and every write the store rejects to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import logging
import signal
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keel.cli._metrics import add_metrics_argument, serving_metrics
from keel.client import KeelClient, KeelClientError
from keel.clock import SystemClock

if TYPE_CHECKING:
    from keel.runtime.controller import Controller
    from keel.runtime.manager import ControllerManager

__all__ = ["ControllerFactory", "add_controller_manager_command", "load_factory"]

# What `--controller MODULE:FACTORY` names: called once with the manager before it runs, it
# returns the controllers to run beside the built-in ones. It may also hook the manager (e.g.
# `manager.elector.on_change`); tasks it starts are cancelled when the manager has stopped.
ControllerFactory = Callable[["ControllerManager"], Iterable["Controller"]]

log = logging.getLogger("keel.controller-manager")


def load_factory(spec: str) -> ControllerFactory:
    """The callable `MODULE:FACTORY` names (imported from sys.path); ValueError otherwise."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"--controller {spec!r}: expected MODULE:FACTORY")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"--controller {spec!r}: cannot import {module_name}: {exc}") from None
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise ValueError(f"--controller {spec!r}: {module_name} has no callable {attribute}")
    result: ControllerFactory = factory
    return result


def add_controller_manager_command(commands: Any) -> None:
    """Add `controller-manager` to the `keel` subcommands (an argparse subparsers object)."""
    parser = commands.add_parser(
        "controller-manager",
        help="run the controllers under leader election",
        description="Run Keel's controllers while holding keel-system/controller-manager "
        "(or, with --shards, the shard leases this replica wins); every write carries the "
        "lease's fencing token.",
    )
    parser.add_argument(
        "--kubeconfig", help="kubeconfig (default $KEEL_KUBECONFIG, $KUBECONFIG, .keel/...)"
    )
    parser.add_argument("--identity", required=True, help="this replica's name in the leases")
    parser.add_argument("--shards", type=int, default=0, help="split the key space in N shards")
    parser.add_argument("--lease-ttl", type=int, default=2, help="lease TTL, seconds (>= 2)")
    parser.add_argument(
        "--controllers",
        default="namespace,gc",
        help="comma-separated: namespace, gc, deployment, endpoints, nodelifecycle, cluster, quota",
    )
    parser.add_argument(
        "--controller",
        action="append",
        default=[],
        metavar="MODULE:FACTORY",
        help="also run the controllers FACTORY(manager) returns, loaded from MODULE on the "
        "Python path (repeatable)",
    )
    parser.add_argument("--workers", type=int, default=4, help="workers per controller")
    parser.add_argument("--state-dir", type=Path, help="directory for cache checkpoints")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    add_metrics_argument(parser)
    parser.set_defaults(run=run_controller_manager)


def run_controller_manager(args: argparse.Namespace) -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    names = [name.strip() for name in args.controllers.split(",") if name.strip()]
    if args.lease_ttl < 2:
        print("controller-manager: --lease-ttl must be at least 2", file=sys.stderr)
        return 2
    try:
        factories = [load_factory(spec) for spec in args.controller]
    except ValueError as exc:
        print(f"controller-manager: {exc}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args, names, factories))
    except (ValueError, KeelClientError, OSError) as exc:
        print(f"controller-manager: {exc}", file=sys.stderr)
        return 1


async def _serve(
    args: argparse.Namespace, names: list[str], factories: list[ControllerFactory]
) -> int:
    from keel.controllers import build
    from keel.runtime.controller import ControllerRunner
    from keel.runtime.manager import ControllerManager
    from keel.runtime.metrics import ControllerManagerMetrics

    clock = SystemClock()
    if args.state_dir is not None:
        args.state_dir.mkdir(parents=True, exist_ok=True)
    async with (
        KeelClient.from_kubeconfig(args.kubeconfig) as client,
        contextlib.AsyncExitStack() as exits,
    ):
        runner = ControllerRunner(client, clock=clock, state_dir=args.state_dir)
        for controller in build(names, runner.cache):
            runner.register(controller, workers=args.workers)
        manager = ControllerManager(
            client, runner, identity=args.identity, ttl=args.lease_ttl, shards=args.shards,
            clock=clock,
        )  # fmt: skip
        for factory in factories:
            for controller in factory(manager):
                runner.register(controller, workers=args.workers)
        metrics = ControllerManagerMetrics(manager)  # after every controller is registered
        await exits.enter_async_context(serving_metrics(args.metrics_listen, metrics.render))
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(manager.run(), name="manager")]
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "%s: controller-manager started (controllers: %s, shards: %s, lease TTL %ds)",
            args.identity, ",".join([*names, *args.controller]) or "none", args.shards or "off",
            args.lease_ttl,
        )  # fmt: skip
        stopping = loop.create_task(stop.wait())
        await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
        for task in (*tasks, stopping):
            task.cancel()
        # Cancelling the manager stops the work first and then releases the lease.
        await asyncio.gather(*tasks, stopping, return_exceptions=True)
        await _end_other_tasks()
        log.info("%s: controller-manager stopped", args.identity)
        if failed:
            log.error("controller-manager failed: %r", failed[0].exception())
            return 1
    return 0


async def _end_other_tasks() -> None:
    """Cancel what a --controller factory left running (the manager's own work has ended),
    while the client it writes through is still open."""
    current = asyncio.current_task()
    others = [task for task in asyncio.all_tasks() if task is not current]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)
