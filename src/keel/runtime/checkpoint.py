"""An informer's cache and resourceVersion in a local file, so a restarted controller can
resume its watch instead of relisting everything. Writes are atomic (tmp + fsync + rename);
a file that is absent, corrupt, of another format, kind or scope loads as None.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import struct
import tempfile
import threading
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from keel.api.resources import Resource

__all__ = ["FORMAT", "Checkpoint", "gc_relaxed"]

R = TypeVar("R", bound=Resource)

log = logging.getLogger(__name__)

FORMAT = 1
MAGIC = b"KEELCKPT"
# MAGIC, then the header's length (u32, big endian), the header, the items.
_PREFIX = struct.Struct(">8sI")
_MAX_HEADER = 1 << 20


class _Header(msgspec.Struct, frozen=True):
    format: int
    kind: str
    scope: str
    resource_version: str
    count: int
    crc32: int  # of the items part


_header_decoder = msgspec.msgpack.Decoder(_Header)
_encoder = msgspec.msgpack.Encoder()
_decoders: dict[type[Any], msgspec.msgpack.Decoder[Any]] = {}


class _Relaxed:
    count = 0  # gc_relaxed blocks in progress (they may interleave across tasks)
    saved: tuple[int, int, int] = (700, 10, 10)


# Young-generation threshold while relaxed: collections still happen (a stuck request does
# not stop garbage collection), just 300 times less often.
RELAXED_THRESHOLD = (200_000, 10, 10)


@contextlib.contextmanager
def gc_relaxed() -> Iterator[None]:
    """Run Python's cyclic GC rarely while many objects are decoded at once (a checkpoint,
    a list). Decoded resources form no reference cycles, yet with the default thresholds
    the GC re-scans the objects decoded so far over and over: relaxed, a 100,000-object
    decode takes half the time. Interleaved blocks share one counter; the previous
    thresholds come back when the last one ends.
    """
    if _Relaxed.count == 0:
        _Relaxed.saved = gc.get_threshold()
        gc.set_threshold(*RELAXED_THRESHOLD)
    _Relaxed.count += 1
    try:
        yield
    finally:
        _Relaxed.count -= 1
        if _Relaxed.count == 0:
            gc.set_threshold(*_Relaxed.saved)


def _items_decoder(kind: type[R]) -> msgspec.msgpack.Decoder[list[R]]:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.msgpack.Decoder(list[kind])  # type: ignore[valid-type]
    return decoder


class Checkpoint:
    """One file holding one informer's objects and the resourceVersion they are current at.

    `scope` (free text, e.g. namespace and selectors) must match between `save` and `load`,
    so an informer never starts from a cache that was filtered differently.
    """

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # saves may come from a worker thread and the loop
        self._saved_version = -1

    def save(
        self,
        resource_version: str,
        objects: Sequence[Resource],
        *,
        kind: type[Resource] | None = None,
        scope: str = "",
    ) -> None:
        """Replace the file atomically: a crash leaves the old checkpoint or the new one.
        `kind` names the kind when `objects` may be empty. A save older (by numeric
        resourceVersion) than one this object already wrote is skipped."""
        kind_name = kind.kind_name if kind else type(objects[0]).kind_name if objects else ""
        items = _encoder.encode(objects)
        header = _encoder.encode(
            _Header(FORMAT, kind_name, scope, resource_version, len(objects), zlib.crc32(items))
        )
        version = int(resource_version) if resource_version.isdigit() else -1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            if version < self._saved_version:
                return
            fd, name = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
            tmp = Path(name)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(_PREFIX.pack(MAGIC, len(header)))
                    f.write(header)
                    f.write(items)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
            _fsync_dir(self.path.parent)
            self._saved_version = version

    def load(self, kind: type[R], *, scope: str = "") -> tuple[str, list[R]] | None:
        """(resourceVersion, objects), or None when there is no usable checkpoint."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("checkpoint %s: unreadable (%s); ignoring it", self.path, exc)
            return None
        reason = "truncated"
        try:
            if len(data) >= _PREFIX.size:
                magic, size = _PREFIX.unpack_from(data)
                reason = "not a checkpoint"
                if magic == MAGIC:
                    start = _PREFIX.size + size
                    header = _header_decoder.decode(data[_PREFIX.size : start])
                    items = memoryview(data)[start:]
                    reason = _mismatch(header, kind, scope, items)
                    if not reason:
                        with gc_relaxed():
                            objects = _items_decoder(kind).decode(items)
                        reason = "item count differs"
                        if len(objects) == header.count:
                            return header.resource_version, objects
        except (msgspec.DecodeError, ValueError) as exc:
            reason = f"corrupt ({exc})"
        log.warning("checkpoint %s: %s; ignoring it", self.path, reason)
        return None

    def peek(self, kind: type[Resource], *, scope: str = "") -> str | None:
        """The resourceVersion of a checkpoint that looks usable, reading only its header
        (so a watch can start while `load` decodes); `load` still has the last word."""
        try:
            with self.path.open("rb") as f:
                prefix = f.read(_PREFIX.size)
                if len(prefix) < _PREFIX.size:
                    return None
                magic, size = _PREFIX.unpack(prefix)
                if magic != MAGIC or size > _MAX_HEADER:
                    return None
                header = _header_decoder.decode(f.read(size))
        except (OSError, msgspec.DecodeError, ValueError):
            return None
        return None if _mismatch(header, kind, scope) else header.resource_version

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def _mismatch(
    header: _Header, kind: type[Resource], scope: str, items: memoryview | None = None
) -> str:
    """Why this checkpoint cannot be used ("" if it can); the checksum only with `items`."""
    if header.format != FORMAT:
        return f"format {header.format}, expected {FORMAT}"
    if header.kind and header.kind != kind.kind_name:
        return f"holds {header.kind}, not {kind.kind_name}"
    if header.scope != scope:
        return f"scope {header.scope!r}, expected {scope!r}"
    if not header.resource_version:
        return "no resourceVersion"
    if items is not None and zlib.crc32(items) != header.crc32:
        return "checksum mismatch"
    return ""


def _fsync_dir(path: Path) -> None:
    """Make the rename itself durable (POSIX: fsync the directory)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
