"""The collector's durable spool: validated records on disk until the central broker has them.

A record is *accepted* from the device side once :meth:`Spool.commit` has
fsynced it, and *released* (its space reclaimed) once the collector reports,
through :meth:`Spool.acknowledge`, that the batch holding it was acknowledged
upstream. Standard library only; one thread (the collector's worker) calls it.

Layout of the spool directory (``0700``, files ``0600``)::

    lock                      flock'ed while a collector owns the spool
    cursor                    two 64-byte slots: the released position (see below)
    00000000000000000000.seg  segments, named by the index of their first record
    00000000000000004096.seg
    ...

A segment is a sequence of frames, appended and never rewritten::

    magic "FP" (2) | version 1 (1) | flags (1) | length (4, LE) | spooled_at_ms (8, LE)
    payload (length bytes)
    crc32 of header + payload (4, LE)

Records are numbered by a global *index*. A sealed segment holds
``next.first - this.first`` records, so counting the backlog never reads a
file; only the last (active) segment is scanned at start, to cut a torn tail.

The *cursor* says where the first unreleased record starts (segment, byte
offset, index). It is rewritten in place after every acknowledgement (a small
``pwrite``, which survives ``kill -9`` because the page cache does) and fsynced
with the next commit; its two slots alternate and carry a CRC and a generation,
so a torn cursor write falls back to the previous one. After a power cut the
cursor may lag: records that were already delivered are sent again (downstream
removes them by ``(device_id, boot, seq)``), none is skipped.

Recovery never crash-loops: a torn tail of the active segment (a write the
power cut interrupted; those records were never acknowledged to the device
side, so the local broker redelivers them) is truncated; corrupt bytes inside a
segment are skipped up to the next frame that checks out, counted in
``dropped["spool_corrupt"]`` (one per corrupt region) and ``corrupt_bytes``.

Bounds. ``quota_bytes`` caps the segment files together. When an append would
exceed it, ``on_full="drop_oldest"`` deletes the oldest segment (its records
not yet read are counted in ``dropped["spool_quota"]``) and
``on_full="reject_new"`` refuses the record (counted the same way). With
``ttl_s`` set, records older than that when the reader reaches them are
skipped and counted in ``dropped["spool_ttl"]``.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

log = logging.getLogger(__name__)

ON_FULL_POLICIES = ("drop_oldest", "reject_new")

_MAGIC = b"FP"
_VERSION = 1
_HEADER = struct.Struct("<2sBBIQ")  # magic, version, flags, length, spooled_at_ms
_CRC = struct.Struct("<I")
FRAME_OVERHEAD = _HEADER.size + _CRC.size
#: Largest payload a frame may claim; anything longer is corruption, not a record.
MAX_RECORD_BYTES = 1 << 20

_CURSOR_MAGIC = b"FPC1"
_CURSOR = struct.Struct("<4sQQQQ")  # magic, generation, segment, offset, index
_CURSOR_SLOT = 64
_SEGMENT_SUFFIX = ".seg"
_READ_CHUNK = 1 << 16
#: Appended frames are written in one go at commit, or once this many bytes wait.
_WRITE_BUFFER_BYTES = 1 << 20
#: Records appended recently stay in memory too, up to this many payload bytes,
#: so a reader that keeps up never reads back from the file what it just wrote.
_TAIL_BYTES = 8 << 20

#: Segment size bounds: a segment is 1/8 of the quota, within these.
MIN_SEGMENT_BYTES = 4096
MAX_SEGMENT_BYTES = 16 << 20
#: The smallest quota: eight minimal segments.
MIN_QUOTA_BYTES = 8 * MIN_SEGMENT_BYTES


class SpoolLocked(RuntimeError):
    """Another process holds the spool (two collectors must never share one)."""


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Position(NamedTuple):
    """A place between two records: the next index, the segment (its first index), a byte offset.

    Ordered as a tuple: by index first, which only grows.
    """

    index: int  # type: ignore[assignment]  # (shadows tuple.index, never used here)
    segment: int
    offset: int


class SpoolRecord(NamedTuple):
    """One record read back: its index, when it was spooled, its bytes, and where it ends."""

    index: int  # type: ignore[assignment]
    at_ms: int
    data: bytes
    end: Position


@dataclass
class _Segment:
    first: int  # index of its first record
    path: Path
    size: int  # bytes on disk
    count: int | None = None  # records; None for a sealed segment until its successor exists


@dataclass
class RecoveryReport:
    """What :meth:`Spool.open` found on disk."""

    segments: int = 0
    backlog_records: int = 0
    backlog_bytes: int = 0
    torn_bytes: int = 0  # cut from the active segment's tail (never acknowledged to devices)
    deleted_segments: int = 0  # fully released segments a crash left behind
    cursor_fallback: bool = False  # the newest cursor slot was torn; the older one was used


def encode_frame(data: bytes, at_ms: int) -> bytes:
    """One frame: header, payload, CRC (exposed for tests that forge corruption)."""
    header = _HEADER.pack(_MAGIC, _VERSION, 0, len(data), at_ms)
    return header + data + _CRC.pack(zlib.crc32(data, zlib.crc32(header)))


def _parse_frame(buf: bytes | memoryview, pos: int) -> tuple[int, bytes, int] | None | Literal[False]:
    """Parse a frame at ``buf[pos:]``: (at_ms, payload, end), None if ``buf`` ends too soon, False if corrupt."""
    if len(buf) - pos < _HEADER.size:
        return None
    magic, version, _flags, length, at_ms = _HEADER.unpack_from(buf, pos)
    if magic != _MAGIC or version != _VERSION or length > MAX_RECORD_BYTES:
        return False
    end = pos + _HEADER.size + length + _CRC.size
    if len(buf) < end:
        return None
    body_end = end - _CRC.size
    (crc,) = _CRC.unpack_from(buf, body_end)
    if zlib.crc32(buf[pos + _HEADER.size : body_end], zlib.crc32(buf[pos : pos + _HEADER.size])) != crc:
        return False
    return at_ms, bytes(buf[pos + _HEADER.size : body_end]), end


class _SegmentReader:
    """Sequential, buffered reading of one segment from a byte offset, resynchronising past corruption."""

    def __init__(self, segment: _Segment, offset: int) -> None:
        self.segment = segment
        self._file = open(segment.path, "rb")  # closed by close()
        self._file.seek(offset)
        self._base = offset  # file offset of self._buf[0]
        self._buf = b""
        self._pos = 0

    @property
    def offset(self) -> int:
        return self._base + self._pos

    def close(self) -> None:
        self._file.close()

    def _fill(self, limit: int) -> bool:
        """Read more bytes, never past ``limit`` (the committed end); False when nothing more."""
        want = limit - (self._base + len(self._buf))
        if want <= 0:
            return False
        chunk = self._file.read(min(want, _READ_CHUNK))
        if not chunk:
            return False
        self._buf = self._buf[self._pos :] + chunk
        self._base += self._pos
        self._pos = 0
        return True

    def push_back(self, nbytes: int) -> None:
        """Un-read the frame just returned (it did not fit the caller's byte budget)."""
        self._pos -= nbytes

    def peek(self, limit: int) -> int | None:
        """The spooled_at_ms of the next frame if it checks out, else None."""
        parsed = _parse_frame(self._buf, self._pos)
        while parsed is None and self._fill(limit):
            parsed = _parse_frame(self._buf, self._pos)
        return parsed[0] if isinstance(parsed, tuple) else None

    def next(self, limit: int) -> tuple[int, bytes] | tuple[None, int] | None:
        """The next frame below ``limit``: (at_ms, payload); (None, skipped_bytes) after corruption; None at the end."""
        while True:
            parsed = _parse_frame(self._buf, self._pos)
            if parsed is None:
                if self._fill(limit):
                    continue
                if self._pos >= len(self._buf):
                    return None
                # Bytes before the limit that do not make a whole frame (a length
                # field that was hit, say): corruption, look for the next frame.
                return None, self._resync(limit)
            if parsed is False:
                return None, self._resync(limit)
            at_ms, payload, end = parsed
            self._pos = end
            return at_ms, payload

    def _resync(self, limit: int) -> int:
        """Skip to the next offset where a whole frame checks out; return the bytes skipped."""
        start = self.offset
        self._pos += 1
        while True:
            found = self._buf.find(_MAGIC, self._pos)
            if found < 0:
                keep = max(self._pos, len(self._buf) - 1)  # a magic may straddle the chunks
                self._pos = keep
                if not self._fill(limit):
                    self._pos = len(self._buf)
                    return self.offset - start
                continue
            self._pos = found
            parsed = _parse_frame(self._buf, found)
            if parsed is None and self._fill(limit):
                continue
            if parsed is None or parsed is False:
                if parsed is None:  # too short to tell, and nothing more: a corrupt end
                    self._pos = len(self._buf)
                    return self.offset - start
                self._pos = found + 1
                continue
            return self.offset - start


@dataclass
class Spool:
    """A crash-safe, bounded FIFO of records on disk (see the module docstring)."""

    directory: Path
    quota_bytes: int
    on_full: str = "drop_oldest"
    ttl_s: int = 0
    fsync: bool = True  # off only in tests and benchmarks that measure something else
    clock: Callable[[], int] = wall_clock_ms
    segment_bytes: int = 0  # 0: quota_bytes // 8 within [MIN_SEGMENT_BYTES, MAX_SEGMENT_BYTES]
    #: records dropped by reason: spool_quota, spool_ttl, spool_corrupt (regions)
    dropped: dict[str, int] = field(default_factory=dict)
    corrupt_bytes: int = 0
    commits: int = 0

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        if self.on_full not in ON_FULL_POLICIES:
            raise ValueError(f"on_full must be one of {ON_FULL_POLICIES}, not {self.on_full!r}")
        if self.quota_bytes < MIN_QUOTA_BYTES:
            raise ValueError(f"quota_bytes must be at least {MIN_QUOTA_BYTES}")
        if not self.segment_bytes:
            self.segment_bytes = min(max(self.quota_bytes // 8, MIN_SEGMENT_BYTES), MAX_SEGMENT_BYTES)
        self._segments: list[_Segment] = []
        self._lock_fd: int | None = None
        self._cursor_fd: int | None = None
        self._cursor_generation = 0
        self._cursor_dirty = False
        self._released = Position(0, 0, 0)
        self._write_fd: int | None = None
        self._next_index = 0
        self._committed = Position(0, 0, 0)  # end of the last fsynced frame
        self._written_end = 0  # byte size of the active segment, including unsynced frames
        self._unsynced_records = 0
        self._dir_dirty = False
        self._disk_bytes = 0
        self._read_at = Position(0, 0, 0)  # next record the reader returns
        self._reader: _SegmentReader | None = None
        self._write_buffer: list[bytes] = []
        self._write_buffered = 0
        self._tail: deque[SpoolRecord] = deque()
        self._tail_bytes = 0
        self._opened = False

    # ---------------------------------------------------------------- lifecycle
    def open(self) -> RecoveryReport:
        """Lock the directory, read the cursor, cut a torn tail, drop released segments.

        Raises :class:`SpoolLocked` if another process holds the spool and
        OSError when the directory cannot be created or written.
        """
        report = RecoveryReport()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self._lock_fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            self._lock_fd = None
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SpoolLocked(f"spool {self.directory} is in use by another collector") from None
            raise
        self._cursor_fd = os.open(self.directory / "cursor", os.O_RDWR | os.O_CREAT, 0o600)
        self._released, report.cursor_fallback = self._read_cursor()

        found = sorted(
            (int(p.name[: -len(_SEGMENT_SUFFIX)]), p)
            for p in self.directory.glob("*" + _SEGMENT_SUFFIX)
            if p.name[: -len(_SEGMENT_SUFFIX)].isdigit()
        )
        for first, path in found:
            self._segments.append(_Segment(first, path, path.stat().st_size))
        # Segments wholly before the released one were released before a crash.
        while len(self._segments) > 1 and self._segments[1].first <= self._released.segment:
            self._unlink(self._segments.pop(0))
            report.deleted_segments += 1
        for prev, nxt in zip(self._segments, self._segments[1:], strict=False):
            prev.count = nxt.first - prev.first
        if self._segments and self._segments[0].first > self._released.index:
            # The cursor points before the oldest segment (dropped for quota before a
            # crash, or a cursor lost): start at the oldest segment.
            head = self._segments[0]
            self._released = Position(head.first, head.first, 0)
        if self._segments:
            report.torn_bytes = self._recover_active()
        else:
            start = self._released.index
            self._segments.append(self._new_segment_file(start))
            self._segments[-1].count = 0
        active = self._segments[-1]
        self._next_index = active.first + (active.count or 0)
        self._written_end = active.size
        self._committed = Position(self._next_index, active.first, active.size)
        if self._released.segment not in {s.first for s in self._segments}:
            head = self._segments[0]
            self._released = Position(head.first, head.first, 0)
        self._read_at = self._released
        self._disk_bytes = sum(s.size for s in self._segments)
        self._write_fd = os.open(active.path, os.O_WRONLY | os.O_APPEND)
        self._opened = True
        self._write_cursor()
        self.commit()
        report.segments = len(self._segments)
        report.backlog_records = self.backlog_records
        report.backlog_bytes = self.disk_bytes
        return report

    def close(self) -> None:
        """Commit, write the cursor, release the lock. The spool stays on disk."""
        if not self._opened:
            return
        try:
            self.commit()
        finally:
            self._close_files()

    def _close_files(self) -> None:
        self._write_buffer.clear()
        self._write_buffered = 0
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        for fd in (self._write_fd, self._cursor_fd, self._lock_fd):
            if fd is not None:
                os.close(fd)  # closing the lock fd releases the flock
        self._write_fd = self._cursor_fd = self._lock_fd = None
        self._opened = False

    # ------------------------------------------------------------------- state
    @property
    def disk_bytes(self) -> int:
        """Bytes of segment files on disk (what the quota bounds)."""
        return self._disk_bytes

    @property
    def backlog_records(self) -> int:
        """Records spooled and not yet released (read or not)."""
        return self._next_index - self._released.index

    @property
    def unread_records(self) -> int:
        """Committed records the reader has not returned yet."""
        # (after drop_oldest the reader may already stand past the last commit)
        return max(0, self._committed.index - self._read_at.index)

    @property
    def uncommitted_records(self) -> int:
        return self._unsynced_records

    @property
    def released(self) -> Position:
        return self._released

    # ------------------------------------------------------------------ writing
    def append(self, data: bytes, at_ms: int | None = None) -> bool:
        """Append one record (not yet durable: call :meth:`commit`). False if the quota refused it.

        OSError (disk full, I/O error) means the spool can no longer promise
        anything: the caller must stop acknowledging and restart (recovery
        cuts whatever was half written).
        """
        assert self._write_fd is not None, "open() the spool first"
        at = self.clock() if at_ms is None else at_ms
        frame = encode_frame(data, at)
        size = len(frame)
        if size > self.quota_bytes - self.segment_bytes:
            self._drop("spool_quota", 1)
            return False
        while self._disk_bytes + size > self.quota_bytes:
            if self.on_full == "reject_new" or len(self._segments) < 2:
                self._drop("spool_quota", 1)
                return False
            self._drop_oldest_segment()
        active = self._segments[-1]
        if self._written_end >= self.segment_bytes and active.count:
            self._rotate()
            active = self._segments[-1]
        self._write_buffer.append(frame)
        self._write_buffered += size
        if self._write_buffered >= _WRITE_BUFFER_BYTES:
            self._flush()
        self._written_end += size
        active.size = self._written_end
        active.count = (active.count or 0) + 1
        self._disk_bytes += size
        index = self._next_index
        self._next_index = index + 1
        self._unsynced_records += 1
        self._tail.append(SpoolRecord(index, at, data, Position(index + 1, active.first, self._written_end)))
        self._tail_bytes += len(data)
        while self._tail_bytes > _TAIL_BYTES:
            self._tail_bytes -= len(self._tail.popleft().data)
        return True

    def _flush(self) -> None:
        """Write the buffered frames to the active segment (one write call, all or an OSError)."""
        if not self._write_buffer:
            return
        assert self._write_fd is not None
        data = memoryview(b"".join(self._write_buffer))
        self._write_buffer.clear()
        self._write_buffered = 0
        while data:
            written = os.write(self._write_fd, data)
            data = data[written:]

    def commit(self) -> int:
        """Make every appended record durable (fsync); return how many became durable."""
        if self._write_fd is None:
            return 0
        self._flush()
        durable = self._unsynced_records
        if durable and self.fsync:
            os.fsync(self._write_fd)
        if self._dir_dirty and self.fsync:
            self._fsync_dir()
        self._dir_dirty = False
        if self._cursor_dirty and self._cursor_fd is not None:
            if self.fsync:
                os.fsync(self._cursor_fd)
            self._cursor_dirty = False
        self._unsynced_records = 0
        active = self._segments[-1]
        self._committed = Position(self._next_index, active.first, self._written_end)
        if durable:
            self.commits += 1
        return durable

    def _rotate(self) -> None:
        assert self._write_fd is not None
        self._flush()
        if self.fsync:
            os.fsync(self._write_fd)  # a sealed segment is complete on disk
        os.close(self._write_fd)
        segment = self._new_segment_file(self._next_index)
        segment.count = 0
        self._segments.append(segment)
        self._write_fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND)
        self._written_end = 0

    def _new_segment_file(self, first: int) -> _Segment:
        path = self.directory / f"{first:020d}{_SEGMENT_SUFFIX}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.close(fd)
        self._dir_dirty = True
        return _Segment(first, path, 0)

    def _drop_oldest_segment(self) -> None:
        head = self._segments.pop(0)
        nxt = self._segments[0]
        # Records already read are in flight upstream (the MQTT client holds them
        # and resends them after a reconnect): only the unread ones are lost.
        unread_from = max(head.first, self._read_at.index)
        lost = max(0, nxt.first - unread_from)
        if lost:
            self._drop("spool_quota", lost)
        log.warning("spool over quota (%d bytes): dropped the oldest segment %s, %d records never sent",
                    self.quota_bytes, head.path.name, lost)
        if self._reader is not None and self._reader.segment is head:
            self._reader.close()
            self._reader = None
        start = Position(nxt.first, nxt.first, 0)
        if self._read_at < start:
            self._read_at = start
        if self._released < start:
            self._released = start
            self._write_cursor()
        self._unlink(head)

    def _unlink(self, segment: _Segment) -> None:
        try:
            segment.path.unlink()
        except FileNotFoundError:
            pass
        self._disk_bytes -= segment.size
        self._dir_dirty = True

    def _drop(self, reason: str, n: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    # ------------------------------------------------------------------ reading
    def read(self, max_records: int, max_bytes: int | None = None) -> tuple[list[SpoolRecord], Position]:
        """Up to ``max_records`` committed records after the last read, oldest first.

        Returns the records and the position after the last frame looked at,
        which also covers records skipped as expired or corrupt: acknowledging
        that position releases them too. ``max_bytes`` bounds the payload total
        (at least one record is returned when any is available).
        """
        out: list[SpoolRecord] = []
        size = 0
        now = self.clock()
        ttl_ms = self.ttl_s * 1000
        tail = self._tail
        while len(out) < max_records and self._read_at.index < self._committed.index:
            while tail and tail[0].index < self._read_at.index:
                self._tail_bytes -= len(tail.popleft().data)
            if tail and tail[0].index == self._read_at.index:
                record = tail[0]
                if max_bytes is not None and out and size + len(record.data) > max_bytes:
                    break
                tail.popleft()
                self._tail_bytes -= len(record.data)
                self._read_at = record.end
                if ttl_ms and record.at_ms + ttl_ms < now:
                    self._drop("spool_ttl", 1)
                    continue
                out.append(record)
                size += len(record.data)
                continue
            reader = self._reader_at(self._read_at)
            item = reader.next(self._limit(reader))
            if item is None:
                # The end of a sealed segment: on to the next one.
                nxt = self._segment_after(reader.segment)
                if nxt is None:
                    break
                if nxt.first > self._read_at.index:
                    # Fewer frames than the segment's count: records lost to corruption.
                    self._drop("spool_corrupt", nxt.first - self._read_at.index)
                self._read_at = Position(max(self._read_at.index, nxt.first), nxt.first, 0)
                continue
            if item[0] is None:
                skipped = item[1]
                self.corrupt_bytes += skipped
                self._drop("spool_corrupt", 1)
                log.error("spool segment %s: %d corrupt bytes at offset %d skipped",
                          reader.segment.path.name, skipped, reader.offset - skipped)
                # A corrupt region counts as one lost record slot (the segment's
                # end settles the exact number, see below).
                self._read_at = Position(self._read_at.index + 1, reader.segment.first, reader.offset)
                continue
            at_ms, payload = item
            if max_bytes is not None and out and size + len(payload) > max_bytes:
                reader.push_back(FRAME_OVERHEAD + len(payload))  # for the next read
                break
            end = Position(self._read_at.index + 1, reader.segment.first, reader.offset)
            record_index = self._read_at.index
            self._read_at = end
            if ttl_ms and at_ms + ttl_ms < now:
                self._drop("spool_ttl", 1)
                continue
            out.append(SpoolRecord(record_index, at_ms, payload, end))
            size += len(payload)
        return out, self._read_at

    def peek_at_ms(self) -> int | None:
        """When the next unread committed record was spooled; None if there is none.

        Returns 0 when the next bytes do not check out, so the caller reads
        now and :meth:`read` deals with them.
        """
        if self._read_at.index >= self._committed.index:
            return None
        tail = self._tail
        while tail and tail[0].index < self._read_at.index:
            self._tail_bytes -= len(tail.popleft().data)
        if tail and tail[0].index == self._read_at.index:
            return tail[0].at_ms
        reader = self._reader_at(self._read_at)
        at_ms = reader.peek(self._limit(reader))
        return 0 if at_ms is None else at_ms

    def _limit(self, reader: _SegmentReader) -> int:
        return self._committed.offset if reader.segment is self._segments[-1] else reader.segment.size

    def rewind(self) -> None:
        """Read again from the first unreleased record (after the upstream session was lost)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._read_at = self._released

    def _segment_after(self, segment: _Segment) -> _Segment | None:
        for i, s in enumerate(self._segments):
            if s is segment:
                return self._segments[i + 1] if i + 1 < len(self._segments) else None
        return self._segments[0] if self._segments else None

    def _reader_at(self, at: Position) -> _SegmentReader:
        reader = self._reader
        if reader is not None and reader.segment.first == at.segment and reader.offset == at.offset:
            return reader
        if reader is not None:
            reader.close()
        segment = next((s for s in self._segments if s.first == at.segment), self._segments[0])
        offset = at.offset if segment.first == at.segment else 0
        self._reader = _SegmentReader(segment, offset)
        return self._reader

    # ---------------------------------------------------------------- releasing
    def acknowledge(self, upto: Position) -> None:
        """Everything before ``upto`` reached the central broker: release it and reclaim space."""
        if upto <= self._released:
            return
        self._released = upto
        while len(self._segments) > 1 and self._segments[1].first <= upto.index:
            head = self._segments.pop(0)
            if self._reader is not None and self._reader.segment is head:
                self._reader.close()
                self._reader = None
            if self._released.segment == head.first:  # released up to its very end
                nxt = self._segments[0]
                self._released = Position(self._released.index, nxt.first, 0)
            self._unlink(head)
        self._write_cursor()

    # ------------------------------------------------------------------ cursor
    def _read_cursor(self) -> tuple[Position, bool]:
        assert self._cursor_fd is not None
        raw = os.pread(self._cursor_fd, 2 * _CURSOR_SLOT, 0)
        slots: list[tuple[int, Position] | None] = []
        for n in range(2):
            chunk = raw[n * _CURSOR_SLOT : n * _CURSOR_SLOT + _CURSOR.size + _CRC.size]
            if len(chunk) < _CURSOR.size + _CRC.size:
                slots.append(None)
                continue
            body, (crc,) = chunk[: _CURSOR.size], _CRC.unpack_from(chunk, _CURSOR.size)
            magic, generation, segment, offset, index = _CURSOR.unpack(body)
            if magic != _CURSOR_MAGIC or zlib.crc32(body) != crc:
                slots.append(None)
                continue
            slots.append((generation, Position(index, segment, offset)))
        valid = [s for s in slots if s is not None]
        if not valid:
            return Position(0, 0, 0), any(raw)
        generation, position = max(valid, key=lambda s: s[0])
        self._cursor_generation = generation
        newest_torn = len(valid) == 1 and any(raw[_CURSOR_SLOT * (1 - slots.index(valid[0])):])
        return position, newest_torn

    def _write_cursor(self) -> None:
        if self._cursor_fd is None:
            return
        self._cursor_generation += 1
        pos = self._released
        body = _CURSOR.pack(_CURSOR_MAGIC, self._cursor_generation, pos.segment, pos.offset, pos.index)
        slot = self._cursor_generation % 2
        os.pwrite(self._cursor_fd, body + _CRC.pack(zlib.crc32(body)), slot * _CURSOR_SLOT)
        self._cursor_dirty = True

    # ---------------------------------------------------------------- recovery
    def _recover_active(self) -> int:
        """Scan the active segment, count its records, cut a torn tail. Returns the bytes cut.

        Bad bytes followed by a frame that checks out are corruption inside the
        segment: kept (the reader skips and counts them), one record slot each.
        Bad bytes up to the end are a torn tail: cut.
        """
        active = self._segments[-1]
        with open(active.path, "rb") as f:
            data = f.read()
        pos = good_end = count = 0
        while pos < len(data):
            parsed = _parse_frame(data, pos)
            if isinstance(parsed, tuple):
                pos = good_end = parsed[2]
                count += 1
                continue
            found = data.find(_MAGIC, pos + 1)
            while found >= 0 and not isinstance(_parse_frame(data, found), tuple):
                found = data.find(_MAGIC, found + 1)
            if found < 0:
                break
            count += 1
            pos = found
        torn = len(data) - good_end
        if torn:
            log.warning("spool segment %s: cut a torn tail of %d bytes (records the device side "
                        "never had acknowledged; the local broker redelivers them)",
                        active.path.name, torn)
            os.truncate(active.path, good_end)
            active.size = good_end
        active.count = count
        if active.first == self._released.segment and self._released.offset > active.size:
            self._released = Position(active.first + count, active.first, active.size)
        return torn

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
