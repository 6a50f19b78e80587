"""The streaming job's middle (ProcessTelemetry) on a TestStream of broker messages: hourly
windows fire on the watermark, a late record within the allowed lateness restates its hour
(a new, larger pane), a resent batch changes nothing, a record beyond the lateness is
dropped from the rollups, and bad messages become dead letters. Streaming DirectRunner."""

from __future__ import annotations

import json
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream  # not collected
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from fleetpulse.pipeline.jobs.ingest import ProcessTelemetry

from .test_ingest_support import T0, H, topic

RECEIVED = T0 + 10 * H  # the validator bounds event time by when the batch was received


def at(ms: int) -> Timestamp:
    return Timestamp(micros=ms * 1000)


def usage(seq: int, ts_ms: int, seconds: float) -> dict[str, Any]:
    return {"device_id": "d1", "ts_ms": ts_ms, "boot": 1, "seq": seq, "kind": "usage", "fw": "2.4.1",
            "period_s": 60, "quantities": [{"name": "runtime", "value": seconds, "unit": "s"}]}


def batch(n: int, *records: dict[str, Any]) -> TimestampedValue:
    envelope = {"v": 1, "customer_id": "c1", "site_id": "c1-s1", "gateway_id": "c1-gw1",
                "batch_seq": n, "sent_ms": RECEIVED, "records": list(records)}
    row = {"topic": topic("c1", "c1-s1", "c1-gw1"), "payload": json.dumps(envelope).encode(),
           "received_ms": RECEIVED}
    return TimestampedValue(row, at(min(r["ts_ms"] for r in records)))  # as ReadFromMqtt stamps


class PaneOf(beam.DoFn):
    def process(self, hour: Any, pane: Any = beam.DoFn.PaneInfoParam) -> Any:
        yield (hour.hour_ms, hour.records, hour.usage.get("runtime_s"), pane.timing)


def test_hours_fire_on_the_watermark_and_late_records_restate_them() -> None:
    late = batch(3, usage(2, T0 + 30_000, 1.5))
    stream = (
        BeamTestStream()
        .advance_watermark_to(at(T0))
        .add_elements([batch(1, usage(0, T0 + 10_000, 2.0), usage(1, T0 + 20_000, 3.0))])
        .add_elements([batch(2, usage(5, T0 + H + 5_000, 4.0))])
        .advance_watermark_to(at(T0 + H + 60_000))  # hour 0 complete: on-time pane
        .add_elements([late, late])  # late within lateness, and resent
        .advance_watermark_to(at(T0 + 4 * H))  # hour 0 expired (lateness 2 h), hour 1 complete
        .add_elements([batch(4, usage(3, T0 + 40_000, 100.0))])  # beyond lateness
        .add_elements([TimestampedValue({"topic": "x", "payload": b"\xff", "received_ms": RECEIVED},
                                        at(T0 + 4 * H))])
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as pipeline:
        out = pipeline | stream | ProcessTelemetry(allowed_lateness_s=2 * 3600)
        assert_that(
            out["hours"] | beam.ParDo(PaneOf()),
            equal_to([
                (T0, 2, 5.0, PaneInfoTiming.ON_TIME),
                (T0, 3, 6.5, PaneInfoTiming.LATE),  # restated whole: overwrites the earlier point
                (T0 + H, 1, 4.0, PaneInfoTiming.ON_TIME),
            ]),
            label="hour panes",
        )
        assert_that(
            out["records"] | beam.Map(lambda r: r["seq"]),
            equal_to([0, 1, 5, 2, 3]),  # the resent copy removed; the too-late record still archived
            label="records",
        )
        assert_that(
            out["dead_letters"] | beam.Map(lambda d: d["reason"]),
            equal_to(["not_utf8"]),
            label="dead letters",
        )
