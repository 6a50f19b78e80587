"""The InfluxDB sink: design checks, config, retry/classification, and writes to real servers.

Run: /tmp/venv/bin/pytest tests/test_influx_sink.py
Unit tests use literal data (and a fake transport/clock for the retry
schedule); the HTTP classification tests run a real ``http.server`` on a free
port; tests marked ``integration`` write to Debian's influxd 1.6 (v1 path) and
victoria-metrics (v2 path, through influxdb-client) and read back.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import math
import shutil
import ssl
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetpulse.errors import ConfigError
from fleetpulse.pipeline.outputs.influx import (
    SINK_REASONS,
    InfluxConfig,
    InfluxRefused,
    InfluxSink,
    InfluxUnavailable,
    InvalidPoint,
    open_sink,
    points_to_lines,
    to_line,
)
from fleetpulse.pipeline.outputs.influx.encoder import PointEncoder
from fleetpulse.pipeline.outputs.influx.line_protocol import TS_S_MAX
from fleetpulse.pipeline.outputs.influx.transport import (
    SendFailure,
    parse_retry_after,
    server_message,
)
from fleetpulse.schemas.influx import DesignViolation, load_influx_design

from .servers import LocalHTTPServer, Server, free_port, wait_until

DAY_S = 86400
HOUR_S = 3600
TOKEN = "tkn-7f3a-SECRET"
PASSWORD = "pw-9c1e-SECRET"


# ---------------------------------------------------------------- literal data
def customer_point(customer: str, day_s: int, n: int, **override: Any) -> dict[str, Any]:
    """A customer-day point whose values depend on (customer, n) so read-back can be exact."""
    health = 35.5 + 20 * n + (0.25 if customer.endswith("2") else 0)
    band = "green" if health >= 70 else "yellow" if health >= 45 else "red"
    fields: dict[str, Any] = {
        "health": health,
        "band": band,
        "band_rank": {"green": 0, "yellow": 1, "red": 2}[band],
        "trend_delta": None if n == 0 else 20.0,
        "adoption": 0.5 + n / 10,
        "usage_per_active_device": 3600.0 * (n + 1),
        "feature_breadth": 0.25,
        "error_rate": 0.125,
        "firmware_currency": 0.75,
        "coverage": 0.9,
        "active_devices": 2 + n,
        "entitled_devices": 10,
        "known_devices": 4,
        "stage": "adopting",
        "low_coverage": n == 1,
        "c_adoption_score": 62.5 + n,
        "c_adoption_contribution": 15.625,
        "c_engagement_score": 80.0,
        "c_engagement_contribution": 28.0,
        "driver": "adoption",
    }
    fields.update(override)
    tags = {"customer_id": customer, "segment": "enterprise", "csm": "Dana Whitfield"}
    if customer.endswith("2"):
        tags = {"customer_id": customer, "segment": "smb", "csm": ""}  # no CSM: tag omitted
    return {"measurement": "fp_customer_daily", "tags": tags, "fields": fields, "ts_s": day_s}


def device_point(customer: str, device: str, hour_s: int, n: int) -> dict[str, Any]:
    return {
        "measurement": "fp_device_hourly",
        "tags": {
            "customer_id": customer,
            "site_id": f"{customer}-site",
            "gateway_id": f"{customer}-gw",
            "device_id": device,
        },
        "fields": {
            "records": 70 + n,
            "heartbeats": 60,
            "usage_records": 6 + n,
            "feature_uses": n,
            "errors": n % 2,
            "critical_errors": 0,
            "active": 1,
            "runtime_s": 1800.5 + n,
            "energy_kWh": 0.125 * (n + 1),
            "fw": "2.4.1",
        },
        "ts_s": hour_s,
    }


def fleet_points(first_day_s: int) -> list[dict[str, Any]]:
    """2 customers x 3 days: 6 customer points, 2 devices x 2 hours a day each: 24 device points."""
    points = []
    for customer in ("c-001", "c-002"):
        for n in range(3):
            day = first_day_s + n * DAY_S
            points.append(customer_point(customer, day, n))
            for d in range(2):
                for h in (9, 14):
                    points.append(
                        device_point(customer, f"{customer}-dev{d}", day + h * HOUR_S, n + d)
                    )
    return points


# ----------------------------------------------------------------------- design
DESIGN = load_influx_design(1)


def test_valid_points_become_lines_with_designed_types() -> None:
    lines, rejected = points_to_lines(
        [customer_point("c-001", 19_000 * DAY_S, 0, health=80), device_point("c-1", "d-1", 3600, 1)]
    )
    assert rejected == []
    customer, device = lines
    assert customer.startswith(
        "fp_customer_daily,csm=Dana\\ Whitfield,customer_id=c-001,segment=enterprise "
    )
    assert "health=80.0," in customer  # int given for a float field is written as a float
    assert "band_rank=2i" in customer and "low_coverage=false" in customer
    assert "trend_delta" not in customer  # None = absent
    assert customer.endswith(f" {19_000 * DAY_S}")
    assert "records=71i" in device and "runtime_s=1801.5" in device and 'fw="2.4.1"' in device


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda p: p.update(measurement="fp_other"), "unknown_measurement"),
        (lambda p: p["tags"].update(region="eu"), "unknown_tag"),
        (lambda p: p["tags"].pop("device_id"), "missing_tag"),
        (lambda p: p["tags"].update(device_id=""), "missing_tag"),
        (lambda p: p["tags"].update(device_id="bad id"), "bad_tag_value"),
        (lambda p: p["tags"].update(device_id=7), "wrong_type"),
        (lambda p: p["fields"].update(colour="red"), "unknown_field"),
        (lambda p: p["fields"].update(energy_furlongs=1.0), "unknown_field"),
        (lambda p: p["fields"].pop("records"), "missing_field"),
        (lambda p: p["fields"].update(records=1.0), "wrong_type"),
        (lambda p: p["fields"].update(records=True), "wrong_type"),
        (lambda p: p["fields"].update(runtime_s="1"), "wrong_type"),
        (lambda p: p["fields"].update(fw=2), "wrong_type"),
        (lambda p: p["fields"].update(active=2), "out_of_range"),
        (lambda p: p["fields"].update(runtime_s=-1.0), "out_of_range"),
        (lambda p: p["fields"].update(runtime_s=float("nan")), "not_finite"),
        (lambda p: p["fields"].update(fw="x" * 65), "string_too_long"),
        (lambda p: p.update(ts_s=HOUR_S + 1), "misaligned_timestamp"),
        (lambda p: p.update(ts_s=3600.0), "bad_timestamp"),
        (lambda p: p.pop("fields"), "not_a_point"),
        (lambda p: p.update(fields=[1]), "not_a_point"),
    ],
)
def test_points_that_break_the_design_are_rejected_with_a_reason(
    change: Callable[[dict[str, Any]], Any], reason: str
) -> None:
    point = device_point("c-1", "d-1", HOUR_S, 0)
    change(point)
    lines, rejected = points_to_lines([point, device_point("c-1", "d-2", HOUR_S, 0)])
    assert len(lines) == 1 and "device_id=d-2" in lines[0]  # the good point still goes
    [(bad, got_reason, detail)] = rejected
    assert bad is point and got_reason == reason and detail
    assert reason in SINK_REASONS


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda f: f.update(band="purple"), "bad_enum"),
        (lambda f: f.update(health=100.5), "out_of_range"),
        (lambda f: f.update(band_rank=3), "out_of_range"),
        (lambda f: f.update(low_coverage=1), "wrong_type"),
        (lambda f: f.update(c_adoption_weight=0.5), "unknown_field"),
        (lambda f: f.pop("band"), "missing_field"),
    ],
)
def test_customer_daily_rules(change: Callable[[dict[str, Any]], Any], reason: str) -> None:
    point = customer_point("c-001", 19_000 * DAY_S, 0)
    change(point["fields"])
    assert [r.reason for r in points_to_lines([point])[1]] == [reason]


def test_customer_daily_timestamp_must_be_a_utc_day_start() -> None:
    [rejected] = points_to_lines([customer_point("c-001", 19_000 * DAY_S + HOUR_S, 0)])[1]
    assert rejected.reason == "misaligned_timestamp" and str(19_000 * DAY_S) in rejected.detail


def test_non_dict_points_are_dead_letters_not_crashes() -> None:
    lines, rejected = points_to_lines([None, "x", 5, {"measurement": "fp_device_hourly"}])
    assert lines == [] and [r.reason for r in rejected] == ["not_a_point"] * 4


def test_design_tags_and_fields_are_disjoint_and_units_come_from_the_contract() -> None:
    device = DESIGN.measurements["fp_device_hourly"]
    assert device.field_spec("energy_kWh") is not None and device.field_spec("energy_kwh") is None
    assert device.window_s == HOUR_S and DESIGN.measurements["fp_customer_daily"].window_s == DAY_S
    for spec in DESIGN.measurements.values():
        assert not set(spec.tags) & set(spec.fields)
    assert [m for m in DESIGN.measurements if "device_id" in DESIGN.measurements[m].tags] == [
        "fp_device_hourly"
    ]


# ---------------------------------------------------------- per-shape encoder
def checked_path(point: Any) -> str | tuple[str, str]:
    """What the sink wrote before the per-shape encoder: design.check, then to_line."""
    try:
        measurement, fields, ts_s = point["measurement"], point["fields"], point["ts_s"]
        tags = point.get("tags") or {}
    except (KeyError, TypeError, AttributeError):
        return ("not_a_point", "expected a dict with measurement, tags, fields, ts_s")
    if not isinstance(tags, Mapping) or not isinstance(fields, Mapping):
        return ("not_a_point", "tags and fields must be mappings")
    try:
        tags, fields, ts_s = DESIGN.check(measurement, tags, fields, ts_s)
        return to_line(measurement, tags, fields, ts_s)
    except (DesignViolation, InvalidPoint) as exc:
        return (exc.reason, exc.detail)


def encoded(encoder: PointEncoder, points: list[Any]) -> list[str | tuple[str, str]]:
    """Each point's line or (reason, detail), in order, from one encode() call."""
    lines, kept, rejected = encoder.encode(points)
    outcome: dict[int, str | tuple[str, str]] = {
        id(p): line for p, line in zip(kept, lines, strict=True)
    }
    outcome.update({id(r.point): (r.reason, r.detail) for r in rejected})
    assert len(outcome) == len(points)
    return [outcome[id(p)] for p in points]


