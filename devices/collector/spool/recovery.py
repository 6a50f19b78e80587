"""What :meth:`Spool.open <.fifo.Spool.open>` finds on disk: the segments to keep, the commit point, torn tails.

With the commit point in the cursor, outside the segments, recovery tells a
torn write from damage:

* bytes past the commit point that do not make frames in sequence, up to the
  end of the file with no frame after them, are a **torn tail** (a write the
  crash interrupted; those records were never acknowledged to the device side,
  and the local broker redelivers them): cut silently, in
  ``RecoveryReport.torn_bytes``. Whole frames in sequence past the commit
  point are kept: the older slot, or a cursor lost altogether, may lag.
* anything missing before the commit point is **lost** and counted by the
  reader (:meth:`Spool.read <.fifo.Spool.read>`); recovery keeps every segment
  that is the spool's own, damaged or not, and seals a damaged one.
* the segment being appended to, when damaged, is sealed as it is and a new
  one started after the last record, so damaged bytes are never appended to.

Recovery takes the further of the cursor's released position and the lock
file's watermark, so neither a damaged or rolled-back cursor (an SD card can
hand back an old version of a block) nor a damaged lock file makes the
records of a deleted segment look lost. When the whole cursor is lost
(zeroed, truncated, deleted) the segments are sent again from the watermark
or the oldest one (duplicates, which downstream removes by ``(device_id,
boot, seq)``) and the commit point is read from the segments, which is exact
while they are whole: only the cursor *and* the newest segment damaged
together can lose committed records without a count.

Entries that are not the spool's own go to the quarantine (:mod:`.quarantine`).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from .cursor import CURSOR_FILE_BYTES, WATERMARK_BYTES, CursorState, parse_cursor, parse_watermark
from .quarantine import QUARANTINE, Quarantine, kind
from .segments import (
    FRAME_OVERHEAD,
    MAX_INDEX,
    MAX_RECORD_BYTES,
    MAX_SEGMENT_BYTES,
    MIN_FRAME,
    SEGMENT_NAME,
    Frame,
    Position,
    Segment,
    SegmentReader,
    create_segment,
    plausible,
)

log = logging.getLogger(__name__)

LOCK = "lock"
CURSOR_FILE = "cursor"
_NOTHING_OWN = ("a segment file without one frame of its own (garbage, or damaged past recognition: "
                "the records it held are counted as lost)")
_MISNAMED = ("a segment file whose first frame belongs elsewhere (misnamed, or swapped with another: "
             "the records its name stands for are counted as lost)")


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
class Recovered:
    """The spool's state as recovery leaves it (the spool makes it durable before anything else)."""

    segments: list[Segment]  # oldest first; the last one is appended to
    next_index: int
    released: Position
    #: indices kept past the durable commit point: never counted when missing
    uncounted: tuple[int, int]
    #: segments from the old commit point on: fsynced before the cursor names their records
    tail: list[Segment] = field(default_factory=list)
    #: segments released before a crash: deleted once the cursor is durable
    leftovers: list[Segment] = field(default_factory=list)
    #: the newest cursor slot's generation and the slot to write next (None: none checked out)
    cursor_generation: int | None = None
    scratch_slot: int | None = None


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


