"""The collector's durable spool: validated records on disk until the central broker has them.

A record is *accepted* from the device side once :meth:`Spool.commit` has
fsynced it, and *released* (its space reclaimed) once the collector reports,
through :meth:`Spool.acknowledge`, that the batch holding it was acknowledged
upstream. Standard library only; one thread (the collector's worker) calls it.

Layout of the spool directory (``0700``, files ``0600``)::

    lock                      flock'ed while a collector owns the spool; holds the release watermark
    cursor                    two slots, 4 KiB apart: released position + commit point
    00000000000000000000.seg  segments, named by the index of their first record
    00000000000000004096.seg
    ...
    quarantine/               what the spool did not write, moved aside at open (bounded)

Records are numbered by a global *index*. A segment is a sequence of frames,
appended and never rewritten, and every frame carries its record's index::

    magic "FP" (2) | version 2 (1) | flags (1) | length (4, LE) | spooled_at_ms (8, LE) | index (8, LE)
    payload (length bytes)
    crc32 of header + payload (4, LE)

(Version 1 frames, without the index, are still read: their index is their place.)

The commit point
----------------
Only the cursor says how far records were committed, so that damage to a
segment cannot hide what the segment held. :meth:`Spool.commit` writes the
frames (one ``write``), fsyncs the segment, fsyncs the directory if a segment
was started since the last commit, and only then writes the commit point (the
index after the last committed record, its segment and byte offset) into a
cursor slot and ``fdatasync``\\ s it; the collector acknowledges the device
messages after that. Whatever byte a power cut interrupts, the durable commit
point never names a record that is not durable.

Every cursor write goes to the *scratch* slot, the one not holding the last
durable state; its fdatasync makes it the durable one and the other slot the
scratch. A torn write can only ever hit the scratch slot, so the other one
holds the last completed commit. Acknowledgements rewrite the scratch slot
too (a ``pwrite`` without fsync, which survives ``kill -9`` because the page
cache does; the next commit makes it durable). The slots are 4 KiB apart,
never in one sector or page, and the file is preallocated, so the fdatasync
writes one block and no metadata.

With the commit point outside the segments, recovery tells a torn write from
damage:

* bytes past the commit point that do not make frames in sequence, up to the
  end of the file with no frame after them, are a **torn tail** (a write the
  crash interrupted; those records were never acknowledged to the device side,
  and the local broker redelivers them): cut silently, in
  ``RecoveryReport.torn_bytes``. Whole frames in sequence past the commit
  point are kept: the older slot, or a cursor lost altogether, may lag.
* anything missing before the commit point is **lost** and counted: every
  index between the first unreleased record and the commit point is either
  delivered by :meth:`Spool.read` or counted in ``dropped["spool_corrupt"]``,
  once, when the reader passes it. The frame index makes that exact whatever
  the damage: zeroed, truncated, bit-flipped, deleted or swapped segments,
  frames duplicated or out of place (skipped, their bytes in
  ``corrupt_bytes``), several segments at once. The names partition the
  indices: a segment named *F* holds records from *F* up to the next
  segment's name, and a frame outside that range is out of place, so a name
  also bounds what the segments around it lost. Indices past the durable
  commit point are never counted.
* the segment being appended to, when damaged, is sealed as it is and a new
  one started after the last record, so damaged bytes are never appended to.

Segments are deleted only once the cursor and a second copy of the released
position, the *watermark* in the lock file, are both durable past them (two
fdatasyncs per released segment, not per commit). Recovery takes the further
of the two, so neither a damaged or rolled-back cursor (an SD card can hand
back an old version of a block) nor a damaged lock file makes the records of
a deleted segment look lost: a gap before the oldest segment is damage, and
counted. When the whole cursor is lost (zeroed, truncated, deleted) the
segments are sent again from the watermark or the oldest one (duplicates,
which downstream removes by ``(device_id, boot, seq)``) and the commit point
is read from the segments, which is exact while they are whole: only the
cursor *and* the newest segment damaged together can lose committed records
without a count.

Cost: a commit is one write and two fsyncs (the segment, then one cursor
block). The collector's commits already fsynced the cursor whenever
acknowledgements had moved it; docs/BENCHMARKS.md ("Spool commit point") has
the figures.

Quarantine
----------
:meth:`Spool.open` moves every directory entry that is not a segment the
spool wrote into ``quarantine/``, with one warning each, counted in
:attr:`Spool.quarantined_files`: other names; segment names with an index
the spool never writes; directories, symlinks and other non-regular files;
files larger than any segment; unreadable files; segment files whose first
frame that checks out cannot be there (garbage, a segment damaged past
recognition, a copy or a swap under another name: the records the name stands
for are then counted as lost); segment files past the commit point that do
not start where the segment before them ends. A lock or cursor that is not a
regular file is moved aside too and made afresh. The quarantine is bounded:
it keeps the newest 16 entries within an eighth of ``quota_bytes`` (on top of
the quota) and deletes the oldest first, so an entry larger than that bound
is deleted right after its warning.

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
import re
import shutil
import stat
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
_VERSION = 2
_HEADER = struct.Struct("<2sBBIQQ")  # magic, version, flags, length, spooled_at_ms, index
_HEADER_V1 = struct.Struct("<2sBBIQ")  # version 1 had no index; read, never written
_CRC = struct.Struct("<I")
FRAME_OVERHEAD = _HEADER.size + _CRC.size
#: The smallest frame of any version: no record index can grow faster than one per this many bytes.
_MIN_FRAME = _HEADER_V1.size + _CRC.size
#: Largest payload a frame may claim; anything longer is corruption, not a record.
MAX_RECORD_BYTES = 1 << 20
#: The largest record index the spool writes (segment names, frames and the cursor).
MAX_INDEX = (1 << 63) - 1

_CURSOR_MAGIC = b"FPC2"
# magic, generation, released (index, segment, offset), committed (index, segment, offset)
_CURSOR = struct.Struct("<4s7Q")
_CURSOR_SLOT = 4096
_CURSOR_V1_MAGIC = b"FPC1"
_CURSOR_V1 = struct.Struct("<4sQQQQ")  # magic, generation, segment, offset, index
_CURSOR_V1_SLOT = 64
_WATERMARK_MAGIC = b"FPW1"
_WATERMARK = struct.Struct("<4sQQQ")  # magic, released index, segment, offset (in the lock file)

_LOCK = "lock"
_CURSOR_FILE = "cursor"
_SEGMENT_SUFFIX = ".seg"
_SEGMENT_NAME = re.compile(r"[0-9]{20}\.seg")  # ASCII digits only (str.isdigit takes any script's)
_QUARANTINE = "quarantine"
_QUARANTINE_ASIDE = ".quarantine.aside"  # where an impostor holding that name waits to be filed
_QUARANTINE_ENTRIES = 16
_QUARANTINE_SEQ = re.compile(r"([0-9]+)-")
_NOTHING_OWN = ("a segment file without one frame of its own (garbage, or damaged past recognition: "
                "the records it held are counted as lost)")
_MISNAMED = ("a segment file whose first frame belongs elsewhere (misnamed, or swapped with another: "
             "the records its name stands for are counted as lost)")
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


class _Frame(NamedTuple):
    at_ms: int
    data: bytes
    index: int | None  # type: ignore[assignment]  # None: a version-1 frame, its index is its place


@dataclass
class _Segment:
    first: int  # index of its first record (its name)
    path: Path
    size: int  # bytes on disk


@dataclass
class RecoveryReport:
    """What :meth:`Spool.open` found on disk."""

    segments: int = 0
    backlog_records: int = 0
    backlog_bytes: int = 0
    torn_bytes: int = 0  # cut past the commit point (never acknowledged to devices)
    deleted_segments: int = 0  # fully released segments a crash left behind
    cursor_fallback: bool = False  # the newest cursor slot was torn; the older one was used
    cursor_lost: bool = False  # no cursor slot checked out: all is resent, the commit point read from segments
    quarantined_files: int = 0  # directory entries moved aside (see the module docstring)


@dataclass
class _Scan:
    """One segment read through at open: the frames in sequence from its start, and what follows them."""

    run_next: int  # the index after the frames in sequence
    run_end: int = 0  # where they end
    commit_at: int | None = None  # the offset at which they passed the commit index, if they did
    valid_after: bool = False  # a frame checks out after them: the bytes there are damage, not a torn write
    next_index: int = 0  # the index after the highest plausible frame in the file
    own: bool = False  # a frame with an index at or after the file's name checks out
    misnamed: bool = False  # the first frame that checks out cannot be where it is (from another file)


def encode_frame(data: bytes, at_ms: int, index: int = 0) -> bytes:
    """One frame: header, payload, CRC (exposed for tests that forge corruption)."""
    header = _HEADER.pack(_MAGIC, _VERSION, 0, len(data), at_ms, index)
    return header + data + _CRC.pack(zlib.crc32(data, zlib.crc32(header)))


def _parse_frame(buf: bytes, pos: int) -> tuple[_Frame, int] | None | Literal[False]:
    """Parse a frame at ``buf[pos:]``: (frame, end), None if ``buf`` ends too soon, False if corrupt."""
    if len(buf) - pos < _HEADER_V1.size:
        return None
    if buf[pos : pos + 2] != _MAGIC:
        return False
    index: int | None
    if buf[pos + 2] == _VERSION:
        if len(buf) - pos < _HEADER.size:
            return None
        _magic, _version, _flags, length, at_ms, index = _HEADER.unpack_from(buf, pos)
        if index > MAX_INDEX:
            return False
        body = pos + _HEADER.size
    elif buf[pos + 2] == 1:
        _magic, _version, _flags, length, at_ms = _HEADER_V1.unpack_from(buf, pos)
        index = None
        body = pos + _HEADER_V1.size
    else:
        return False
    if length > MAX_RECORD_BYTES:
        return False
    body_end = body + length
    end = body_end + _CRC.size
    if len(buf) < end:
        return None
    (crc,) = _CRC.unpack_from(buf, body_end)
    if zlib.crc32(buf[body:body_end], zlib.crc32(buf[pos:body])) != crc:
        return False
    return _Frame(at_ms, buf[body:body_end], index), end


def _plausible(segment: _Segment, offset: int, index: int | None) -> bool:
    """Whether a frame of record ``index`` can start at ``offset`` in ``segment`` (each frame takes bytes)."""
    return index is None or segment.first <= index <= segment.first + offset // _MIN_FRAME


def _open_nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


class _SegmentReader:
    """Sequential, buffered reading of one segment from a byte offset, resynchronising past corruption."""

    def __init__(self, segment: _Segment, offset: int) -> None:
        self.segment = segment
        self._file = open(segment.path, "rb", opener=_open_nofollow)  # closed by close()
        self._file.seek(offset)
        self._base = offset  # file offset of self._buf[0]
        self._buf = b""
        self._pos = 0
        self._start = offset  # where the frame last returned began
        #: The name of the segment after this one when the reader was made: no record here is at or after it.
        self.bound: int | None = None

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

    def push_back(self) -> None:
        """Un-read the frame just returned (it did not fit the caller's byte budget)."""
        self._pos = self._start - self._base

    def peek(self, limit: int) -> int | None:
        """The spooled_at_ms of the next frame if it checks out, else None."""
        parsed = _parse_frame(self._buf, self._pos)
        while parsed is None and self._fill(limit):
            parsed = _parse_frame(self._buf, self._pos)
        return parsed[0].at_ms if parsed else None

    def next(self, limit: int) -> _Frame | int | None:
        """The next frame below ``limit``; the number of bytes skipped after corruption; None at the end."""
        while True:
            parsed = _parse_frame(self._buf, self._pos)
            if parsed is None:
                if self._fill(limit):
                    continue
                if self._pos >= len(self._buf):
                    return None
                # Bytes before the limit that do not make a whole frame (a length
                # field that was hit, say): corruption, look for the next frame.
                return self._resync(limit)
            if parsed is False:
                return self._resync(limit)
            frame, end = parsed
            self._start = self.offset
            self._pos = end
            return frame

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


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device")):
        if test(mode):
            return name
    return "file"


def _entry_bytes(path: Path) -> int:
    """Bytes an entry holds on disk, a directory's whole tree included (links not followed)."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size
    total = info.st_size
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


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
    #: records dropped by reason: spool_quota, spool_ttl, spool_corrupt (committed records lost)
    dropped: dict[str, int] = field(default_factory=dict)
    corrupt_bytes: int = 0
    commits: int = 0
    #: directory entries moved aside into quarantine/ since open (see the module docstring)
    quarantined_files: int = 0

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
        self._cursor_dirty: bool = False  # the scratch slot was written and not fdatasync'ed
        self._scratch_slot = 0
        self._released = Position(0, 0, 0)
        self._write_fd: int | None = None
        self._next_index = 0
        self._committed = Position(0, 0, 0)  # end of the last fsynced frame
        # Indices recovery kept past the durable commit point: never counted when missing.
        self._uncounted = (0, 0)
        self._written_end = 0  # byte size of the active segment, including unsynced frames
        self._unsynced_records = 0
        self._dir_dirty = False
        self._disk_bytes = 0
        self._read_at = Position(0, 0, 0)  # next record the reader returns
        self._accounted = Position(0, 0, 0)  # furthest the reader ever was: drops before it are counted
        self._reader: _SegmentReader | None = None
        self._misplaced_logged: set[int] = set()  # segments with frames out of place (logged once each)
        self._write_buffer: list[bytes] = []
        self._write_buffered = 0
        self._tail: deque[SpoolRecord] = deque()
        self._tail_bytes = 0
        self._opened = False

    # ---------------------------------------------------------------- lifecycle
    def open(self) -> RecoveryReport:
        """Lock the directory, quarantine strays, find the commit point, cut a torn tail, drop released segments.

        Raises :class:`SpoolLocked` if another process holds the spool and
        OSError when the directory cannot be created or written.
        """
        report = RecoveryReport()
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        self._lock_fd = self._open_own_file(_LOCK)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(self._lock_fd)
            self._lock_fd = None
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SpoolLocked(f"spool {self.directory} is in use by another collector") from None
            raise
        try:
            self._recover(report)
        except BaseException:
            self._close_files()
            raise
        self._opened = True
        report.segments = len(self._segments)
        report.backlog_records = self.backlog_records
        report.backlog_bytes = self.disk_bytes
        report.quarantined_files = self.quarantined_files
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
        index = self._next_index
        frame = encode_frame(data, at, index)
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
        if self._written_end >= self.segment_bytes and index > active.first:
            self._rotate()
            active = self._segments[-1]
        self._write_buffer.append(frame)
        self._write_buffered += size
        if self._write_buffered >= _WRITE_BUFFER_BYTES:
            self._flush()
        self._written_end += size
        active.size = self._written_end
        self._disk_bytes += size
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
        """Make every appended record durable, then the commit point naming them; return how many."""
        if self._write_fd is None:
            return 0
        self._flush()
        durable = self._unsynced_records
        if durable and self.fsync:
            os.fsync(self._write_fd)
        if self._dir_dirty and self.fsync:
            self._fsync_dir()  # a new segment's name is durable before the commit point names it
        self._dir_dirty = False
        self._unsynced_records = 0
        if durable:
            active = self._segments[-1]
            self._committed = Position(self._next_index, active.first, self._written_end)
            self.commits += 1
        if durable or self._cursor_dirty:
            self._persist_commit_point()
        return durable

    def _persist_commit_point(self) -> None:
        """The cursor with the commit point, durable (the second fsync of a commit)."""
        self._write_cursor(durable=True)

    def _rotate(self) -> None:
        assert self._write_fd is not None
        self._flush()
        if self.fsync:
            os.fsync(self._write_fd)  # a sealed segment is complete on disk
        os.close(self._write_fd)
        segment = self._new_segment_file(self._next_index)
        self._segments.append(segment)
        self._write_fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        self._written_end = 0

    def _new_segment_file(self, first: int) -> _Segment:
        path = self.directory / f"{first:020d}{_SEGMENT_SUFFIX}"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:  # put there by someone else since open: not ours to overwrite
            self._move_aside(path.name, "an entry where the spool was starting a segment")
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
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
            self._move(start)
        if self._released < start:
            self._released = start
        self._release_files([head])

    def _release_files(self, gone: list[_Segment]) -> None:
        """Write the cursor; delete released segments only once it and the watermark are durable past them."""
        if not gone:
            self._write_cursor()
            return
        # (so that neither a damaged or rolled-back cursor nor a damaged lock file can make
        # the records of a deleted segment look lost)
        self._write_cursor(durable=True)
        self._write_watermark()
        for segment in gone:
            self._unlink(segment)

    def _unlink(self, segment: _Segment) -> None:
        try:
            segment.path.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:  # (replaced by a directory, say: moved aside at the next open)
            log.warning("spool segment %s released but not deleted: %s", segment.path.name, exc)
        self._disk_bytes -= segment.size

    def _drop(self, reason: str, n: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    # ------------------------------------------------------------------ reading
    def read(self, max_records: int, max_bytes: int | None = None) -> tuple[list[SpoolRecord], Position]:
        """Up to ``max_records`` committed records after the last read, oldest first.

        Returns the records and the position after the last frame looked at,
        which also covers records skipped as expired or lost: acknowledging
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
                if self._take(record, ttl_ms, now):
                    out.append(record)
                    size += len(record.data)
                continue
            reader = self._reader
            if reader is None or reader.segment.first != self._read_at.segment or (
                    reader.offset != self._read_at.offset):
                segment = self._segment_at(self._read_at)
                try:
                    reader = self._reader_at(segment, self._read_at)
                except OSError as exc:
                    self._unreadable(segment, exc)
                    continue
            segment = reader.segment
            start = reader.offset
            try:
                item = reader.next(self._limit(segment))
            except OSError as exc:
                self._unreadable(segment, exc)
                continue
            if item is None:
                nxt = self._segment_after(segment)
                if segment.first >= self._committed.segment or nxt is None:
                    # The reader stands at the commit point short of its index: the rest is lost.
                    self._lose(self._committed.index)
                    self._move(self._committed)
                    break
                self._lose(nxt.first)  # a segment holds no record before its name
                self._move(Position(max(self._read_at.index, nxt.first), nxt.first, 0))
                continue
            if isinstance(item, int):
                if self._move(Position(self._read_at.index, segment.first, reader.offset)):
                    self.corrupt_bytes += item
                    log.error("spool segment %s: %d corrupt bytes at offset %d skipped",
                              segment.path.name, item, start)
                continue
            index = self._read_at.index if item.index is None else item.index
            bound = self._committed.index if reader.bound is None else min(reader.bound, self._committed.index)
            if not self._read_at.index <= index < bound:
                # A frame that checks out but is no record of this segment's from here on (a
                # copy, or from a swapped file): skipped; what is missing is counted where it belongs.
                if self._move(Position(self._read_at.index, segment.first, reader.offset)):
                    self.corrupt_bytes += reader.offset - start
                    if segment.first not in self._misplaced_logged:
                        self._misplaced_logged.add(segment.first)
                        log.error("spool segment %s: a frame of record %d at offset %d is out of place "
                                  "(expected %d to %d); skipped, and any more in this segment", segment.path.name,
                                  index, start, self._read_at.index, bound - 1)
                continue
            if max_bytes is not None and out and size + len(item.data) > max_bytes:
                reader.push_back()  # for the next read
                break
            if index != self._read_at.index:
                self._lose(index)
            record = SpoolRecord(index, item.at_ms, item.data, Position(index + 1, segment.first, reader.offset))
            if self._take(record, ttl_ms, now):
                out.append(record)
                size += len(item.data)
        return out, self._read_at

    def _take(self, record: SpoolRecord, ttl_ms: int, now: int) -> bool:
        """Move past ``record``; False if it expired (counted once, even if read again after a rewind)."""
        fresh = self._move(record.end)
        if ttl_ms and record.at_ms + ttl_ms < now:
            if fresh:
                self._drop("spool_ttl", 1)
            return False
        return True

    def _move(self, to: Position) -> bool:
        """Set the read position; True if the reader was never this far (what it passed is news)."""
        self._read_at = to
        if to > self._accounted:
            self._accounted = to
            return True
        return False

    def _lose(self, upto: int) -> None:
        """Count the committed records from the read position up to ``upto`` as lost, once each."""
        low = max(self._read_at.index, self._accounted.index)
        if upto <= low:
            return
        uncounted_low, uncounted_high = self._uncounted
        lost = upto - low - max(0, min(upto, uncounted_high) - max(low, uncounted_low))
        if lost > 0:
            self._drop("spool_corrupt", lost)
            log.error("spool: %d committed records before index %d are lost to damage on disk "
                      "(counted in spool_corrupt)", lost, upto)

    def _unreadable(self, segment: _Segment, exc: OSError) -> None:
        """A segment that cannot be read (deleted, replaced, an I/O error): count its records, go on."""
        log.error("spool segment %s cannot be read (%s): its unread records are counted as lost",
                  segment.path.name, exc)
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        nxt = self._segment_after(segment)
        if segment is self._segments[-1] or segment.first >= self._committed.segment or nxt is None:
            self._lose(self._committed.index)
            self._move(self._committed)
            return
        self._segments.remove(segment)
        self._disk_bytes -= segment.size
        self._lose(nxt.first)
        self._move(Position(max(self._read_at.index, nxt.first), nxt.first, 0))

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
        segment = self._segment_at(self._read_at)
        try:
            at_ms = self._reader_at(segment, self._read_at).peek(self._limit(segment))
        except OSError:
            return 0
        return 0 if at_ms is None else at_ms

    def _limit(self, segment: _Segment) -> int:
        """How far a segment may be read: to the commit point in the committed one, nothing after it."""
        committed = self._committed
        if segment.first == committed.segment:
            return committed.offset
        return 0 if segment.first > committed.segment else segment.size

    def rewind(self) -> None:
        """Read again from the first unreleased record (after the upstream session was lost)."""
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._read_at = self._released

    def _segment_after(self, segment: _Segment) -> _Segment | None:
        return next((s for s in self._segments if s.first > segment.first), None)

    def _segment_at(self, at: Position) -> _Segment:
        """The segment holding ``at``, or the first after it when that one is gone."""
        return next((s for s in self._segments if s.first >= at.segment), self._segments[-1])

    def _reader_at(self, segment: _Segment, at: Position) -> _SegmentReader:
        offset = at.offset if segment.first == at.segment else 0
        reader = self._reader
        if reader is not None and reader.segment is segment and reader.offset == offset:
            return reader
        if reader is not None:
            reader.close()
            self._reader = None
        self._reader = _SegmentReader(segment, offset)
        nxt = self._segment_after(segment)
        self._reader.bound = None if nxt is None else nxt.first
        return self._reader

    # ---------------------------------------------------------------- releasing
    def acknowledge(self, upto: Position) -> None:
        """Everything before ``upto`` reached the central broker: release it and reclaim space."""
        if upto <= self._released:
            return
        self._released = upto
        gone = []
        while len(self._segments) > 1 and self._segments[1].first <= upto.index:
            head = self._segments.pop(0)
            if self._reader is not None and self._reader.segment is head:
                self._reader.close()
                self._reader = None
            if self._released.segment <= head.first:  # released up to its very end
                self._released = Position(self._released.index, self._segments[0].first, 0)
            gone.append(head)
        self._release_files(gone)

    # ------------------------------------------------------------------ cursor
    def _write_cursor(self, durable: bool = False) -> None:
        """Write the released position and the commit point to the scratch slot; ``durable``: fdatasync it."""
        if self._cursor_fd is None:
            return
        self._cursor_generation += 1
        r, c = self._released, self._committed
        body = _CURSOR.pack(_CURSOR_MAGIC, self._cursor_generation, r.index, r.segment, r.offset,
                            c.index, c.segment, c.offset)
        os.pwrite(self._cursor_fd, body + _CRC.pack(zlib.crc32(body)), self._scratch_slot * _CURSOR_SLOT)
        self._cursor_dirty = True
        if durable:
            if self.fsync:
                os.fdatasync(self._cursor_fd)
            self._cursor_dirty = False
            self._scratch_slot ^= 1  # that slot now holds the durable state; write the other next

    def _read_cursor(self, report: RecoveryReport) -> tuple[Position, Position | None] | None:
        """(released, commit point) from the newest slot that checks out; None when no slot does.

        A version-1 cursor has no commit point (None in its place).
        """
        assert self._cursor_fd is not None
        raw = os.pread(self._cursor_fd, 2 * _CURSOR_SLOT, 0)
        slots: list[tuple[int, int, Position, Position]] = []
        for n in range(2):
            chunk = raw[n * _CURSOR_SLOT : n * _CURSOR_SLOT + _CURSOR.size + _CRC.size]
            if len(chunk) < _CURSOR.size + _CRC.size:
                continue
            body, (crc,) = chunk[: _CURSOR.size], _CRC.unpack_from(chunk, _CURSOR.size)
            magic, generation, ri, rs, ro, ci, cs, co = _CURSOR.unpack(body)
            if magic != _CURSOR_MAGIC or zlib.crc32(body) != crc:
                continue
            if max(ri, rs, ci, cs) > MAX_INDEX or ri < rs or ci < cs:
                continue  # (a CRC that checks out on values the spool never writes)
            slots.append((generation, n, Position(ri, rs, ro), Position(ci, cs, co)))
        if slots:
            generation, slot, released, committed = max(slots)
            self._cursor_generation = generation
            self._scratch_slot = 1 - slot
            other = raw[(1 - slot) * _CURSOR_SLOT : (2 - slot) * _CURSOR_SLOT]
            report.cursor_fallback = len(slots) == 1 and any(other)
            return released, committed
        legacy = []
        for n in range(2):
            chunk = raw[n * _CURSOR_V1_SLOT : n * _CURSOR_V1_SLOT + _CURSOR_V1.size + _CRC.size]
            if len(chunk) < _CURSOR_V1.size + _CRC.size:
                continue
            body, (crc,) = chunk[: _CURSOR_V1.size], _CRC.unpack_from(chunk, _CURSOR_V1.size)
            magic, generation, segment, offset, index = _CURSOR_V1.unpack(body)
            if magic == _CURSOR_V1_MAGIC and zlib.crc32(body) == crc and max(segment, index) <= MAX_INDEX:
                legacy.append((generation, Position(index, segment, offset)))
        if legacy:
            generation, released = max(legacy)
            self._cursor_generation = generation
            return released, None
        report.cursor_lost = any(raw)
        return None

    def _write_watermark(self) -> None:
        """The released position, durable, in the lock file: segments before it were deleted on purpose."""
        if self._lock_fd is None:
            return
        r = self._released
        body = _WATERMARK.pack(_WATERMARK_MAGIC, r.index, r.segment, r.offset)
        os.pwrite(self._lock_fd, body + _CRC.pack(zlib.crc32(body)), 0)
        if self.fsync:
            os.fdatasync(self._lock_fd)

    def _read_watermark(self) -> Position | None:
        assert self._lock_fd is not None
        chunk = os.pread(self._lock_fd, _WATERMARK.size + _CRC.size, 0)
        if len(chunk) < _WATERMARK.size + _CRC.size:
            return None
        body, (crc,) = chunk[: _WATERMARK.size], _CRC.unpack_from(chunk, _WATERMARK.size)
        magic, index, segment, offset = _WATERMARK.unpack(body)
        if magic != _WATERMARK_MAGIC or zlib.crc32(body) != crc or max(index, segment) > MAX_INDEX:
            return None
        return Position(index, segment, offset)

    # ---------------------------------------------------------------- recovery
    def _recover(self, report: RecoveryReport) -> None:
        self._cursor_fd = self._open_own_file(_CURSOR_FILE)
        cursor = self._read_cursor(report)
        watermark = self._read_watermark()
        if os.fstat(self._cursor_fd).st_size < 2 * _CURSOR_SLOT:
            os.ftruncate(self._cursor_fd, 2 * _CURSOR_SLOT)  # so a slot's fdatasync never writes metadata
        segments = self._list_segments()
        released, committed = cursor if cursor is not None else (None, None)
        if segments and cursor is None:
            report.cursor_lost = True
        if watermark is not None and (released is None or released < watermark):
            released = watermark  # the cursor lags what was deleted (damaged, or rolled back)
        leftovers = []
        if released is not None:
            if committed is not None and committed < released:
                committed = released  # drop_oldest may release past the commit point
            while segments and segments[0].first < released.segment:
                leftovers.append(segments.pop(0))  # released before a crash
        if committed is None:
            # No commit point on disk: the newest segment holding records of its own stands in.
            split = len(segments)
            while split and not (segments[split - 1].size and self._check_own(segments[split - 1], keep=True)):
                split -= 1
            if split:
                start = segments[split - 1].first
            else:
                start = released.index if released is not None else 0
            committed = Position(start, start, 0)
        sealed = [s for s in segments if s.first < committed.segment and self._check_own(s)]
        tail = [s for s in segments if s.first >= committed.segment]
        kept, active, next_index = self._recover_tail(tail, committed, report)
        sealed += kept
        if active is None:
            if sealed:
                next_index = max(next_index, sealed[-1].first + 1)
            active = self._new_segment_file(next_index)
        self._segments = sealed + [active]
        self._next_index = next_index
        self._uncounted = (committed.index, next_index)
        self._committed = Position(next_index, active.first, active.size)
        if released is None:
            head = self._segments[0]
            released = Position(head.first, head.first, 0)
        elif released.segment not in {s.first for s in self._segments}:
            # Its segment is gone (damage): start at the next one, from the same index,
            # so that the reader counts what is missing.
            released = Position(released.index, self._segment_at(released).first, 0)
        self._released = self._read_at = self._accounted = released
        self._written_end = active.size
        self._disk_bytes = sum(s.size for s in self._segments)
        self._write_fd = os.open(active.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        # What recovery kept past the old commit point is committed from now on:
        # durable before the cursor says so, in both slots before anything is deleted.
        if self.fsync:
            for segment in tail:
                if segment in self._segments:
                    self._fsync_file(segment.path)
            self._fsync_dir()
        self._dir_dirty = False
        self._write_cursor(durable=True)
        self._write_cursor(durable=True)
        self._write_watermark()
        for segment in leftovers:
            if self._check_own(segment):
                segment.path.unlink(missing_ok=True)
                report.deleted_segments += 1

    def _recover_tail(self, tail: list[_Segment], commit: Position,
                      report: RecoveryReport) -> tuple[list[_Segment], _Segment | None, int]:
        """The committed segment and what follows it: (sealed, the segment to append to or None, next index).

        The committed segment must hold exactly the records up to the commit
        point; frames in sequence after it (and segment files continuing them)
        are kept; bad bytes up to the end after them are a torn tail, cut.
        Anything else is damage: the file is sealed as it is.
        """
        kept: list[_Segment] = []
        active: _Segment | None = None
        expected = commit.index
        # How far past `expected` the next file may start: 0 after a whole segment (it must
        # continue exactly), what a damaged one could have held after one, nothing without any.
        slack: int | None = 0 if tail and tail[0].first == commit.segment else None
        for segment in tail:
            committed_here = segment.first == commit.segment
            if not committed_here and (slack is None or not expected <= segment.first <= expected + slack):
                self._move_aside(segment.path.name, "a segment after the commit point, not where the "
                                 "segment before it ends")
                continue
            try:
                scan = self._scan(segment, commit.index if committed_here else segment.first)
            except OSError as exc:
                self._move_aside(segment.path.name, f"unreadable ({exc.strerror or exc})")
                continue
            if scan.misnamed:
                self._move_aside(segment.path.name, _MISNAMED)
                continue
            if not scan.own and not (segment.size == 0 and segment.first == expected):
                self._move_aside(segment.path.name, _NOTHING_OWN)
                continue
            if active is not None:
                kept.append(active)
                active = None
            whole = scan.commit_at == (commit.offset if committed_here else 0) and not scan.valid_after
            if whole and segment.first <= expected:
                if segment.size > scan.run_end:
                    torn = segment.size - scan.run_end
                    log.warning("spool segment %s: cut a torn tail of %d bytes past the commit point (records "
                                "the device side never had acknowledged; the local broker redelivers them)",
                                segment.path.name, torn)
                    os.truncate(segment.path, scan.run_end)
                    segment.size = scan.run_end
                    report.torn_bytes += torn
                active = segment
                expected = scan.run_next
                slack = 0
                continue
            if not whole and scan.commit_at is None:
                log.error("spool segment %s is damaged before its commit point: sealed as it is (the reader "
                          "counts the committed records it lost in spool_corrupt); appending goes on in a new "
                          "segment", segment.path.name)
            elif not whole:
                log.warning("spool segment %s has frames after a gap past its commit point (a write a crash "
                            "interrupted, or damage): sealed as it is, what is missing there not counted",
                            segment.path.name)
            kept.append(segment)
            expected = max(expected, scan.next_index)
            slack = segment.size // _MIN_FRAME
        return kept, active, expected

    def _scan(self, segment: _Segment, commit_index: int) -> _Scan:
        """Read a whole segment: how far its frames run in sequence, and what comes after them."""
        scan = _Scan(run_next=segment.first, next_index=segment.first)
        if commit_index == segment.first:
            scan.commit_at = 0
        reader = _SegmentReader(segment, 0)
        try:
            in_run = True
            while True:
                start = reader.offset
                item = reader.next(segment.size)
                if item is None:
                    break
                if isinstance(item, int):
                    in_run = False
                    continue
                if not scan.own and not scan.valid_after and not _plausible(segment, start, item.index):
                    scan.misnamed = True  # the first frame that checks out
                    break
                index = scan.run_next if item.index is None and in_run else item.index
                if index is None:  # a version-1 frame after damage: its place is unknown
                    scan.own = scan.valid_after = True
                    continue
                scan.own = scan.own or index >= segment.first
                if in_run and index == scan.run_next:
                    scan.run_next += 1
                    scan.run_end = reader.offset
                    if scan.run_next == commit_index:
                        scan.commit_at = scan.run_end
                    continue
                in_run = False
                scan.valid_after = True
                if _plausible(segment, start, index):
                    scan.next_index = max(scan.next_index, index + 1)
        finally:
            reader.close()
        scan.next_index = max(scan.next_index, scan.run_next)
        return scan

    def _check_own(self, segment: _Segment, keep: bool = False) -> bool:
        """Whether a segment file is one the spool wrote: its first frame that checks out fits its name.

        One that is not (garbage, a damaged-past-recognition or misnamed file,
        or one that cannot be read) is moved aside, unless ``keep``.
        """
        why = _NOTHING_OWN
        try:
            reader = _SegmentReader(segment, 0)
            try:
                while True:
                    start = reader.offset
                    item = reader.next(segment.size)
                    if item is None:
                        break
                    if isinstance(item, _Frame):
                        if _plausible(segment, start, item.index):
                            return True
                        why = _MISNAMED
                        break
            finally:
                reader.close()
        except OSError as exc:
            why = f"unreadable ({exc.strerror or exc})"
        if not keep:
            self._move_aside(segment.path.name, why)
        return False

    def _list_segments(self) -> list[_Segment]:
        """The segment files by index; every entry but these, the lock, the cursor and the quarantine moved aside."""
        largest = max(MAX_SEGMENT_BYTES, self.segment_bytes) + FRAME_OVERHEAD + MAX_RECORD_BYTES
        with os.scandir(self.directory) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        found = []
        for entry in entries:
            name = entry.name
            if name in (_LOCK, _CURSOR_FILE):
                continue  # opened (and checked) already
            if name == _QUARANTINE:
                try:
                    self._quarantine_dir()  # files an impostor holding the name
                except OSError as exc:
                    log.warning("spool %s: cannot make the quarantine directory: %s", self.directory, exc)
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone meanwhile
            why = None
            if not _SEGMENT_NAME.fullmatch(name):
                why = f"a {_kind(info.st_mode)} with a name the spool never writes"
            elif int(name[:20]) > MAX_INDEX:
                why = "a segment index beyond any the spool writes"
            elif not stat.S_ISREG(info.st_mode):
                why = f"a {_kind(info.st_mode)} named like a segment"
            elif info.st_size > largest:
                why = f"{info.st_size} bytes, larger than any segment the spool writes"
            if why is not None:
                self._move_aside(name, why)
                continue
            found.append(_Segment(int(name[:20]), self.directory / name, info.st_size))
        return found

    def _open_own_file(self, name: str) -> int:
        """Open (or make) the lock or the cursor; something else holding its name is moved aside first."""
        path = self.directory / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISREG(mode):
                self._move_aside(name, f"a {_kind(mode)}, not the spool's {name} file")
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)

    # -------------------------------------------------------------- quarantine
    def _move_aside(self, name: str, why: str) -> None:
        """Move a directory entry the spool did not write into quarantine/ (one warning, counted)."""
        self.quarantined_files += 1
        try:
            quarantine = self._quarantine_dir()
            seq = 1 + max((self._quarantine_seq(e) for e in os.listdir(quarantine)), default=0)
            target = quarantine / os.fsdecode(b"%06d-" % seq + os.fsencode(name)[:200])
            os.rename(self.directory / name, target)
        except OSError as exc:
            log.warning("spool %s: %r is %s; it cannot be moved aside (%s) and is ignored",
                        self.directory, name, why, exc)
            return
        log.warning("spool %s: %r is %s: moved aside to %s", self.directory, name, why, target)
        self._prune_quarantine(quarantine)

    def _quarantine_dir(self) -> Path:
        path = self.directory / _QUARANTINE
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            os.mkdir(path, 0o700)
            return path
        if not stat.S_ISDIR(mode):
            os.rename(path, self.directory / _QUARANTINE_ASIDE)
            os.mkdir(path, 0o700)
            self._move_aside(_QUARANTINE_ASIDE, f"a {_kind(mode)} where the quarantine directory goes")
        return path

    @staticmethod
    def _quarantine_seq(name: str) -> int:
        match = _QUARANTINE_SEQ.match(name)
        return int(match.group(1)) if match else 0

    def _prune_quarantine(self, quarantine: Path) -> None:
        """Keep the newest entries within the bounds (the module docstring says which)."""
        entries = []
        for name in os.listdir(quarantine):
            try:
                entries.append((self._quarantine_seq(name), name, _entry_bytes(quarantine / name)))
            except OSError:
                continue
        entries.sort()
        total = sum(size for _, _, size in entries)
        bound = self.quota_bytes // 8
        while entries and (len(entries) > _QUARANTINE_ENTRIES or total > bound):
            _, name, size = entries.pop(0)
            path = quarantine / name
            try:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError as exc:
                log.warning("spool %s: cannot delete %s from the quarantine: %s", self.directory, path, exc)
            else:
                log.warning("spool %s: deleted %s (%d bytes) from the quarantine, which keeps the newest "
                            "%d entries within %d bytes", self.directory, name, size, _QUARANTINE_ENTRIES, bound)
            total -= size

    # -------------------------------------------------------------------- sync
    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _fsync_file(path: Path) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
