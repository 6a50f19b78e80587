"""Line protocol encoding: literal escaping cases, refusals, and a round trip through real InfluxDB 1.x.

Run: /tmp/venv/bin/pytest tests/test_line_protocol.py  (the round-trip test
starts Debian's influxd; `-m "not integration"` skips it).
"""

from __future__ import annotations

import json
import math
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from enum import IntEnum
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetpulse.pipeline.outputs.influx import (
    LINE_REASONS,
    InfluxConfig,
    InfluxSink,
    InvalidPoint,
    to_line,
)

from . import servers


# ------------------------------------------------------------------- literals
class Level(IntEnum):
    LOW = 1


@pytest.mark.parametrize(
    ("measurement", "tags", "fields", "expected"),
    [
        ("m", {}, {"f": 1}, "m f=1i 7"),
        ("my m,x", {}, {"f": 1}, r"my\ m\,x f=1i 7"),
        ("m=x", {}, {"f": 1}, "m=x f=1i 7"),  # '=' needs no escape in a measurement
        ("m", {"t k,=": "v a,l=ue"}, {"f": 1}, r"m,t\ k\,\==v\ a\,l\=ue f=1i 7"),
        ("m", {"b": "2", "a": "1"}, {"f": 1}, "m,a=1,b=2 f=1i 7"),  # tags sorted
        ("m", {"a": "", "b": None, "c": "x"}, {"f": 1}, "m,c=x f=1i 7"),  # empty tags omitted
        ("m", {}, {"f k,=": 1}, r"m f\ k\,\==1i 7"),
        ("m", {}, {"s": 'say "hi" \\o/'}, r'm s="say \"hi\" \\o/" 7'),
        ("m", {}, {"s": ""}, 'm s="" 7'),
        ("m", {}, {"s": "a,b c=d"}, 'm s="a,b c=d" 7'),  # no escapes inside quotes
        ("m", {}, {"t": True, "f": False}, "m t=true,f=false 7"),
        (
            "m",
            {},
            {"i": -(2**63), "j": 2**63 - 1},
            "m i=-9223372036854775808i,j=9223372036854775807i 7",
        ),
        ("m", {}, {"x": 0.1, "y": 1e300, "z": -0.0, "w": 2.0}, "m x=0.1,y=1e+300,z=-0.0,w=2.0 7"),
        ("m", {}, {"a": None, "b": 1}, "m b=1i 7"),  # None fields left out
        ("m", {"t": "é€😀"}, {"s": "日本"}, 'm,t=é€😀 s="日本" 7'),
        ("m", {}, {"f": Fraction(1, 4)}, "m f=0.25 7"),  # other numbers.Real
        ("m", {}, {"n": Level.LOW}, "m n=1i 7"),  # int subclass
    ],
)
def test_to_line_literal(
    measurement: str, tags: dict[str, Any], fields: dict[str, Any], expected: str
) -> None:
    assert to_line(measurement, tags, fields, 7) == expected


def test_timestamp_is_seconds_and_negative_allowed() -> None:
    assert to_line("m", {}, {"f": 1}, 1_700_000_000).endswith(" 1700000000")
    assert to_line("m", {}, {"f": 1}, -5).endswith(" -5")


@pytest.mark.parametrize(
    ("measurement", "tags", "fields", "ts_s", "reason"),
    [
        ("m", {"t": "a\nb"}, {"f": 1}, 1, "control_character"),
        ("m", {}, {"s": "a\r\nb"}, 1, "control_character"),
        ("m", {}, {"s": "a\nb"}, 1, "control_character"),
        ("m", {"t": "nul\x00"}, {"f": 1}, 1, "control_character"),
        ("m", {"t\tk": "v"}, {"f": 1}, 1, "control_character"),
        ("m", {}, {"s": "nel\x85"}, 1, "control_character"),
        ("m\n", {}, {"f": 1}, 1, "control_character"),
        ("m", {"t": "trailing\\"}, {"f": 1}, 1, "backslash"),
        ("m", {"t\\": "v"}, {"f": 1}, 1, "backslash"),
        ("m\\x", {}, {"f": 1}, 1, "backslash"),
        ("m", {}, {"k\\": 1}, 1, "backslash"),
        ("m", {"": "v"}, {"f": 1}, 1, "empty_key"),
        ("m", {}, {"": 1}, 1, "empty_key"),
        ("m", {"time": "v"}, {"f": 1}, 1, "reserved_key"),
        ("m", {}, {"_field": 1}, 1, "reserved_key"),
        ("", {}, {"f": 1}, 1, "bad_measurement"),
        ("#m", {}, {"f": 1}, 1, "bad_measurement"),
        ("m", {}, {}, 1, "no_fields"),
        ("m", {"t": "v"}, {"a": None}, 1, "no_fields"),
        ("m", {}, {"f": math.nan}, 1, "not_finite"),
        ("m", {}, {"f": math.inf}, 1, "not_finite"),
        ("m", {}, {"f": -math.inf}, 1, "not_finite"),
        ("m", {}, {"f": 2**63}, 1, "out_of_range"),
        ("m", {}, {"f": -(2**63) - 1}, 1, "out_of_range"),
        ("m", {}, {"s": "\ud800"}, 1, "not_utf8"),
        ("m", {"t": "\udfff"}, {"f": 1}, 1, "not_utf8"),
        ("m", {}, {"s": "x" * 65536}, 1, "too_long"),
        ("m", {}, {"s": "é" * 40000}, 1, "too_long"),  # 80,000 bytes in UTF-8
        ("m", {"t": 5}, {"f": 1}, 1, "wrong_type"),
        ("m", {}, {"f": [1]}, 1, "wrong_type"),
        ("m", {}, {"f": b"bytes"}, 1, "wrong_type"),
        ("m", {}, {"f": 1}, 1.5, "bad_timestamp"),
        ("m", {}, {"f": 1}, True, "bad_timestamp"),
        ("m", {}, {"f": 1}, 10**10, "bad_timestamp"),
    ],
)
def test_to_line_refuses(
    measurement: str, tags: dict[str, Any], fields: dict[str, Any], ts_s: Any, reason: str
) -> None:
    with pytest.raises(InvalidPoint) as info:
        to_line(measurement, tags, fields, ts_s)
    assert info.value.reason == reason
    assert info.value.detail


