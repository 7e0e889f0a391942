"""The network a verify run uses, as the nemesis sees it (keel.verify.nemesis.Network).

`NamespaceNetwork` wraps the namespace hosts of keel.verify.hosts: partitions drop packets
between host groups (and, for an isolated host, from the runner too). `LoopbackNetwork` is
the single-host sqlite mode: no partitions, but slow disks still apply.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keel.verify.cluster import HostInfo
from keel.verify.faults import SlowDisk
from keel.verify.hosts import Fabric, cleanup_all, new_prefix

__all__ = ["LoopbackNetwork", "NamespaceNetwork", "cleanup_all"]


class LoopbackNetwork:
    def partition(
        self, groups: list[list[str]], *, isolate_from_runner: Sequence[str] = ()
    ) -> None:
        raise RuntimeError("partitions need --store etcd (network-namespace hosts)")

    def heal(self) -> None:
        return None

    def slow_disk(self, pid: int, delay_ms: int) -> Any:
        return SlowDisk(pid, delay_ms)


class NamespaceNetwork:
    def __init__(self, fabric: Fabric) -> None:
        self.fabric = fabric
        self._by_name = {h.name: h for h in fabric.hosts}

    @classmethod
    def create(cls, run_dir: Path, hosts: int) -> NamespaceNetwork:
        return cls(Fabric.create(new_prefix(), hosts, run_dir=run_dir))

    def hosts(self) -> list[HostInfo]:
        return [HostInfo(h.name, h.address, tuple(h.command([]))) for h in self.fabric.hosts]

    def record_pid(self, pid: int) -> None:
        """Remember a process the run started, for `keel verify --cleanup` after a crash."""
        self.fabric.record_pid(pid)

    def partition(
        self, groups: list[list[str]], *, isolate_from_runner: Sequence[str] = ()
    ) -> None:
        self.fabric.partition([[self._by_name[n] for n in group] for group in groups])
        for name in isolate_from_runner:
            self.fabric.isolate_from_runner(self._by_name[name])

    def heal(self) -> None:
        self.fabric.heal()

    def slow_disk(self, pid: int, delay_ms: int) -> Any:
        return SlowDisk(pid, delay_ms)

    def destroy(self) -> None:
        self.fabric.destroy()
