"""StatefulDedupe on a TestStream: copies dropped across bundles and watermark advances,
state forgotten after the TTL (the device's event time) or beyond the per-device cap, and
every record either sent or counted as a duplicate. Streaming DirectRunner."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream  # not collected
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from fleetpulse.pipeline.transforms.stateful_dedupe import METRICS_NAMESPACE, StatefulDedupe

T0 = 1_709_510_400_000  # 2024-03-04T00:00:00Z
H = 3_600_000


def row(device: str, boot: int, seq: int, ts_ms: int, received_ms: int = 0) -> dict[str, Any]:
    return {"device_id": device, "boot": boot, "seq": seq, "ts_ms": ts_ms, "received_ms": received_ms}


def at(ms: int) -> Timestamp:
    return Timestamp(micros=ms * 1000)


def stamped(*rows: dict[str, Any]) -> list[TimestampedValue]:
    return [TimestampedValue(r, at(r["ts_ms"])) for r in rows]


def ident(r: dict[str, Any]) -> tuple[str, int, int, int]:
    return (r["device_id"], r["boot"], r["seq"], r["received_ms"])


def run_stream(stream: BeamTestStream, expected: list[tuple[str, int, int, int]], **dedupe: Any) -> None:
    # Counters are checked on the batch runner below: the streaming DirectRunner
    # reports only the first bundle's metrics of a TestStream pipeline (Beam 2.77).
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as pipeline:
        out = pipeline | stream | StatefulDedupe(**dedupe) | beam.Map(ident)
        assert_that(out, equal_to(expected))


def test_copies_are_dropped_across_bundles_and_watermarks() -> None:
    stream = (
        BeamTestStream()
        .advance_watermark_to(at(T0))
        .add_elements(stamped(row("d1", 1, 0, T0 + 1000, received_ms=1), row("d1", 1, 1, T0 + 2000, 1)))
        .advance_watermark_to(at(T0 + H))
        # a resent batch: the same records again, received later
        .add_elements(stamped(row("d1", 1, 0, T0 + 1000, received_ms=2), row("d1", 1, 1, T0 + 2000, 2)))
        # the same seq in another boot, and on another device, are different records
        .add_elements(stamped(row("d1", 2, 0, T0 + 3000, received_ms=3), row("d2", 1, 0, T0 + 1000, 3)))
        .advance_watermark_to(at(T0 + 2 * H))
        .add_elements(stamped(row("d2", 1, 0, T0 + 1000, received_ms=4)))
        .advance_watermark_to_infinity()
    )
    run_stream(
        stream,
        [("d1", 1, 0, 1), ("d1", 1, 1, 1), ("d1", 2, 0, 3), ("d2", 1, 0, 3)],
        ttl_s=24 * 3600,
    )


def test_state_expires_on_the_devices_event_time_and_an_older_copy_passes_counted() -> None:
    stream = (
        BeamTestStream()
        .advance_watermark_to(at(T0))
        .add_elements(stamped(row("d1", 1, 0, T0, received_ms=1), row("d2", 1, 0, T0, received_ms=1)))
        # d1 sends a record two TTLs (2 h) newer: its seq 0 is forgotten; d2's is not
        .add_elements(stamped(row("d1", 1, 1, T0 + 2 * H, received_ms=1)))
        .advance_watermark_to(at(T0 + 3 * H))
        .add_elements(stamped(row("d1", 1, 0, T0, received_ms=2), row("d1", 1, 1, T0 + 2 * H, 2),
                              row("d2", 1, 0, T0, received_ms=2)))
        .advance_watermark_to_infinity()
    )
    run_stream(
        stream,
        # d1 seq 0's copy cannot be checked any more: let through, not silently dropped
        [("d1", 1, 0, 1), ("d2", 1, 0, 1), ("d1", 1, 1, 1), ("d1", 1, 0, 2)],
        ttl_s=3600,
    )


def test_state_per_device_is_capped_oldest_first() -> None:
    first = [row("d1", 1, seq, T0 + seq * 1000, received_ms=1) for seq in range(20)]
    stream = (
        BeamTestStream()
        .advance_watermark_to(at(T0))
        .add_elements(stamped(*first))
        .add_elements(stamped(row("d1", 1, 0, T0, received_ms=2), row("d1", 1, 19, T0 + 19_000, 2)))
        .advance_watermark_to_infinity()
    )
    run_stream(
        stream,
        [ident(r) for r in first] + [("d1", 1, 0, 2)],  # the oldest was forgotten, the newest not
        ttl_s=24 * 3600,
        max_pairs_per_device=10,
    )


def test_counters_add_up() -> None:
    rows = [row("d1", 1, seq, T0 + seq, received_ms=copy) for copy in (1, 2) for seq in range(5)]
    rows.append(row("d2", 1, 0, T0))
    pipeline = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    out = pipeline | beam.Create(rows) | StatefulDedupe() | beam.Map(lambda r: (r["device_id"], r["seq"]))
    assert_that(out, equal_to([("d1", seq) for seq in range(5)] + [("d2", 0)]))
    result = pipeline.run()
    result.wait_until_finish()
    counters = {
        c.key.metric.name: c.committed
        for c in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    }
    assert counters["received"] == 11
    assert counters["sent"] == 6
    assert counters["duplicates"] == 5
