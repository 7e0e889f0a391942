"""Reading processes from /proc: start time (to tell a live process from a reused PID),
CPU ticks and resident memory of a process group. Linux only; read-only.
"""

from __future__ import annotations

import os
from pathlib import Path

PROC = Path("/proc")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (field 3 is index 0)."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    return text[text.rfind(")") + 2 :].split()


def start_ticks(pid: int) -> int | None:
    """Field 22 (starttime, clock ticks after boot), or None if there is no such process."""
    fields = _stat_fields(pid)
    return int(fields[19]) if fields else None


def alive(pid: int, ticks: int) -> bool:
    """Whether `pid` is still the process that started at `ticks` (and not a zombie)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z" and int(fields[19]) == ticks


def group_members(pgid: int) -> list[int]:
    """Live processes of process group `pgid`."""
    members = []
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields and fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(entry.name))
    return members


def cpu_ticks(pid: int) -> int:
    """utime + stime (fields 14 and 15) of one process, 0 if it is gone."""
    fields = _stat_fields(pid)
    return int(fields[11]) + int(fields[12]) if fields else 0


def rss_bytes(pid: int) -> int:
    """VmRSS of one process from /proc/PID/status, 0 if it is gone."""
    try:
        text = (PROC / str(pid) / "status").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def group_usage(pgid: int) -> tuple[int, int]:
    """(cpu ticks, rss bytes) summed over a process group."""
    ticks = rss = 0
    for pid in group_members(pgid):
        ticks += cpu_ticks(pid)
        rss += rss_bytes(pid)
    return ticks, rss
