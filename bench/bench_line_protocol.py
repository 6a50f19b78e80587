"""Encoding InfluxDB points: FleetPulse's checked encoder against influxdb-client's ``Point``.

The candidate checks every point against the measurement design and escapes
it (``points_to_lines``); the baseline is influxdb-client's ``Point`` builder
serialising the same points with ``to_line_protocol()`` and no checks. The
ratio shows what the safety (design check, refusal of unrepresentable
values) costs relative to the library most users would reach for.
"""

from __future__ import annotations

from typing import Any

from influxdb_client import Point, WritePrecision

from fleetpulse.pipeline.outputs.influx import points_to_lines

from .harness import Comparison, compare

HOUR_S = 3600


def device_points(n: int) -> list[dict[str, Any]]:
    base = 1_785_542_400  # 2026-08-01T00:00:00Z, an hour boundary
    return [
        {
            "measurement": "fp_device_hourly",
            "tags": {"customer_id": f"c-{i % 24:04d}", "site_id": f"c-{i % 24:04d}-s1",
                     "gateway_id": f"c-{i % 24:04d}-gw1", "device_id": f"c-{i % 24:04d}-d{i % 97:03d}"},
            "fields": {"records": 12, "heartbeats": 1, "usage_records": 1, "feature_uses": 2, "errors": 0,
                       "critical_errors": 0, "active": 1, "fw": "3.2.1", "runtime_s": 1800.5,
                       "cycles_count": 14.0, "energy_kWh": 0.42},
            "ts_s": base + (i % 1000) * HOUR_S,
        }
        for i in range(n)
    ]


def client_points(points: list[dict[str, Any]]) -> list[str]:
    out = []
    for p in points:
        point = Point(p["measurement"]).time(p["ts_s"], WritePrecision.S)
        for key, value in p["tags"].items():
            point = point.tag(key, value)
        for key, value in p["fields"].items():
            point = point.field(key, value)
        out.append(point.to_line_protocol())
    return out


def run(quick: bool = False) -> list[Comparison]:
    points = device_points(5_000 if quick else 50_000)
    lines, rejected = points_to_lines(points)
    assert not rejected and len(lines) == len(points)
    return [
        compare(
            "line protocol encoding",
            items=len(points),
            baseline=("influxdb-client Point.to_line_protocol", lambda: client_points(points)),
            candidate=("points_to_lines (design-checked)", lambda: points_to_lines(points)),
            repeats=3,
        )
    ]
