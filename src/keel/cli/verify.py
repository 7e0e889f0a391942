"""`keel verify`: build a cluster of namespace hosts, run workloads under a seeded nemesis,
check the histories (`keel.verify`); `keel verify check --model M FILE` checks a history
file on its own; `keel verify --cleanup` removes what a crashed run left behind."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["add_verify_command"]

DEFAULT_OUT = Path(".keel") / "verify"
# The smoke schedule: one partition (the exclusive instance's node cut off from the control
# plane), one kill and one pause, all checkers, under 2 minutes.
SMOKE_FAULTS = ("partition-agent", "kill", "pause")
SMOKE_SECONDS = 55.0


def _csv(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def cmd_verify(args: argparse.Namespace) -> int:
    if args.cleanup:
        return _cleanup()
    from keel.verify.cluster import ClusterShape
    from keel.verify.nemesis import expand
    from keel.verify.run import RunOptions, verify
    from keel.verify.workloads import BROKEN_MODES, WorkloadOptions

    problems: list[str] = []
    shape = ClusterShape(
        store=args.store,
        hosts=args.hosts,
        etcd_members=args.etcd_members,
        apiservers=args.apiservers if args.store == "etcd" else 1,
        agents=args.agents,
    )
    problems += shape.problems()
    faults = (
        SMOKE_FAULTS
        if args.smoke and not args.faults
        else _csv(args.faults or "partition,kill,pause,slow-disk")
    )
    try:
        expand(faults, args.store)
    except ValueError as exc:
        problems.append(str(exc))
    for mode in args.broken:
        if mode not in BROKEN_MODES:
            problems.append(f"--broken: expected one of {', '.join(BROKEN_MODES)}, got {mode!r}")
    workloads = _csv(args.workloads)
    known = WorkloadOptions().workloads
    for name in workloads:
        if name not in known:
            problems.append(
                f"--workloads: unknown workload {name!r} (expected some of {', '.join(known)})"
            )
    if args.duration is None:
        args.duration = SMOKE_SECONDS if args.smoke else 60.0
    if args.duration <= 0:
        problems.append(f"--duration: expected a positive number of seconds, got {args.duration}")
    if args.store == "etcd" and (sys.platform != "linux" or os.geteuid() != 0):
        problems.append(
            "--store etcd builds network namespaces: run keel verify as root on Linux"
            " (or use --store sqlite)"
        )
    if problems:
        for problem in problems:
            print(f"keel verify: {problem}", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    out = (
        Path(args.out) if args.out else DEFAULT_OUT / f"{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}"
    )
    options = RunOptions(
        run_dir=out.resolve(),
        seed=seed,
        duration=args.duration,
        faults=faults,
        ordered_faults=args.smoke,
        shape=shape,
        workloads=WorkloadOptions(workloads=workloads, broken=tuple(args.broken)),
        convergence_bound=args.convergence_bound,
    )
    try:
        result = asyncio.run(
            _until_signalled(verify(options, say=lambda line: print(line, flush=True)))
        )
    except (KeyboardInterrupt, asyncio.CancelledError):
        print("keel verify: interrupted; everything it started has been stopped and removed")
        return 130
    except TimeoutError as exc:
        print(f"keel verify: {exc}", file=sys.stderr)
        return 1
    print()
    for verdict in result.verdicts:
        mark = "PASS" if verdict.valid else "FAIL"
        print(f"  {mark}  {verdict.model:<24} {verdict.summary}")
        if not verdict.valid and verdict.explanation:
            print(f"        {verdict.explanation}")
    print()
    print(f"keel verify: {'PASS' if result.valid else 'FAIL'}; report {out / 'report.html'}")
    print(f"keel verify: replay with --seed {seed}")
    return 0 if result.valid and result.verdicts else 1


async def _until_signalled(work: Any) -> Any:
    """Run `work`; SIGTERM cancels it like Ctrl-C does, so its teardown always runs."""
    import signal

    task = asyncio.ensure_future(work)
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await task


def _cleanup() -> int:
    from keel.verify.fabric import cleanup_all

    removed = cleanup_all()
    if not removed:
        print("keel verify --cleanup: nothing left behind")
        return 0
    print(f"keel verify --cleanup: runs {', '.join(removed.prefixes) or '-'}")
    print(f"  killed processes: {' '.join(map(str, removed.processes)) or '-'}")
    print(f"  removed namespaces: {' '.join(removed.namespaces) or '-'}")
    print(f"  removed links: {' '.join(removed.links) or '-'}")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from keel.verify.checks import check_file
    from keel.verify.history import HistoryError

    try:
        verdict = check_file(args.model, Path(args.file))
    except (HistoryError, OSError) as exc:
        print(f"keel verify check: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(verdict.to_json(), indent=2, default=str))
    else:
        print(f"{'PASS' if verdict.valid else 'FAIL'}  {verdict.model}: {verdict.summary}")
        if not verdict.valid:
            if verdict.explanation:
                print(verdict.explanation)
            for event in verdict.counterexample:
                print("  " + json.dumps(event, default=str))
    return 0 if verdict.valid else 1


def add_verify_command(commands: Any) -> None:
    parser = commands.add_parser(
        "verify",
        help="prove Keel's guarantees under partitions, crashes, pauses and slow disks",
        description=(
            "Build a test cluster of network-namespace hosts (etcd members, API servers, "
            "controller-managers, scheduler, agents), run workloads while a seeded nemesis "
            "partitions, kills, pauses and slows disks, and check the recorded histories. "
            "Exit status 0 only when every checker passes."
        ),
    )
    parser.add_argument("--store", choices=("etcd", "sqlite"), default="etcd")
    parser.add_argument("--hosts", type=int, default=5, help="network-namespace hosts (default 5)")
    parser.add_argument("--etcd-members", type=int, default=3, help="3 or 5 (default 3)")
    parser.add_argument("--apiservers", type=int, default=2, help="API servers (default 2)")
    parser.add_argument("--agents", type=int, default=3, help="node agents (default 3)")
    parser.add_argument("--seed", type=int, help="replay the schedule of this seed")
    parser.add_argument(
        "--duration", type=float, default=60.0, help="seconds of faults (default 60)"
    )
    parser.add_argument(
        "--faults",
        help="comma-separated: partition (or partition-one, partition-majority, "
        "partition-leader, partition-agent), kill, pause, slow-disk (default: all)",
    )
    parser.add_argument(
        "--workloads",
        default="register,store-register,watch,fencing,exclusive",
        help="comma-separated subset of register,store-register,watch,fencing,exclusive",
    )
    parser.add_argument(
        "--broken",
        action="append",
        default=[],
        metavar="MODE",
        help="switch on a deliberately broken client to prove the checkers catch it: "
        "fencing-no-token, exclusive-by-hand, watch-skip, register-stale (repeatable)",
    )
    parser.add_argument(
        "--convergence-bound", type=float, default=60.0, help="seconds (default 60)"
    )
    parser.add_argument("--smoke", action="store_true", help="one partition, one kill, one pause")
    parser.add_argument("--out", help="run directory (default .keel/verify/TIME-seedN)")
    parser.add_argument(
        "--cleanup", action="store_true", help="remove what a crashed run left behind, and exit"
    )
    parser.set_defaults(run=cmd_verify)
    sub = parser.add_subparsers(dest="verify_command", metavar="check")
    check = sub.add_parser("check", help="check a history file on its own")
    check.add_argument(
        "--model",
        required=True,
        help="register, watch, fencing, exclusive, duplicates, surge, convergence",
    )
    check.add_argument("--json", action="store_true", help="print the verdict as JSON")
    check.add_argument("file")
    check.set_defaults(run=cmd_check)
