"""Slow disks for `keel verify`: a running process's fsyncs made to take longer, by strace's
syscall tampering, without restarting the process or touching its files.

strace stops the process at every system call while attached (ptrace has no per-syscall
filter for a process it did not start), so the whole process runs somewhat slower, and the
named calls wait `delay_ms` more before they start. Detaching leaves the process running.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
from collections.abc import Sequence
from types import TracebackType

DEFAULT_SYSCALLS = ("fsync", "fdatasync")


class SlowDiskError(Exception):
    """strace could not attach; the message carries its command line and what it said."""


def strace_argv(
    pid: int, delay_us: int, syscalls: Sequence[str], strace: str = "strace"
) -> list[str]:
    """The strace command that delays `syscalls` of process `pid` by `delay_us` microseconds.

    `-f` with `-p` attaches every thread the process has now (strace walks /proc/PID/task)
    and follows those it starts later, as a Go program like etcd does. The delay is a bare
    number of microseconds, a form every strace with `inject` accepts; the trace itself is
    discarded, only attach messages and errors reach stderr."""
    names = ",".join(syscalls)
    return [
        strace,
        "-f",
        "-p",
        str(pid),
        "-o",
        "/dev/null",
        "-e",
        f"trace={names}",
        "-e",
        f"inject={names}:delay_enter={delay_us}",
    ]


class SlowDisk:
    """While started, every `syscalls` call of process `pid` (all its threads) first waits
    `delay_ms` milliseconds. Use `async with SlowDisk(pid, 200):` or `start()`/`stop()`."""

    def __init__(
        self,
        pid: int,
        delay_ms: float,
        syscalls: Sequence[str] = DEFAULT_SYSCALLS,
        *,
        strace: str = "strace",
        attach_timeout: float = 10.0,
    ) -> None:
        if delay_ms < 0:
            raise ValueError(f"delay_ms: expected a duration >= 0, got {delay_ms}")
        if not syscalls:
            raise ValueError("syscalls: expected at least one system call name")
        self.pid = pid
        self.argv = strace_argv(pid, round(delay_ms * 1000), syscalls, strace)
        self._attach_timeout = attach_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._drain: asyncio.Task[None] | None = None
        self.messages: list[str] = []  # what strace said on stderr

    @property
    def strace_pid(self) -> int | None:
        """strace's own pid while started, for a run to record as its process."""
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Attach, and return once strace says it holds the process."""
        if self._proc is not None:
            raise SlowDiskError(f"already attached to {self.pid}")
        proc = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        assert proc.stderr is not None
        self._proc = proc
        attached = re.compile(rf"Process {self.pid} attached\b")
        try:
            async with asyncio.timeout(self._attach_timeout):
                while True:
                    line = (await proc.stderr.readline()).decode(errors="replace")
                    if not line:
                        await proc.wait()
                        raise SlowDiskError(self._failure(f"exited with {proc.returncode}"))
                    self.messages.append(line.rstrip())
                    if attached.search(line):
                        break
        except TimeoutError:
            await self._end()
            raise SlowDiskError(self._failure("did not attach in time")) from None
        except BaseException:
            await self._end()
            raise
        # Keep reading, so that strace never blocks on a full pipe.
        self._drain = asyncio.create_task(self._read_rest(proc))

    async def _read_rest(self, proc: asyncio.subprocess.Process) -> None:
        assert proc.stderr is not None
        async for line in proc.stderr:
            self.messages.append(line.decode(errors="replace").rstrip())

    def _failure(self, what: str) -> str:
        said = "; ".join(self.messages[-5:]) or "nothing"
        return f"`{' '.join(self.argv)}` {what}: {said}"

    async def stop(self) -> None:
        """Detach (SIGINT makes strace let go of every thread); the process keeps running."""
        await self._end()

    async def _end(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(10):
                    await proc.wait()
            except TimeoutError:
                # A tracer that dies is detached from its tracees by the kernel.
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._drain is not None:
            await self._drain
            self._drain = None

    async def __aenter__(self) -> SlowDisk:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
