"""One progress line for long waits (`keel up`, `keel apply --wait`).

On a terminal the current step is a live line rewritten in place as it changes; elsewhere (a
log file, CI) each step is printed once when it starts and once when it ends, with at most
one "still waiting" line per `quiet_interval`, so logs stay short and never flicker.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress"]


class Progress:
    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        prefix: str = "",
        tty: bool | None = None,
        quiet_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.prefix = prefix
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet_interval = quiet_interval
        self._clock = clock
        self._live = ""  # the text of the live line shown now (terminal only)
        self._printed_at = 0.0

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()

    def line(self, text: str) -> None:
        """A permanent line (the live line, if any, is replaced by it)."""
        self._erase()
        self._write(f"{self.prefix}{text}\n")
        self._printed_at = self._clock()

    def step(self, text: str) -> None:
        """A new step starts: printed as a line off a terminal, the live line on one."""
        if self.tty:
            self.update(text)
        else:
            self.line(text)

    def update(self, text: str) -> None:
        """The step's state changed: the live line on a terminal; elsewhere a line only when
        nothing was printed for `quiet_interval` seconds."""
        if self.tty:
            if text != self._live:
                self._write(f"\r\033[K{self.prefix}{text}")
                self._live = text
        elif self._clock() - self._printed_at >= self.quiet_interval:
            self.line(text)

    def done(self, text: str) -> None:
        """The step ended: its final state as a permanent line."""
        self.line(text)

    def _erase(self) -> None:
        if self._live:
            self._write("\r\033[K")
            self._live = ""