def test_invalid_point_detail_quotes_the_value() -> None:
    with pytest.raises(InvalidPoint) as info:
        to_line("m", {"site": "a\nb"}, {"f": 1}, 1)
    assert "'a\\nb'" in info.value.detail and "site" in info.value.detail


# Everything a caller could hand us: every code point class (controls,
# surrogates, separators), weighted towards the characters line protocol cares about.
_SPECIAL = ',= "\\\n\r\t#\x00\x7f\x85\u2028\u00a0é€😀'
_PRINTABLE_SPECIAL = ',= "\\#\u2028\u00a0é€😀'
any_text = st.one_of(
    st.text(st.characters(exclude_categories=()), max_size=12),
    st.text(st.sampled_from(list(_SPECIAL) + list("ab1")), max_size=12),
    # Without control characters, so that escaping (not refusal) is what gets exercised.
    st.text(st.sampled_from(list(_PRINTABLE_SPECIAL) + list("ab1")), max_size=8),
)


@settings(max_examples=300, deadline=None, database=None)
@given(
    measurement=any_text,
    tags=st.dictionaries(any_text, any_text, max_size=3),
    fields=st.dictionaries(
        any_text,
        st.one_of(any_text, st.floats(), st.integers(), st.booleans(), st.none()),
        max_size=3,
    ),
)
def test_one_point_is_one_line_or_a_reason(
    measurement: str, tags: dict[str, str], fields: dict[str, Any]
) -> None:
    try:
        line = to_line(measurement, tags, fields, 1)
    except InvalidPoint as exc:
        assert exc.reason in LINE_REASONS
        return
    assert "\n" not in line and "\r" not in line
    assert line.encode("utf-8")


# ------------------------------------------------ round trip through influxd


def influxql(port: int, query: str, db: str | None = None) -> dict[str, Any]:
    params = {"q": query, "epoch": "s"}
    if db:
        params["db"] = db
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/query?{urllib.parse.urlencode(params)}", method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        result: dict[str, Any] = json.load(response)
    return result


def rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for statement in result["results"]:
        assert "error" not in statement, statement
        for series in statement.get("series", []):
            out.extend(
                dict(zip(series["columns"], values, strict=True)) for values in series["values"]
            )
    return out


@pytest.fixture(scope="module")
def influx_sink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, InfluxSink]]:
    """One influxd for the whole property test (Hypothesis runs many examples per test call)."""
    server = servers.influxdb_v1(tmp_path_factory.mktemp("influx-roundtrip")).start()
    try:
        influxql(server.port, "CREATE DATABASE roundtrip")
        config = InfluxConfig(
            url=f"http://127.0.0.1:{server.port}",
            api_version=1,
            database="roundtrip",
            max_retry_s=0,
        )
        with InfluxSink(config) as sink:
            yield server.port, sink
    finally:
        server.stop()


@pytest.mark.integration
@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    items=st.lists(
        st.tuples(
            any_text,
            any_text,
            st.floats(),
            st.integers(min_value=-(2**64), max_value=2**64),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_round_trip_through_influxdb_1x(
    influx_sink: tuple[int, InfluxSink], items: list[tuple[str, str, float, int]]
) -> None:
    """Each value either reads back exactly or is refused with a reason; never an extra point."""
    port, sink = influx_sink
    run = uuid.uuid4().hex
    lines: list[str] = []
    expected: dict[str, dict[str, Any]] = {}

    def attempt(
        key: str, tags: dict[str, str], fields: dict[str, Any], want: dict[str, Any]
    ) -> None:
        try:
            line = to_line("roundtrip", {"run": run, "i": key, **tags}, fields, 1_000 + len(lines))
        except InvalidPoint as exc:
            assert exc.reason in LINE_REASONS
            return
        assert "\n" not in line and "\r" not in line
        lines.append(line)
        expected[key] = want

    for index, (tag, text, number, integer) in enumerate(items):
        # One value per point, so that a refused value does not hide the others; both
        # strings are tried as a tag value and as a string field.
        for n, value in enumerate((tag, text)):
            attempt(f"{index}t{n}", {"k": value}, {"n": 1}, {"k": value or None, "n": 1})
            attempt(f"{index}s{n}", {}, {"s": value}, {"s": value})
        attempt(f"{index}f", {}, {"f": number, "n": integer}, {"f": number, "n": integer})

    if lines:
        result = sink.write_lines(lines)
        assert (result.sent, result.failed) == (len(lines), []), result.failed
    got = rows(influxql(port, f"SELECT * FROM roundtrip WHERE run = '{run}'", db="roundtrip"))
    assert len(got) == len(lines)  # no line became two points
    by_key = {row["i"]: row for row in got}
    assert set(by_key) == set(expected)
    for key, want in expected.items():
        row = by_key[key]
        for column, value in want.items():
            got_value = row.get(column)
            if column == "f":
                # InfluxDB's JSON prints integral floats without a fraction (46153175426421350
                # for 4.615317542642135e16): compare as floats, which is exact.
                got_value = float(row["f"])
            assert got_value == value, (key, column, got_value, value)
