"""InfluxDB sink throughput against a raw POST and against influxdb-client's batching path.

Real servers, started in a temporary directory for the run (the Debian
binaries the integration tests use, through ``tests/servers.py``):

* **sink vs raw** (influxd 1.6, v1 ``/write``): the baseline POSTs prebuilt,
  pre-compressed 5,000-line gzip batches with urllib, so it measures only the
  server and HTTP; the candidate is ``InfluxSink.write_points`` on point dicts,
  including the design check, encoding, gzip and retries bookkeeping.
  Target: at least 0.6x.
* **sink vs naive** (VictoriaMetrics, v2 ``/api/v2/write``; influxd 1.6 has no
  v2 API and influxdb-client speaks only v2): the baseline is what most users
  write first: influxdb-client ``Point`` objects through ``WriteApi`` with its
  default batching options, closed at the end so every point is flushed; the
  candidate is the sink on its v2 transport. Target: at least 3x.

Every timed call writes points with timestamps no other call used (a fresh
hour range per call), so no run overwrites another's points and each pays the
same cost of new points in existing series. Counts are checked after the runs.
"""

from __future__ import annotations

import gzip
import itertools
import json
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from fleetpulse.pipeline.outputs.influx import InfluxConfig, InfluxSink, points_to_lines

from .harness import Comparison, compare

HOUR_S = 3600
BASE_S = 1_785_542_400  # 2026-08-01T00:00:00Z
BATCH_LINES = 5000
REPEATS = 3


def device_points(n: int, first_hour_s: int) -> list[dict[str, Any]]:
    """``n`` device-hour points over 2,328 series, 100 hours from ``first_hour_s``."""
    points = []
    for i in range(n):
        customer = f"c-{i % 24:04d}"
        points.append(
            {
                "measurement": "fp_device_hourly",
                "tags": {
                    "customer_id": customer,
                    "site_id": f"{customer}-s1",
                    "gateway_id": f"{customer}-gw1",
                    "device_id": f"{customer}-d{i % 97:03d}",
                },
                "fields": {
                    "records": 12 + i % 7,
                    "heartbeats": 1,
                    "usage_records": 1,
                    "feature_uses": 2,
                    "errors": 0,
                    "critical_errors": 0,
                    "active": 1,
                    "fw": "3.2.1",
                    "runtime_s": 1800.5,
                    "cycles_count": 14.0,
                    "energy_kWh": 0.42,
                },
                "ts_s": first_hour_s + (i // 2328) * HOUR_S,
            }
        )
    return points


class Hours:
    """Hands out disjoint hour ranges so no timed call overwrites another's points."""

    def __init__(self, points_per_call: int) -> None:
        self.span_s = (points_per_call // 2328 + 1) * HOUR_S
        self._next = itertools.count()

    def next_start(self) -> int:
        return BASE_S + next(self._next) * self.span_s


def gzip_batches(lines: list[str]) -> list[bytes]:
    return [
        gzip.compress("\n".join(lines[i : i + BATCH_LINES]).encode(), compresslevel=1)
        for i in range(0, len(lines), BATCH_LINES)
    ]


def post(url: str, body: bytes, headers: dict[str, str]) -> None:
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()


def prepared(make: Callable[[int], Any], count: int, hours: Hours) -> Iterator[tuple[int, Any]]:
    """Inputs for ``count`` timed calls, built before timing starts."""
    return iter([(start, make(start)) for start in (hours.next_start() for _ in range(count))])


def influxql(port: int, query: str, db: str) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"q": query, "db": db, "epoch": "s"})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/query?{params}", method="POST")
    with urllib.request.urlopen(request, timeout=60) as response:
        result = json.load(response)
    rows = []
    for statement in result["results"]:
        for series in statement.get("series", []):
            rows += [dict(zip(series["columns"], v, strict=True)) for v in series["values"]]
    return rows


