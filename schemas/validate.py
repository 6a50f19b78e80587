"""Validation of telemetry records and gateway batch envelopes (contract v1).

One module for both sides: the gateway collector validates what devices send
before stamping and forwarding it, and the pipeline validates every record it
decodes from a batch again (a batch may come from an older or foreign gateway).
Standard library only.

Every rejection carries a ``reason`` from the bounded set :data:`REASONS` (for
counters and dashboards) and a ``detail`` that quotes the offending value.

The record-level rules are not written here: :class:`Validator` applies the
contract's rule table (:mod:`.rules`), which the pipeline's columnar decoder
applies too. Each field's checks are compiled once into one Python expression
(a sufficient test, as fast as hand-written code); a value that fails it is
checked exactly, check by check, to find the first one it breaks. What stays
here is the payload level: size, gzip, UTF-8, JSON and its nesting bound,
device and batch messages, dead-letter rows.
"""

from __future__ import annotations

import base64
import json
import math
import re
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from fleetpulse.errors import RejectedInput, quote

from .contract import Contract, load_contract
from .rules import INT64_MAX as INT64_MAX  # re-exported: the lake's int64 bounds
from .rules import INT64_MIN as INT64_MIN
from .rules import Check, FieldRule, ItemRule, Rules, record_rules

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


def _apply(fields: list[_Field], obj: dict[str, Any], into: dict[str, Any]) -> None:
    """Check ``obj``'s fields (compiled ``(key, required, kept, missing, check)`` rows) into ``into``."""
    for key, required, kept, missing, check in fields:
        if key in obj:
            value = check(obj[key])
            if kept:
                into[key] = value
        elif required:
            raise InvalidTelemetry("missing_field", missing)


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


class _Namespace:
    """The globals of a compiled check: the table's constants, each bound to a name once.

    A plain dict (``globals``): the interpreter caches global look-ups only in an exact dict.
    """

    def __init__(self, **names: Any) -> None:
        self.globals: dict[str, Any] = dict(names)

    def bind(self, value: Any) -> str:
        name = f"_k{len(self.globals)}"
        self.globals[name] = value
        return name


#: A sufficient test for each JSON type, over the value's expression ``{v}`` (bool is no int).
_FAST_TYPES = {
    "string": "type({v}) is str",
    "integer": "type({v}) is int",
    "number": "(type({v}) is float or type({v}) is int)",
    "array": "type({v}) is list",
    "object": "type({v}) is dict",
}
_FLOAT_MAX = sys.float_info.max


def _fast(check: Check, v: str, ns: _Namespace) -> str:
    """Python source true only where ``check`` passes for the value ``v`` (an expression).

    Sufficient, not exact: where it is false, :func:`_passes` decides (and the
    detail is written). It may assume the checks before it in its field passed.
    """
    op, arg = check.op, check.arg
    if op == "type":
        return _FAST_TYPES[arg].format(v=v)
    if op == "one_of":
        return f"(type({v}) is str and {v} in {ns.bind(frozenset(arg))})"
    if op == "chars_at_most":
        return f"len({v}) <= {ns.bind(arg)}"
    if op == "utf8":
        return f"({v}.isascii() or _utf8_ok({v}))"
    if op == "pattern":
        return f"{ns.bind(re.compile(arg).fullmatch)}({v})"
    if op in ("between", "items_between"):
        x = v if op == "between" else f"len({v})"
        low, high = (None if bound is None else ns.bind(bound) for bound in arg)
        if low is not None and high is not None:
            return f"{low} <= {x} <= {high}"
        return f"{low} <= {x}" if low is not None else "True" if high is None else f"{x} <= {high}"
    if op == "finite":  # a float within range is finite; an int beyond it is not a float (10**400)
        return f"{ns.bind(-_FLOAT_MAX)} <= {v} <= {ns.bind(_FLOAT_MAX)}"
    if op == "equals":
        return f"(type({v}) is {ns.bind(type(arg))} and {v} == {ns.bind(arg)})"
    if op == "not_after":
        return f"(now is None or {v} <= now + {ns.bind(arg)})"
    raise ValueError(f"check of {check.field}: the Validator has no {op!r} operation")


