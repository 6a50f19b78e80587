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

import re
from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics

from fleetpulse.schemas import Contract, Rejection, Validator, dead_letter, load_contract

from .rows import lake_columns, lake_row

METRICS_NAMESPACE = "fleetpulse.pipeline.decode"
DEAD_LETTERS = "dead_letters"
SOURCE = "pipeline"
TOPIC = "gateway_batches"


def topic_regex(contract: Contract, name: str = TOPIC) -> re.Pattern[str]:
    """A regex with one named group per ``{placeholder}`` of topic ``name``'s pattern."""
    pattern = contract.topics[name]["pattern"]
    parts = re.split(r"\{(\w+)\}", pattern)
    # re.split with a group alternates literal text and placeholder names.
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
    )
    return re.compile(regex)


class _DecodeBatchFn(beam.DoFn):
    """Validates one landing row; yields lake rows and tagged dead letters. Never raises."""

    def __init__(self, contract: Contract | None) -> None:
        self._contract = contract
        self._received = Metrics.counter(METRICS_NAMESPACE, "received")
        self._sent = Metrics.counter(METRICS_NAMESPACE, "sent")
        self._dropped = Metrics.counter(METRICS_NAMESPACE, "dropped")

    def setup(self) -> None:
        contract = self._contract or load_contract(1)
        self._validator = Validator(contract)
        self._columns = lake_columns(contract)
        self._topic_re = topic_regex(contract)
        self._stamp_fields: tuple[str, ...] = tuple(contract.lake["stamp_fields"])

    def _dead(
        self, rejection: Rejection, topic: str | None, at_ms: int, payload: bytes | None
    ) -> pvalue.TaggedOutput:
        self._dropped.inc()
        Metrics.counter(METRICS_NAMESPACE, f"dropped_{rejection.reason}").inc()
        row = dead_letter(rejection, source=SOURCE, topic=topic, at_ms=at_ms, payload=payload)
        return pvalue.TaggedOutput(DEAD_LETTERS, row)

    def process(self, landing: Any) -> Iterator[Any]:
        self._received.inc()
        topic = landing.get("topic") if isinstance(landing, dict) else None
        payload = landing.get("payload") if isinstance(landing, dict) else None
        received_ms = landing.get("received_ms") if isinstance(landing, dict) else None
        if isinstance(payload, bytearray | memoryview):
            payload = bytes(payload)
        elif isinstance(payload, str):
            payload = payload.encode("utf-8")
        if (
            not isinstance(topic, str)
            or not isinstance(payload, bytes)
            or isinstance(received_ms, bool)
            or not isinstance(received_ms, int)
        ):
            # A source bug rather than a device one, but still kept, not lost.
            at_ms = received_ms if isinstance(received_ms, int) else 0
            detail = (
                "landing row must be {topic: str, payload: bytes, received_ms: int}, got "
                f"{type(topic).__name__}/{type(payload).__name__}/{type(received_ms).__name__}"
            )
            yield self._dead(
                Rejection("wrong_type", detail),
                topic if isinstance(topic, str) else None,
                at_ms,
                payload if isinstance(payload, bytes) else None,
            )
            return

        header, records, rejections = self._validator.envelope(payload, now_ms=received_ms)
        if header is not None:
            mismatch = self._topic_mismatch(topic, header)
            if mismatch is not None:
                yield self._dead(mismatch, topic, received_ms, payload)
                return
        for rejection in rejections:
            yield self._dead(rejection, topic, received_ms, payload)
        if header is None:
            return
        for record in records:
            self._sent.inc()
            yield lake_row(self._columns, header, record, received_ms)

    def _topic_mismatch(self, topic: str, header: dict[str, Any]) -> Rejection | None:
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
