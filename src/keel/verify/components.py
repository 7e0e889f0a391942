"""The processes of a verify cluster: start, kill -9, pause, resume and restart, by PID.

A `Component` is one long-running command (an etcd member, an API server, a controller-manager,
the scheduler, an agent), optionally inside a network-namespace host. Its log survives its
restarts: each start appends to the same file under a separator line naming the restart and
how the previous run ended, so a crash is never overwritten by its own recovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Component"]

STOP_GRACE = 10.0


@dataclass
class Component:
    """One supervised command. `prefix` runs it inside a host (`ip netns exec NS`)."""

    name: str
    role: str  # etcd, apiserver, controller-manager, scheduler, agent
    argv: Sequence[str]
    log_path: Path
    prefix: Sequence[str] = ()
    env: dict[str, str] = field(default_factory=dict)
    host: str = ""
    process: asyncio.subprocess.Process | None = None
    starts: int = 0
    paused: bool = False
    last_exit: str = ""
    on_start: Callable[[int], None] | None = None  # told each new PID (crash cleanup)

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def start(self) -> None:
        if self.running:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with self.log_path.open("ab") as log:
            if self.starts > 1:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
                log.write(
                    f"\n--- keel verify: start {self.starts} of {self.name} at {stamp}"
                    f" (previous run: {self.last_exit or 'unknown'}) ---\n".encode()
                )
                log.flush()
            self.process = await asyncio.create_subprocess_exec(
                *self.prefix,
                *self.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                env={**os.environ, **self.env},
                start_new_session=True,
            )
        self.paused = False
        if self.on_start is not None:
            self.on_start(self.process.pid)

    async def kill(self) -> None:
        """SIGKILL, as a crash or a power cut would end it."""
        await self._end(signal.SIGKILL, grace=0.0)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after the grace period: the end of a run."""
        await self._end(signal.SIGTERM, grace=STOP_GRACE)

    async def restart(self) -> None:
        await self.kill()
        await self.start()

    def pause(self) -> None:
        if self.running and self.pid is not None:
            os.kill(self.pid, signal.SIGSTOP)
            self.paused = True

    def resume(self) -> None:
        if self.running and self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGCONT)
        self.paused = False

    async def _end(self, sig: signal.Signals, *, grace: float) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)
            if self.paused:
                os.kill(process.pid, signal.SIGCONT)
        self.paused = False
        try:
            await asyncio.wait_for(process.wait(), grace or None)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            await process.wait()
        code = process.returncode
        self.last_exit = f"signal {-code}" if code is not None and code < 0 else f"exit {code}"
