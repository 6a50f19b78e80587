"""The InfluxDB sink under refusal and outage: bisection on 400, splitting on 413, restarts.

Run: /tmp/venv/bin/pytest tests/test_influx_batching.py
Unit tests use a fake transport that refuses by content; the 413 test runs a
real ``http.server`` on a free port that refuses bodies above a size; tests
marked ``integration`` write to Debian's influxd 1.6 and read back.
"""

from __future__ import annotations

import gzip
import json
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest

from fleetpulse.pipeline.outputs.influx import (
    InfluxConfig,
    InfluxRefused,
    InfluxSink,
    WriteResult,
    open_sink,
    points_to_lines,
)
from fleetpulse.pipeline.outputs.influx.transport import SendFailure, V1HttpTransport

from . import servers
from .servers import LocalHTTPServer, Server, wait_until

HOUR_S = 3600
DAY_S = 86400
FIRST_HOUR_S = 1_709_251_200  # 2024-03-01T00:00:00Z, a Friday: its shard runs to Thursday
LATER_HOUR_S = FIRST_HOUR_S + 30 * DAY_S  # another shard group (7 days each)


def device_point(device: int, hour_s: int, records: int = 1) -> dict[str, Any]:
    return {
        "measurement": "fp_device_hourly",
        "tags": {
            "customer_id": "c-1",
            "site_id": "s-1",
            "gateway_id": "gw-1",
            "device_id": f"d-{device:04d}",
        },
        "fields": {
            "records": records,
            "heartbeats": 1,
            "usage_records": 0,
            "feature_uses": 0,
            "errors": 0,
            "critical_errors": 0,
            "active": 0,
            "runtime_s": 1.5,
        },
        "ts_s": hour_s,
    }


