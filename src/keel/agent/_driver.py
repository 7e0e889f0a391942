"""The process driver: start an instance's command in its own process group with its env,
working dir and ports, its output appended to a log file the agent rotates, and signal the
whole group. Processes never depend on the agent, so they outlive it (static stability).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from keel.agent import _procfs
from keel.api.resources import InstanceSpec

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3


def env_name(port_name: str) -> str:
    """`PORT_<NAME>`: upper case, dashes to underscores."""
    return "PORT_" + port_name.upper().replace("-", "_")


def assign_ports(spec: InstanceSpec, taken: Collection[int]) -> dict[str, int]:
    """A port per declared port: as given, or a free one for `port: 0`."""
    ports: dict[str, int] = {}
    for p in spec.ports:
        ports[p.name] = p.port or free_port(taken)
    return ports


def free_port(taken: Collection[int] = ()) -> int:
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("", 0))
            port = int(s.getsockname()[1])
        if port not in taken:
            return port
    raise RuntimeError("no free port found")


def process_env(
    spec: InstanceSpec, ports: Mapping[str, int], extra: Mapping[str, str]
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.update(spec.env)
    for index, p in enumerate(spec.ports):
        port = str(ports.get(p.name, p.port))
        if index == 0:
            env["PORT"] = port
        env[env_name(p.name)] = port
    return env


@dataclass
class Started:
    process: subprocess.Popen[bytes]
    pid: int
    proc_start: int


def spawn(spec: InstanceSpec, env: Mapping[str, str], log_path: Path, default_cwd: Path) -> Started:
    """Start the command in a new session (its own process group); raises OSError when it
    cannot be started (no such file, bad working dir)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cwd = Path(spec.working_dir) if spec.working_dir else default_cwd
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        process = subprocess.Popen(
            spec.command,
            stdin=subprocess.DEVNULL,
            stdout=fd,
            stderr=fd,
            cwd=cwd,
            env=dict(env),
            start_new_session=True,
        )
    finally:
        os.close(fd)
    ticks = _procfs.start_ticks(process.pid)
    return Started(process, process.pid, ticks if ticks is not None else 0)


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send `sig` to the process group; False if it has no member left."""
    if pgid <= 1:
        return False
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def kill_leftovers(pgid: int) -> None:
    """SIGKILL what is left of a group whose leader has exited. The group id cannot have
    been reused while any member lives, so only act when members remain."""
    if _procfs.group_members(pgid):
        signal_group(pgid, signal.SIGKILL)


def rotate_log(path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> bool:
    """Copy-and-truncate rotation: the process keeps its O_APPEND descriptor, so rotating
    needs no help from it (and works for processes adopted from an earlier agent)."""
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    for index in range(backups - 1, 0, -1):
        older = path.with_name(f"{path.name}.{index}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{index + 1}"))
    shutil.copyfile(path, path.with_name(f"{path.name}.1"))
    with contextlib.suppress(FileNotFoundError), path.open("r+b") as f:
        f.truncate(0)
    return True