#: The Python types of each JSON type, as json.loads gives them (a bool is none of them).
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "array": (list,), "object": (dict,),
}


def _passes(check: Check, value: Any, now_ms: int | None) -> bool:
    """Whether ``value`` passes ``check`` (given that it passed the checks before it), exactly."""
    op, arg = check.op, check.arg
    if op == "type":
        return isinstance(value, _JSON_TYPES[arg]) and not isinstance(value, bool)
    if op == "one_of":
        return type(value) is str and value in arg
    if op == "chars_at_most":
        return len(value) <= arg
    if op == "utf8":
        return _utf8_ok(value)
    if op == "pattern":
        return re.fullmatch(arg, value) is not None
    if op in ("between", "items_between"):
        x = value if op == "between" else len(value)
        low, high = arg
        return (low is None or low <= x) and (high is None or x <= high)
    if op == "finite":
        try:
            return math.isfinite(float(value))
        except OverflowError:  # an integer too large for a float (e.g. 10**400)
            return False
    if op == "equals":
        return type(value) is type(arg) and bool(value == arg)
    if op == "not_after":
        return now_ms is None or value <= now_ms + arg
    raise ValueError(f"check of {check.field}: the Validator has no {op!r} operation")


def _exact(rule: FieldRule, value: Any, item: dict[str, Any] | None = None) -> Any:
    """``value`` as kept when it passes every check of ``rule``; else the first check it breaks, raised."""
    for check in rule.checks:
        if not _passes(check, value, None):
            raise InvalidTelemetry(check.reason, check.describe(value, item=item))
    if rule.items is not None:
        return [_exact_item(rule.items, one) for one in value]
    return float(value) if rule.json_type == "number" else value


def _exact_item(rule: ItemRule, value: Any) -> dict[str, Any]:
    for check in rule.checks:
        if not _passes(check, value, None):
            raise InvalidTelemetry(check.reason, check.describe(value))
    item: dict[str, Any] = {}
    for item_field in rule.fields:  # an absent field is checked as null
        item[item_field.key] = _exact(item_field, value.get(item_field.key), item)
    return item


def _compile(source: str, name: str, ns: _Namespace) -> Any:
    # Generated once per contract field from the rule table: one call per value in the
    # common case, as fast as the hand-written checks it replaces.
    exec(compile(source, f"<rules: {name}>", "exec"), ns.globals)
    return ns.globals[name]


def _predicate(rule: FieldRule) -> Callable[[Any], bool]:
    """A sufficient test of ``rule`` on a value (an array item's field)."""
    if rule.items is not None:
        raise ValueError(f"{rule.name}: arrays inside array items have no Validator")
    ns = _Namespace(_utf8_ok=_utf8_ok)
    condition = " and ".join(_fast(check, "v", ns) for check in rule.checks)
    return cast(Callable[[Any], bool], _compile(f"def ok(v):\n    return {condition}\n", "ok", ns))


def _field_checker(rule: FieldRule) -> Callable[[Any], Any]:
    """A check of one field: returns the value as kept (a number as float, array items
    normalised) or raises the InvalidTelemetry of the first check it breaks."""
    ns = _Namespace(_utf8_ok=_utf8_ok, _slow=lambda value: _exact(rule, value))
    condition = " and ".join(_fast(check, "v", ns) for check in rule.checks)
    if rule.items is None:
        kept = "float(v)" if rule.json_type == "number" else "v"
        return cast(Callable[[Any], Any], _compile(
            f"def check(v):\n    return {kept} if {condition} else _slow(v)\n", "check", ns))
    fields = rule.items.fields
    item_ok = " and ".join([
        *(_fast(check, "q", ns) for check in rule.items.checks),
        *(f"{ns.bind(_predicate(f))}(q.get({f.key!r}))" for f in fields),
    ])
    kept_item = ", ".join(
        f"{f.key!r}: float(q[{f.key!r}])" if f.json_type == "number" else f"{f.key!r}: q[{f.key!r}]"
        for f in fields
    )
    source = (
        "def check(v):\n"
        f"    if {condition}:\n"
        "        out = []\n"
        "        for q in v:\n"
        f"            if not ({item_ok}):\n"
        "                return _slow(v)\n"
        f"            out.append({{{kept_item}}})\n"
        "        return out\n"
        "    return _slow(v)\n"
    )
    return cast(Callable[[Any], Any], _compile(source, "check", ns))


