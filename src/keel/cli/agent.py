"""`keel agent`: run the node agent of one Node until SIGINT/SIGTERM (then stop its workloads
gracefully, or leave them running for the next agent to re-adopt with `--leave-running`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

import msgspec

from keel.api.resources import ResourceList
from keel.cli._metrics import add_metrics_argument, serving_metrics

# keel.agent's DEFAULT_LEASE_DURATION (not imported here: every `keel` command parses these
# arguments, and the agent's modules are not cheap to import).
DEFAULT_LEASE_DURATION = 4


def parse_capacity(text: str) -> ResourceList:
    """`cpu=4,memory=8Gi` -> ResourceList; missing entries default to this machine's."""
    values: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("cpu", "memory") or not value.strip():
            raise argparse.ArgumentTypeError(
                f"capacity {part!r}: expected cpu=QUANTITY or memory=QUANTITY"
            )
        values[key.strip()] = value.strip()
    wanted = {
        "cpu": values.get("cpu", str(os.cpu_count() or 1)),
        "memory": values.get("memory", _machine_memory()),
    }
    try:
        return msgspec.convert(wanted, ResourceList)
    except msgspec.ValidationError as exc:
        raise argparse.ArgumentTypeError(f"capacity {text!r}: {exc}") from None


def _machine_memory() -> str:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1])}Ki"
    except OSError:
        pass
    return "1Gi"


def add_agent_command(commands: Any) -> None:
    agent = commands.add_parser(
        "agent", help="run the node agent: register a Node and run the Instances bound to it"
    )
    agent.add_argument("--node", required=True, help="the Node's name")
    agent.add_argument("--cluster", required=True, help="the Cluster the Node belongs to")
    agent.add_argument("--kubeconfig", default=None, help="kubeconfig with a node:NAME token")
    agent.add_argument("--server", default=None, help="API server URL (overrides kubeconfig)")
    agent.add_argument("--token", default=None, help="bearer token (overrides kubeconfig)")
    agent.add_argument(
        "--state-dir", type=Path, default=None, help="where the agent keeps its state and logs "
        "(default .keel/agents/NODE)"
    )  # fmt: skip
    agent.add_argument(
        "--capacity", type=parse_capacity, default=None,
        help="e.g. cpu=4,memory=8Gi (default: this machine)",
    )  # fmt: skip
    agent.add_argument(
        "--lease-duration", type=int, default=DEFAULT_LEASE_DURATION,
        help=f"node lease seconds (default {DEFAULT_LEASE_DURATION}; renewed every quarter)",
    )  # fmt: skip
    agent.add_argument(
        "--fence-margin", type=float, default=2.0,
        help="stop exclusive instances this long before an unrenewed lease ends",
    )  # fmt: skip
    agent.add_argument("--host-ip", default="127.0.0.1", help="address reported as hostIP")
    agent.add_argument(
        "--heartbeat-interval", type=float, default=5.0, help="telemetry period (seconds)"
    )
    agent.add_argument(
        "--leave-running", action="store_true",
        help="on SIGINT/SIGTERM leave workloads running (the next agent re-adopts them)",
    )  # fmt: skip
    agent.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    add_metrics_argument(agent)
    agent.set_defaults(run=cmd_agent)


def cmd_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format=f"%(asctime)s agent/{args.node} %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    if args.lease_duration < 2:
        print("keel agent: --lease-duration must be at least 2", file=sys.stderr)
        return 2
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    from keel.agent import Agent, AgentConfig, AgentMetrics
    from keel.client import KeelClient, KubeconfigError, load_kubeconfig

    try:
        if args.server:
            client = KeelClient(args.server, token=args.token, timeout=10.0)
        else:
            options: dict[str, Any] = {"timeout": 10.0}
            if args.token:
                kube = load_kubeconfig(args.kubeconfig)
                client = KeelClient(
                    kube.server, token=args.token, ssl=kube.ssl_context(), timeout=10.0
                )
            else:
                client = KeelClient.from_kubeconfig(args.kubeconfig, **options)
    except (KubeconfigError, OSError, ValueError) as exc:
        print(f"keel agent: {exc}", file=sys.stderr)
        return 2
    state_dir: Path = args.state_dir or Path(".keel") / "agents" / args.node
    config = AgentConfig(
        node=args.node,
        cluster=args.cluster,
        state_dir=state_dir,
        capacity=args.capacity or parse_capacity(""),
        lease_duration=args.lease_duration,
        fence_margin=args.fence_margin,
        host_ip=args.host_ip,
        heartbeat_interval=args.heartbeat_interval,
        leave_running=args.leave_running,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(client, config)
    metrics = AgentMetrics(agent)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(client)
        try:
            await stack.enter_async_context(serving_metrics(args.metrics_listen, metrics.render))
        except OSError as exc:
            print(f"keel agent: {exc}", file=sys.stderr)
            return 2
        await agent.run(stop)
    return 0
