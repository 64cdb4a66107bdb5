"""The ledger's journal: a row is on disk before its response's last bytes are sent.

The ledger writer commits rows to the database in batches, a few milliseconds after their
requests ended, and nobody waits for those commits. What makes that safe is this journal: each
row is first copied into a file of this process that is mapped into memory (``mmap``,
``MAP_SHARED``), and once the copy is done the row is in the operating system's page cache,
which a killed process (kill -9, an out-of-memory kill, a crash) does not lose. A mapped file
rather than a ``write()`` per row: the system call lets go of the GIL, and the ledger's SQLite
thread, waiting for it, took it each time, which cost the event loop more than the write. It is
not fsynced: like SQLite's ``synchronous=NORMAL``, a power loss may drop the newest rows (a
torn record is recognised by its checksum and ignored).

Each row has a sequence number. The transaction that commits a batch also stores, in the
``ledger_journals`` table, the highest number it holds for this journal, so what the database
has is known exactly: after a crash the rows past that number are written, never one twice.
Numbers are consecutive: a row whose journal write failed gets none (it is not recorded).

Files, in one directory (by default ``<data dir>/journal``), which processes on one host may
share: ``<instance>.lock``, locked (``flock``) by the process that writes the journal for as
long as it runs, and segments ``<instance>.<n>.seg`` (n = 0, 1, 2…). A segment's disk space
(:data:`SEGMENT_BYTES`) is allocated when it is made, so a full disk is an error there and
never a fault on a mapped page; a new segment begins when a record no longer fits, and a
segment is deleted once every row in it is committed. A journal whose lock nobody holds
belongs to a process that died: any process sharing the directory adopts it (:func:`orphans`),
writes what the database lacks, and deletes it.

A record is ``<length:u32><crc32:u32><payload>`` (little-endian) where the payload is
``(sequence number, row)``, a row being a tuple of plain values, as JSON (orjson: a third of
what ``marshal`` costs, on every request) or, for values JSON cannot hold (integers beyond 64
bits), as ``marshal`` (version 2: no object references to track); a JSON payload starts with
``[``, a marshalled tuple never does, and journals of earlier versions are all marshal. These files
are only ever read by this program. The unused rest of a segment is zeros, and a zero length
ends it: a record's payload is copied before its header, so a record cut short by a crash ends
the segment or fails its checksum.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import marshal
import mmap
import os
import secrets
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

log = logging.getLogger("llmrelay.ledger")

Row = tuple[Any, ...]

SEGMENT_BYTES = 4 << 20
_HEADER = struct.Struct("<II")
_LOCK = ".lock"
_SEGMENT = ".seg"


def _segments(directory: Path, instance: str) -> list[tuple[int, Path]]:
    """The journal's segments, oldest first."""
    found = []
    for path in directory.glob(f"{instance}.*{_SEGMENT}"):
        number = path.name[len(instance) + 1 : -len(_SEGMENT)]
        if number.isdigit():
            found.append((int(number), path))
    return sorted(found)


def records(path: Path) -> Iterator[tuple[int, Row]]:
    """The records of one segment, up to the first torn or corrupt one."""
    data = path.read_bytes()
    at = 0
    while at + _HEADER.size <= len(data):
        length, crc = _HEADER.unpack_from(data, at)
        if length == 0:  # the unused rest of the segment
            return
        payload = data[at + _HEADER.size : at + _HEADER.size + length]
        if len(payload) < length or zlib.crc32(payload) != crc:
            log.warning("journal %s ends with a torn record at byte %d; ignored", path, at)
            return
        yield _decode(payload)
        at += _HEADER.size + length


def _encode(seq: int, row: Row) -> bytes:
    try:
        return orjson.dumps((seq, row))
    except TypeError:  # (orjson.JSONEncodeError) an integer beyond 64 bits, or another type
        return marshal.dumps((seq, row), 2)


def _decode(payload: bytes) -> tuple[int, Row]:
    if payload[:1] == b"[":
        seq, row = orjson.loads(payload)
        return seq, tuple(row)
    found: tuple[int, Row] = marshal.loads(payload)
    return found


def _lock_path(directory: Path, instance: str) -> Path:
    return directory / f"{instance}{_LOCK}"


