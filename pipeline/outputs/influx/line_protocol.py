"""Encode one point as one line of InfluxDB line protocol, or refuse it with a reason.

:func:`to_line` is on the sink's hot path (tens of thousands of points per
bundle), so the common case (ASCII names that need no escaping) is checked
with one regex scan over all tag keys and values and one over all field keys;
only a point that has something to escape or refuse takes the per-name path.

What it guarantees: the returned line contains no line break, so one point can
never turn into two; anything that line protocol cannot carry exactly raises
:class:`InvalidPoint` with a bounded ``reason`` and a ``detail`` quoting the
value. Escaping follows the line-protocol rules shared by InfluxDB 1.x, 2.x
and 3.x:

* measurement: ``,`` and space escaped with a backslash;
* tag keys, tag values, field keys: ``,``, ``=`` and space escaped;
* string field values: in double quotes, ``"`` and ``\\`` escaped;
* integers end in ``i``, booleans are ``true``/``false``, floats are written
  with :func:`repr` (the shortest text that reads back as the same float).

Refused rather than guessed: line breaks and other control characters
anywhere (``\\x00``-``\\x1f``, ``\\x7f``-``\\x9f``); a backslash in a
measurement, key or tag value (InfluxDB 1.x does not unescape ``\\\\`` there,
and a trailing backslash swallows the separator, so such a value cannot round-
trip); text that is not encodable as UTF-8 (lone surrogates); empty keys; keys
the servers reserve (``time``, ``_field``...); a measurement starting with
``#`` (a comment line); NaN and infinities; integers outside int64; more than
64 KiB in one string; a point with no fields. Empty or ``None`` tag values
and ``None`` field values are left out, as InfluxDB has no empty tag.
"""

from __future__ import annotations

import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

from fleetpulse.errors import RejectedInput, quote

#: Bounded reasons for a refused point (counter labels; ``detail`` quotes the value).
LINE_REASONS = (
    "no_fields",
    "empty_key",
    "reserved_key",
    "bad_measurement",
    "control_character",
    "backslash",
    "not_utf8",
    "too_long",
    "wrong_type",
    "not_finite",
    "out_of_range",
    "bad_timestamp",
)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
# Timestamps are sent in seconds; the server stores int64 nanoseconds.
TS_S_MIN, TS_S_MAX = INT64_MIN // 10**9 + 1, INT64_MAX // 10**9
# InfluxDB 1.x refuses tag keys/values and string fields above 64 KiB.
MAX_STRING_BYTES = 65535
RESERVED_KEYS = frozenset({"time", "_field", "_measurement", "_value", "_time", "_start", "_stop"})

# One scan finds both "needs escaping" and "cannot be represented" characters.
_NAME_SPECIAL = re.compile(r"[\x00-\x1f\x7f-\x9f\\, =]")
_NAME_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f\\]")
_STRING_SPECIAL = re.compile(r'[\x00-\x1f\x7f-\x9f\\"]')
_STRING_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_MEASUREMENT_ESC = str.maketrans({",": "\\,", " ": "\\ "})
_KEY_ESC = str.maketrans({",": "\\,", "=": "\\=", " ": "\\ "})
_STRING_ESC = str.maketrans({"\\": "\\\\", '"': '\\"'})


class InvalidPoint(RejectedInput):
    """A point that line protocol cannot carry exactly; never written."""

    REASONS = LINE_REASONS


def _check_text(what: str, text: str, bad: re.Pattern[str]) -> None:
    """Raise for characters or encodings line protocol cannot carry (slow path only)."""
    match = bad.search(text)
    if match is not None:
        char = match.group()
        reason = "backslash" if char == "\\" else "control_character"
        raise InvalidPoint(reason, f"{what} {quote(text)} contains {char!r}")
    if not text.isascii():
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidPoint(
                "not_utf8", f"{what} {quote(text)} is not valid Unicode ({exc.reason})"
            ) from None
        if size > MAX_STRING_BYTES:
            raise InvalidPoint("too_long", f"{what} is {size} bytes, at most {MAX_STRING_BYTES}")
    elif len(text) > MAX_STRING_BYTES:
        raise InvalidPoint("too_long", f"{what} is {len(text)} bytes, at most {MAX_STRING_BYTES}")


def _name(what: str, text: Any, table: dict[int, str]) -> str:
    """Escape a measurement, key or tag value; refuse what cannot round-trip."""
    if type(text) is not str:
        if not isinstance(text, str):
            raise InvalidPoint("wrong_type", f"{what} must be a string, got {quote(text)}")
        text = str(text)
    if not text.isascii() or len(text) > 256 or _NAME_SPECIAL.search(text):
        _check_text(what, text, _NAME_BAD)
        return text.translate(table)
    return text


def _key(what: str, key: Any) -> str:
    if key == "" or key is None:
        raise InvalidPoint("empty_key", f"{what} is empty")
    if key in RESERVED_KEYS:
        raise InvalidPoint("reserved_key", f"{what} {key!r} is reserved by InfluxDB")
    return _name(what, key, _KEY_ESC)


