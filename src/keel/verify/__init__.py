"""`keel verify`: Keel's guarantees checked under real faults, Jepsen-style.

Histories are recorded by workloads running against a cluster of network-namespace hosts
while a seeded nemesis partitions, kills, pauses and slows disks; pure checkers turn each
history into a `Verdict`. This package sits at the top, beside the CLI: it drives every
layer below through its public face and nothing below imports it.
"""

from keel.verify.convergence import check_convergence
from keel.verify.exclusive import check_duplicates, check_exclusive, check_surge
from keel.verify.faults import SlowDisk, SlowDiskError
from keel.verify.fencing import check_fencing
from keel.verify.history import (
    Event,
    HistoryError,
    Verdict,
    dump_history,
    load_history,
    parse_history,
)
from keel.verify.hosts import Fabric, FabricError, Host, Removed, cleanup_all, new_prefix
from keel.verify.linearizability import check_register
from keel.verify.watch import check_watch

__all__ = [
    "Event",
    "Fabric",
    "FabricError",
    "HistoryError",
    "Host",
    "Removed",
    "SlowDisk",
    "SlowDiskError",
    "Verdict",
    "check_convergence",
    "check_duplicates",
    "check_exclusive",
    "check_fencing",
    "check_register",
    "check_surge",
    "check_watch",
    "cleanup_all",
    "dump_history",
    "load_history",
    "new_prefix",
    "parse_history",
]
