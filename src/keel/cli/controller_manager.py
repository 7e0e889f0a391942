"""`keel controller-manager`: run the platform controllers under leader election (or shard
leases), logging every leadership change and every write the store rejects to stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from keel.api.resources import Namespace
from keel.client import FencingTokenRejected, KeelClient, KeelClientError
from keel.clock import Clock, SystemClock

__all__ = ["FencingProbe", "add_controller_manager_command"]

PROBE = "fencing-probe"
PROBE_ANNOTATION = "keel.dev/fencing-probe"
log = logging.getLogger("keel.controller-manager")


def add_controller_manager_command(commands: Any) -> None:
    """Add `controller-manager` to the `keel` subcommands (an argparse subparsers object)."""
    parser = commands.add_parser(
        "controller-manager",
        help="run the controllers under leader election",
        description="Run Keel's controllers while holding keel-system/controller-manager "
        "(or, with --shards, the shard leases this replica wins); every write carries the "
        "lease's fencing token.",
    )
    parser.add_argument("--kubeconfig", help="kubeconfig (default $KEEL_KUBECONFIG, .keel/...)")
    parser.add_argument("--identity", required=True, help="this replica's name in the leases")
    parser.add_argument("--shards", type=int, default=0, help="split the key space in N shards")
    parser.add_argument("--lease-ttl", type=int, default=2, help="lease TTL, seconds (>= 2)")
    parser.add_argument(
        "--controllers",
        default="namespace,gc",
        help="comma-separated: namespace, gc, deployment, endpoints, nodelifecycle, and "
        f"(tests only) {PROBE}",
    )
    parser.add_argument("--workers", type=int, default=4, help="workers per controller")
    parser.add_argument("--state-dir", type=Path, help="directory for cache checkpoints")
    parser.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ...")
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
    if PROBE in names and args.shards:
        print(f"controller-manager: {PROBE} runs only without --shards", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_serve(args, names))
    except (ValueError, KeelClientError) as exc:
        print(f"controller-manager: {exc}", file=sys.stderr)
        return 1


async def _serve(args: argparse.Namespace, names: list[str]) -> int:
    from keel.controllers import build
    from keel.runtime.controller import ControllerRunner
    from keel.runtime.manager import ControllerManager

    clock = SystemClock()
    if args.state_dir is not None:
        args.state_dir.mkdir(parents=True, exist_ok=True)
    async with KeelClient.from_kubeconfig(args.kubeconfig) as client:
        runner = ControllerRunner(client, clock=clock, state_dir=args.state_dir)
        for controller in build([n for n in names if n != PROBE], runner.cache):
            runner.register(controller, workers=args.workers)
        manager = ControllerManager(
            client, runner, identity=args.identity, ttl=args.lease_ttl, shards=args.shards,
            clock=clock,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(manager.run(), name="manager")]
        probe: FencingProbe | None = None
        if PROBE in names and manager.elector is not None:
            probe = FencingProbe(client, args.identity, clock=clock)
            manager.elector.on_change(probe.leadership_changed)
            probe.stepped_down = manager.elector.lost
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        log.info(
            "%s: controller-manager started (controllers: %s, shards: %s, lease TTL %ds)",
            args.identity, ",".join(names) or "none", args.shards or "off", args.lease_ttl,
        )  # fmt: skip
        stopping = loop.create_task(stop.wait())
        await asyncio.wait([*tasks, stopping], return_when=asyncio.FIRST_COMPLETED)
        failed = [t for t in tasks if t.done() and not t.cancelled() and t.exception()]
        for task in (*tasks, stopping):
            task.cancel()
        # Cancelling the manager stops the work first and then releases the lease.
        await asyncio.gather(*tasks, stopping, return_exceptions=True)
        if probe is not None:
            await probe.close()
        log.info("%s: controller-manager stopped", args.identity)
        if failed:
            log.error("controller-manager failed: %r", failed[0].exception())
            return 1
    return 0


class FencingProbe:
    """Test-only controller: from the moment this replica wins the lease it writes an
    annotation on Namespace keel-system every `interval` seconds through the fenced view,
    never asking its clock whether it still leads. After SIGSTOP/SIGCONT only the store can
    stop it, which is the point: its rejected writes show that fencing is store-side.
    """

    def __init__(
        self,
        client: KeelClient,
        identity: str,
        *,
        clock: Clock,
        namespace: str = "keel-system",
        lease: str = "controller-manager",
        interval: float = 0.1,
    ) -> None:
        self.client = client
        self.identity = identity
        self.clock = clock
        self.namespace = namespace
        self.lease = lease
        self.interval = interval
        self.stepped_down: Any = lambda: None
        self._task: asyncio.Task[None] | None = None

    def leadership_changed(self, token: int | None) -> None:
        # Deliberately ignores step-downs (token None): the probe plays a leader that does
        # not know it was paused. A new term replaces the old writer.
        if token is None:
            return
        if self._task is not None:
            self._task.cancel()
        self._task = asyncio.get_running_loop().create_task(self._write(token))

    async def _write(self, token: int) -> None:
        async with self.client.fenced(self.namespace, self.lease, token) as view:
            count = 0
            while True:
                count += 1
                value = f"{self.identity} token {token} write {count}"
                patch = {"metadata": {"annotations": {PROBE_ANNOTATION: value}}}
                try:
                    await view.patch(Namespace, self.namespace, patch)
                except FencingTokenRejected as exc:
                    log.error(
                        "%s: fencing probe write rejected with FencingTokenRejected (409), "
                        "token %d: %s; stepping down",
                        self.identity, token, exc,
                    )  # fmt: skip
                    self.stepped_down()
                    return
                except KeelClientError as exc:
                    log.warning("%s: fencing probe write failed: %s", self.identity, exc)
                await self.clock.sleep(self.interval)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(self._task, return_exceptions=True)
