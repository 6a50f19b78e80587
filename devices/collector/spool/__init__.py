"""The collector's durable spool: validated records on disk until the central broker has them.

    spool = Spool(path, quota_bytes=1 << 30)
    report = spool.open()              # lock, recover, quarantine strays
    spool.append(data); spool.commit() # durable: now the device message may be acknowledged
    records, end = spool.read(500)     # a batch, oldest first
    spool.acknowledge(end)             # the central broker has it: release it

Standard library only (the gateway has nothing else). Layout of the spool
directory (``0700``, files ``0600``)::

    lock                      flock'ed while a collector owns the spool; holds the release watermark
    cursor                    two slots, 4 KiB apart: released position + commit point
    00000000000000000000.seg  segments, named by the index of their first record
    00000000000000004096.seg
    ...
    quarantine/               what the spool did not write, moved aside at open (bounded)

The parts, each with its own account of what it guarantees:

* :mod:`.fifo` — :class:`Spool`: appending, the group commit and its commit
  point, reading back, releasing, the quota and TTL;
* :mod:`.segments` — segment files and the frame format of their records;
* :mod:`.cursor` — the cursor's two slots and the lock file's watermark;
* :mod:`.recovery` — what :meth:`Spool.open` keeps, cuts and seals after a crash;
* :mod:`.quarantine` — what was not the spool's own, moved aside and bounded.
"""

from __future__ import annotations

from .fifo import MIN_QUOTA_BYTES, ON_FULL_POLICIES, Spool, SpoolLocked
from .recovery import RecoveryReport
from .segments import (
    FRAME_OVERHEAD,
    MAX_INDEX,
    MAX_RECORD_BYTES,
    MAX_SEGMENT_BYTES,
    MIN_SEGMENT_BYTES,
    Position,
    Segment,
    SpoolRecord,
    encode_frame,
)

__all__ = [
    "FRAME_OVERHEAD",
    "MAX_INDEX",
    "MAX_RECORD_BYTES",
    "MAX_SEGMENT_BYTES",
    "MIN_QUOTA_BYTES",
    "MIN_SEGMENT_BYTES",
    "ON_FULL_POLICIES",
    "Position",
    "RecoveryReport",
    "Segment",
    "Spool",
    "SpoolLocked",
    "SpoolRecord",
    "encode_frame",
]
