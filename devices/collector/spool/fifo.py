"""The Spool: a crash-safe, bounded FIFO of records on disk, and the commit point that makes it exact.

A record is *accepted* from the device side once :meth:`Spool.commit` has
fsynced it, and *released* (its space reclaimed) once the collector reports,
through :meth:`Spool.acknowledge`, that the batch holding it was acknowledged
upstream. One thread (the collector's worker) calls it.

The commit point
----------------
Only the cursor (:mod:`.cursor`) says how far records were committed, so
that damage to a segment cannot hide what the segment held.
:meth:`Spool.commit` writes the frames (one ``write``), fsyncs the segment,
fsyncs the directory if a segment was started since the last commit, and
only then writes the commit point (the index after the last committed
record, its segment and byte offset) into a cursor slot and
``fdatasync``\\ s it; the collector acknowledges the device messages after
that. Whatever byte a power cut interrupts, the durable commit point never
names a record that is not durable. Acknowledgements rewrite the scratch
slot too (a ``pwrite`` without fsync, which survives ``kill -9`` because the
page cache does; the next commit makes it durable).

Every index between the first unreleased record and the commit point is
either delivered by :meth:`Spool.read` or counted in
``dropped["spool_corrupt"]``, once, when the reader passes it, whatever the
damage (zeroed, truncated, bit-flipped, deleted or swapped segments, frames
duplicated or out of place, skipped with their bytes in ``corrupt_bytes``):
the frame index makes that exact, and the names partition the indices (a
segment named *F* holds records from *F* up to the next segment's name, so a
name also bounds what the segments around it lost). Indices past the durable
commit point are never counted. What :meth:`Spool.open` keeps, cuts and
seals after a crash: :mod:`.recovery`.

Segments are deleted only once the cursor and a second copy of the released
position, the *watermark* in the lock file, are both durable past them (two
fdatasyncs per released segment, not per commit), so that a gap before the
oldest segment is always damage, and counted.

Cost: a commit is one write and two fsyncs (the segment, then one cursor
block). The collector's commits already fsynced the cursor whenever
acknowledgements had moved it; docs/BENCHMARKS.md ("Spool commit point") has
the figures.

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fleetpulse.clock import wall_clock_ms

from .cursor import CURSOR_SLOT_BYTES, pack_cursor, pack_watermark
from .quarantine import Quarantine
from .recovery import CURSOR_FILE, LOCK, Recovery, RecoveryReport
from .segments import (
    MAX_SEGMENT_BYTES,
    MIN_SEGMENT_BYTES,
    Position,
    RecentRecords,
    Segment,
    SegmentReader,
    SpoolRecord,
    create_segment,
    encode_frame,
    fsync_dir,
    fsync_file,
)

log = logging.getLogger(__name__)

ON_FULL_POLICIES = ("drop_oldest", "reject_new")
#: Appended frames are written in one go at commit, or once this many bytes wait.
_WRITE_BUFFER_BYTES = 1 << 20
#: Payload bytes of the records appended lately that stay in memory for the reader.
_RECENT_BYTES = 8 << 20
#: The smallest quota: eight minimal segments.
MIN_QUOTA_BYTES = 8 * MIN_SEGMENT_BYTES


class SpoolLocked(RuntimeError):
    """Another process holds the spool (two collectors must never share one)."""


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

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        if self.on_full not in ON_FULL_POLICIES:
            raise ValueError(f"on_full must be one of {ON_FULL_POLICIES}, not {self.on_full!r}")
        if self.quota_bytes < MIN_QUOTA_BYTES:
            raise ValueError(f"quota_bytes must be at least {MIN_QUOTA_BYTES}")
        if not self.segment_bytes:
            self.segment_bytes = min(max(self.quota_bytes // 8, MIN_SEGMENT_BYTES), MAX_SEGMENT_BYTES)
        self._quarantine = Quarantine(self.directory, bound_bytes=self.quota_bytes // 8)
        self._recovery = Recovery(self.directory, self.segment_bytes, self._quarantine)
        self._segments: list[Segment] = []
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
        self._reader: SegmentReader | None = None
        self._misplaced_logged: set[int] = set()  # segments with frames out of place (logged once each)
        self._write_buffer: list[bytes] = []
        self._write_buffered = 0
        self._recent = RecentRecords(_RECENT_BYTES)
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
        self._lock_fd = self._recovery.open_own_file(LOCK)
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
        self._close_reader()
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

    @property
    def quarantined_files(self) -> int:
        """Directory entries moved aside into quarantine/ since open (see :mod:`.quarantine`)."""
        return self._quarantine.moved

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
        self._recent.add(SpoolRecord(index, at, data, Position(index + 1, active.first, self._written_end)))
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
            fsync_dir(self.directory)  # a new segment's name is durable before the commit point names it
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
        segment = create_segment(self.directory, self._next_index, self._quarantine)
        self._dir_dirty = True  # (fsynced at the next commit, before the commit point names it)
        self._segments.append(segment)
        self._write_fd = os.open(segment.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        self._written_end = 0

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
        self._close_reader(head)
        start = Position(nxt.first, nxt.first, 0)
        if self._read_at < start:
            self._move(start)
        if self._released < start:
            self._released = start
        self._release_files([head])

    def _release_files(self, gone: list[Segment]) -> None:
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

    def _unlink(self, segment: Segment) -> None:
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
        recent = self._recent
        while len(out) < max_records and self._read_at.index < self._committed.index:
            record = recent.at(self._read_at.index)
            if record is not None:
                if max_bytes is not None and out and size + len(record.data) > max_bytes:
                    break
                recent.pop()
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

    def _unreadable(self, segment: Segment, exc: OSError) -> None:
        """A segment that cannot be read (deleted, replaced, an I/O error): count its records, go on."""
        log.error("spool segment %s cannot be read (%s): its unread records are counted as lost",
                  segment.path.name, exc)
        self._close_reader()
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
        record = self._recent.at(self._read_at.index)
        if record is not None:
            return record.at_ms
        segment = self._segment_at(self._read_at)
        try:
            at_ms = self._reader_at(segment, self._read_at).peek(self._limit(segment))
        except OSError:
            return 0
        return 0 if at_ms is None else at_ms

    def _limit(self, segment: Segment) -> int:
        """How far a segment may be read: to the commit point in the committed one, nothing after it."""
        committed = self._committed
        if segment.first == committed.segment:
            return committed.offset
        return 0 if segment.first > committed.segment else segment.size

    def rewind(self) -> None:
        """Read again from the first unreleased record (after the upstream session was lost)."""
        self._close_reader()
        self._read_at = self._released

    def _close_reader(self, segment: Segment | None = None) -> None:
        """Close the segment reader (only if it reads ``segment``, when given)."""
        if self._reader is not None and (segment is None or self._reader.segment is segment):
            self._reader.close()
            self._reader = None

    def _segment_after(self, segment: Segment) -> Segment | None:
        return next((s for s in self._segments if s.first > segment.first), None)

    def _segment_at(self, at: Position) -> Segment:
        """The segment holding ``at``, or the first after it when that one is gone."""
        return next((s for s in self._segments if s.first >= at.segment), self._segments[-1])

    def _reader_at(self, segment: Segment, at: Position) -> SegmentReader:
        offset = at.offset if segment.first == at.segment else 0
        reader = self._reader
        if reader is not None and reader.segment is segment and reader.offset == offset:
            return reader
        self._close_reader()
        self._reader = SegmentReader(segment, offset)
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
            self._close_reader(head)
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
        slot = pack_cursor(self._cursor_generation, self._released, self._committed)
        os.pwrite(self._cursor_fd, slot, self._scratch_slot * CURSOR_SLOT_BYTES)
        self._cursor_dirty = True
        if durable:
            if self.fsync:
                os.fdatasync(self._cursor_fd)
            self._cursor_dirty = False
            self._scratch_slot ^= 1  # that slot now holds the durable state; write the other next

    def _write_watermark(self) -> None:
        """The released position, durable, in the lock file: segments before it were deleted on purpose."""
        if self._lock_fd is None:
            return
        os.pwrite(self._lock_fd, pack_watermark(self._released), 0)
        if self.fsync:
            os.fdatasync(self._lock_fd)

    # ---------------------------------------------------------------- recovery
    def _recover(self, report: RecoveryReport) -> None:
        assert self._lock_fd is not None
        self._cursor_fd = self._recovery.open_own_file(CURSOR_FILE)
        found = self._recovery.run(self._cursor_fd, self._lock_fd, report)
        if found.cursor_generation is not None:
            self._cursor_generation = found.cursor_generation
        if found.scratch_slot is not None:
            self._scratch_slot = found.scratch_slot
        self._segments = found.segments
        active = self._segments[-1]
        self._next_index = found.next_index
        self._uncounted = found.uncounted
        self._committed = Position(found.next_index, active.first, active.size)
        self._released = self._read_at = self._accounted = found.released
        self._written_end = active.size
        self._disk_bytes = sum(s.size for s in self._segments)
        self._write_fd = os.open(active.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        # What recovery kept past the old commit point is committed from now on:
        # durable before the cursor says so, in both slots before anything is deleted.
        if self.fsync:
            for segment in found.tail:
                if segment in self._segments:
                    fsync_file(segment.path)
            fsync_dir(self.directory)
        self._dir_dirty = False
        self._write_cursor(durable=True)
        self._write_cursor(durable=True)
        self._write_watermark()
        self._recovery.delete_leftovers(found.leftovers, report)
