"""Gateway batch envelopes (telemetry contract v1): serialised records in, payload bytes out.

Pure logic, no I/O. The collector spools each validated record serialised
once (:func:`encode_record`) and builds an envelope by joining those bytes, so
the size of a batch is known exactly before it is built: :class:`Envelope`
says how many body bytes fit under the contract's ``max_payload_bytes`` and
refuses to build a larger payload.

Compression. With ``compression="gzip"`` the envelope is gzip-compressed
(RFC 1952, fixed mtime so a resent batch is byte-identical). Receivers detect
it from the gzip magic bytes (``schemas/TELEMETRY_V1.md``); the size limit
applies to the uncompressed envelope, so compression saves uplink bytes and
never changes what a batch may hold.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

# Widest values the header can hold, to bound its size before the batch is sent.
_MAX_BATCH_SEQ = 2**53 - 1
_MAX_SENT_MS = 10**16 - 1


#: One encoder for every record: json.dumps with options builds a new one per call.
_RECORD_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)


def encode_record(record: dict[str, Any]) -> bytes:
    """A record exactly as it appears inside an envelope."""
    return _RECORD_ENCODER.encode(record).encode("utf-8")


class Envelope:
    """Builds one gateway's batch envelopes."""

    def __init__(
        self,
        *,
        customer_id: str,
        site_id: str,
        gateway_id: str,
        max_payload_bytes: int,
        compression: str = "none",
    ) -> None:
        if compression not in ("none", "gzip"):
            raise ValueError(f"unknown compression {compression!r}")
        self._ids = {"customer_id": customer_id, "site_id": site_id, "gateway_id": gateway_id}
        self.max_payload_bytes = max_payload_bytes
        self.compression = compression
        head, tail = self._frame(_MAX_BATCH_SEQ, _MAX_SENT_MS)
        self.overhead_bytes = len(head) + len(tail)
        if self.overhead_bytes >= max_payload_bytes:
            raise ValueError(f"max_payload_bytes={max_payload_bytes} cannot even hold the envelope header")

    @property
    def max_body_bytes(self) -> int:
        """Room for records and the commas between them."""
        return self.max_payload_bytes - self.overhead_bytes

    def fits(self, record: bytes) -> bool:
        """Whether a single record fits an envelope on its own."""
        return len(record) <= self.max_body_bytes

    def body_bytes(self, records: list[bytes]) -> int:
        return sum(len(r) for r in records) + max(0, len(records) - 1)

    def _frame(self, batch_seq: int, sent_ms: int) -> tuple[bytes, bytes]:
        header = {"v": 1, **self._ids, "batch_seq": batch_seq, "sent_ms": sent_ms}
        head = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
        return (head[:-1] + ',"records":[').encode("utf-8"), b"]}"

    def encode(self, records: list[bytes], batch_seq: int, sent_ms: int) -> bytes:
        """The payload for ``records``; ValueError if the uncompressed envelope would be too large."""
        if not records:
            raise ValueError("a batch holds at least one record")
        if self.body_bytes(records) > self.max_body_bytes:
            raise ValueError(f"{len(records)} records need {self.body_bytes(records)} body bytes, "
                             f"at most {self.max_body_bytes} fit")
        head, tail = self._frame(batch_seq, sent_ms)
        payload = head + b",".join(records) + tail
        if self.compression == "gzip":
            return gzip.compress(payload, compresslevel=6, mtime=0)
        return payload
