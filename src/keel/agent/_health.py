"""One health check run: http (GET, 2xx/3xx), tcp (connect) or exec (exit 0), each bounded
by `timeoutSeconds`. Thresholds and periods are the pure plan's business (`observe_probe`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from pathlib import Path

from keel.api.resources import HealthCheck, InstanceSpec


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
) -> bool:
    timeout = float(check.timeout_seconds)
    try:
        if check.type == "exec":
            return await _exec(check.command, timeout, env, cwd)
        port = check_port(check, spec, ports)
        if port is None:
            return False
        if check.type == "tcp":
            return await _tcp(host, port, timeout)
        return await _http(host, port, check.path or "/", timeout)
    except (OSError, TimeoutError, ValueError, UnicodeError):
        return False


async def _tcp(host: str, port: int, timeout: float) -> bool:
    _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def _http(host: str, port: int, path: str, timeout: float) -> bool:
    """GET over a plain HTTP/1.0 connection: only the status line matters."""
    if not path.startswith("/"):
        path = "/" + path

    async def get() -> bool:
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
        return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400

    return await asyncio.wait_for(get(), timeout)


async def _exec(
    command: list[str], timeout: float, env: Mapping[str, str] | None, cwd: Path | None
) -> bool:
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
        return False
    return code == 0
