"""Validation of telemetry records and gateway batch envelopes (contract v1).

One module for both sides: the gateway collector validates what devices send
before stamping and forwarding it, and the pipeline validates every record it
decodes from a batch again (a batch may come from an older or foreign gateway).
Standard library only.

Every rejection carries a ``reason`` from the bounded set :data:`REASONS` (for
counters and dashboards) and a ``detail`` that quotes the offending value.
"""

from __future__ import annotations

import base64
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any

from fleetpulse.errors import RejectedInput, quote

from .contract import Contract, FieldSpec, load_contract

REASONS = (
    "payload_too_large",
    "not_utf8",
    "not_json",
    "not_object",
    "too_many_records",
    "unsupported_version",
    "missing_field",
    "wrong_type",
    "out_of_range",
    "bad_identifier",
    "unknown_kind",
    "bad_enum",
    "bad_firmware",
    "bad_quantity",
    "bad_unit",
    "string_too_long",
    "event_time_in_future",
    "event_time_too_old",
    "topic_mismatch",
    "device_mismatch",
    "bad_compression",
)

#: Integers without a bound in the contract must still fit the lake's int64 columns.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: RFC 1952 magic: a gzip-compressed gateway batch.
GZIP_MAGIC = b"\x1f\x8b"

#: JSON nested deeper than this is not_json (the contract nests 5 deep). ``json.loads``
#: alone stops at Python's recursion limit less the caller's stack, which is not the same on
#: a gateway, in a test and in a Beam worker; a fixed bound decides alike everywhere, and the
#: columnar decoder's Arrow reader (which has no such limit) applies it too.
MAX_NESTING = 512
_TOO_DEEP = f"nested deeper than {MAX_NESTING} levels"
_BRACKETS = bytes.maketrans(b"[{]}", b"(())")
_NOT_OPENER = bytes(b for b in range(256) if b not in b"[{")
_NOT_MARK = bytes(b for b in range(256) if b not in b'"[]{}')


def _number(digits: str) -> int | float:
    try:
        return int(digits)
    except ValueError:  # longer than Python converts to int (4300 digits)
        return float(digits)  # the infinity it exceeds, as 1e400 is read


def _loads(text: str) -> Any:
    """``json.loads``; an integer too long for ``int`` (valid JSON all the same) is read as
    infinity, like ``1e400``: a contract field refuses it, an unknown field ignores it, as
    Arrow's reader in the columnar decoder does."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except ValueError:  # the str-to-int digit limit; rare, so only then the slower parse
        return json.loads(text, parse_int=_number)


def nesting_exceeds(text: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether the JSON ``text`` nests arrays and objects more than ``limit`` deep.

    Brackets inside strings do not count. Exact for valid JSON (for other
    texts a guess: their parse fails anyway). A text with at most ``limit``
    openers is decided by one pass that keeps only them.
    """
    if len(text.translate(None, _NOT_OPENER)) <= limit:
        return False
    if b"\\" in text:  # an escaped quote or backslash must not end a string
        text = text.replace(b"\\\\", b"").replace(b'\\"', b"")
    marks = text.translate(_BRACKETS, _NOT_MARK).replace(b'""', b"")  # quotes and ( )
    if b'"' in marks:  # brackets inside strings: quotes alternate, so every odd piece is one
        marks = b"".join(marks.split(b'"')[::2])
    for _ in range(limit):  # each pass removes the innermost level
        marks = marks.replace(b"()", b"")
        if not marks:
            return False
    return True


class InvalidTelemetry(RejectedInput):
    """A record or envelope that breaks the contract."""

    REASONS = REASONS


@dataclass(frozen=True)
class Rejection:
    """A record (or whole payload) refused, with why; kept as a dead letter."""

    reason: str
    detail: str
    index: int | None = None  # position in the message's record list, None = whole payload
    record: Any = None  # the offending record as decoded, if it decoded at all


