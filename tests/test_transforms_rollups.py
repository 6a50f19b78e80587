"""DeviceHourlyRollups and CustomerDailyUsage on handwritten lake rows (event time, DirectRunner)."""

from __future__ import annotations

import itertools
from typing import Any

import apache_beam as beam
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # not collected
from apache_beam.testing.util import assert_that, equal_to

from fleetpulse.pipeline.model import CustomerDay, DeviceHour
from fleetpulse.pipeline.transforms import CustomerDailyUsage, DeviceHourlyRollups, lake_columns
from fleetpulse.pipeline.transforms.rollups import CustomerDayFn, DeviceHourFn, device_hour

T0 = 1_709_510_400_000  # 2024-03-04T00:00:00Z
H = 3_600_000
DAY = 24 * H


def rec(device: str, ts_ms: int, seq: int, kind: str, fw: str = "2.4.1", gateway: str = "g1",
        customer: str = "c1", **body: Any) -> dict[str, Any]:
    row: dict[str, Any] = dict.fromkeys(lake_columns())
    row.update(customer_id=customer, site_id="s1", gateway_id=gateway, device_id=device,
               ts_ms=ts_ms, boot=1, seq=seq, kind=kind, fw=fw, received_ms=ts_ms + 5000, **body)
    return row


def usage(device: str, ts_ms: int, seq: int, *quantities: tuple[str, float, str], **kw: Any) -> dict[str, Any]:
    qs = [{"name": n, "value": v, "unit": u} for n, v, u in quantities]
    return rec(device, ts_ms, seq, "usage", period_s=60, quantities=qs, **kw)


# d1 upgrades from 2.4.1 to 2.5.0 during hour 1; d2 sits behind another gateway.
ROWS = [
    rec("d1", T0 + H + 10_000, 7, "heartbeat", fw="2.5.0", interval_s=60),
    rec("d1", T0 + 10_000, 0, "heartbeat", interval_s=60),
    usage("d1", T0 + 20_000, 1, ("runtime", 30, "s"), ("energy", 0.25, "kWh")),
    rec("d1", T0 + 30_000, 2, "feature", feature="scan", count=2),
    rec("d1", T0 + 40_000, 3, "error", code="E1", severity="error"),
    rec("d1", T0 + 41_000, 4, "error", code="W9", severity="warning"),  # not an error for health
    usage("d1", T0 + H + 20_000, 8, ("runtime", 12.5, "s")),
    rec("d1", T0 + H + 30_000, 9, "error", fw="2.5.0", code="E7", severity="critical"),
    rec("d1", T0 + 70_000, 5, "heartbeat", interval_s=60),
    usage("d1", T0 + 80_000, 6, ("runtime", 0.5, "s")),
    # Two records at the same instant: the higher seq is the latest.
    rec("d2", T0 + 50_000, 1, "feature", fw="1.9.0", gateway="g2", feature="copy", count=1),
    rec("d2", T0 + 50_000, 2, "heartbeat", fw="1.10.0", gateway="g2", interval_s=300),
    usage("d2", T0 + 45_000, 0, ("runtime", 100, "s"), gateway="g2", fw="1.9.0"),
]

