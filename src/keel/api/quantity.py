"""Resource quantities as Kubernetes writes them: "500m", "2", "256Mi", "1G"."""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

_QUANTITY = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$")
_FACTORS: dict[str, Decimal] = {
    "": Decimal(1),
    "m": Decimal("0.001"),
    "k": Decimal(10**3),
    "M": Decimal(10**6),
    "G": Decimal(10**9),
    "T": Decimal(10**12),
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
}


def parse_quantity(text: str) -> Decimal:
    """The quantity's value in base units; raises ValueError naming what was expected."""
    match = _QUANTITY.match(text)
    if not match:
        raise ValueError(
            f"quantity {text!r}: expected a number with an optional suffix "
            "(m, k, M, G, T, Ki, Mi, Gi, Ti), like '500m', '2', '256Mi' or '1G'"
        )
    try:
        number = Decimal(match.group(1))
    except InvalidOperation as exc:  # pragma: no cover - the pattern admits only numbers
        raise ValueError(f"quantity {text!r}: not a number") from exc
    return number * _FACTORS[match.group(2) or ""]


def parse_cpu(text: str) -> int:
    """CPU in millicores, rounded up ("500m" -> 500, "2" -> 2000)."""
    return int((parse_quantity(text) * 1000).to_integral_value(rounding="ROUND_CEILING"))


def parse_memory(text: str) -> int:
    """Memory in bytes, rounded up ("256Mi" -> 268435456, "1G" -> 10**9)."""
    return int(parse_quantity(text).to_integral_value(rounding="ROUND_CEILING"))


def format_cpu(millicores: int) -> str:
    return f"{millicores // 1000}" if millicores % 1000 == 0 else f"{millicores}m"


def format_memory(size: int) -> str:
    for suffix, factor in (("Gi", 2**30), ("Mi", 2**20), ("Ki", 2**10)):
        if size % factor == 0 and size >= factor:
            return f"{size // factor}{suffix}"
    return str(size)
