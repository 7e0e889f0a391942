"""The agent's state dir: one JSON record per instance it runs (`instances/<ns>_<name>.json`,
read by `keel logs` too), the logs (`logs/<ns>_<name>.log`) and the node
lease last held (`lease.json`).
Files are replaced atomically, so a SIGKILL leaves either the old or the new record.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

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