def sink_vs_raw(workdir: Path, n: int) -> Comparison:
    from tests.servers import influxdb_v1

    server = influxdb_v1(workdir / "influxdb").start()
    try:
        port = server.port
        influxql(port, "CREATE DATABASE bench", "bench")
        url = f"http://127.0.0.1:{port}/write?db=bench&precision=s"
        headers = {"Content-Type": "text/plain; charset=utf-8", "Content-Encoding": "gzip"}
        hours = Hours(n)
        raw_inputs = prepared(
            lambda s: gzip_batches(points_to_lines(device_points(n, s))[0]), REPEATS, hours
        )
        sink_inputs = prepared(lambda s: device_points(n, s), REPEATS, hours)
        config = InfluxConfig(url=f"http://127.0.0.1:{port}", api_version=1, database="bench")
        sink = InfluxSink(config)

        def raw() -> None:
            for body in next(raw_inputs)[1]:
                post(url, body, headers)

        def candidate() -> None:
            result = sink.write_points(next(sink_inputs)[1])
            assert result.sent == n and not result.rejected, result.rejected[:3]

        comparison = compare(
            "InfluxDB sink vs raw POST (influxd 1.6)",
            items=n,
            baseline=("raw POST of prebuilt 5,000-line gzip batches", raw),
            candidate=("InfluxSink.write_points (check+encode+gzip+POST)", candidate),
            repeats=REPEATS,
            target_ratio=0.6,
        )
        sink.close()
        [row] = influxql(port, "SELECT count(records) FROM fp_device_hourly", "bench")
        assert row["count"] == 2 * REPEATS * n, row
        return comparison
    finally:
        server.stop()


def sink_vs_naive(workdir: Path, n: int) -> Comparison:
    from influxdb_client import InfluxDBClient, Point, WritePrecision
    from influxdb_client.client.write_api import WriteOptions

    from tests.servers import victoria_metrics

    server = victoria_metrics(workdir / "vm").start()
    try:
        url = f"http://127.0.0.1:{server.port}"
        # VictoriaMetrics drops samples older than its retention: recent hours.
        hours = Hours(n)
        now_hour = int(time.time()) // HOUR_S * HOUR_S
        offset = now_hour - 40 * 24 * HOUR_S - BASE_S
        naive_inputs = prepared(lambda s: device_points(n, s + offset), REPEATS, hours)
        sink_inputs = prepared(lambda s: device_points(n, s + offset), REPEATS, hours)
        config = InfluxConfig(url=url, api_version=2, token="t", org="o", bucket="bench")
        sink = InfluxSink(config)

        def naive() -> None:
            points = next(naive_inputs)[1]
            with InfluxDBClient(url=url, token="t", org="o") as client:
                with client.write_api(write_options=WriteOptions()) as write_api:
                    for p in points:
                        point = Point(p["measurement"]).time(p["ts_s"], WritePrecision.S)
                        for key, value in p["tags"].items():
                            point = point.tag(key, value)
                        for key, value in p["fields"].items():
                            point = point.field(key, value)
                        write_api.write(bucket="bench", record=point)

        def candidate() -> None:
            result = sink.write_points(next(sink_inputs)[1])
            assert result.sent == n and not result.rejected, result.rejected[:3]

        comparison = compare(
            "InfluxDB sink vs naive influxdb-client (VictoriaMetrics, v2 API)",
            items=n,
            baseline=("influxdb-client Point + default batching", naive),
            candidate=("InfluxSink.write_points (v2)", candidate),
            repeats=REPEATS,
            target_ratio=3.0,
        )
        sink.close()
        with urllib.request.urlopen(f"{url}/internal/force_flush", timeout=30):
            pass
        query = urllib.parse.urlencode(
            {"query": "sum(count_over_time(fp_device_hourly_records[1000d]))"}
        )
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=60) as response:
            [sample] = json.load(response)["data"]["result"]
        assert int(float(sample["value"][1])) == 2 * REPEATS * n, sample
        return comparison
    finally:
        server.stop()


def run(quick: bool = False) -> list[Comparison]:
    n = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="fp-bench-influx-") as tmp:
        return [sink_vs_raw(Path(tmp), n), sink_vs_naive(Path(tmp), n)]
