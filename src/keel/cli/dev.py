"""`keel dev ...`: developer tools (local etcd clusters, hollow nodes for scale tests)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any


def add_dev_commands(commands: Any) -> None:
    dev = commands.add_parser("dev", help="developer tools")
    sub = dev.add_subparsers(dest="dev_command", metavar="TOOL")
    sub.required = True
    etcd = sub.add_parser("etcd", help="run a local etcd cluster on loopback")
    etcd.add_argument("--members", type=int, default=1, help="cluster size (default 1)")
    etcd.add_argument("--dir", required=True, help="data directory for the members")
    etcd.set_defaults(run=run_etcd)
    hollow = sub.add_parser(
        "hollow-nodes",
        help="register many Nodes that run nothing (scale tests)",
        description="Register COUNT Nodes in CLUSTERS clusters (zones and regions as labels), "
        "keep their node leases alive with keep-alives, and report the Instances bound to "
        "them Running and Ready without starting processes. Ctrl-C releases the leases.",
    )
    hollow.add_argument("--count", type=int, required=True, help="how many Nodes")
    hollow.add_argument("--clusters", type=int, default=1, help="spread over this many clusters")
    hollow.add_argument("--zones-per-cluster", type=int, default=2, help="zones in each cluster")
    hollow.add_argument("--prefix", default="hollow", help="name prefix of Nodes and clusters")
    hollow.add_argument(
        "--capacity",
        default="cpu=4,memory=16Gi",
        help="each Node's capacity: cpu=Q,memory=Q and any extended resource (gpu=2)",
    )
    hollow.add_argument(
        "--lease-duration", type=int, default=40, help="node lease TTL, seconds (renewed at 1/3)"
    )
    hollow.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    hollow.add_argument(
        "--no-report",
        dest="report",
        action="store_false",
        help="do not report bound Instances (scheduler benchmarks, as kube's scheduler_perf, "
        "which runs no kubelets)",
    )
    hollow.add_argument("--kubeconfig", help="kubeconfig (default $KEEL_KUBECONFIG, .keel/...)")
    hollow.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
    hollow.set_defaults(run=run_hollow_nodes)


def run_etcd(args: argparse.Namespace) -> int:
    from keel.dev.etcd_cluster import run_foreground

    return run_foreground(args.dir, args.members)


def parse_hollow_capacity(text: str) -> tuple[str, str, dict[str, str]]:
    """`cpu=4,memory=16Gi,gpu=2` -> (cpu, memory, extended)."""
    values: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"--capacity: {part!r}: expected NAME=QUANTITY")
        values[key.strip()] = value.strip()
    cpu = values.pop("cpu", "4")
    memory = values.pop("memory", "16Gi")
    return cpu, memory, values


def run_hollow_nodes(args: argparse.Namespace) -> int:
    import msgspec

    from keel.api.resources import ResourceList
    from keel.dev.hollow import HollowShape

    logging.basicConfig(
        stream=sys.stderr,
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.count < 1 or args.clusters < 1 or args.zones_per_cluster < 1:
        print("hollow-nodes: --count, --clusters and --zones-per-cluster must be >= 1",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.lease_duration < 2:
        print("hollow-nodes: --lease-duration must be at least 2", file=sys.stderr)
        return 2
    try:
        cpu, memory, extended = parse_hollow_capacity(args.capacity)
        msgspec.convert({"cpu": cpu, "memory": memory, "extended": extended}, ResourceList)
    except (ValueError, msgspec.ValidationError) as exc:
        print(f"hollow-nodes: --capacity {args.capacity!r}: {exc}", file=sys.stderr)
        return 2
    shape = HollowShape(
        count=args.count,
        clusters=args.clusters,
        zones_per_cluster=args.zones_per_cluster,
        prefix=args.prefix,
        cpu=cpu,
        memory=memory,
        extended=extended,
        lease_duration=args.lease_duration,
    )
    return asyncio.run(_serve_hollow(args, shape))


async def _serve_hollow(args: argparse.Namespace, shape: Any) -> int:
    from keel.client import KeelClient, KeelClientError
    from keel.clock import SystemClock
    from keel.dev.hollow import HollowNodes

    log = logging.getLogger("keel.dev.hollow")
    try:
        async with KeelClient.from_kubeconfig(args.kubeconfig) as client:
            nodes = HollowNodes(
                client,
                shape,
                clock=SystemClock(),
                concurrency=args.concurrency,
                report=args.report,
            )
            loop = asyncio.get_running_loop()
            task = loop.create_task(nodes.run(), name="hollow-nodes")
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, task.cancel)
            with contextlib.suppress(asyncio.CancelledError):
                await task
            log.info("hollow nodes stopped (%d instance reports)", nodes.reported)
    except (ValueError, KeelClientError, OSError) as exc:
        print(f"hollow-nodes: {exc}", file=sys.stderr)
        return 1
    return 0