D1_H0 = DeviceHour(
    customer_id="c1", site_id="s1", gateway_id="g1", device_id="d1", hour_ms=T0,
    records=7, heartbeats=2, expected_heartbeats=60.0, usage_records=2, feature_uses=2,
    errors=1, critical_errors=0, usage={"energy_kWh": 0.25, "runtime_s": 30.5},
    features={"scan": 2}, error_fw={"2.4.1": 1}, fw="2.4.1", last_ts_ms=T0 + 80_000,
    seq_spans={1: (0, 6, 7)},
)
D1_H1 = DeviceHour(
    customer_id="c1", site_id="s1", gateway_id="g1", device_id="d1", hour_ms=T0 + H,
    records=3, heartbeats=1, expected_heartbeats=60.0, usage_records=1, feature_uses=0,
    errors=1, critical_errors=1, usage={"runtime_s": 12.5}, features={},
    error_fw={"2.5.0": 1}, fw="2.5.0", last_ts_ms=T0 + H + 30_000,
    seq_spans={1: (7, 9, 3)},
)
D2_H0 = DeviceHour(
    customer_id="c1", site_id="s1", gateway_id="g2", device_id="d2", hour_ms=T0,
    records=3, heartbeats=1, expected_heartbeats=12.0, usage_records=1, feature_uses=1,
    errors=0, critical_errors=0, usage={"runtime_s": 100.0}, features={"copy": 1},
    error_fw={}, fw="1.10.0", last_ts_ms=T0 + 50_000,
    seq_spans={1: (0, 2, 3)},
)
C1_DAY = CustomerDay(
    customer_id="c1", day="2024-03-04", reporting_devices=("d1", "d2"),
    active_devices=("d1", "d2"), gateways=("g1", "g2"), heartbeats=4,
    expected_heartbeats=1440.0 + 288.0, heartbeat_interval_s=60,
    usage={"energy_kWh": 0.25, "runtime_s": 143.0}, features={"copy": 1, "scan": 2},
    errors=2, critical_errors=1, error_fw={"2.4.1": 1, "2.5.0": 1},
    device_fw={"d1": "2.5.0", "d2": "1.10.0"},
    records=13, expected_records=13,  # d1 seq 0-9 and d2 seq 0-2, nothing missing
)


def hour(device: str, hour_ms: int, customer: str = "c1", **values: Any) -> DeviceHour:
    fields: dict[str, Any] = dict(
        customer_id=customer, site_id="s1", gateway_id="g1", device_id=device, hour_ms=hour_ms,
        records=1, heartbeats=0, expected_heartbeats=0.0, usage_records=0, feature_uses=0,
        errors=0, critical_errors=0, fw="3.0.0", last_ts_ms=hour_ms + 1000,
    )
    fields.update(values)
    return DeviceHour(**fields)


def test_hourly_rollups_on_event_time_feed_the_daily_usage() -> None:
    pipeline = BeamTestPipeline()
    hours = pipeline | "Rows" >> beam.Create(ROWS) | DeviceHourlyRollups()
    assert_that(hours, equal_to([D1_H0, D1_H1, D2_H0]), label="device hours")
    assert_that(hours | "Day" >> CustomerDailyUsage(), equal_to([C1_DAY]), label="customer day")

    # The batch window mode (global window, window start in the key) gives the same rows.
    batch_hours = pipeline | "Rows again" >> beam.Create(ROWS) | "Batch hours" >> DeviceHourlyRollups(
        window_mode="batch"
    )
    assert_that(batch_hours, equal_to([D1_H0, D1_H1, D2_H0]), label="batch device hours")
    assert_that(
        batch_hours | "Batch day" >> CustomerDailyUsage(window_mode="batch"),
        equal_to([C1_DAY]),
        label="batch customer day",
    )

    # Handwritten hours: two customers, a UTC day boundary, a device that changes
    # its heartbeat interval, and an hour restated by a late pane (5 records, then 6).
    literal = [
        hour("a", T0 + 22 * H, heartbeats=60, expected_heartbeats=60.0, usage_records=1,
             usage={"runtime_s": 1.0}),
        hour("a", T0 + 23 * H, records=5, heartbeats=4, expected_heartbeats=12.0, fw="3.1.0",
             last_ts_ms=T0 + 23 * H + 9),
        hour("a", T0 + 23 * H, records=6, heartbeats=5, expected_heartbeats=12.0, fw="3.1.0",
             last_ts_ms=T0 + 23 * H + 10),
        hour("b", T0 + 23 * H, gateway_id="g9", heartbeats=1, expected_heartbeats=12.0, errors=2,
             error_fw={"3.0.0": 2}),
        hour("a", T0 + DAY, heartbeats=1, expected_heartbeats=60.0, usage={"pages_pages": 3.0},
             usage_records=1, features={"scan": 4}, feature_uses=4),
        hour("z", T0 + 5 * H, customer="c2", critical_errors=1, errors=1, error_fw={"3.0.0": 1}),
    ]
    days = pipeline | "Hours" >> beam.Create(literal) | "Literal days" >> CustomerDailyUsage()
    assert_that(
        days,
        equal_to([
            CustomerDay(
                customer_id="c1", day="2024-03-04", reporting_devices=("a", "b"),
                active_devices=("a",), gateways=("g1", "g9"), heartbeats=66,
                # a's latest interval is 300 s (its 23:00 hour), b's too: 2 × 288
                expected_heartbeats=576.0, heartbeat_interval_s=300, usage={"runtime_s": 1.0},
                features={}, errors=2, critical_errors=0, error_fw={"3.0.0": 2},
                device_fw={"a": "3.1.0", "b": "3.0.0"},
            ),
            CustomerDay(
                customer_id="c1", day="2024-03-05", reporting_devices=("a",),
                active_devices=("a",), gateways=("g1",), heartbeats=1,
                expected_heartbeats=1440.0, heartbeat_interval_s=60, usage={"pages_pages": 3.0},
                features={"scan": 4}, errors=0, critical_errors=0, error_fw={},
                device_fw={"a": "3.0.0"},
            ),
            CustomerDay(
                customer_id="c2", day="2024-03-04", reporting_devices=("z",), active_devices=(),
                gateways=("g1",), heartbeats=0, expected_heartbeats=0.0, heartbeat_interval_s=0,
                usage={}, features={}, errors=1, critical_errors=1, error_fw={"3.0.0": 1},
                device_fw={"z": "3.0.0"},
            ),
        ]),
        label="literal days",
    )
    pipeline.run().wait_until_finish()


