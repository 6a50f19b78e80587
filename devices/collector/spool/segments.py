"""Segment files: their names, the frame format of the records in them, reading them back.

Records are numbered by a global *index*. A segment is a sequence of frames,
appended and never rewritten, named by the index of its first record
(``00000000000000004096.seg``), and every frame carries its record's index::

    magic "FP" (2) | version 2 (1) | flags (1) | length (4, LE) | spooled_at_ms (8, LE) | index (8, LE)
    payload (length bytes)
    crc32 of header + payload (4, LE)

(Version 1 frames, without the index, are still read: their index is their place.)

:class:`SegmentReader` reads one segment from a byte offset and, past bytes
that do not check out, finds the next frame that does and says how many
bytes it skipped. What a frame *means* where it is found (in sequence, lost,
out of place) is for the spool (:mod:`.fifo`) and recovery (:mod:`.recovery`)
to decide.
"""

from __future__ import annotations

import os
import re
import struct
import zlib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

from .quarantine import Quarantine

_MAGIC = b"FP"
_VERSION = 2
_HEADER = struct.Struct("<2sBBIQQ")  # magic, version, flags, length, spooled_at_ms, index
_HEADER_V1 = struct.Struct("<2sBBIQ")  # version 1 had no index; read, never written
_CRC = struct.Struct("<I")
FRAME_OVERHEAD = _HEADER.size + _CRC.size
#: The smallest frame of any version: no record index can grow faster than one per this many bytes.
MIN_FRAME = _HEADER_V1.size + _CRC.size
#: Largest payload a frame may claim; anything longer is corruption, not a record.
MAX_RECORD_BYTES = 1 << 20
#: The largest record index the spool writes (segment names, frames and the cursor).
MAX_INDEX = (1 << 63) - 1

SEGMENT_SUFFIX = ".seg"
SEGMENT_NAME = re.compile(r"[0-9]{20}\.seg")  # ASCII digits only (str.isdigit takes any script's)
_READ_CHUNK = 1 << 16

#: Segment size bounds: a segment is 1/8 of the quota, within these.
MIN_SEGMENT_BYTES = 4096
MAX_SEGMENT_BYTES = 16 << 20


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


class RecentRecords:
    """Records appended lately, kept in memory up to ``max_bytes`` of payload.

    So a reader that keeps up never reads back from the file what was just
    written; older ones are dropped first (the reader finds them on disk).
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._records: deque[SpoolRecord] = deque()
        self._bytes = 0

    def add(self, record: SpoolRecord) -> None:
        self._records.append(record)
        self._bytes += len(record.data)
        while self._bytes > self.max_bytes:
            self._bytes -= len(self._records.popleft().data)

    def at(self, index: int) -> SpoolRecord | None:
        """Record ``index`` if it is held (forgetting those before it), else None."""
        records = self._records
        while records and records[0].index < index:
            self._bytes -= len(records.popleft().data)
        if records and records[0].index == index:
            return records[0]
        return None

    def pop(self) -> None:
        """Forget the record :meth:`at` just returned."""
        self._bytes -= len(self._records.popleft().data)


class Frame(NamedTuple):
    at_ms: int
    data: bytes
    index: int | None  # type: ignore[assignment]  # None: a version-1 frame, its index is its place


@dataclass
class Segment:
    first: int  # index of its first record (its name)
    path: Path
    size: int  # bytes on disk


def segment_path(directory: Path, first: int) -> Path:
    return directory / f"{first:020d}{SEGMENT_SUFFIX}"


def create_segment(directory: Path, first: int, quarantine: Quarantine) -> Segment:
    """Create the empty segment file for records from ``first`` (the caller fsyncs the directory)."""
    path = segment_path(directory, first)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:  # put there by someone else since open: not ours to overwrite
        quarantine.move_aside(path.name, "an entry where the spool was starting a segment")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    return Segment(first, path, 0)


def fsync_dir(directory: Path) -> None:
    """Make the directory's entries (a new segment's name) durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def encode_frame(data: bytes, at_ms: int, index: int = 0) -> bytes:
    """One frame: header, payload, CRC (exposed for tests that forge corruption)."""
    header = _HEADER.pack(_MAGIC, _VERSION, 0, len(data), at_ms, index)
    return header + data + _CRC.pack(zlib.crc32(data, zlib.crc32(header)))


def parse_frame(buf: bytes, pos: int) -> tuple[Frame, int] | None | Literal[False]:
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
    return Frame(at_ms, buf[body:body_end], index), end


def plausible(segment: Segment, offset: int, index: int | None) -> bool:
    """Whether a frame of record ``index`` can start at ``offset`` in ``segment`` (each frame takes bytes)."""
    return index is None or segment.first <= index <= segment.first + offset // MIN_FRAME


def _open_nofollow(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NOFOLLOW)


class SegmentReader:
    """Sequential, buffered reading of one segment from a byte offset, resynchronising past corruption."""

    def __init__(self, segment: Segment, offset: int) -> None:
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
        parsed = parse_frame(self._buf, self._pos)
        while parsed is None and self._fill(limit):
            parsed = parse_frame(self._buf, self._pos)
        return parsed[0].at_ms if parsed else None

    def next(self, limit: int) -> Frame | int | None:
        """The next frame below ``limit``; the number of bytes skipped after corruption; None at the end."""
        while True:
            parsed = parse_frame(self._buf, self._pos)
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
            parsed = parse_frame(self._buf, found)
            if parsed is None and self._fill(limit):
                continue
            if parsed is None or parsed is False:
                if parsed is None:  # too short to tell, and nothing more: a corrupt end
                    self._pos = len(self._buf)
                    return self.offset - start
                self._pos = found + 1
                continue
            return self.offset - start
