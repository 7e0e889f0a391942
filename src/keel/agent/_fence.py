"""The fence watchdog of an exclusive instance: `python -m keel.agent._fence --deadline-file F
[--grace S] -- COMMAND...` runs COMMAND and stops it once the node lease may have lapsed.

The agent stops its exclusive instances itself when it cannot renew its node lease, but an
agent that is paused (SIGSTOP, a stalled VM) or killed cannot act, and the control plane
replaces the instance elsewhere once the lease has expired. So each exclusive process runs
under this small watchdog, a separate process: the agent writes to F, after every successful
renewal, the CLOCK_MONOTONIC time until which the lease is certainly held (minus its fence
margin); when that time passes without a newer one, the watchdog sends SIGTERM to the
workload's process group, SIGKILL after `--grace` seconds, and exits. A missing or unreadable
file counts as a lapsed lease: when in doubt, stop.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

POLL = 0.1  # seconds between looks at the deadline and the child


def read_deadline(path: Path) -> float:
    """The monotonic deadline in F; -inf when there is none (so: already passed)."""
    try:
        return float(path.read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return float("-inf")


def write_deadline(path: Path, until: float) -> None:
    """Atomically replace F with `until` (the watchdogs read it at any moment)."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{until:.6f}\n", encoding="ascii")
    os.replace(tmp, path)


def lapsed(now: float, deadline: float) -> bool:
    return now >= deadline


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keel.agent._fence")
    parser.add_argument("--deadline-file", required=True, type=Path)
    parser.add_argument("--grace", type=float, default=1.0)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("a command to run is required after --")
    if lapsed(time.monotonic(), read_deadline(args.deadline_file)):
        print("keel fence: the node lease is not held; not starting", file=sys.stderr)
        return 75
    # The child shares this process group (the agent signals the whole group to stop it),
    # so a group signal reaches both; the watchdog then just waits for the child's end.
    child = subprocess.Popen(command)
    stopping = False

    def on_signal(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        with contextlib.suppress(ProcessLookupError):
            child.send_signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, on_signal)
    while True:
        code = child.poll()
        if code is not None:
            return code if code >= 0 else 128 - code
        if not stopping and lapsed(time.monotonic(), read_deadline(args.deadline_file)):
            print(
                "keel fence: the node lease was not renewed in time; stopping the workload",
                file=sys.stderr,
                flush=True,
            )
            stopping = True
            _stop(child, args.grace)
        time.sleep(POLL)


def _stop(child: subprocess.Popen[bytes], grace: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        child.terminate()
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(os.getpgrp(), signal.SIGKILL)  # the whole group, this watchdog too


if __name__ == "__main__":
    sys.exit(main())
