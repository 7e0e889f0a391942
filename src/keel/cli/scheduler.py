"""`keel scheduler`: run the scheduler under leader election on Lease keel-system/scheduler
(warm standby otherwise), binding with the lease's fencing token; logs to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any

from keel.cli._metrics import add_metrics_argument, serving_metrics
from keel.client import KeelClient, KeelClientError
from keel.clock import SystemClock

__all__ = ["add_scheduler_command", "run_scheduler"]

log = logging.getLogger("keel.scheduler")


def add_scheduler_command(commands: Any) -> None:
    """Add `scheduler` to the `keel` subcommands (an argparse subparsers object)."""
    parser = commands.add_parser(
        "scheduler",
        help="place Instances on Nodes",
        description="Bind unbound Instances to Ready Nodes while holding the Lease "
        "keel-system/scheduler; every binding carries the lease's fencing token.",
    )
    parser.add_argument(
        "--kubeconfig", help="kubeconfig (default $KEEL_KUBECONFIG, $KUBECONFIG, .keel/...)"
    )
    parser.add_argument("--identity", required=True, help="this replica's name in the lease")
    parser.add_argument("--lease-ttl", type=int, default=2, help="lease TTL, seconds (>= 2)")
    parser.add_argument(
        "--scoring",
        choices=("LeastAllocated", "MostAllocated"),
        default="LeastAllocated",
        help="rank fitting Nodes by least (spread load) or most (bin-pack) allocation, "
        "where the placement does not decide (default LeastAllocated)",
    )
    parser.add_argument(
        "--shards",
        type=int,
        default=0,
        help="run several schedulers at once: split the Instances into this many shards, "
        "each replica takes its share of the shard leases and places their Instances on "
        "any Node (every replica must give the same number; 0, the default: one leader "
        "places everything)",
    )
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    add_metrics_argument(parser)
    parser.set_defaults(run=run_scheduler)


def run_scheduler(args: argparse.Namespace) -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.lease_ttl < 2:
        print("scheduler: --lease-ttl must be at least 2", file=sys.stderr)
        return 2
    if not 0 <= args.shards <= 64:
        print(f"scheduler: --shards must be between 0 and 64, got {args.shards}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args))
    except (ValueError, KeelClientError, OSError) as exc:
        print(f"scheduler: {exc}", file=sys.stderr)
        return 1


async def _serve(args: argparse.Namespace) -> int:
    from keel.scheduler.metrics import SchedulerMetrics
    from keel.scheduler.policy import SchedulerConfig
    from keel.scheduler.service import new_scheduler

    clock = SystemClock()
    async with (
        KeelClient.from_kubeconfig(args.kubeconfig) as client,
        contextlib.AsyncExitStack() as exits,
    ):
        manager = new_scheduler(
            client,
            identity=args.identity,
            clock=clock,
            ttl=args.lease_ttl,
            config=SchedulerConfig(scoring=args.scoring),
            shards=args.shards,
        )
        metrics = SchedulerMetrics(manager)
        await exits.enter_async_context(serving_metrics(args.metrics_listen, metrics.render))
        loop = asyncio.get_running_loop()
        task = loop.create_task(manager.run(), name="scheduler")
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info("%s: scheduler started (lease TTL %ds)", args.identity, args.lease_ttl)
        stopping = loop.create_task(stop.wait())
        await asyncio.wait([task, stopping], return_when=asyncio.FIRST_COMPLETED)
        failed = task.done() and not task.cancelled() and task.exception() is not None
        error = task.exception() if failed else None
        for pending in (task, stopping):
            pending.cancel()
        # Cancelling the manager stops the work first and then releases the lease.
        await asyncio.gather(task, stopping, return_exceptions=True)
        log.info("%s: scheduler stopped", args.identity)
        if error is not None:
            log.error("scheduler failed: %r", error)
            return 1
    return 0
