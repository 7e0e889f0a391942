"""`keel logs INSTANCE [-f]`: print (and follow) an instance's output from the log file its
agent writes on this machine; the file is found through telemetry's `logPath`, else under
`STATE/agents/*/logs/`. Following survives the agent rotating the file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO

from keel.cli._common import CommandError, Session, add_connection_args, command
from keel.client import KeelClientError, NotFound

POLL_SECONDS = 0.2


def add_logs_command(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "logs",
        help="print an instance's output (stdout and stderr)",
        description="Print the log of an instance run by an agent on this machine.",
    )
    parser.add_argument("instance", metavar="INSTANCE")
    parser.add_argument("-f", "--follow", action="store_true", help="keep printing new output")
    parser.add_argument(
        "--tail", type=int, default=-1, metavar="N", help="only the last N lines (default all)"
    )
    add_connection_args(parser)
    parser.set_defaults(run=command(_logs))


async def _logs(args: argparse.Namespace, session: Session) -> int:
    path = await find_log(session, args.instance)
    out = sys.stdout.buffer
    with path.open("rb") as file:
        out.write(tail(file, args.tail) if args.tail >= 0 else file.read())
        out.flush()
        if args.follow:
            await follow(path, file, out)
    return 0


async def find_log(session: Session, instance: str) -> Path:
    """The current log file of an instance: the agent's published `logPath`, else the
    newest `<state>/agents/*/logs/<ns>_<name>.log`."""
    namespace = session.namespace
    try:
        usage = await session.client.get_telemetry("instanceusages", instance, namespace=namespace)
    except KeelClientError:  # the API server is only a hint here: the files are local
        usage = None
    published = usage.get("logPath") if isinstance(usage, dict) else None
    pattern = f"agents/*/logs/{namespace}_{instance}.log"
    found = local_log(published if isinstance(published, str) else None, session.state_dir, pattern)
    if found is not None:
        return found
    try:
        await session.client.get("instances", instance, namespace=namespace)
    except NotFound:
        raise CommandError(f'instances "{instance}" not found') from None
    except KeelClientError:  # unreachable or forbidden: say what is missing locally
        pass
    raise CommandError(
        f"no log of instance {namespace}/{instance} on this machine "
        f"(looked for {session.state_dir / pattern})"
    )


def local_log(published: str | None, state_dir: Path, pattern: str) -> Path | None:
    """The published path if that file exists here, else the newest match of `pattern`."""
    if published and Path(published).is_file():
        return Path(published)
    found = [p for p in state_dir.glob(pattern) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def tail(file: BinaryIO, lines: int) -> bytes:
    """The last `lines` lines of a file (read whole: logs rotate at a bounded size)."""
    if lines == 0:
        file.seek(0, os.SEEK_END)
        return b""
    kept: deque[bytes] = deque(file, maxlen=lines)
    return b"".join(kept)


async def follow(path: Path, file: BinaryIO, out: BinaryIO, poll: float = POLL_SECONDS) -> None:
    """Copy what is appended to `path` to `out` until cancelled. When the agent rotates
    (renames the file away and starts a new one) the rest of the old file is copied first;
    a truncated file is read again from its start."""
    follower = Follower(path, file, out)
    try:
        while True:
            if not follower.step():
                await asyncio.sleep(poll)
    finally:
        follower.close()


class Follower:
    """`tail -F` in steps: each `step()` copies what is new and says whether there was any."""

    def __init__(self, path: Path, file: BinaryIO, out: BinaryIO) -> None:
        self.path = path
        self.first = file
        self.current = file
        self.out = out
        self.inode = os.fstat(file.fileno()).st_ino

    def _copy(self, data: bytes) -> None:
        self.out.write(data)
        self.out.flush()

    def step(self) -> bool:
        chunk = self.current.read(65536)
        if chunk:
            self._copy(chunk)
            return True
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:  # between the rename and the new file's creation
            return False
        if stat.st_ino != self.inode:
            rest = self.current.read()  # written just before the rename
            if rest:
                self._copy(rest)
            self.close()
            self.current = open(self.path, "rb")  # noqa: SIM115 - kept open across steps
            self.inode = os.fstat(self.current.fileno()).st_ino
            return True
        if stat.st_size < self.current.tell():  # truncated in place
            self.current.seek(0)
            return True
        return False

    def close(self) -> None:
        if self.current is not self.first:
            self.current.close()
