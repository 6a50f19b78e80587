"""The spool's two small records of progress: the cursor (released position + commit point) and the watermark.

The *cursor* file has two slots, 4 KiB apart, each holding a generation, the
released position and the commit point, with a CRC. Every cursor write goes to
the *scratch* slot, the one not holding the last durable state; its
fdatasync makes it the durable one and the other slot the scratch. A torn
write can only ever hit the scratch slot, so the other one holds the last
completed commit. The slots are 4 KiB apart, never in one sector or page,
and the file is preallocated (:data:`CURSOR_FILE_BYTES`), so the fdatasync
writes one block and no metadata.

The *watermark*, at the start of the lock file, is a second copy of the
released position, made durable before a released segment is deleted.

This module encodes and decodes them; :class:`~.fifo.Spool` does the I/O.
(Version 1 cursors, 64-byte slots without a commit point, are still read.)
"""

from __future__ import annotations

import struct
import zlib
from typing import NamedTuple

from .segments import MAX_INDEX, Position

_CRC = struct.Struct("<I")
_CURSOR_MAGIC = b"FPC2"
# magic, generation, released (index, segment, offset), committed (index, segment, offset)
_CURSOR = struct.Struct("<4s7Q")
CURSOR_SLOT_BYTES = 4096
#: The cursor file's preallocated size: both slots.
CURSOR_FILE_BYTES = 2 * CURSOR_SLOT_BYTES
_CURSOR_V1_MAGIC = b"FPC1"
_CURSOR_V1 = struct.Struct("<4sQQQQ")  # magic, generation, segment, offset, index
_CURSOR_V1_SLOT = 64
_WATERMARK_MAGIC = b"FPW1"
_WATERMARK = struct.Struct("<4sQQQ")  # magic, released index, segment, offset (in the lock file)
#: Bytes the watermark takes at the start of the lock file.
WATERMARK_BYTES = _WATERMARK.size + _CRC.size


class CursorState(NamedTuple):
    """What the newest cursor slot that checks out says."""

    released: Position
    committed: Position | None  # None: a version-1 cursor (no commit point)
    generation: int
    scratch_slot: int | None  # the slot to write next (None: keep the default)
    fallback: bool  # the newest slot was torn and the older one was used


def pack_cursor(generation: int, released: Position, committed: Position) -> bytes:
    """One slot's bytes (write them at ``slot * CURSOR_SLOT_BYTES``)."""
    r, c = released, committed
    body = _CURSOR.pack(_CURSOR_MAGIC, generation, r.index, r.segment, r.offset, c.index, c.segment, c.offset)
    return body + _CRC.pack(zlib.crc32(body))


def parse_cursor(raw: bytes) -> CursorState | None:
    """The state in the newest slot of ``raw`` (the file's first two slots) that checks out, or None."""
    slots: list[tuple[int, int, Position, Position]] = []
    for n in range(2):
        chunk = raw[n * CURSOR_SLOT_BYTES : n * CURSOR_SLOT_BYTES + _CURSOR.size + _CRC.size]
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
        other = raw[(1 - slot) * CURSOR_SLOT_BYTES : (2 - slot) * CURSOR_SLOT_BYTES]
        return CursorState(released, committed, generation, 1 - slot, len(slots) == 1 and any(other))
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
        return CursorState(released, None, generation, None, False)
    return None


def pack_watermark(released: Position) -> bytes:
    r = released
    body = _WATERMARK.pack(_WATERMARK_MAGIC, r.index, r.segment, r.offset)
    return body + _CRC.pack(zlib.crc32(body))


def parse_watermark(chunk: bytes) -> Position | None:
    """The watermark in the lock file's first :data:`WATERMARK_BYTES`, or None if it does not check out."""
    if len(chunk) < _WATERMARK.size + _CRC.size:
        return None
    body, (crc,) = chunk[: _WATERMARK.size], _CRC.unpack_from(chunk, _WATERMARK.size)
    magic, index, segment, offset = _WATERMARK.unpack(body)
    if magic != _WATERMARK_MAGIC or zlib.crc32(body) != crc or max(index, segment) > MAX_INDEX:
        return None
    return Position(index, segment, offset)