class Recovery:
    """Reads a spool directory at open; moves what is not the spool's own into the quarantine."""

    def __init__(self, directory: Path, segment_bytes: int, quarantine: Quarantine) -> None:
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.quarantine = quarantine

    def open_own_file(self, name: str) -> int:
        """Open (or make) the lock or the cursor; something else holding its name is moved aside first."""
        path = self.directory / name
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISREG(mode):
                self.quarantine.move_aside(name, f"a {kind(mode)}, not the spool's {name} file")
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)

    def run(self, cursor_fd: int, lock_fd: int, report: RecoveryReport) -> Recovered:
        """The segments to keep and where the spool stands, from the cursor, the watermark and the segments.

        Preallocates the cursor file (so that a slot's fdatasync never writes metadata).
        """
        state = self._read_cursor(cursor_fd, report)
        watermark = parse_watermark(os.pread(lock_fd, WATERMARK_BYTES, 0))
        if os.fstat(cursor_fd).st_size < CURSOR_FILE_BYTES:
            os.ftruncate(cursor_fd, CURSOR_FILE_BYTES)
        found = self._plan(None if state is None else (state.released, state.committed), watermark, report)
        if state is not None:
            found.cursor_generation, found.scratch_slot = state.generation, state.scratch_slot
        return found

    @staticmethod
    def _read_cursor(cursor_fd: int, report: RecoveryReport) -> CursorState | None:
        """The newest cursor slot that checks out (a version-1 cursor has no commit point); None when none does."""
        raw = os.pread(cursor_fd, CURSOR_FILE_BYTES, 0)
        state = parse_cursor(raw)
        if state is None:
            report.cursor_lost = any(raw)
        else:
            report.cursor_fallback = state.fallback
        return state

    def _plan(self, cursor: tuple[Position, Position | None] | None, watermark: Position | None,
              report: RecoveryReport) -> Recovered:
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
            while split and not (segments[split - 1].size and self.check_own(segments[split - 1], keep=True)):
                split -= 1
            if split:
                start = segments[split - 1].first
            else:
                start = released.index if released is not None else 0
            committed = Position(start, start, 0)
        sealed = [s for s in segments if s.first < committed.segment and self.check_own(s)]
        tail = [s for s in segments if s.first >= committed.segment]
        kept, active, next_index = self._recover_tail(tail, committed, report)
        sealed += kept
        if active is None:
            if sealed:
                next_index = max(next_index, sealed[-1].first + 1)
            active = create_segment(self.directory, next_index, self.quarantine)
        kept_segments = sealed + [active]
        if released is None:
            head = kept_segments[0]
            released = Position(head.first, head.first, 0)
        elif released.segment not in {s.first for s in kept_segments}:
            # Its segment is gone (damage): start at the next one, from the same index,
            # so that the reader counts what is missing.
            after = next((s for s in kept_segments if s.first >= released.segment), kept_segments[-1])
            released = Position(released.index, after.first, 0)
        return Recovered(kept_segments, next_index, released, (committed.index, next_index), tail, leftovers)

    def delete_leftovers(self, leftovers: list[Segment], report: RecoveryReport) -> None:
        """Delete the segments released before a crash (only those the spool wrote)."""
        for segment in leftovers:
            if self.check_own(segment):
                segment.path.unlink(missing_ok=True)
                report.deleted_segments += 1

    def _recover_tail(self, tail: list[Segment], commit: Position,
                      report: RecoveryReport) -> tuple[list[Segment], Segment | None, int]:
        """The committed segment and what follows it: (sealed, the segment to append to or None, next index).

        The committed segment must hold exactly the records up to the commit
        point; frames in sequence after it (and segment files continuing them)
        are kept; bad bytes up to the end after them are a torn tail, cut.
        Anything else is damage: the file is sealed as it is.
        """
        kept: list[Segment] = []
        active: Segment | None = None
        expected = commit.index
        # How far past `expected` the next file may start: 0 after a whole segment (it must
        # continue exactly), what a damaged one could have held after one, nothing without any.
        slack: int | None = 0 if tail and tail[0].first == commit.segment else None
        for segment in tail:
            committed_here = segment.first == commit.segment
            if not committed_here and (slack is None or not expected <= segment.first <= expected + slack):
                self.quarantine.move_aside(segment.path.name, "a segment after the commit point, not where "
                                           "the segment before it ends")
                continue
            try:
                scan = self._scan(segment, commit.index if committed_here else segment.first)
            except OSError as exc:
                self.quarantine.move_aside(segment.path.name, f"unreadable ({exc.strerror or exc})")
                continue
            if scan.misnamed:
                self.quarantine.move_aside(segment.path.name, _MISNAMED)
                continue
            if not scan.own and not (segment.size == 0 and segment.first == expected):
                self.quarantine.move_aside(segment.path.name, _NOTHING_OWN)
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
            slack = segment.size // MIN_FRAME
        return kept, active, expected

    def _scan(self, segment: Segment, commit_index: int) -> _Scan:
        """Read a whole segment: how far its frames run in sequence, and what comes after them."""
        scan = _Scan(run_next=segment.first, next_index=segment.first)
        if commit_index == segment.first:
            scan.commit_at = 0
        reader = SegmentReader(segment, 0)
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
                if not scan.own and not scan.valid_after and not plausible(segment, start, item.index):
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
                if plausible(segment, start, index):
                    scan.next_index = max(scan.next_index, index + 1)
        finally:
            reader.close()
        scan.next_index = max(scan.next_index, scan.run_next)
        return scan

    def check_own(self, segment: Segment, keep: bool = False) -> bool:
        """Whether a segment file is one the spool wrote: its first frame that checks out fits its name.

        One that is not (garbage, a damaged-past-recognition or misnamed file,
        or one that cannot be read) is moved aside, unless ``keep``.
        """
        why = _NOTHING_OWN
        try:
            reader = SegmentReader(segment, 0)
            try:
                while True:
                    start = reader.offset
                    item = reader.next(segment.size)
                    if item is None:
                        break
                    if isinstance(item, Frame):
                        if plausible(segment, start, item.index):
                            return True
                        why = _MISNAMED
                        break
            finally:
                reader.close()
        except OSError as exc:
            why = f"unreadable ({exc.strerror or exc})"
        if not keep:
            self.quarantine.move_aside(segment.path.name, why)
        return False

    def _list_segments(self) -> list[Segment]:
        """The segment files by index; every entry but these, the lock, the cursor and the quarantine moved aside."""
        largest = max(MAX_SEGMENT_BYTES, self.segment_bytes) + FRAME_OVERHEAD + MAX_RECORD_BYTES
        with os.scandir(self.directory) as listing:
            entries = sorted(listing, key=lambda e: e.name)
        found = []
        for entry in entries:
            name = entry.name
            if name in (LOCK, CURSOR_FILE):
                continue  # opened (and checked) already
            if name == QUARANTINE:
                try:
                    self.quarantine.ensure()  # files an impostor holding the name
                except OSError as exc:
                    log.warning("spool %s: cannot make the quarantine directory: %s", self.directory, exc)
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # gone meanwhile
            why = None
            if not SEGMENT_NAME.fullmatch(name):
                why = f"a {kind(info.st_mode)} with a name the spool never writes"
            elif int(name[:20]) > MAX_INDEX:
                why = "a segment index beyond any the spool writes"
            elif not stat.S_ISREG(info.st_mode):
                why = f"a {kind(info.st_mode)} named like a segment"
            elif info.st_size > largest:
                why = f"{info.st_size} bytes, larger than any segment the spool writes"
            if why is not None:
                self.quarantine.move_aside(name, why)
                continue
            found.append(Segment(int(name[:20]), self.directory / name, info.st_size))
        return found