class Loud(str):
    """A str that prints differently from its value: equal is not the same."""

    def __str__(self) -> str:
        return self.upper()

    def __format__(self, spec: str) -> str:
        return self.upper()


TAG_VALUES = [
    "c-1", "c-2", "", None, 7, "bad id", "a\nb", "a\\b", "x" * 65, "é", "Dana, W=x y",
    "nel\x85", Loud("c-1"), "\ud800",
]  # fmt: skip
FIELD_VALUES = [
    0, 1, 2, 3, -1, 2**63 - 1, 2**63, -(2**63) - 1, 10**30, True, False, 0.0, -0.0, 0.5, 99.5,
    100.0, 1e308, -1.0, math.inf, -math.inf, math.nan, "green", "purple", "adopting", 'a"b',
    "a\\b", "a\nb", "x" * 70, "", "日本", None, Fraction(1, 4), Loud("green"),
]  # fmt: skip
FIELD_KEYS = [
    "records", "active", "fw", "runtime_s", "energy_kWh", "health", "band", "band_rank",
    "trend_delta", "low_coverage", "stage", "c_adoption_score", "colour", "time", "",
]  # fmt: skip
TIMESTAMPS = [HOUR_S * 5, DAY_S * 3, HOUR_S + 1, 3600.0, True, (TS_S_MAX // DAY_S + 1) * DAY_S]

mutations = st.one_of(
    st.tuples(st.just("tag"), st.sampled_from(["customer_id", "csm", "device_id", "x"]),
              st.sampled_from(TAG_VALUES)),
    st.tuples(st.just("field"), st.sampled_from(FIELD_KEYS), st.sampled_from(FIELD_VALUES)),
    st.tuples(st.just("drop"), st.sampled_from(FIELD_KEYS + ["customer_id"]), st.none()),
    st.tuples(st.just("ts"), st.none(), st.sampled_from(TIMESTAMPS)),
    st.tuples(st.just("other"), st.sampled_from(["proxy", "measurement", "Loud"]), st.none()),
)  # fmt: skip


def mutated(kind: str, n: int, changes: list[tuple[str, Any, Any]]) -> dict[str, Any]:
    point = (
        device_point(f"c-{n}", f"d-{n}", HOUR_S * (n + 1), n)
        if kind == "device"
        else customer_point(f"c-00{n}", DAY_S * (n + 1), n)
    )
    proxy = False
    for change, key, value in changes:
        if change == "tag":
            point["tags"][key] = value
        elif change == "field":
            point["fields"][key] = value
        elif change == "drop":
            point["tags"].pop(key, None)
            point["fields"].pop(key, None)
        elif change == "ts":
            point["ts_s"] = value
        elif key == "proxy":
            proxy = True
        elif key == "measurement":
            point["measurement"] = "fp_other"
        else:
            point["measurement"] = Loud(point["measurement"])
    if proxy:  # a mapping that is not a dict
        point["tags"] = MappingProxyType(point["tags"])
    return point


@settings(max_examples=300, deadline=None, database=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["device", "customer"]),
            st.integers(0, 2),
            st.lists(mutations, max_size=3),
        ),
        min_size=1,
        max_size=40,
    )
)
def test_the_per_shape_encoder_writes_and_refuses_exactly_what_the_checked_path_does(
    specs: list[tuple[str, int, list[tuple[str, Any, Any]]]],
) -> None:
    points = [mutated(*spec) for spec in specs]
    # Twice through one encoder: the second pass runs on warm caches.
    encoder = PointEncoder(DESIGN, max_series=4, max_strings_per_field=3)
    expected = [checked_path(p) for p in points]
    assert encoded(encoder, points) == expected
    assert encoded(encoder, points) == expected
    assert encoder.cached()["series"] <= 4


