"""The agent's state dir: one JSON record per instance it runs (`instances/<ns>_<name>.json`,
read by `keel logs` too), the logs (`logs/<ns>_<name>.log`) and the node
lease last held (`lease.json`).
Files are replaced atomically, so a SIGKILL leaves either the old or the new record.
`AgentState` is what the agent needs of it; `MemoryState` keeps the same in memory (the
simulation's machines have no disk, and outlive the agents they restart).
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Protocol

import msgspec

from keel.agent._plan import Record
from keel.api.resources import Lease

log = logging.getLogger("keel.agent")

_decoder = msgspec.json.Decoder(Record)
_encoder = msgspec.json.Encoder()


class LeaseMemo(msgspec.Struct, frozen=True):
    """The node lease and when (wall clock) it was last renewed: a restarted agent that finds
    it fresh keeps its exclusive instances running while it renews the same lease."""

    lease: Lease
    renewed_at: float


def file_stem(namespace: str, name: str) -> str:
    return f"{namespace}_{name}"


class AgentState(Protocol):
    """What survives a restart of the agent on its machine."""

    def log_path(self, namespace: str, name: str) -> Path: ...

    def load(self) -> dict[str, Record]: ...

    def save(self, record: Record) -> None: ...

    def remove(self, record: Record) -> None: ...

    def load_lease(self) -> LeaseMemo | None: ...

    def save_lease(self, memo: LeaseMemo | None) -> None: ...


class StateDir:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.instances = root / "instances"
        self.logs = root / "logs"
        self.instances.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)

    def log_path(self, namespace: str, name: str) -> Path:
        return self.logs / f"{file_stem(namespace, name)}.log"

    def _record_path(self, namespace: str, name: str) -> Path:
        return self.instances / f"{file_stem(namespace, name)}.json"

    def load(self) -> dict[str, Record]:
        records: dict[str, Record] = {}
        for path in sorted(self.instances.glob("*.json")):
            try:
                record = _decoder.decode(path.read_bytes())
            except (OSError, msgspec.DecodeError) as exc:
                log.warning("ignoring unreadable state file %s: %s", path, exc)
                continue
            records[record.key] = record
        return records

    def save(self, record: Record) -> None:
        _write_atomic(self._record_path(record.namespace, record.name), _encoder.encode(record))

    def remove(self, record: Record) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._record_path(record.namespace, record.name).unlink()

    def load_lease(self) -> LeaseMemo | None:
        return load_lease(self.root)

    def save_lease(self, memo: LeaseMemo | None) -> None:
        save_lease(self.root, memo)


class MemoryState:
    """`AgentState` in memory: records and the lease memo, log paths under a made-up root."""

    def __init__(self, root: Path = Path("/keel-sim")) -> None:
        self.root = root
        self.records: dict[str, Record] = {}
        self.lease: LeaseMemo | None = None

    def log_path(self, namespace: str, name: str) -> Path:
        return self.root / "logs" / f"{file_stem(namespace, name)}.log"

    def load(self) -> dict[str, Record]:
        return dict(sorted(self.records.items()))

    def save(self, record: Record) -> None:
        self.records[record.key] = record

    def remove(self, record: Record) -> None:
        self.records.pop(record.key, None)

    def load_lease(self) -> LeaseMemo | None:
        return self.lease

    def save_lease(self, memo: LeaseMemo | None) -> None:
        self.lease = memo


def _lease_path(root: Path) -> Path:
    return root / "lease.json"


def load_lease(root: Path) -> LeaseMemo | None:
    try:
        return msgspec.json.decode(_lease_path(root).read_bytes(), type=LeaseMemo)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def save_lease(root: Path, memo: LeaseMemo | None) -> None:
    if memo is None:
        with contextlib.suppress(FileNotFoundError):
            _lease_path(root).unlink()
        return
    _write_atomic(_lease_path(root), _encoder.encode(memo))


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