def many_points(count: int) -> list[dict[str, Any]]:
    """``count`` distinct device-hours: 50 devices x consecutive hours from FIRST_HOUR_S."""
    return [device_point(i % 50, FIRST_HOUR_S + (i // 50) * HOUR_S, i) for i in range(count)]


# ------------------------------------------------------------- unit: fake transport
@dataclass
class RefusingTransport:
    """Refuses (400) every body that contains one of ``bad``; records line counts sent."""

    bad: tuple[str, ...]
    target: str = "http://fake:8086/write?db=x&precision=s"
    sizes: list[int] = field(default_factory=list)

    def send(self, body: str) -> None:
        self.sizes.append(body.count("\n") + 1)
        if any(marker in body for marker in self.bad):
            raise SendFailure("rejected", "bad_request", "HTTP 400: nope", status=400)

    def close(self) -> None:
        """Nothing to release."""


def fake(bad: tuple[str, ...], **kwargs: Any) -> tuple[InfluxSink, RefusingTransport]:
    transport = RefusingTransport(bad)
    config = InfluxConfig(url="http://fake:8086", api_version=1, database="x", batch_size=5000)
    return InfluxSink(config, transport=transport, **kwargs), transport


def test_one_bad_line_in_5000_costs_a_logarithmic_number_of_requests() -> None:
    lines = [f"m,k=v{i} f={i}i {i}" for i in range(5000)]
    sink, transport = fake(("k=v1234 ",))
    result = sink.write_lines(lines)
    assert (result.sent, result.dropped) == (4999, 1)
    [failed] = result.failed
    assert (failed.first_line, failed.line_count, list(failed.lines)) == (1234, 1, [lines[1234]])
    # 1 + 2 per level of a 13-level bisection; the good half of each level is sent once.
    assert len(transport.sizes) == 1 + 2 * 13 and result.splits == 13
    # Each level re-sends the refused part once: about 3x the batch in lines, in all.
    assert sum(transport.sizes) <= 3 * 5000 + 13


def test_the_split_budget_bounds_the_requests_and_drops_the_rest_whole() -> None:
    lines = [f"m f={i}i {i}" for i in range(64)]
    sink, transport = fake(tuple(f"f={i}i " for i in range(64)), max_split_requests=6)
    result = sink.write_lines(lines)
    assert len(transport.sizes) == 1 + 6
    assert (result.sent, result.dropped) == (0, 64)
    assert sum(f.line_count for f in result.failed) == 64
    assert sorted(f.first_line for f in result.failed) == [f.first_line for f in result.failed]
    assert any("split budget" in f.message for f in result.failed if f.line_count > 1)


# ------------------------------------------ unit: encoding overlapped with sending
class Touched(dict[str, Any]):
    """A point that notes when the encoder reads it (the encoder reads the measurement first)."""

    def __init__(self, point: dict[str, Any], log: list[Any]) -> None:
        super().__init__(point)
        self.log = log

    def __getitem__(self, key: str) -> Any:
        if key == "measurement":
            self.log.append(self)
        return super().__getitem__(key)


@dataclass
class WatchingTransport:
    """Accepts every body; notes how many points were encoded and which thread sent it."""

    encoded: list[Any]
    size: int
    target: str = "http://fake:8086/write?db=x&precision=s"
    bodies: list[str] = field(default_factory=list)
    encoded_at_send: list[int] = field(default_factory=list)
    threads: set[str] = field(default_factory=set)
    fail_at: int | None = None  # refuses (401) the request with this number
    wait_for_batch_1: bool = True

    def send(self, body: str) -> None:
        self.threads.add(threading.current_thread().name)
        if not self.encoded_at_send and self.wait_for_batch_1:
            wait_until(
                lambda: len(self.encoded) >= 2 * self.size,
                timeout_s=10,
                what="batch 1 encoded while batch 0 is being sent",
            )
        self.encoded_at_send.append(len(self.encoded))
        if len(self.bodies) == self.fail_at:
            raise SendFailure("terminal", "auth", "HTTP 401: unauthorized", status=401)
        self.bodies.append(body)

    def close(self) -> None:
        """Nothing to release."""


def watched(size: int, **kwargs: Any) -> tuple[InfluxSink, WatchingTransport]:
    transport = WatchingTransport([], size, **kwargs)
    config = InfluxConfig(url="http://fake:8086", api_version=1, database="x", batch_size=size)
    return InfluxSink(config, transport=transport), transport


def test_the_next_batch_is_encoded_while_one_is_sent_and_no_further() -> None:
    size = 100
    sink, transport = watched(size)
    plain = many_points(5 * size + 3)
    result = sink.write_points([Touched(p, transport.encoded) for p in plain])
    assert (result.sent, result.batches, result.dropped) == (5 * size + 3, 6, 0)
    # Batch 1 was encoded during the send of batch 0, and then the encoder waited.
    assert transport.encoded_at_send[0] == 2 * size
    assert all(n <= (k + 2) * size for k, n in enumerate(transport.encoded_at_send))
    assert transport.threads == {"influx-sink-send_0"}
    # The same requests, in the same order, as encoding everything first.
    lines = points_to_lines(plain)[0]
    assert transport.bodies == ["\n".join(lines[i : i + size]) for i in range(0, len(lines), size)]


def test_one_batch_is_sent_from_the_calling_thread() -> None:
    sink, transport = watched(100, wait_for_batch_1=False)
    assert sink.write_points(many_points(100)).sent == 100
    assert transport.threads == {threading.current_thread().name}


def test_a_refusal_mid_call_stops_sending_and_every_point_is_still_counted() -> None:
    size = 100
    sink, transport = watched(size, fail_at=1, wait_for_batch_1=False)
    points = many_points(450)
    for i in (10, 250, 420):
        points[i]["fields"]["records"] = -1  # out_of_range: refused before sending
    with pytest.raises(InfluxRefused) as caught:
        sink.write_points(points)
    assert caught.value.batch_index == 1 and caught.value.sent == size
    assert len(transport.bodies) == 1 and len(transport.encoded_at_send) == 2
    # As when everything was encoded before the first send: all 450 received, 3 refused.
    counters = sink.counters.snapshot()
    assert (counters["received"], counters["sent"], counters["dropped"]) == (450, size, 3)
    assert counters["dropped_by_reason"] == {"out_of_range": 3}


def test_a_server_refusal_in_a_later_batch_is_isolated_and_reported_in_order() -> None:
    points = many_points(350)
    points[5]["fields"]["active"] = 2  # refused by the design
    transport = RefusingTransport(("records=250i,",))
    config = InfluxConfig(url="http://fake:8086", api_version=1, database="x", batch_size=100)
    sink = InfluxSink(config, transport=transport)
    result = sink.write_points(points)
    assert (result.sent, result.dropped) == (348, 2)
    [failed] = result.failed
    assert (failed.index, failed.first_line, failed.line_count) == (2, 249, 1)
    assert [(r.point, r.reason) for r in result.rejected] == [
        (points[5], "out_of_range"),
        (points[250], "server_rejected"),
    ]
    assert sink.counters.dropped_by_reason == {"out_of_range": 1, "server_rejected": 1}


# ------------------------------------------------- 413 from a real HTTP server
class SizeLimitedServer:
    """A real HTTP server that answers 413 to bodies above ``limit_bytes`` (uncompressed)."""

    def __init__(self, limit_bytes: int) -> None:
        self.limit_bytes = limit_bytes
        self.accepted: list[list[str]] = []
        self.refused: list[int] = []  # line counts of refused requests
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = gzip.decompress(self.rfile.read(int(self.headers["Content-Length"])))
                lines = raw.decode().split("\n")
                if len(raw) > owner.limit_bytes:
                    owner.refused.append(len(lines))
                    body = b'{"error":"Request Entity Too Large"}'
                    self.send_response(413)
                else:
                    owner.accepted.append(lines)
                    body = b""
                    self.send_response(204)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test asserts on what was recorded."""

        self.server = LocalHTTPServer(Handler)
        self.url = self.server.url

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def size_limited() -> Iterator[SizeLimitedServer]:
    server = SizeLimitedServer(limit_bytes=4000)
    yield server
    server.close()


def test_413_splits_the_batch_and_later_batches_use_the_size_that_fitted(
    size_limited: SizeLimitedServer,
) -> None:
    lines = [f"m,k=v{i:03d} f={i}i {i}" for i in range(400)]  # 20-21 bytes each
    too_big = 'm,k=big s="' + "x" * 5000 + '" 1'
    config = InfluxConfig(url=size_limited.url, api_version=1, database="x", batch_size=200)
    with open_sink(config) as sink:
        result = sink.write_lines([*lines[:100], too_big, *lines[100:]])
    # Every line that fits arrives exactly once, in order, in requests under the limit.
    assert [line for request in size_limited.accepted for line in request] == lines
    assert all(len("\n".join(r).encode()) <= 4000 for r in size_limited.accepted)
    # The first batch (200 lines, ~4.3 kB) is refused and halved; from then on the
    # sink sends at most 100 lines per request, so later batches are not refused.
    assert size_limited.refused[0] == 200 and 200 not in size_limited.refused[1:]
    assert (result.sent, result.dropped) == (400, 1)
    [failed] = result.failed
    assert (failed.first_line, failed.line_count, failed.status) == (100, 1, 413)
    assert "Request Entity Too Large" in failed.message and "INFLUX_BATCH_SIZE" in failed.message
    assert sink.counters.dropped_by_reason == {"server_rejected": 1}


# ------------------------------------------------ integration: InfluxDB 1.x (influxd)
def influxql(port: int, query: str) -> list[dict[str, Any]]:
    params = urllib.parse.urlencode({"q": query, "db": "fleet", "epoch": "s"})
    request = urllib.request.Request(f"http://127.0.0.1:{port}/query?{params}", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        result = json.load(response)
    rows: list[dict[str, Any]] = []
    for statement in result["results"]:
        assert "error" not in statement, statement
        for series in statement.get("series", []):
            for values in series["values"]:
                rows.append(dict(zip(series["columns"], values, strict=True)))
    return rows


def v1_config(port: int, **extra: Any) -> InfluxConfig:
    return InfluxConfig(url=f"http://127.0.0.1:{port}", api_version=1, database="fleet", **extra)


@pytest.mark.integration
def test_one_refused_point_in_5000_is_dead_lettered_and_4999_are_written(
    influxdb_v1: Server,
) -> None:
    port = influxdb_v1.port
    influxql(port, "CREATE DATABASE fleet")
    # `records` is an integer field; in the shard of LATER_HOUR_S another writer
    # made it a string first. Our point passes our validation; influxd refuses it.
    with open_sink(v1_config(port)) as sink:
        seeded = sink.write_lines(
            [f'fp_device_hourly,customer_id=other records="n/a" {LATER_HOUR_S}']
        )
        assert seeded.sent == 1
        points = many_points(4999)
        bad = device_point(7, LATER_HOUR_S)
        points.insert(2500, bad)
        result = sink.write_points(points)
    assert (result.received, result.sent, result.dropped) == (5000, 4999, 1)
    # One bad line: each split has one good half, written once; the bad one is split again.
    assert result.batches == result.splits and result.errors == result.splits + 1
    assert 12 <= result.splits <= 13
    [(point, reason, detail)] = result.rejected
    assert point is bad and reason == "server_rejected"
    assert "field type conflict" in detail and "records" in detail
    [failed] = result.failed
    assert (failed.first_line, failed.line_count, failed.status) == (2500, 1, 400)

    [count] = influxql(
        port, "SELECT count(runtime_s) FROM fp_device_hourly WHERE customer_id='c-1'"
    )
    assert count["count"] == 4999
    assert (
        influxql(
            port,
            f"SELECT * FROM fp_device_hourly WHERE time = {LATER_HOUR_S}s AND customer_id='c-1'",
        )
        == []
    )
    [total] = influxql(port, "SELECT sum(heartbeats) FROM fp_device_hourly WHERE customer_id='c-1'")
    assert total["sum"] == 4999


class PausingTransport:
    """The real v1 transport, pausing before send number ``pause_at`` until ``resume`` is set."""

    def __init__(self, config: InfluxConfig, pause_at: int) -> None:
        self.inner = V1HttpTransport(config)
        self.target = self.inner.target
        self.pause_at, self.sends = pause_at, 0
        self.paused, self.resume = threading.Event(), threading.Event()

    def send(self, body: str) -> None:
        self.sends += 1
        if self.sends == self.pause_at:
            self.paused.set()
            self.resume.wait(timeout=30)
        self.inner.send(body)

    def close(self) -> None:
        self.inner.close()


@pytest.mark.integration
def test_server_down_during_a_write_loses_nothing(tmp_path: Path) -> None:
    server = servers.influxdb_v1(tmp_path / "influxdb").start()
    try:
        port = server.port
        influxql(port, "CREATE DATABASE fleet")
        config = v1_config(
            port, batch_size=1000, max_retry_s=30, backoff_initial_ms=50, backoff_max_ms=500
        )
        transport = PausingTransport(config, pause_at=6)  # 5 batches written, then the outage
        sink = InfluxSink(config, transport=transport)
        points = many_points(20_000)
        outcome: dict[str, Any] = {}

        def write() -> None:
            try:
                outcome["result"] = sink.write_points(points)
            except Exception as exc:  # noqa: BLE001 (reported by the assertion below)
                outcome["error"] = exc

        writer = threading.Thread(target=write)
        writer.start()
        wait_until(transport.paused.is_set, timeout_s=10, what="5 batches written")
        assert sink.counters.sent == 5000
        server.stop()
        transport.resume.set()
        # The write keeps retrying batch 5 while the server is down.
        wait_until(lambda: sink.counters.retries >= 3, timeout_s=10, what="retries while down")
        assert sink.counters.sent == 5000 and writer.is_alive()
        server.start()  # same data directory and port: the same database
        writer.join(timeout=30)
        assert not writer.is_alive() and "error" not in outcome, outcome.get("error")
        result: WriteResult = outcome["result"]
        assert (result.sent, result.dropped, result.rejected) == (20_000, 0, [])
        assert result.retries >= 3 and sink.counters.errors_by_type.get("connection", 0) >= 1
        sink.close()

        [count] = influxql(port, "SELECT count(records) FROM fp_device_hourly")
        assert count["count"] == 20_000
        [total] = influxql(port, "SELECT sum(records) FROM fp_device_hourly")
        assert total["sum"] == sum(range(20_000))
    finally:
        server.stop()