def _field_value(key: str, value: Any) -> str:
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise InvalidPoint(
                "not_finite", f"field {key}={value!r}: NaN and infinities cannot be stored"
            )
        return repr(value)
    if kind is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise InvalidPoint("out_of_range", f"field {key}={value} does not fit in int64")
        return f"{value}i"
    if kind is str:
        if not value.isascii() or len(value) > 256 or _STRING_SPECIAL.search(value):
            _check_text(f"field {key}", value, _STRING_BAD)
            value = value.translate(_STRING_ESC)
        return f'"{value}"'
    if kind is bool:
        return "true" if value else "false"
    # Subclasses and numeric types from numpy/pyarrow scalars take the slow path.
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _field_value(key, str(value))
    if isinstance(value, numbers.Integral):
        return _field_value(key, int(value))
    if isinstance(value, numbers.Real):
        return _field_value(key, float(value))
    raise InvalidPoint(
        "wrong_type", f"field {key} must be int, float, bool or str, got {quote(value)}"
    )


def field_value_text(key: Any, value: Any) -> str:
    """A field value as line protocol writes it (``1i``, ``0.5``, ``"text"``); raise if it cannot be."""
    return _field_value(key, value)


def _plain(text: str) -> bool:
    """True when ``text`` (several names joined) needs no escaping and no checks."""
    return len(text) <= MAX_STRING_BYTES and text.isascii() and _NAME_SPECIAL.search(text) is None


def measurement_text(measurement: Any) -> str:
    """The escaped measurement name, or raise :class:`InvalidPoint` (first part of :func:`to_line`)."""
    if not isinstance(measurement, str) or measurement == "":
        raise InvalidPoint(
            "bad_measurement", f"measurement {quote(measurement)} must be a non-empty string"
        )
    if measurement[0] == "#":
        raise InvalidPoint(
            "bad_measurement", f"measurement {quote(measurement)} would be read as a comment"
        )
    return _name("measurement", measurement, _MEASUREMENT_ESC)


def tags_text(tags: Mapping[str, str | None]) -> str:
    """``,k=v`` for each non-empty tag, sorted by key, escaped; or raise :class:`InvalidPoint`."""
    if not tags:
        return ""
    items = [(k, v) for k, v in tags.items() if v is not None and v != ""]
    # Fast path: every key and value is plain ASCII needing no escape, so the
    # names are checked with one scan over all of them.
    try:
        fast = (
            _plain("".join([k + v for k, v in items]))
            and all(k for k, _ in items)
            and RESERVED_KEYS.isdisjoint(k for k, _ in items)
        )
    except TypeError:  # a key or value that is not a string: the slow path names it
        fast = False
    parts: list[str] = []
    if fast:
        items.sort()
        parts.extend([f",{k}={v}" for k, v in items])
    else:
        for tag_key, tag_value in sorted(items, key=lambda item: str(item[0])):
            escaped = _name(f"tag {tag_key}", tag_value, _KEY_ESC)
            parts.append(f",{_key('tag key', tag_key)}={escaped}")
    return "".join(parts)


def field_key_text(key: Any) -> str:
    """The escaped field key, or raise :class:`InvalidPoint` (empty, reserved, unencodable)."""
    return _key("field key", key)


def fields_text(measurement: Any, fields: Mapping[str, int | float | bool | str | None]) -> str:
    """``k=v,...`` for the non-None fields in the order given; raise :class:`InvalidPoint`.

    ``measurement`` only names the point in the ``no_fields`` detail.
    """
    parts: list[str] = []
    try:
        keys_plain = _plain("".join(fields)) and "" not in fields
        keys_plain = keys_plain and RESERVED_KEYS.isdisjoint(fields)
    except TypeError:
        keys_plain = False
    first = True
    for key, value in fields.items():
        if value is None:
            continue
        if not first:
            parts.append(",")
        first = False
        text = key if keys_plain else _key("field key", key)
        # Exact type checks: bool is an int subclass and must not take this path.
        kind = type(value)
        if kind is int and isinstance(value, int) and INT64_MIN <= value <= INT64_MAX:
            parts.append(f"{text}={value}i")
        elif kind is float and isinstance(value, float) and math.isfinite(value):
            parts.append(f"{text}={value!r}")
        else:
            parts.append(f"{text}={_field_value(key, value)}")
    if first:
        raise InvalidPoint("no_fields", f"{quote(measurement)} point has no fields")
    return "".join(parts)


def timestamp_text(ts_s: Any) -> str:
    """The timestamp in seconds as text, or raise :class:`InvalidPoint` (``bad_timestamp``)."""
    if type(ts_s) is not int:
        if isinstance(ts_s, bool) or not isinstance(ts_s, numbers.Integral):
            raise InvalidPoint("bad_timestamp", f"ts_s must be integer seconds, got {quote(ts_s)}")
        ts_s = int(ts_s)
    if not TS_S_MIN <= ts_s <= TS_S_MAX:
        raise InvalidPoint("bad_timestamp", f"ts_s={ts_s} is outside InfluxDB's time range")
    return str(ts_s)


def to_line(
    measurement: str,
    tags: Mapping[str, str | None],
    fields: Mapping[str, int | float | bool | str | None],
    ts_s: int,
) -> str:
    """One line of line protocol (no trailing newline), timestamp in seconds.

    Tags are written sorted by key (InfluxDB's recommendation, and it makes
    the output deterministic); fields in the order given. Raises
    :class:`InvalidPoint` for anything that cannot be written exactly; the
    parts are checked in this order: measurement, tags, fields, timestamp.
    """
    head = measurement_text(measurement) + tags_text(tags)
    body = fields_text(measurement, fields)
    return f"{head} {body} {timestamp_text(ts_s)}"