class Validator:
    """Validates records and envelopes against one contract version.

    ``now_ms`` given to the methods bounds event time from above (device
    clocks drift; a record too far in the future is refused). The gateway
    passes its wall clock, the pipeline the time the batch was received.
    """

    def __init__(self, contract: Contract | None = None) -> None:
        self.contract = contract or load_contract(1)
        self._limits = self.contract.limits
        # Field checks compiled once per contract field: the common case (a valid
        # value) costs one closure call; errors fall back to _field for the message.
        self._common = [(spec.name, self._checker(spec)) for spec in self.contract.common if spec.name != "v"]
        self._kind_fields = {
            kind: [(spec.name, spec.required, self._checker(spec)) for spec in specs]
            for kind, specs in self.contract.kinds.items()
        }
        self._firmware_match = self.contract.firmware_re.fullmatch

    def __getstate__(self) -> dict[str, Any]:
        return {"contract": self.contract}  # the compiled checks are rebuilt, not pickled

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, state["contract"])

    def _checker(self, spec: FieldSpec) -> Any:
        """A fast check for one field: returns the value, or defers to :meth:`_field` to raise."""
        slow = self._field
        if spec.type == "identifier":
            match = self.contract.identifier_re.fullmatch
            longest = self._limits.identifier_max_length

            def identifier(value: Any) -> Any:
                if type(value) is str and len(value) <= longest and match(value):
                    return value
                return slow(spec, value)

            return identifier
        if spec.type == "int":
            low = INT64_MIN if spec.min is None else spec.min
            high = INT64_MAX if spec.max is None else spec.max

            def integer(value: Any) -> Any:
                if type(value) is int and low <= value <= high:
                    return value
                return slow(spec, value)

            return integer
        if spec.type == "string":
            longest_string = self._limits.max_string_length

            def string(value: Any) -> Any:
                if type(value) is str and len(value) <= longest_string and (value.isascii() or _utf8_ok(value)):
                    return value
                return slow(spec, value)

            return string
        return lambda value: slow(spec, value)

    # ---------------------------------------------------------------- fields
    def _identifier(self, name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise InvalidTelemetry("wrong_type", f"{name} must be a string, got {quote(value)}")
        if len(value) > self._limits.identifier_max_length or not self.contract.identifier_re.fullmatch(
            value
        ):
            raise InvalidTelemetry(
                "bad_identifier",
                f"{name}={quote(value)} must match {self._limits.identifier_pattern} "
                f"and be at most {self._limits.identifier_max_length} characters",
            )
        return value

    def _field(self, spec: FieldSpec, value: Any) -> Any:
        kind = spec.type
        if kind == "identifier":
            return self._identifier(spec.name, value)
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise InvalidTelemetry(
                    "wrong_type", f"{spec.name} must be an integer, got {quote(value)}"
                )
            low = INT64_MIN if spec.min is None else spec.min
            high = INT64_MAX if spec.max is None else spec.max
            if not low <= value <= high:
                raise InvalidTelemetry(
                    "out_of_range",
                    f"{spec.name}={value} is outside [{low}, {high}]",
                )
            return value
        if kind == "enum":
            if value not in spec.values:
                raise InvalidTelemetry(
                    "bad_enum", f"{spec.name}={quote(value)} is not one of {list(spec.values)}"
                )
            return value
        if kind == "string":
            if not isinstance(value, str):
                raise InvalidTelemetry(
                    "wrong_type", f"{spec.name} must be a string, got {quote(value)}"
                )
            if len(value) > self._limits.max_string_length:
                raise InvalidTelemetry(
                    "string_too_long",
                    f"{spec.name} has {len(value)} characters, at most "
                    f"{self._limits.max_string_length} allowed",
                )
            if not _utf8_ok(value):  # a lone surrogate from a JSON \ud800 escape
                raise InvalidTelemetry("not_utf8", f"{spec.name} holds a lone surrogate")
            return value
        if kind == "quantities":
            return self._quantities(value)
        raise AssertionError(f"contract field type {kind!r} has no validator")

    def _quantities(self, value: Any) -> list[dict[str, Any]]:
        if not isinstance(value, list) or not value:
            raise InvalidTelemetry(
                "bad_quantity", f"quantities must be a non-empty list, got {quote(value)}"
            )
        if len(value) > self._limits.max_quantities_per_usage:
            raise InvalidTelemetry(
                "bad_quantity",
                f"{len(value)} quantities, at most {self._limits.max_quantities_per_usage}",
            )
        out = []
        for q in value:
            if not isinstance(q, dict):
                raise InvalidTelemetry("bad_quantity", f"quantity {quote(q)} is not an object")
            name = self._identifier("quantities.name", q.get("name"))
            number: Any = q.get("value")
            as_float = math.nan
            if isinstance(number, (int, float)):
                try:
                    as_float = float(number)
                except OverflowError:  # an integer too large for a float (e.g. 10**400)
                    pass
            if isinstance(number, bool) or not math.isfinite(as_float) or as_float < 0:
                raise InvalidTelemetry(
                    "bad_quantity",
                    f"quantity {name} value {quote(number)} must be a finite number >= 0",
                )
            unit = q.get("unit")
            # type first: a list or an object as the unit is unhashable, and units is a set.
            if type(unit) is not str or unit not in self.contract.units:
                raise InvalidTelemetry(
                    "bad_unit",
                    f"quantity {name} unit {quote(unit)} is not one of {sorted(self.contract.units)}",
                )
            out.append({"name": name, "value": float(number), "unit": unit})
        return out

    def _version(self, value: Any, what: str) -> None:
        # `type(...) is int`: JSON's true is Python's True, and True == 1.
        if type(value) is not int:
            raise InvalidTelemetry("wrong_type", f"{what} v must be an integer, got {quote(value)}")
        if value != self.contract.version:
            raise InvalidTelemetry(
                "unsupported_version",
                f"{what} v={value}, this validator speaks v{self.contract.version}",
            )

    # --------------------------------------------------------------- records
    def record(self, obj: Any, *, now_ms: int | None = None) -> dict[str, Any]:
        """Return the normalized record (known fields only) or raise InvalidTelemetry."""
        if not isinstance(obj, dict):
            raise InvalidTelemetry("not_object", f"a record must be a JSON object, got {quote(obj)}")
        if "v" in obj:  # optional in a record (absent means this version), required in a batch
            self._version(obj["v"], "record")
        out: dict[str, Any] = {}
        kinds = self.contract.kinds
        for name, check in self._common:
            if name not in obj:
                raise InvalidTelemetry("missing_field", f"record has no {name}")
            value = obj[name]
            if name == "kind" and (type(value) is not str or value not in kinds):
                raise InvalidTelemetry(
                    "unknown_kind",
                    f"kind={quote(value)} is not one of {sorted(kinds)}",
                )
            out[name] = check(value)
        if out["seq"] > self._limits.max_seq or out["boot"] > self._limits.max_boot:
            raise InvalidTelemetry("out_of_range", f"boot={out['boot']} seq={out['seq']} too large")
        if not self._firmware_match(out["fw"]):
            raise InvalidTelemetry(
                "bad_firmware", f"fw={quote(out['fw'])} is not a dotted version like 2.4.1"
            )
        ts = out["ts_ms"]
        if ts < self._limits.min_event_time_ms:
            raise InvalidTelemetry("event_time_too_old", f"ts_ms={ts} is before 2000-01-01")
        if now_ms is not None and ts > now_ms + self._limits.max_future_skew_ms:
            raise InvalidTelemetry(
                "event_time_in_future",
                f"ts_ms={ts} is {(ts - now_ms) // 1000}s ahead of the receiver's clock",
            )
        kind = out["kind"]
        for name, required, check in self._kind_fields[kind]:
            if name in obj:
                out[name] = check(obj[name])
            elif required:
                raise InvalidTelemetry("missing_field", f"{kind} record has no {name}")
        return out

    def records(
        self, items: list[Any], *, now_ms: int | None = None, device_id: str | None = None
    ) -> tuple[list[dict[str, Any]], list[Rejection]]:
        """Validate a list of records; return (valid, rejected) — never raises.

        With ``device_id``, a record naming another device is ``device_mismatch``.
        """
        valid: list[dict[str, Any]] = []
        rejected: list[Rejection] = []
        for index, item in enumerate(items):
            try:
                record = self.record(item, now_ms=now_ms)
            except InvalidTelemetry as exc:
                rejected.append(Rejection(exc.reason, exc.detail, index, item))
                continue
            if device_id is not None and record["device_id"] != device_id:
                rejected.append(Rejection(
                    "device_mismatch",
                    f"record device_id={quote(record['device_id'])} on the topic of device "
                    f"{quote(device_id)}",
                    index,
                    item,
                ))
                continue
            valid.append(record)
        return valid, rejected

    # -------------------------------------------------------------- payloads
    def _gunzip(self, payload: bytes) -> bytes:
        """Inflate a gzip batch, refusing one that inflates past the payload limit."""
        limit = self._limits.max_payload_bytes
        inflater = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
        try:
            out = inflater.decompress(payload, limit + 1)
            if len(out) > limit:
                raise InvalidTelemetry("payload_too_large", f"inflates past {limit} bytes")
            if not inflater.eof or inflater.unused_data:
                raise InvalidTelemetry("bad_compression", "truncated gzip data or bytes after it")
        except zlib.error as exc:
            raise InvalidTelemetry("bad_compression", f"not valid gzip: {exc}") from None
        return out

    def _json(self, payload: bytes, *, gzip_allowed: bool = False) -> Any:
        if gzip_allowed and payload[:2] == GZIP_MAGIC and len(payload) <= self._limits.max_payload_bytes:
            payload = self._gunzip(payload)
        if len(payload) > self._limits.max_payload_bytes:
            raise InvalidTelemetry(
                "payload_too_large",
                f"{len(payload)} bytes, at most {self._limits.max_payload_bytes}",
            )
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidTelemetry("not_utf8", str(exc)) from None
        try:
            obj, error = _loads(text), None
        except json.JSONDecodeError as exc:
            obj, error = None, f"{exc.msg} at offset {exc.pos}"
        except RecursionError:
            obj, error = None, _TOO_DEEP
        # The bound decides first: how deep json.loads gets depends on the caller's stack.
        if error is _TOO_DEEP or nesting_exceeds(payload):
            raise InvalidTelemetry("not_json", _TOO_DEEP)
        if error is not None:
            raise InvalidTelemetry("not_json", error)
        return obj

    def device_payload(
        self, payload: bytes, *, now_ms: int | None = None, device_id: str | None = None
    ) -> tuple[list[dict[str, Any]], list[Rejection]]:
        """Decode a device message (one record or an array of them).

        ``device_id`` is the device the message's topic names: a record that
        claims another device (spoofing, or a misconfigured device) is refused
        as ``device_mismatch``.
        """
        try:
            obj = self._json(payload)
        except InvalidTelemetry as exc:
            return [], [Rejection(exc.reason, exc.detail)]
        items = obj if isinstance(obj, list) else [obj]
        if len(items) > self._limits.max_records_per_message:
            return [], [
                Rejection(
                    "too_many_records",
                    f"{len(items)} records, at most {self._limits.max_records_per_message}",
                )
            ]
        return self.records(items, now_ms=now_ms, device_id=device_id)

    def envelope(
        self, payload: bytes, *, now_ms: int | None = None
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[Rejection]]:
        """Decode a gateway batch: (envelope header or None, valid records, rejections).

        A header that breaks the contract rejects the whole payload (the
        records cannot be attributed to a customer); a bad record inside a
        good envelope rejects only that record.
        """
        try:
            obj = self._json(payload, gzip_allowed=True)
            if not isinstance(obj, dict):
                raise InvalidTelemetry("not_object", "a batch must be a JSON object")
            if "v" not in obj:
                raise InvalidTelemetry("missing_field", "batch has no v")
            self._version(obj["v"], "batch")
            header: dict[str, Any] = {}
            for spec in self.contract.envelope:
                if spec.name == "records":
                    continue
                if spec.name not in obj:
                    raise InvalidTelemetry("missing_field", f"batch has no {spec.name}")
                header[spec.name] = self._field(spec, obj[spec.name])
            items = obj.get("records")
            if not isinstance(items, list):
                raise InvalidTelemetry("missing_field", "batch has no records list")
            if len(items) > self._limits.max_records_per_message:
                raise InvalidTelemetry(
                    "too_many_records",
                    f"{len(items)} records, at most {self._limits.max_records_per_message}",
                )
        except InvalidTelemetry as exc:
            return None, [], [Rejection(exc.reason, exc.detail)]
        valid, rejected = self.records(items, now_ms=now_ms)
        return header, valid, rejected


#: How deep a rejected record is kept as it was; deeper parts become their quoted text.
DEAD_LETTER_MAX_DEPTH = 32


def _encodable(value: Any, depth: int = 0) -> Any:
    """``value`` (as ``json.loads`` gives it) with every string made valid UTF-8.

    A JSON text may escape a lone surrogate (``"\\ud800"``): valid JSON, but no
    UTF-8 encoder (a file, Beam's coders, Arrow) takes the resulting string.
    Such a string is kept as its escaped text (``\\ud800``, backslash and all),
    so a dead letter shows what came and can always be written. Nesting past
    :data:`DEAD_LETTER_MAX_DEPTH` is kept as quoted text, and so is a float
    JSON has no word for (Python's json reads ``NaN`` and ``Infinity``, which a
    strict JSON reader of the dead-letter file would refuse).
    """
    if isinstance(value, str):
        return value if value.isascii() or _utf8_ok(value) else value.encode(
            "utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict | list) and depth >= DEAD_LETTER_MAX_DEPTH:
        return quote(value, 240)
    if isinstance(value, dict):
        return {_encodable(key): _encodable(item, depth + 1) for key, item in value.items()}
    if isinstance(value, list):
        return [_encodable(item, depth + 1) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)  # 'nan', 'inf', '-inf'
    if value is None or isinstance(value, bool | int | float):
        return value
    return quote(value, 240)  # not from JSON: a source bug, still kept as text


def _utf8_prefix(payload: bytes, limit: int) -> str | None:
    """The first ``limit`` bytes of ``payload`` as text, or None when they are not UTF-8."""
    head = payload[:limit]
    try:
        return head.decode("utf-8")
    except UnicodeDecodeError as exc:
        # A cut inside a multi-byte character is the sample's doing, not the payload's.
        if len(payload) > limit and exc.start >= len(head) - 3 and exc.reason == "unexpected end of data":
            return head[: exc.start].decode("utf-8")
        return None


def dead_letter(
    rejection: Rejection,
    *,
    source: str,
    topic: str | None,
    at_ms: int,
    payload: bytes | None = None,
    sample_bytes: int | None = None,
) -> dict[str, Any]:
    """The dead-letter row for a rejection (the same shape everywhere); always encodable.

    A rejected record is kept as decoded; a payload rejected as a whole is kept
    raw (as text when it is UTF-8, otherwise base64) so it can be replayed.
    Every string in the row is valid UTF-8 (see :func:`_encodable`), so the row
    goes through ``json.dumps(ensure_ascii=False)`` into a UTF-8 file, through
    Beam's coders and into Arrow whatever the input held.

    ``sample_bytes`` keeps only a sample where space is scarce (a gateway's SD
    card): the payload's first ``sample_bytes`` bytes, and a record whose JSON
    is longer as the first ``sample_bytes`` characters of that JSON text.
    ``payload_bytes`` is the size of a kept payload and ``truncated`` says
    whether anything was cut.
    """
    row: dict[str, Any] = {
        "at_ms": at_ms,
        "source": _encodable(source),
        "topic": _encodable(topic),
        "reason": rejection.reason,
        "detail": _encodable(rejection.detail),
        "index": rejection.index,
        "record": _encodable(rejection.record) if rejection.index is not None else None,
        "payload": None,
        "payload_encoding": None,
        "payload_bytes": None,
        "truncated": False,
    }
    if sample_bytes is not None and row["record"] is not None:
        text = json.dumps(row["record"], ensure_ascii=False, separators=(",", ":"))
        if len(text) > sample_bytes:
            row["record"], row["truncated"] = text[:sample_bytes], True
    if rejection.index is None and payload is not None:
        limit = len(payload) if sample_bytes is None else sample_bytes
        sample = _utf8_prefix(payload, limit)
        if sample is not None:
            row["payload"], row["payload_encoding"] = sample, "utf-8"
        else:
            row["payload"] = base64.b64encode(payload[:limit]).decode("ascii")
            row["payload_encoding"] = "base64"
        row["payload_bytes"], row["truncated"] = len(payload), len(payload) > limit
    return row
