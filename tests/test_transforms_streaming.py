"""DeviceHourlyRollups on a TestStream: windows fire on the watermark, late data within
allowed lateness restates the hour, later data is dropped, and the daily rollup counts a
restated hour once. Streaming DirectRunner; time comes from the watermark, not sleeps."""

from __future__ import annotations

from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # not collected
from apache_beam.testing.test_stream import TestStream as BeamTestStream  # not collected
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.transforms.trigger import AfterCount, AfterWatermark
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Timestamp

from fleetpulse.pipeline.transforms import CustomerDailyUsage, DeviceHourlyRollups, lake_columns

T0 = 1_709_510_400_000  # 2024-03-04T00:00:00Z
H = 3_600_000


def rec(ts_ms: int, seq: int, kind: str, **body: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(lake_columns())
    row.update(customer_id="c1", site_id="s1", gateway_id="g1", device_id="d1", ts_ms=ts_ms,
               boot=1, seq=seq, kind=kind, fw="2.4.1", received_ms=ts_ms, **body)
    return row


def runtime(ts_ms: int, seq: int, seconds: float) -> dict[str, Any]:
    return rec(ts_ms, seq, "usage", period_s=60,
               quantities=[{"name": "runtime", "value": seconds, "unit": "s"}])


def at(ms: int) -> Timestamp:
    return Timestamp(micros=ms * 1000)


def arriving(*rows: dict[str, Any]) -> list[TimestampedValue]:
    # The source stamps arrival time; the rollup must re-stamp with event time.
    return [TimestampedValue(row, at(row["received_ms"] + 10 * H)) for row in rows]


class PaneOf(beam.DoFn):
    def process(self, hour: Any, pane: Any = beam.DoFn.PaneInfoParam) -> Any:
        yield (hour.hour_ms, hour.records, hour.usage.get("runtime_s"), pane.timing)


def test_hourly_rollups_fire_on_the_watermark_and_restate_late_hours() -> None:
    stream = (
        BeamTestStream()
        .advance_watermark_to(at(T0))
        .add_elements(arriving(rec(T0 + 10_000, 0, "heartbeat", interval_s=60),
                               runtime(T0 + 20_000, 1, 2.0)))
        .add_elements(arriving(runtime(T0 + H + 5_000, 5, 4.0)))
        .advance_watermark_to(at(T0 + H + 60_000))  # hour 0 is complete: on-time pane
        .add_elements(arriving(runtime(T0 + 30_000, 2, 1.5)))  # late, within lateness
        .advance_watermark_to(at(T0 + 4 * H))  # hour 0 expired, hour 1 complete
        .add_elements(arriving(runtime(T0 + 40_000, 3, 100.0)))  # beyond allowed lateness
        .advance_watermark_to_infinity()
    )
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with BeamTestPipeline(options=options) as pipeline:
        hours = pipeline | stream | DeviceHourlyRollups(
            allowed_lateness_s=2 * 3600, trigger=AfterWatermark(late=AfterCount(1))
        )
        assert_that(
            hours | beam.ParDo(PaneOf()),
            equal_to([
                (T0, 2, 2.0, beam.utils.windowed_value.PaneInfoTiming.ON_TIME),
                (T0, 3, 3.5, beam.utils.windowed_value.PaneInfoTiming.LATE),
                (T0 + H, 1, 4.0, beam.utils.windowed_value.PaneInfoTiming.ON_TIME),
            ]),
            label="hour panes",
        )
        days = hours | CustomerDailyUsage()
        assert_that(
            days | beam.Map(lambda d: (d.day, d.heartbeats, d.usage)),
            equal_to([("2024-03-04", 1, {"runtime_s": 7.5})]),  # the restated hour once
            label="day",
        )