def test_values_are_checked_per_point_after_the_shape_is_known() -> None:
    encoder = PointEncoder(DESIGN)
    good = customer_point("c-001", DAY_S, 1)
    changes: list[tuple[str, str, Any, str]] = [
        ("tags", "csm", "Dana\nW", "control_character"),  # a free-text tag: line protocol refuses
        ("tags", "csm", "D\\W", "backslash"),
        ("fields", "stage", "on\x00boarding", "control_character"),
        ("fields", "band", "purple", "bad_enum"),
        ("fields", "health", math.nan, "not_finite"),
        ("fields", "trend_delta", math.inf, "not_finite"),
        ("fields", "health", 100.5, "out_of_range"),
        ("fields", "health", 101, "out_of_range"),  # an int in a float field, converted first
        ("fields", "band_rank", 3, "out_of_range"),
        ("fields", "active_devices", 2**63, "out_of_range"),  # int64, from line protocol
        ("ts_s", "", DAY_S + HOUR_S, "misaligned_timestamp"),
    ]
    for where, key, value, reason in changes:
        bad = customer_point("c-001", DAY_S, 1)
        if where == "ts_s":
            bad["ts_s"] = value
        else:
            bad[where][key] = value
        [line, (got_reason, detail)] = encoded(encoder, [good, bad])
        assert line == checked_path(good) and (got_reason, detail) == checked_path(bad), key
        assert got_reason == reason
    # The tag value escaped on the checked path is written, escaped, on the fast path too.
    spaced = customer_point("c-001", DAY_S, 1)
    spaced["tags"]["csm"] = "Dana W, CSM=1"
    assert encoded(encoder, [spaced]) == [checked_path(spaced)]
    assert "csm=Dana\\ W\\,\\ CSM\\=1," in checked_path(spaced)


def test_encoder_caches_are_bounded() -> None:
    encoder = PointEncoder(DESIGN, max_shapes=2, max_series=10, max_strings_per_field=2)
    points = [device_point("c-1", f"d-{i}", HOUR_S, i) for i in range(25)]
    for i, point in enumerate(points):
        point["fields"]["fw"] = f"1.{i % 5}"
    # Two more shapes (n=0 has no trend_delta): the second finds no room.
    points += [customer_point("c-001", DAY_S, n) for n in range(3)]
    lines, kept, rejected = encoder.encode(points)
    assert rejected == [] and lines == [checked_path(p) for p in points]
    # Series: 25 devices forgotten at 10 and 20, plus c-001. Strings: fw at its cap of 2,
    # and the customer's band, stage and driver.
    assert encoder.cached() == {"shapes": 2, "series": 5 + 1, "strings": 2 + 3}


# ----------------------------------------------------------------------- config
V2_ENV = {
    "INFLUX_URL": "https://influx.example:8086/",
    "INFLUX_TOKEN": TOKEN,
    "INFLUX_ORG": "acme",
    "INFLUX_BUCKET": "fleet",
}


def test_from_env_without_url_is_disabled(caplog: pytest.LogCaptureFixture) -> None:
    assert InfluxConfig.from_env({"PATH": "/bin"}) is None
    with caplog.at_level(logging.WARNING):
        assert InfluxConfig.from_env({"INFLUX_TOKEN": TOKEN, "INFLUX_BUCKET": "b"}) is None
    assert "INFLUX_BUCKET, INFLUX_TOKEN set but INFLUX_URL is not" in caplog.text
    assert TOKEN not in caplog.text


def test_from_env_v2() -> None:
    config = InfluxConfig.from_env(V2_ENV)
    assert config is not None
    assert (config.api_version, config.org, config.bucket, config.token) == (
        2,
        "acme",
        "fleet",
        TOKEN,
    )
    assert config.verify_ssl and config.batch_size == 5000
    assert config.write_target == (
        "https://influx.example:8086/api/v2/write?org=acme&bucket=fleet&precision=s"
    )
    assert TOKEN not in repr(config)