def _across_checker(
    checks: tuple[Check, ...],
) -> tuple[Callable[[dict[str, Any], int | None], bool], Callable[[dict[str, Any], int | None], None]]:
    """The checks across a record's validated fields: a fast test (true: every check passes), and
    what to call when it is false, which raises the InvalidTelemetry of the first check broken."""
    ns = _Namespace(_utf8_ok=_utf8_ok)
    condition = " and ".join(_fast(check, f"r[{check.field!r}]", ns) for check in checks) or "True"
    fast = _compile(f"def ok(r, now):\n    return {condition}\n", "ok", ns)

    def refuse(record: dict[str, Any], now_ms: int | None) -> None:
        for one in checks:
            value = record[one.field]
            if not _passes(one, value, now_ms):
                raise InvalidTelemetry(one.reason, one.describe(value, now_ms=now_ms, record=record))

    return cast(Callable[[dict[str, Any], int | None], bool], fast), refuse


#: A field rule ready to apply: (key, required, kept, missing_field detail, check)
_Field = tuple[str, bool, bool, str, Callable[[Any], Any]]


def _ready(rule: FieldRule) -> _Field:
    return (rule.key, rule.required, rule.keep, rule.missing or f"no {rule.name}", _field_checker(rule))


class Validator:
    """Validates records and envelopes against one contract version.

    The rules are the contract's table (:func:`~.rules.record_rules`), applied
    in its order: a record's version and common fields, the checks across
    them, then its kind's body; a batch's envelope fields. Each field's checks
    are compiled once into one fast test, and only a value that fails it pays
    for finding the first check it breaks and writing the detail.

    ``now_ms`` given to the methods bounds event time from above (device
    clocks drift; a record too far in the future is refused). The gateway
    passes its wall clock, the pipeline the time the batch was received.
    """

    def __init__(self, contract: Contract | None = None) -> None:
        self.contract = contract or load_contract(1)
        self._limits = self.contract.limits
        self.rules: Rules = record_rules(self.contract)
        self._record = [_ready(rule) for rule in self.rules.record]
        self._across_ok, self._refuse_across = _across_checker(self.rules.across)
        self._kinds = {kind: [_ready(rule) for rule in rules] for kind, rules in self.rules.kinds.items()}
        self._discriminator = self.rules.discriminator
        self._envelope = [_ready(rule) for rule in self.rules.envelope]
        self._records_key = next(rule.key for rule in self.rules.envelope if rule.type == "records")

    def __getstate__(self) -> dict[str, Any]:
        return {"contract": self.contract}  # the compiled checks are rebuilt, not pickled

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, state["contract"])

    # --------------------------------------------------------------- records
    def record(self, obj: Any, *, now_ms: int | None = None) -> dict[str, Any]:
        """Return the normalized record (known fields only) or raise InvalidTelemetry."""
        if not isinstance(obj, dict):
            raise InvalidTelemetry("not_object", f"a record must be a JSON object, got {quote(obj)}")
        out: dict[str, Any] = {}
        _apply(self._record, obj, out)
        if not self._across_ok(out, now_ms):
            self._refuse_across(out, now_ms)
        _apply(self._kinds[out[self._discriminator]], obj, out)
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
            header: dict[str, Any] = {}
            _apply(self._envelope, obj, header)
            items = obj[self._records_key]
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
