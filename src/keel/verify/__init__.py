"""`keel verify`: Keel's guarantees checked under real faults, Jepsen-style.

Histories are recorded by workloads running against a cluster of network-namespace hosts
while a seeded nemesis partitions, kills, pauses and slows disks; pure checkers turn each
history into a `Verdict`. This package sits at the top, beside the CLI: it drives every
layer below through its public face and nothing below imports it.
"""

from keel.verify.history import (
    Event,
    HistoryError,
    Verdict,
    dump_history,
    load_history,
    parse_history,
)
from keel.verify.linearizability import check_register

__all__ = [
    "Event",
    "HistoryError",
    "Verdict",
    "check_register",
    "dump_history",
    "load_history",
    "parse_history",
]