def test_sequence_gaps_show_as_records_missing_from_the_day() -> None:
    # d1 lost seq 3 and 8 on the way: 13 numbered, 11 arrived.
    lost = [r for r in ROWS if not (r["device_id"] == "d1" and r["seq"] in (3, 8))]
    with BeamTestPipeline() as pipeline:
        days = (
            pipeline
            | beam.Create(lost)
            | DeviceHourlyRollups(window_mode="batch")
            | CustomerDailyUsage(window_mode="batch")
            | beam.Map(lambda day: (day.records, day.expected_records))
        )
        assert_that(days, equal_to([(11, 13)]))


def _combine_in_parts(fn: Any, parts: list[list[Any]]) -> Any:
    accumulators = []
    for part in parts:
        acc = fn.create_accumulator()
        for element in part:
            acc = fn.add_input(acc, element)
        accumulators.append(acc)
    return fn.extract_output(fn.merge_accumulators(accumulators))


def test_device_hour_combine_is_order_and_split_independent() -> None:
    fn = DeviceHourFn()
    d1_h0 = [r for r in ROWS if r["device_id"] == "d1" and r["ts_ms"] < T0 + H]
    key = ("c1", "s1", "g1", "d1")
    expected = device_hour(key, T0, _combine_in_parts(fn, [d1_h0]))
    assert expected == D1_H0
    for order in itertools.islice(itertools.permutations(d1_h0), 0, None, 97):
        for cut in (0, 2, 5):
            parts = [list(order[:cut]), list(order[cut:]), []]
            assert device_hour(key, T0, _combine_in_parts(fn, parts)) == expected
            # merging merged accumulators (a runner may combine in several levels)
            nested = fn.merge_accumulators([
                fn.merge_accumulators([_acc(fn, order[:cut])]),
                fn.merge_accumulators([_acc(fn, order[cut:]), fn.create_accumulator()]),
            ])
            assert device_hour(key, T0, nested) == expected


def _acc(fn: Any, elements: Any) -> Any:
    acc = fn.create_accumulator()
    for element in elements:
        acc = fn.add_input(acc, element)
    return acc


def test_customer_day_combine_keeps_the_largest_restatement_whatever_the_order() -> None:
    fn = CustomerDayFn()
    small = hour("a", T0, records=2, heartbeats=2)
    large = hour("a", T0, records=3, heartbeats=3)
    other = hour("b", T0, records=1)
    for order in itertools.permutations([small, large, other]):
        for cut in range(4):
            merged = _combine_in_parts(fn, [list(order[:cut]), list(order[cut:])])
            assert merged == {("a", T0): large, ("b", T0): other}
