"""Cutting validated records into gateway batch envelopes (contract v1), by count, time and size.

Pure logic, no I/O, no threads: the collector's worker thread owns one
:class:`Batcher` and asks it what to publish. Each record is serialised once
when it is added, so the size of a batch is known exactly while it grows and
the envelope is built by joining bytes. A batch closes when it holds
``max_records`` records, when the next record would push the envelope past
``max_payload_bytes``, or when ``max_interval_ms`` have passed since its first
record (see :meth:`Batcher.due`).

Every batch remembers which device messages its records came from (their
"tokens"); the collector acknowledges a device message on the local broker only
once every batch holding its records was acknowledged upstream.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Widest values the header can hold, to bound its size before the batch is sent.
_MAX_BATCH_SEQ = 2**53 - 1
_MAX_SENT_MS = 10**16 - 1


@dataclass(eq=False)
class MessageToken:
    """One device message from the local broker, until all its records are acknowledged upstream."""

    mid: int
    qos: int
    generation: int  # local connection it arrived on: packet ids mean nothing on another
    topic: str = ""
    refs: int = 0  # open or in-flight batches holding some of its records


@dataclass(eq=False)
class Batch:
    """A closed (or growing) batch: serialised records plus the messages they came from."""

    records: list[bytes] = field(default_factory=list)
    tokens: list[MessageToken] = field(default_factory=list)
    first_ms: int = 0
    body_bytes: int = 0  # sum of record sizes plus the commas between them
    seq: int = -1  # batch_seq, assigned when the batch closes

    def __len__(self) -> int:
        return len(self.records)


def encode_record(record: dict[str, Any]) -> bytes:
    """A record exactly as it appears inside an envelope."""
    return json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class Batcher:
    """Accumulates records into batches for one gateway's identifiers.

    ``add()`` returns the batches that closed because of count or size;
    ``due()``/``close()`` handle the time limit. Batches get consecutive
    ``batch_seq`` numbers in the order they close.
    """

    def __init__(
        self,
        *,
        customer_id: str,
        site_id: str,
        gateway_id: str,
        max_records: int,
        max_interval_ms: int,
        max_payload_bytes: int,
        first_seq: int = 0,
    ) -> None:
        self._ids = {"customer_id": customer_id, "site_id": site_id, "gateway_id": gateway_id}
        self.max_records = max_records
        self.max_interval_ms = max_interval_ms
        self.max_payload_bytes = max_payload_bytes
        self._next_seq = first_seq
        self._open: Batch | None = None
        head, tail = self._frame(_MAX_BATCH_SEQ, _MAX_SENT_MS)
        self.overhead_bytes = len(head) + len(tail)
        if self.overhead_bytes >= max_payload_bytes:
            raise ValueError(f"max_payload_bytes={max_payload_bytes} cannot even hold the envelope header")

    @property
    def max_record_bytes(self) -> int:
        """The largest single record that fits in an envelope."""
        return self.max_payload_bytes - self.overhead_bytes

    @property
    def open_batch(self) -> Batch | None:
        return self._open

    @property
    def open_records(self) -> int:
        return len(self._open) if self._open else 0

    def fits(self, record: bytes) -> bool:
        return len(record) <= self.max_record_bytes

    def add(self, record: bytes, token: MessageToken, now_ms: int) -> list[Batch]:
        """Append one serialised record; return the batches this closed (0, 1 or 2).

        The caller checks :meth:`fits` first: a record larger than an envelope can
        hold is refused with ValueError.
        """
        if not self.fits(record):
            raise ValueError(f"record of {len(record)} bytes exceeds {self.max_record_bytes}")
        closed: list[Batch] = []
        batch = self._open
        if batch is not None and (
            self.overhead_bytes + batch.body_bytes + 1 + len(record) > self.max_payload_bytes
        ):
            closed.append(self._close())
            batch = None
        if batch is None:
            batch = self._open = Batch(first_ms=now_ms)
        batch.body_bytes += len(record) + (1 if batch.records else 0)
        batch.records.append(record)
        if not batch.tokens or batch.tokens[-1] is not token:
            # A message's records are added one after another, so checking the
            # last token is enough to count each batch once per message.
            batch.tokens.append(token)
            token.refs += 1
        if len(batch.records) >= self.max_records:
            closed.append(self._close())
        return closed

    def due(self, now_ms: int) -> bool:
        """True when the open batch has waited ``max_interval_ms`` since its first record.

        A clock that went backwards (NTP stepping a Raspberry Pi's clock at
        boot) also counts as due, so a batch never waits for the clock to catch up.
        """
        batch = self._open
        if batch is None:
            return False
        return now_ms >= batch.first_ms + self.max_interval_ms or now_ms < batch.first_ms

    def deadline_ms(self) -> int | None:
        """When the open batch becomes due, or None if there is none."""
        return None if self._open is None else self._open.first_ms + self.max_interval_ms

    def close(self) -> Batch | None:
        """Close the open batch now (time limit, drain, or back-pressure); None if empty."""
        return self._close() if self._open is not None else None

    def _close(self) -> Batch:
        batch = self._open
        assert batch is not None
        batch.seq = self._next_seq
        self._next_seq += 1
        self._open = None
        return batch

    def _frame(self, batch_seq: int, sent_ms: int) -> tuple[bytes, bytes]:
        header = {"v": 1, **self._ids, "batch_seq": batch_seq, "sent_ms": sent_ms}
        head = json.dumps(header, separators=(",", ":"), ensure_ascii=False)
        return (head[:-1] + ',"records":[').encode("utf-8"), b"]}"

    def encode(self, batch: Batch, sent_ms: int) -> bytes:
        """The envelope bytes for ``batch``; never longer than ``max_payload_bytes``."""
        head, tail = self._frame(batch.seq, sent_ms)
        return head + b",".join(batch.records) + tail
