"""DecodeBatches: raw gateway batch messages → validated lake rows + dead letters.

Input elements are *landing rows*, what the central broker delivered::

    {"topic": "fleetpulse/v1/customers/c1/sites/s1/gateways/g1/batches",
     "payload": b'{"v": 1, "customer_id": "c1", ...}',
     "received_ms": 1700000000000}

Each message is validated with the shared :class:`~fleetpulse.schemas.Validator`
(``now_ms`` = ``received_ms``, so event time is bounded by when the batch
landed, not by when the pipeline happens to run — a backfill decides exactly
as the live run did). The main output holds one lake row per valid record
(see :mod:`.rows`); the ``dead_letters`` output holds one
:func:`~fleetpulse.schemas.dead_letter` row per rejection:

* the whole message when the envelope breaks the contract, or when the topic's
  customer/site/gateway differ from the envelope's (``topic_mismatch``: a
  gateway publishing under another customer's topic must not be trusted);
* a single record when only that record is bad.

Counters (namespace :data:`METRICS_NAMESPACE`): ``received`` messages,
``sent`` lake rows, ``dropped`` dead-letter rows and ``dropped_<reason>`` per
reason (the reasons are the bounded set :data:`fleetpulse.schemas.REASONS`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from fleetpulse.errors import quote
from fleetpulse.schemas import Contract, Rejection, Validator, dead_letter, load_contract
from fleetpulse.schemas.validate import INT64_MAX, INT64_MIN

from .rows import lake_columns, lake_row

METRICS_NAMESPACE = "fleetpulse.pipeline.decode"
DEAD_LETTERS = "dead_letters"
SOURCE = "pipeline"
TOPIC = "gateway_batches"


#: A dead letter before it becomes a row: (rejection, topic, at_ms, payload)
Dead = tuple[Rejection, str | None, int, bytes | None]


class LandingDecoder:
    """Decodes one landing row at a time, exactly as the contract says; never raises on bad input.

    The per-element path (:class:`DecodeBatches`) and the columnar path
    (:mod:`.arrow_decode`, for every message it cannot take the fast way)
    both decide through this class, so the two give the same rows, reasons
    and details.
    """

    def __init__(self, contract: Contract | None = None) -> None:
        self.contract = contract or load_contract(1)
        self.validator = Validator(self.contract)
        self.columns = lake_columns(self.contract)
        self._topic_re = self.contract.topic_re(TOPIC)
        self._stamp_fields: tuple[str, ...] = tuple(self.contract.lake["stamp_fields"])

    def decode(self, landing: Any) -> tuple[list[dict[str, Any]], list[Dead]]:
        """Lake rows and dead letters of one landing row ``{topic, payload, received_ms}``."""
        topic = landing.get("topic") if isinstance(landing, dict) else None
        payload = landing.get("payload") if isinstance(landing, dict) else None
        received_ms = landing.get("received_ms") if isinstance(landing, dict) else None
        if isinstance(payload, bytearray | memoryview):
            payload = bytes(payload)
        elif isinstance(payload, str):
            # surrogatepass: a lone surrogate keeps its code unit (and the Validator says not_utf8).
            payload = payload.encode("utf-8", "surrogatepass")
        if (
            not isinstance(topic, str)
            or not isinstance(payload, bytes)
            or type(received_ms) is not int
            or not INT64_MIN <= received_ms <= INT64_MAX  # the lake's received_ms column
        ):
            # A source bug rather than a device one, but still kept, not lost.
            at_ms = received_ms if type(received_ms) is int and INT64_MIN <= received_ms <= INT64_MAX else 0
            detail = (
                "landing row must be {topic: str, payload: bytes, received_ms: int64}, got "
                f"{type(topic).__name__}/{type(payload).__name__}/{quote(received_ms, 40)}"
            )
            rejection = Rejection("wrong_type", detail)
            return [], [(
                rejection,
                topic if isinstance(topic, str) else None,
                at_ms,
                payload if isinstance(payload, bytes) else None,
            )]

        header, records, rejections = self.validator.envelope(payload, now_ms=received_ms)
        if header is not None:
            mismatch = self.topic_mismatch(topic, header)
            if mismatch is not None:
                return [], [(mismatch, topic, received_ms, payload)]
        dead: list[Dead] = [(rejection, topic, received_ms, payload) for rejection in rejections]
        if header is None:
            return [], dead
        rows = [lake_row(self.columns, header, record, received_ms) for record in records]
        return rows, dead

    def topic_mismatch(self, topic: str, header: dict[str, Any]) -> Rejection | None:
        """Why ``topic`` may not carry a batch with this ``header`` (None when it may)."""
        match = self._topic_re.fullmatch(topic)
        if match is None:
            return Rejection("topic_mismatch", f"topic {topic!r} is not a gateway batch topic")
        ids = match.groupdict()
        for name in self._stamp_fields:
            if ids.get(name) != header[name]:
                return Rejection(
                    "topic_mismatch",
                    f"topic says {name}={ids.get(name)!r}, envelope says {header[name]!r}",
                )
        return None


def dead_letter_row(dead: Dead) -> dict[str, Any]:
    """The dead-letter row of one rejection (see :func:`fleetpulse.schemas.dead_letter`)."""
    rejection, topic, at_ms, payload = dead
    return dead_letter(rejection, source=SOURCE, topic=topic, at_ms=at_ms, payload=payload)


class _DecodeBatchFn(beam.DoFn):
    """Validates one landing row; yields lake rows and tagged dead letters. Never raises."""

    def __init__(self, contract: Contract | None) -> None:
        self._contract = contract
        self._received = Metrics.counter(METRICS_NAMESPACE, "received")
        self._sent = Metrics.counter(METRICS_NAMESPACE, "sent")
        self._dropped = Metrics.counter(METRICS_NAMESPACE, "dropped")

    def setup(self) -> None:
        self._decoder = LandingDecoder(self._contract)

    def process(self, landing: Any) -> Iterator[Any]:
        self._received.inc()
        rows, dead = self._decoder.decode(landing)
        for one in dead:
            self._dropped.inc()
            Metrics.counter(METRICS_NAMESPACE, f"dropped_{one[0].reason}").inc()
            yield pvalue.TaggedOutput(DEAD_LETTERS, dead_letter_row(one))
        for row in rows:
            self._sent.inc()
            yield row


class DecodeBatches(beam.PTransform):
    """Landing rows → ``main`` lake rows and ``dead_letters`` rows (a DoOutputsTuple).

    Use as ``decoded = landing | DecodeBatches()``, then ``decoded.main`` /
    ``decoded.dead_letters`` (or ``decoded[DEAD_LETTERS]``).
    """

    def __init__(self, contract: Contract | None = None, label: str | None = None) -> None:
        super().__init__(label)
        self._contract = contract

    def expand(self, landing: beam.PCollection) -> pvalue.DoOutputsTuple:
        return landing | "Validate" >> beam.ParDo(_DecodeBatchFn(self._contract)).with_outputs(
            DEAD_LETTERS, main="main"
        )
