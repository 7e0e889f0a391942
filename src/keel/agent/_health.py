"""One check run (readiness or liveness): http (GET, 2xx/3xx), tcp (connect) or exec (exit 0),
each bounded by `timeoutSeconds`, with the reason of a failure in words. Thresholds and periods
are the pure plan's business (`observe_probe`, `observe_liveness`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from keel.api.resources import HealthCheck, InstanceSpec


@dataclass(frozen=True)
class CheckResult:
    """How one check went: `reason` says why it failed ("GET /healthz: HTTP 500")."""

    ok: bool
    reason: str = ""


PASSED = CheckResult(True)


def check_port(check: HealthCheck, spec: InstanceSpec, ports: Mapping[str, int]) -> int | None:
    """The port a check targets: a number, a port name, or (empty) the first port."""
    target = check.port
    if isinstance(target, int):
        return target
    if target.isdigit():
        return int(target)
    if not target:
        return ports.get(spec.ports[0].name) if spec.ports else None
    return ports.get(target)


async def run_check(
    check: HealthCheck,
    spec: InstanceSpec,
    ports: Mapping[str, int],
    *,
    host: str = "127.0.0.1",
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> CheckResult:
    timeout = float(check.timeout_seconds)
    what = describe(check)
    try:
        if check.type == "exec":
            failure = await _exec(check.command, timeout, env, cwd)
        else:
            port = check_port(check, spec, ports)
            if port is None:
                return CheckResult(False, f"{what}: no port {check.port!r}")
            what = describe(check, port)
            if check.type == "tcp":
                failure = await _tcp(host, port, timeout)
            else:
                failure = await _http(host, port, check.path or "/", timeout)
    except TimeoutError:
        failure = f"no answer within {check.timeout_seconds}s"
    except (OSError, ValueError, UnicodeError) as exc:
        failure = _error_text(exc)
    return CheckResult(False, f"{what}: {failure}") if failure else PASSED


def describe(check: HealthCheck, port: int | None = None) -> str:
    """The check in a few words, as a failure reason starts: "GET :8080/healthz"."""
    if check.type == "exec":
        return "exec " + " ".join(check.command)
    where = f":{port if port is not None else check.port}"
    if check.type == "tcp":
        return f"tcp {where}"
    path = check.path or "/"
    return f"GET {where}{path if path.startswith('/') else '/' + path}"


def _error_text(exc: BaseException) -> str:
    """ "connection refused" rather than asyncio's "Connect call failed ('127.0.0.1', 1)"."""
    if isinstance(exc, OSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return str(exc) or type(exc).__name__


async def _tcp(host: str, port: int, timeout: float) -> str:
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return ""


async def _http(host: str, port: int, path: str, timeout: float) -> str:
    """GET over a plain HTTP/1.0 connection: only the status line matters."""
    if not path.startswith("/"):
        path = "/" + path

    async def get() -> str:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            request = (
                f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nUser-Agent: keel-agent\r\n\r\n"
            )
            writer.write(request.encode("latin-1"))
            await writer.drain()
            status_line = await reader.readline()
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        parts = status_line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            return "no HTTP status line in the answer"
        status = int(parts[1])
        return "" if 200 <= status < 400 else f"HTTP {status}"

    return await asyncio.wait_for(get(), timeout)


async def _exec(
    command: list[str], timeout: float, env: Mapping[str, str] | None, cwd: Path | None
) -> str:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env=dict(env) if env is not None else None,
        cwd=cwd,
        start_new_session=True,
    )
    try:
        code = await asyncio.wait_for(process.wait(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
        raise
    return "" if code == 0 else f"exit code {code}"
