"""The landing zone of the Parquet lake: raw central-broker messages, as received.

Layout::

    <lake>/landing/dt=YYYY-MM-DD/part-<received_ms>-<uuid>.parquet   gateway batches
    <lake>/status/dt=YYYY-MM-DD/part-<received_ms>-<uuid>.parquet    gateway status

One row per MQTT message: ``topic``, ``payload`` (the bytes exactly as the
broker delivered them) and ``received_ms``. Nothing is decoded here, so a
message the validator refuses today can be replayed with tomorrow's validator;
the batch job decodes, validates and deduplicates from this zone.

Files are written to a hidden temporary name, fsynced, renamed into place and
the directory fsynced: a reader never sees a partial file, and a crash leaves
at most a ``.tmp`` file that readers ignore.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from fleetpulse.schemas import load_contract

from .storage import commit_bytes, parquet_bytes

LANDING_SCHEMA = pa.schema(
    [
        pa.field("topic", pa.string(), nullable=False),
        pa.field("payload", pa.binary(), nullable=False),
        pa.field("received_ms", pa.int64(), nullable=False),
    ]
)


#: zone name -> what lands there (the topic families of the contract)
ZONES = {"landing": "gateway_batches", "status": "gateway_status"}


def zone_of(topic: str) -> str:
    """The zone a message lands in: ``status`` for a gateway's status topic, else ``landing``.

    Everything that is not a status lands with the batches, where the decoder
    dead-letters what is not a batch either (``topic_mismatch``).
    """
    return "status" if load_contract().topic_re(ZONES["status"]).fullmatch(topic) else "landing"


def landing_topic(topic: str | bytes) -> str:
    """``topic`` as the landing zone stores it: valid UTF-8 text, whatever came.

    MQTT requires UTF-8 topics, but a broker that does not check passes on
    what a client published. Bytes that are not UTF-8 (and lone surrogates in
    a ``str``) are kept as backslash escapes (``\\xff``, ``\\ud800``): the
    message still lands, the decoder refuses the topic (``topic_mismatch``, a
    dead letter), and the file's string column can always be written.
    """
    if isinstance(topic, bytes | bytearray):
        return bytes(topic).decode("utf-8", "backslashreplace")
    if topic.isascii():
        return topic
    return topic.encode("utf-8", "backslashreplace").decode("utf-8")


def message_topic(message: Any) -> str:
    """The :func:`landing_topic` of a paho ``MQTTMessage``.

    paho's ``message.topic`` decodes strictly and raises on bytes that are not
    UTF-8 — inside its network thread, which would stop the reader and leave
    the message unacknowledged, to be redelivered forever.
    """
    try:
        return landing_topic(message.topic)
    except UnicodeDecodeError as exc:
        return landing_topic(exc.object)


def landing_dir(lake: str | Path, zone: str = "landing") -> Path:
    if zone not in ZONES:
        raise ValueError(f"unknown lake zone {zone!r}; known: {sorted(ZONES)}")
    return Path(lake) / zone


def write_atomically(table: pa.Table, final: Path, *, compression: str = "zstd") -> None:
    """Write ``table`` to ``final`` so that it appears whole or not at all (:func:`.storage.commit_bytes`)."""
    commit_bytes(str(final), parquet_bytes(table, compression))


class LandingWriter:
    """Buffers received messages and commits them to the landing zone in files.

    ``add`` returns True when the buffer reached ``max_rows``; the owner then
    calls ``commit`` (the lander also commits on a timer and at stop).
    """

    def __init__(self, lake: str | Path, *, zone: str = "landing", max_rows: int = 5000) -> None:
        self.root = landing_dir(lake, zone)
        self.max_rows = max_rows
        self._topics: list[str] = []
        self._payloads: list[bytes] = []
        self._received: list[int] = []
        self.committed_rows = 0
        self.committed_files = 0

    def __len__(self) -> int:
        return len(self._topics)

    def add(self, topic: str, payload: bytes, received_ms: int) -> bool:
        # One topic that is not valid UTF-8 would fail the commit of every message buffered with it.
        self._topics.append(landing_topic(topic))
        self._payloads.append(payload)
        self._received.append(received_ms)
        return len(self._topics) >= self.max_rows

    def commit(self) -> Path | None:
        """Write the buffered rows as one file; returns its path (None if empty)."""
        if not self._topics:
            return None
        first = self._received[0]
        day = datetime.fromtimestamp(first / 1000, tz=UTC).strftime("%Y-%m-%d")
        final = self.root / f"dt={day}" / f"part-{first:013d}-{uuid.uuid4().hex[:12]}.parquet"
        table = pa.Table.from_arrays(
            [
                pa.array(self._topics, pa.string()),
                pa.array(self._payloads, pa.binary()),
                pa.array(self._received, pa.int64()),
            ],
            schema=LANDING_SCHEMA,
        )
        write_atomically(table, final)
        self.committed_rows += len(self._topics)
        self.committed_files += 1
        self._topics, self._payloads, self._received = [], [], []
        return final


def landing_files(lake: str | Path, zone: str = "landing") -> list[Path]:
    """Committed files of a zone in name order (temporary files excluded)."""
    root = landing_dir(lake, zone)
    if not root.exists():
        return []
    return sorted(p for p in root.glob("dt=*/part-*.parquet") if not p.name.startswith("."))


def iter_landing_rows(path: Path) -> Iterator[dict[str, object]]:
    """Rows of one landing file as dicts (topic, payload, received_ms)."""
    table = pq.read_table(path, schema=LANDING_SCHEMA)
    for batch in table.to_batches(max_chunksize=1024):
        topics = batch.column(0).to_pylist()
        payloads = batch.column(1).to_pylist()
        received = batch.column(2).to_pylist()
        for topic, payload, at in zip(topics, payloads, received, strict=True):
            yield {"topic": topic, "payload": payload, "received_ms": at}
