"""What the benchmarks share: a timed load loop, percentiles, and `keel apiserver` as a
subprocess on a free loopback port."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def pct(latencies: list[float], q: float) -> float:
    """The q-quantile of latencies in seconds, in milliseconds (nan when empty)."""
    if not latencies:
        return float("nan")
    ordered = sorted(latencies)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def drive(
    concurrency: int, duration: float, op: Callable[[int, int], Awaitable[None]]
) -> tuple[int, float, list[float]]:
    """Run `op(worker, i)` in `concurrency` loops for `duration` seconds; returns
    (operations, elapsed seconds, per-operation latencies)."""
    latencies: list[float] = []
    stop_at = time.perf_counter() + duration
    counts = [0] * concurrency

    async def worker(w: int) -> None:
        i = 0
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            await op(w, i)
            latencies.append(time.perf_counter() - t0)
            i += 1
        counts[w] = i

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return sum(counts), time.perf_counter() - start, latencies


class ApiServer:
    """`keel apiserver` on sqlite in `state`, admission out of the way, ready on return."""

    def __init__(self, state: Path, timeout: float = 120.0) -> None:
        self.state = state
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.kubeconfig = state / "kubeconfig"
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "keel",
                "apiserver",
                "--state-dir",
                str(state),
                "--listen",
                f"127.0.0.1:{self.port}",
                "--admission-rate",
                "1000000",
                "--admission-burst",
                "1000000",
                # plain HTTP: the figures measure the API server, not TLS (comparable with
                # those taken before TLS became the default)
                "--insecure",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.kubeconfig.exists() and self._ready():
                match = re.search(r"token:\s*(\S+)", self.kubeconfig.read_text())
                if match:
                    self.token = match.group(1)
                    return
            if self.proc.poll() is not None:
                assert self.proc.stderr is not None
                raise RuntimeError(f"apiserver exited: {self.proc.stderr.read()!r}")
            time.sleep(0.1)
        self.stop()
        raise TimeoutError("apiserver did not become ready")

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
