"""Usage and capacity numbers as people read them: telemetry sends quantities ("250m",
"128Mi") or plain numbers (cores, bytes); tables show millicores, Mi and Gi. Pure.
"""

from __future__ import annotations

from keel.api.columns import show_capacity
from keel.api.quantity import format_memory, parse_cpu, parse_memory

__all__ = ["cpu", "memory", "show_capacity", "show_cpu", "show_memory"]

GI = 2**30
MI = 2**20


def cpu(value: object) -> int | None:
    """Millicores from a usage: a quantity string ("250m") or a number of cores."""
    try:
        if isinstance(value, str):
            return parse_cpu(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return round(value * 1000)
    except ValueError:
        return None
    return None


def memory(value: object) -> int | None:
    """Bytes from a usage: a quantity string ("128Mi") or a number of bytes."""
    try:
        if isinstance(value, str):
            return parse_memory(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return round(value)
    except ValueError:
        return None
    return None


def show_cpu(millicores: int | None) -> str:
    return "<unknown>" if millicores is None else f"{millicores}m"


def show_memory(size: int | None) -> str:
    """Bytes in Mi (as `top` shows them); below 1 Mi exactly as given."""
    if size is None:
        return "<unknown>"
    return f"{size / MI:.0f}Mi" if size >= MI or size == 0 else format_memory(size)