def test_from_env_v1_with_aliases(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    config = InfluxConfig.from_env(
        {
            "INFLUX_HOST": "http://influx:8086",
            "INFLUX_DATABASE": "fleet pulse",
            "INFLUX_RP": "one_year",
            "INFLUX_USERNAME": "writer",
            "INFLUX_PASSWORD": PASSWORD,
            "INFLUX_CA_FILE": str(ca),
            "INFLUX_BATCH_SIZE": "1000",
            "INFLUX_MAX_RETRY_S": "2.5",
            "INFLUX_TOKEN": "",  # empty counts as unset
        }
    )
    assert config is not None
    assert (config.api_version, config.database, config.retention_policy) == (
        1,
        "fleet pulse",
        "one_year",
    )
    assert (config.batch_size, config.max_retry_s, config.ca_file) == (1000, 2.5, str(ca))
    assert config.write_target == "http://influx:8086/write?db=fleet+pulse&rp=one_year&precision=s"
    assert PASSWORD not in repr(config)


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"INFLUX_URL": "http://h:8086"}, "INFLUX_BUCKET"),
        ({**V2_ENV, "INFLUX_DB": "x"}, "INFLUX_API_VERSION"),
        ({**V2_ENV, "INFLUX_API_VERSION": "3"}, "INFLUX_API_VERSION"),
        ({**V2_ENV, "INFLUX_API_VERSION": "1"}, "INFLUX_DB"),
        ({**V2_ENV, "INFLUX_API_VERSION": "1", "INFLUX_DB": "x"}, "INFLUX_TOKEN"),
        (
            {"INFLUX_URL": "http://h:8086", "INFLUX_API_VERSION": "2", "INFLUX_DB": "x"},
            "INFLUX_BUCKET",
        ),
        ({"INFLUX_URL": "http://h:8086", "INFLUX_BUCKET": "b"}, "INFLUX_ORG"),
        ({"INFLUX_URL": "http://h:8086", "INFLUX_BUCKET": "b", "INFLUX_ORG": "o"}, "INFLUX_TOKEN"),
        ({**V2_ENV, "INFLUX_HOST": "http://other:8086"}, "INFLUX_HOST"),
        ({**V2_ENV, "INFLUX_URL": "influx:8086"}, "INFLUX_URL"),
        ({**V2_ENV, "INFLUX_URL": f"http://u:{PASSWORD}@influx:8086"}, "INFLUX_URL"),
        ({**V2_ENV, "INFLUX_URL": "http://influx:8086/?db=x"}, "INFLUX_URL"),
        ({"INFLUX_HOST": "ftp://h", "INFLUX_DB": "x"}, "INFLUX_HOST"),
        ({"INFLUX_URL": "http://h", "INFLUX_DB": "x", "INFLUX_USERNAME": "u"}, "INFLUX_PASSWORD"),
        (
            {"INFLUX_URL": "http://h", "INFLUX_DB": "x", "INFLUX_PASSWORD": PASSWORD},
            "INFLUX_USERNAME",
        ),
        ({"INFLUX_URL": "http://h", "INFLUX_DB": "x", "INFLUX_DATABASE": "y"}, "INFLUX_DATABASE"),
        ({**V2_ENV, "INFLUX_VERIFY_SSL": "maybe"}, "INFLUX_VERIFY_SSL"),
        (
            {**V2_ENV, "INFLUX_VERIFY_SSL": "false", "INFLUX_CA_FILE": "/etc/hosts"},
            "INFLUX_CA_FILE",
        ),
        ({**V2_ENV, "INFLUX_CA_FILE": "/nonexistent/ca.pem"}, "INFLUX_CA_FILE"),
        ({**V2_ENV, "INFLUX_BATCH_SIZE": "0"}, "INFLUX_BATCH_SIZE"),
        ({**V2_ENV, "INFLUX_BATCH_SIZE": "lots"}, "INFLUX_BATCH_SIZE"),
        ({**V2_ENV, "INFLUX_MAX_RETRY_S": "-1"}, "INFLUX_MAX_RETRY_S"),
        ({**V2_ENV, "INFLUX_BACKOFF_MAX_MS": "10"}, "INFLUX_BACKOFF_MAX_MS"),
    ],
)
def test_inconsistent_env_names_the_key_and_the_fix(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as info:
        InfluxConfig.from_env(env)
    error = info.value
    assert (error.source, error.key) == ("environment", key)
    assert error.problem and error.fix
    assert PASSWORD not in str(error) and TOKEN not in str(error)


def test_direct_config_is_validated_by_the_sink() -> None:
    with pytest.raises(ConfigError) as info:
        InfluxSink(InfluxConfig(url="http://h:8086", api_version=2, bucket="b", org="o"))
    assert (info.value.source, info.value.key) == ("InfluxConfig", "token")


def test_verify_ssl_off_warns_when_the_sink_opens(caplog: pytest.LogCaptureFixture) -> None:
    config = InfluxConfig.from_env({**V2_ENV, "INFLUX_VERIFY_SSL": "false"})
    assert config is not None and config.verify_ssl is False
    with caplog.at_level(logging.WARNING), open_sink(config):
        pass
    assert "TLS certificate verification is OFF" in caplog.text and TOKEN not in caplog.text


# --------------------------------------------------------- retry (fake clock)
@dataclass
class FakeTransport:
    """Fails with the scripted SendFailures, then succeeds; records bodies."""

    failures: list[SendFailure | None]
    target: str = "http://fake:8086/write?db=x&precision=s"
    bodies: list[str] = field(default_factory=list)
    closed: int = 0
    refuse: Callable[[str], SendFailure | None] | None = None  # by content, after the script

    def send(self, body: str) -> None:
        self.bodies.append(body)
        failure = self.failures.pop(0) if self.failures else None
        if failure is None and self.refuse is not None:
            failure = self.refuse(body)
        if failure is not None:
            raise failure

    def close(self) -> None:
        self.closed += 1


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def fake_sink(
    failures: list[SendFailure | None], **config: Any
) -> tuple[InfluxSink, FakeTransport, FakeClock]:
    transport, clock = FakeTransport(failures), FakeClock()
    settings = {"url": "http://fake:8086", "api_version": 1, "database": "x", **config}
    sink = InfluxSink(InfluxConfig(**settings), transport=transport, clock=clock, sleep=clock.sleep)
    return sink, transport, clock


def test_backoff_is_capped_exponential_with_jitter_and_bounded_by_max_retry_s() -> None:
    unavailable = SendFailure("transient", "server_error", "HTTP 503")
    sink, transport, clock = fake_sink(
        [unavailable] * 100, backoff_initial_ms=100, backoff_max_ms=400, max_retry_s=2.0
    )
    with pytest.raises(InfluxUnavailable) as info:
        sink.write_lines(["m f=1i 1"])
    caps = [0.1, 0.2, 0.4, 0.4, 0.4, 0.4, 0.4, 0.4]
    assert clock.sleeps, "no retry happened"
    for delay, cap in zip(clock.sleeps, caps, strict=False):
        assert cap / 2 <= delay <= cap
    assert sum(clock.sleeps) <= 2.0
    assert len(transport.bodies) == len(clock.sleeps) + 1
    counters = sink.counters.snapshot()
    assert counters["retries"] == len(clock.sleeps) and counters["errors"] == len(transport.bodies)
    assert counters["errors_by_type"] == {"server_error": len(transport.bodies)}
    assert counters["sent"] == 0 and counters["dropped"] == 0  # not dropped: the caller retries
    message = str(info.value)
    assert "http://fake:8086/write?db=x&precision=s" in message and "max_retry_s=2" in message
    assert info.value.batch_index == 0 and info.value.sent == 0


def test_retry_after_is_honoured_and_gives_up_when_it_exceeds_the_budget() -> None:
    slow = SendFailure("transient", "rate_limited", "HTTP 429", status=429, retry_after_s=7.0)
    sink, transport, clock = fake_sink([slow, None], max_retry_s=10)
    assert sink.write_lines(["m f=1i 1"]).sent == 1
    assert clock.sleeps == [7.0]

    too_slow = SendFailure("transient", "rate_limited", "HTTP 429", status=429, retry_after_s=30.0)
    sink, transport, clock = fake_sink([too_slow], max_retry_s=10)
    with pytest.raises(InfluxUnavailable, match="asked to wait 30s"):
        sink.write_lines(["m f=1i 1"])
    assert clock.sleeps == [] and len(transport.bodies) == 1


def test_zero_budget_means_no_retry() -> None:
    sink, transport, _ = fake_sink(
        [SendFailure("transient", "connection", "refused")], max_retry_s=0
    )
    with pytest.raises(InfluxUnavailable):
        sink.write_lines(["m f=1i 1"])
    assert len(transport.bodies) == 1


def test_a_refused_batch_is_bisected_and_only_the_bad_point_is_dropped() -> None:
    def refuse(body: str) -> SendFailure | None:
        if "device_id=d-3" in body:
            return SendFailure(
                "rejected", "bad_request", "HTTP 400: field type conflict", status=400
            )
        return None

    sink, transport, _ = fake_sink([], batch_size=4)
    transport.refuse = refuse
    points = [device_point("c-1", f"d-{i}", HOUR_S, i) for i in range(6)]
    result = sink.write_points(points)
    # Batch 0 (d-0..d-3) refused, then its halves (d-0,d-1 ok; d-2,d-3 refused),
    # then d-2 ok, d-3 refused alone; batch 1 (d-4, d-5) ok.
    sent_devices = [
        [line.split("device_id=")[1].split(",")[0] for line in body.split("\n")]
        for body in transport.bodies
    ]
    assert sent_devices == [
        ["d-0", "d-1", "d-2", "d-3"],
        ["d-0", "d-1"],
        ["d-2", "d-3"],
        ["d-2"],
        ["d-3"],
        ["d-4", "d-5"],
    ]
    assert (result.received, result.sent, result.dropped) == (6, 5, 1)
    assert (result.batches, result.splits, result.errors, result.retries) == (3, 2, 3, 0)
    [failed] = result.failed
    assert (failed.index, failed.first_line, failed.line_count, failed.status) == (0, 3, 1, 400)
    assert failed.message == "HTTP 400: field type conflict" and len(failed.lines) == 1
    assert result.rejected == [(points[3], "server_rejected", "HTTP 400: field type conflict")]
    counters = sink.counters.snapshot()
    assert counters["dropped_by_reason"] == {"server_rejected": 1}
    assert (counters["sent"], counters["dropped"], counters["splits"]) == (5, 1, 2)


def test_invalid_points_are_counted_and_the_rest_written() -> None:
    sink, transport, _ = fake_sink([])
    good = device_point("c-1", "d-1", HOUR_S, 0)
    bad = device_point("c-1", "d-2", HOUR_S + 5, 0)
    result = sink.write_points([good, bad])
    assert (result.received, result.sent, result.dropped) == (2, 1, 1)
    assert [(r.point, r.reason) for r in result.rejected] == [(bad, "misaligned_timestamp")]
    assert len(transport.bodies) == 1
    counters = sink.counters.snapshot()
    assert (counters["received"], counters["sent"], counters["dropped"]) == (2, 1, 1)
    assert counters["dropped_by_reason"] == {"misaligned_timestamp": 1}


def test_nothing_to_write_sends_nothing_and_close_is_idempotent() -> None:
    sink, transport, _ = fake_sink([])
    assert sink.write_points([]).sent == 0 and transport.bodies == []
    sink.close()
    sink.close()
    assert transport.closed == 1
    with pytest.raises(RuntimeError):
        sink.write_lines(["m f=1i 1"])


def test_raw_lines_with_a_line_break_are_refused() -> None:
    sink, transport, _ = fake_sink([])
    with pytest.raises(ValueError, match="line 1"):
        sink.write_lines(["m f=1i 1", "m f=1i 2\nm f=2i 3"])
    assert transport.bodies == []


def test_parse_retry_after_and_server_message() -> None:
    assert parse_retry_after("5", now_s=0) == 5.0
    assert parse_retry_after("Thu, 01 Jan 1970 00:01:40 GMT", now_s=40) == 60.0
    assert parse_retry_after("soon", now_s=0) is None and parse_retry_after(None, now_s=0) is None
    assert server_message(b'{"error":"database not found: \\"x\\""}') == 'database not found: "x"'
    assert server_message('{"code":"invalid","message":"bad line"}') == "bad line"
    assert server_message(b"plain text\n") == "plain text"


# ------------------------------------- classification against a real HTTP server
@dataclass
class Reply:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: str


class ScriptedServer:
    """A real HTTP server on a free port answering with scripted replies (the last repeats)."""

    def __init__(self, replies: list[Reply], tls: ssl.SSLContext | None = None) -> None:
        self.replies = list(replies)
        self.requests: list[Recorded] = []
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    raw = gzip.decompress(raw)
                scripted.requests.append(Recorded(self.path, dict(self.headers), raw.decode()))
                reply = (
                    scripted.replies.pop(0) if len(scripted.replies) > 1 else scripted.replies[0]
                )
                self.send_response(reply.status)
                for key, value in reply.headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: the test asserts on what was recorded."""

        self.server = LocalHTTPServer(Handler, tls)
        self.url = self.server.url

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def scripted() -> Iterator[Callable[..., ScriptedServer]]:
    started: list[ScriptedServer] = []

    def start(replies: list[Reply], tls: ssl.SSLContext | None = None) -> ScriptedServer:
        started.append(ScriptedServer(replies, tls))
        return started[-1]

    yield start
    for server in started:
        server.close()


def http_config(url: str, api_version: int, **extra: Any) -> InfluxConfig:
    if api_version == 1:
        return InfluxConfig(
            url=url, api_version=1, database="fleet", username="writer", password=PASSWORD, **extra
        )
    return InfluxConfig(url=url, api_version=2, token=TOKEN, org="acme", bucket="fleet", **extra)


def check_request(request: Recorded, api_version: int, lines: list[str]) -> None:
    assert request.body == "\n".join(lines)
    assert request.headers["Content-Encoding"] == "gzip"
    if api_version == 1:
        assert request.path == "/write?db=fleet&precision=s"
        pair = base64.b64encode(f"writer:{PASSWORD}".encode()).decode()
        assert request.headers["Authorization"] == f"Basic {pair}"
    else:
        assert request.path == "/api/v2/write?org=acme&bucket=fleet&precision=s"
        assert request.headers["Authorization"] == f"Token {TOKEN}"


@pytest.mark.parametrize("api_version", [1, 2])
def test_401_is_terminal_says_what_to_check_and_leaks_no_secret(
    api_version: int,
    scripted: Callable[..., ScriptedServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = scripted([Reply(401, b'{"error":"authorization failed"}')])
    points = [device_point("c-1", "d-1", HOUR_S, 0)]
    with caplog.at_level(logging.DEBUG), open_sink(http_config(server.url, api_version)) as sink:
        with pytest.raises(InfluxRefused) as info:
            sink.write_points(points)
    message = str(info.value)
    assert info.value.status == 401 and info.value.error_type == "auth"
    assert server.url in message and "authorization failed" in message
    assert ("INFLUX_TOKEN" if api_version == 2 else "INFLUX_USERNAME") in message
    assert len(server.requests) == 1  # never retried
    check_request(server.requests[0], api_version, points_to_lines(points)[0])
    for secret in (TOKEN, PASSWORD, base64.b64encode(f"writer:{PASSWORD}".encode()).decode()):
        assert secret not in message and secret not in caplog.text


@pytest.mark.parametrize("api_version", [1, 2])
def test_404_is_terminal_and_names_the_database_or_bucket(
    api_version: int, scripted: Callable[..., ScriptedServer]
) -> None:
    server = scripted([Reply(404, b'{"error":"database not found: \\"fleet\\""}')])
    with open_sink(http_config(server.url, api_version)) as sink:
        with pytest.raises(InfluxRefused) as info:
            sink.write_lines(["m f=1i 1"])
    assert info.value.error_type == "not_found"
    assert ("INFLUX_BUCKET" if api_version == 2 else "CREATE DATABASE") in str(info.value)


@pytest.mark.parametrize("api_version", [1, 2])
def test_503_then_204_is_retried_after_the_servers_retry_after(
    api_version: int, scripted: Callable[..., ScriptedServer]
) -> None:
    server = scripted([Reply(503, b"busy", {"Retry-After": "2"}), Reply(204)])
    sleeps: list[float] = []
    lines = ["m,t=a f=1i 1", "m,t=b f=2i 1"]
    with open_sink(http_config(server.url, api_version), sleep=sleeps.append) as sink:
        result = sink.write_lines(lines)
    assert (result.sent, result.batches, result.retries, result.errors) == (2, 1, 1, 1)
    assert sleeps == [2.0]
    assert len(server.requests) == 2
    for request in server.requests:
        check_request(request, api_version, lines)


@pytest.mark.parametrize("api_version", [1, 2])
def test_400_reports_the_failed_batch_with_the_servers_text(
    api_version: int, scripted: Callable[..., ScriptedServer]
) -> None:
    server = scripted(
        [Reply(204), Reply(400, b'{"error":"unable to parse line 1: bad timestamp"}'), Reply(204)]
    )
    with open_sink(http_config(server.url, api_version, batch_size=1)) as sink:
        result = sink.write_lines(["m f=1i 1", "m f=2i 2", "m f=3i 3"])
    assert (result.sent, result.dropped, result.retries) == (2, 1, 0)
    [failed] = result.failed
    assert (failed.index, failed.status, list(failed.lines)) == (1, 400, ["m f=2i 2"])
    assert "unable to parse line 1: bad timestamp" in failed.message


@pytest.fixture
def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for 127.0.0.1 with a fresh self-signed certificate (openssl CLI)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed: apt-get install openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


@pytest.mark.parametrize("api_version", [1, 2])
@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_tls_is_verified_by_default_and_ca_file_or_opt_out_makes_it_work(
    api_version: int,
    scripted: Callable[..., ScriptedServer],
    self_signed: tuple[ssl.SSLContext, Path],
) -> None:
    context, cert = self_signed
    server = scripted([Reply(204)], tls=context)
    with open_sink(http_config(server.url, api_version)) as sink:
        with pytest.raises(InfluxRefused) as info:
            sink.write_lines(["m f=1i 1"])
    assert info.value.error_type == "tls" and "INFLUX_CA_FILE" in str(info.value)
    assert server.requests == []
    with open_sink(http_config(server.url, api_version, ca_file=str(cert))) as sink:
        assert sink.write_lines(["m f=1i 1"]).sent == 1
    with open_sink(http_config(server.url, api_version, verify_ssl=False)) as sink:
        assert sink.write_lines(["m f=2i 2"]).sent == 1
    assert [r.body for r in server.requests] == ["m f=1i 1", "m f=2i 2"]


@pytest.mark.parametrize("api_version", [1, 2])
def test_nothing_listening_is_transient_and_names_the_url(api_version: int) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    config = http_config(
        url, api_version, max_retry_s=0.3, backoff_initial_ms=20, backoff_max_ms=50
    )
    started = time.monotonic()
    with open_sink(config) as sink:
        with pytest.raises(InfluxUnavailable) as info:
            sink.write_lines(["m f=1i 1"])
        assert sink.counters.retries >= 1
    assert time.monotonic() - started < 5
    assert info.value.error_type == "connection" and url in str(info.value)


# ----------------------------------------------- integration: InfluxDB 1.x (influxd)
def influxql(port: int, query: str, db: str | None = None) -> list[dict[str, Any]]:
    """Run InfluxQL over HTTP; return one dict per row (tags of GROUP BY merged in)."""
    params = {"q": query, "epoch": "s"}
    if db:
        params["db"] = db
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/query?{urllib.parse.urlencode(params)}", method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result = json.load(response)
    out: list[dict[str, Any]] = []
    for statement in result["results"]:
        assert "error" not in statement, statement
        for series in statement.get("series", []):
            for values in series["values"]:
                row = dict(zip(series["columns"], values, strict=True))
                row.update(series.get("tags", {}))
                out.append(row)
    return out


FIRST_DAY_S = 1_709_251_200  # 2024-03-01T00:00:00Z


@pytest.fixture
def influx_fleet(influxdb_v1: Server) -> Iterator[tuple[int, InfluxSink]]:
    influxql(influxdb_v1.port, "CREATE DATABASE fleet")
    config = InfluxConfig(
        url=f"http://127.0.0.1:{influxdb_v1.port}", api_version=1, database="fleet", batch_size=7
    )
    with open_sink(config) as sink:
        yield influxdb_v1.port, sink


def snapshot(port: int) -> dict[str, list[dict[str, Any]]]:
    return {
        m: influxql(port, f"SELECT * FROM {m} GROUP BY *", db="fleet")
        for m in ("fp_customer_daily", "fp_device_hourly")
    }


@pytest.mark.integration
def test_v1_writes_customer_and_device_points_and_reads_them_back(
    influx_fleet: tuple[int, InfluxSink],
) -> None:
    port, sink = influx_fleet
    points = fleet_points(FIRST_DAY_S)
    result = sink.write_points(points)
    assert (result.received, result.sent, result.batches, result.rejected) == (30, 30, 5, [])

    counts = influxql(
        port, "SELECT count(health) FROM fp_customer_daily GROUP BY customer_id", db="fleet"
    )
    assert {r["customer_id"]: r["count"] for r in counts} == {"c-001": 3, "c-002": 3}
    counts = influxql(
        port, "SELECT count(records) FROM fp_device_hourly GROUP BY device_id", db="fleet"
    )
    assert {r["device_id"]: r["count"] for r in counts} == {
        "c-001-dev0": 6,
        "c-001-dev1": 6,
        "c-002-dev0": 6,
        "c-002-dev1": 6,
    }

    stored = snapshot(port)
    expected_customer = {
        (p["tags"]["customer_id"], p["ts_s"]): p
        for p in points
        if p["measurement"] == "fp_customer_daily"
    }
    assert len(stored["fp_customer_daily"]) == 6
    for row in stored["fp_customer_daily"]:
        point = expected_customer[(row["customer_id"], row["time"])]
        for key, value in point["fields"].items():
            assert row[key] == value, (key, row[key], value)
        assert row["segment"] == point["tags"]["segment"]
        assert row["csm"] == (point["tags"]["csm"] or "")  # GROUP BY * shows an absent tag as ""

    expected_device = {
        (p["tags"]["device_id"], p["ts_s"]): p
        for p in points
        if p["measurement"] == "fp_device_hourly"
    }
    assert len(stored["fp_device_hourly"]) == 24
    for row in stored["fp_device_hourly"]:
        point = expected_device[(row["device_id"], row["time"])]
        assert {k: row[k] for k in point["fields"]} == point["fields"]
        assert {k: row[k] for k in point["tags"]} == point["tags"]

    types = {
        r["fieldKey"]: r["fieldType"]
        for r in influxql(port, "SHOW FIELD KEYS FROM fp_customer_daily", db="fleet")
    }
    assert (types["health"], types["band"], types["band_rank"]) == ("float", "string", "integer")
    assert (types["low_coverage"], types["active_devices"]) == ("boolean", "integer")
    sums = influxql(port, "SELECT sum(runtime_s), sum(records) FROM fp_device_hourly", db="fleet")
    assert sums[0]["sum"] == sum(p["fields"]["runtime_s"] for p in expected_device.values())
    assert sums[0]["sum_1"] == sum(p["fields"]["records"] for p in expected_device.values())


@pytest.mark.integration
def test_v1_writing_the_same_points_twice_is_idempotent(
    influx_fleet: tuple[int, InfluxSink],
) -> None:
    port, sink = influx_fleet
    points = fleet_points(FIRST_DAY_S)
    assert sink.write_points(points).sent == 30
    first = snapshot(port)
    assert sink.write_points(points).sent == 30
    assert snapshot(port) == first
    assert sink.counters.snapshot()["sent"] == 60


@pytest.mark.integration
def test_v1_replay_with_a_new_band_overwrites_instead_of_adding(
    influx_fleet: tuple[int, InfluxSink],
) -> None:
    port, sink = influx_fleet
    sink.write_points([customer_point("c-001", FIRST_DAY_S, 2)])  # green
    sink.write_points([customer_point("c-001", FIRST_DAY_S, 0)])  # replayed as red
    rows = influxql(port, "SELECT health, band, band_rank FROM fp_customer_daily", db="fleet")
    assert [(r["time"], r["health"], r["band"], r["band_rank"]) for r in rows] == [
        (FIRST_DAY_S, 35.5, "red", 2)
    ]


@pytest.mark.integration
def test_v1_type_conflict_drops_only_the_conflicting_line(
    influx_fleet: tuple[int, InfluxSink],
) -> None:
    port, _ = influx_fleet
    config = InfluxConfig(
        url=f"http://127.0.0.1:{port}", api_version=1, database="fleet", batch_size=2
    )
    with open_sink(config) as sink:
        assert sink.write_lines(["conflict v=1i 1"]).sent == 1
        result = sink.write_lines(
            ["conflict v=2i 2", "conflict v=3i 3", "conflict v=4.5 4", "conflict v=5i 5"]
        )
    assert (result.sent, result.dropped, result.splits) == (3, 1, 1)
    [failed] = result.failed
    assert (failed.index, failed.first_line, failed.line_count, failed.status) == (1, 2, 1, 400)
    assert list(failed.lines) == ["conflict v=4.5 4"] and "field type conflict" in failed.message
    rows = influxql(port, "SELECT v FROM conflict", db="fleet")
    assert [(r["time"], r["v"]) for r in rows] == [(1, 1), (2, 2), (3, 3), (5, 5)]


@pytest.mark.integration
def test_v1_missing_database_is_terminal(influxdb_v1: Server) -> None:
    config = InfluxConfig(
        url=f"http://127.0.0.1:{influxdb_v1.port}", api_version=1, database="nope"
    )
    with open_sink(config) as sink:
        with pytest.raises(InfluxRefused) as info:
            sink.write_points(fleet_points(FIRST_DAY_S)[:3])
    assert info.value.status == 404 and "CREATE DATABASE" in str(info.value)
    assert 'database not found: "nope"' in str(info.value)


# ----------------------------- integration: v2 write API (VictoriaMetrics)
def vm_export(port: int) -> list[dict[str, Any]]:
    match = '{__name__=~"fp_.*"}'
    url = f"http://127.0.0.1:{port}/api/v1/export?{urllib.parse.urlencode({'match[]': match})}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return [json.loads(line) for line in response.read().decode().splitlines() if line]


@pytest.mark.integration
def test_v2_writes_through_influxdb_client_to_victoria_metrics(victoria_metrics: Server) -> None:
    port = victoria_metrics.port
    # VictoriaMetrics drops samples older than its retention (a month): use recent days.
    first_day = (int(time.time()) // DAY_S - 3) * DAY_S
    points = fleet_points(first_day)
    config = InfluxConfig.from_env(
        {
            "INFLUX_URL": f"http://127.0.0.1:{port}",
            "INFLUX_TOKEN": TOKEN,  # VictoriaMetrics ignores it without -httpAuth.*
            "INFLUX_ORG": "acme",
            "INFLUX_BUCKET": "fleet",
            "INFLUX_BATCH_SIZE": "8",
        }
    )
    assert config is not None and config.api_version == 2
    with open_sink(config) as sink:
        result = sink.write_points(points)
    assert (result.sent, result.batches, result.rejected) == (30, 4, [])

    # Numeric fields become <measurement>_<field> series with the tags as labels
    # (bools 0/1). String fields are left out: VictoriaMetrics 1.79 stores them as 0,
    # newer versions drop them.
    expected: dict[tuple[str, frozenset[tuple[str, str]], int], float] = {}
    for p in points:
        labels = frozenset((k, v) for k, v in p["tags"].items() if v)
        for key, value in p["fields"].items():
            if value is None or isinstance(value, str):
                continue
            expected[(f"{p['measurement']}_{key}", labels, p["ts_s"] * 1000)] = float(value)

    def exported() -> dict[tuple[str, frozenset[tuple[str, str]], int], float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/internal/force_flush", timeout=10):
            pass
        got = {}
        for series in vm_export(port):
            metric = dict(series["metric"])
            name = metric.pop("__name__")
            for ts, value in zip(series["timestamps"], series["values"], strict=True):
                got[(name, frozenset(metric.items()), ts)] = value
        return {k: v for k, v in got.items() if k[0] in {e[0] for e in expected}}

    wait_until(
        lambda: len(exported()) >= len(expected), timeout_s=15, what="VictoriaMetrics samples"
    )
    assert exported() == expected


def test_an_int_beyond_the_float_range_is_a_dead_letter_not_a_crash() -> None:
    point = {
        "measurement": "fp_customer_daily",
        "tags": {"customer_id": "c-1", "segment": "smb"},
        "fields": {"health": 10**400, "band": "green", "band_rank": 0, "stage": "mature", "driver": "none",
                   "low_coverage": False, "coverage": 1.0, "active_devices": 1, "entitled_devices": 1,
                   "known_devices": 1},
        "ts_s": 1_785_542_400,
    }
    lines, rejected = points_to_lines([point])
    assert lines == [] and [(r[1]) for r in rejected] == ["out_of_range"]