def _lock(path: Path) -> int | None:
    """An exclusive lock on the existing file ``path`` (held until its descriptor is closed),
    or None if another process holds it or the file is gone (deleted by whoever adopted the
    journal before us)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # The file we locked must still be the one at ``path``: a process that adopted this
        # journal unlinks the lock file before it lets go of it.
        if os.fstat(fd).st_ino != os.stat(path).st_ino:
            raise FileNotFoundError(path)
    except OSError:
        os.close(fd)
        return None
    return fd


@dataclass(slots=True)
class _Segment:
    path: Path
    fd: int
    mapped: mmap.mmap
    size: int = 0  # the bytes used
    last: int = -1  # the highest sequence number written to it

    def close(self, *, remove: bool) -> None:
        self.mapped.close()
        os.close(self.fd)
        if remove:
            self.path.unlink(missing_ok=True)


def _allocate(fd: int, size: int) -> None:
    """Give the file ``size`` bytes of disk now (raises OSError on a full disk)."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL):
            raise
        os.ftruncate(fd, size)  # a file system that cannot allocate ahead


@dataclass
class Journal:
    """This process's journal: :meth:`append` rows, :meth:`committed` what the database holds."""

    directory: Path
    instance: str = field(default_factory=lambda: secrets.token_hex(8))
    segment_bytes: int = SEGMENT_BYTES
    _lock_fd: int | None = None
    _segments: list[_Segment] = field(default_factory=list)
    _made: int = 0  # segments made so far (the next one's number)

    def open(self) -> None:
        """Create and lock the journal's lock file. It is locked under a temporary name and
        then renamed, so no other process ever sees it unlocked (and adopts it)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        temporary = self.directory / f"{self.instance}.new"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            temporary.rename(_lock_path(self.directory, self.instance))
        except BaseException:
            os.close(fd)
            temporary.unlink(missing_ok=True)
            raise
        self._lock_fd = fd

    def append(self, seq: int, row: Row) -> None:
        """Copy ``(seq, row)`` into the current segment (a new one when it does not fit);
        raises OSError if a new segment could not be made."""
        payload = _encode(seq, row)
        end = len(payload) + _HEADER.size
        current = self._segments[-1] if self._segments else None
        if current is None or current.size + end > len(current.mapped):
            current = self._new_segment(end)
        at = current.size
        end += at
        current.mapped[at + _HEADER.size : end] = payload
        _HEADER.pack_into(current.mapped, at, len(payload), zlib.crc32(payload))
        current.size = end
        current.last = seq

    def _new_segment(self, need: int) -> _Segment:
        path = self.directory / f"{self.instance}.{self._made}{_SEGMENT}"
        size = max(self.segment_bytes, need)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            _allocate(fd, size)
            mapped = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        self._made += 1
        segment = _Segment(path, fd, mapped)
        self._segments.append(segment)
        return segment

    def committed(self, seq: int) -> None:
        """Every row up to ``seq`` is in the database: delete the segments that hold only
        such rows (never the one being written)."""
        while len(self._segments) > 1 and self._segments[0].last <= seq:
            self._segments.pop(0).close(remove=True)

    def close(self, *, remove: bool) -> None:
        """Close the files; with ``remove`` (everything is committed), delete them too."""
        for segment in self._segments:
            segment.close(remove=remove)
        self._segments = []
        if self._lock_fd is not None:
            if remove:
                _lock_path(self.directory, self.instance).unlink(missing_ok=True)
            os.close(self._lock_fd)
            self._lock_fd = None


@dataclass
class Orphan:
    """The journal of a process that died, locked by this one until :meth:`release`."""

    directory: Path
    instance: str
    lock_fd: int

    def rows(self, after: int) -> Iterator[tuple[int, Row]]:
        """Its ``(sequence number, row)`` records numbered above ``after``, in order."""
        for _, path in _segments(self.directory, self.instance):
            for record in records(path):
                if record[0] > after:
                    yield record

    def remove(self) -> None:
        """Delete the journal (its rows are all in the database), then unlock it."""
        for _, path in _segments(self.directory, self.instance):
            path.unlink(missing_ok=True)
        _lock_path(self.directory, self.instance).unlink(missing_ok=True)
        self.release()

    def release(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.lock_fd)


def orphans(directory: Path, *, own: str | None = None) -> Iterator[Orphan]:
    """The journals in ``directory`` that no running process holds, each locked while the
    caller handles it (it calls :meth:`Orphan.remove` or :meth:`Orphan.release`)."""
    if not directory.is_dir():
        return
    for lock_path in sorted(directory.glob(f"*{_LOCK}")):
        instance = lock_path.name[: -len(_LOCK)]
        if instance == own:
            continue
        fd = _lock(lock_path)
        if fd is not None:
            yield Orphan(directory, instance, fd)
