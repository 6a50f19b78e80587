"""The rule table (schemas/rules.py) drives both decoders: every entry, and a change to it.

For every check in the table, values just inside and just outside it go
through the per-element :class:`LandingDecoder` (the Validator) and the
columnar :class:`ArrowDecoder`: outside, the Validator refuses with the
check's own reason and detail and the ArrowDecoder gives the same dead
letter; inside, the check lets it pass, and a record the Validator accepts
is accepted by the ArrowDecoder's column checks (not handed back to the
Validator). Then the table is changed — in the contract it derives from,
and directly — and both paths follow.
"""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from typing import Any

import pytest

from fleetpulse.pipeline.transforms import arrow_decode
from fleetpulse.pipeline.transforms.arrow_decode import ArrowDecoder
from fleetpulse.pipeline.transforms.decode import LandingDecoder, dead_letter_row
from fleetpulse.schemas import Validator, load_contract
from fleetpulse.schemas import validate as validate_module
from fleetpulse.schemas.contract import Contract
from fleetpulse.schemas.rules import (
    INT64_MAX,
    INT64_MIN,
    OPS,
    Check,
    FieldRule,
    Rules,
    record_rules,
)

CONTRACT = load_contract()
RULES = record_rules(CONTRACT)
T0 = 1_709_510_400_000  # 2024-03-04T00:00:00Z
RECEIVED = T0 + 600_000
HEARTBEAT = {"device_id": "d1", "ts_ms": T0 + 1000, "boot": 1, "seq": 0, "kind": "heartbeat",
             "fw": "2.4.1", "interval_s": 60, "uptime_s": 5}
USAGE: dict[str, Any] = {"device_id": "d1", "ts_ms": T0 + 2000, "boot": 1, "seq": 1, "kind": "usage", "fw": "2.4.1",
         "period_s": 60, "quantities": [{"name": "runtime", "value": 42.5, "unit": "s"}]}
FEATURE = {"device_id": "d2", "ts_ms": T0 + 3000, "boot": 2, "seq": 5, "kind": "feature", "fw": "1.0",
           "feature": "scan", "count": 3}
ERROR = {"device_id": "d2", "ts_ms": T0 + 4000, "boot": 2, "seq": 6, "kind": "error", "fw": "1.0",
         "code": "E1", "severity": "critical", "message": "boom"}
TEMPLATES = {"heartbeat": HEARTBEAT, "usage": USAGE, "feature": FEATURE, "error": ERROR}
IDS = {"customer_id": "c1", "site_id": "s1", "gateway_id": "g1"}
ENVELOPE = {"v": 1, **IDS, "batch_seq": 7, "sent_ms": RECEIVED}

#: Values of another JSON type than a ``type`` check's, nearest first (1.0 and True compare equal to 1).
OTHER_TYPES: dict[str, list[Any]] = {
    "string": [7, None], "integer": [1.0, True, "1"], "number": ["1", True, None],
    "array": [{}, "x"], "object": [[], "runtime"],
}


def message(envelope: dict[str, Any]) -> tuple[str, bytes, int]:
    ids = {k: str(envelope.get(k, IDS[k])) for k in IDS}
    return CONTRACT.topic("gateway_batches", **ids), json.dumps(envelope).encode(), RECEIVED


def record_message(record: Any) -> tuple[str, bytes, int]:
    return message({**ENVELOPE, "records": [record]})


class Case:
    """One value put where a check reads it: the message, and the dead letter the check would give."""

    def __init__(self, where: str, rule: FieldRule | None, check: Check, value: Any) -> None:
        self.where, self.check, self.value = where, check, value
        context: dict[str, Any] = {}
        if where == "envelope":
            assert rule is not None
            self.message = message({**ENVELOPE, "records": [HEARTBEAT], rule.key: value})
        elif where == "across":
            record = {**HEARTBEAT, check.field: value}
            context = {"record": record, "now_ms": RECEIVED}
            self.message = record_message(record)
        elif where.startswith("item:"):  # rule: the array's (a check on the item) or the item field's
            assert rule is not None
            array = where.split(":")[1]
            item: Any = value
            if rule.items is None:
                item = {**USAGE[array][0], rule.key: value}
                context = {"item": item}
            self.message = record_message({**USAGE, array: [item]})
        else:  # a record's own field or its kind's
            assert rule is not None
            kind = where.split(":")[1] if where.startswith("kind:") else "heartbeat"
            if rule.key == RULES.discriminator and value in TEMPLATES:
                kind = value
            self.message = record_message({**TEMPLATES[kind], rule.key: value})
        self.refusal = (check.reason, check.describe(value, **context))

    def __repr__(self) -> str:
        return f"{self.where} {self.check.field} {self.check.op} {self.check.arg!r:.60}: {self.value!r:.60}"


def base_value(where: str, rule: FieldRule | None, check: Check) -> Any:
    """The valid value the templates hold where ``check`` reads."""
    if where == "envelope":
        assert rule is not None
        return {**ENVELOPE, "records": [HEARTBEAT]}[rule.key]
    if where == "across":
        return HEARTBEAT[check.field]
    if where.startswith("item:"):
        assert rule is not None
        item = USAGE[where.split(":")[1]][0]
        return item if rule.items is not None else item[rule.key]
    assert rule is not None
    template = TEMPLATES[where.split(":")[1] if where.startswith("kind:") else "heartbeat"]
    return template.get(rule.key, CONTRACT.version)  # a record's v is optional: absent means this version


def values(where: str, rule: FieldRule | None, check: Check) -> tuple[list[Any], list[Any]]:
    """Values just inside ``check`` and just outside it."""
    op, arg, base = check.op, check.arg, base_value(where, rule, check)
    if op == "type":
        return [base], OTHER_TYPES[arg]
    if op == "one_of":
        return list(arg), [v for v in (arg[0] + "x", arg[0].upper(), arg[0].lower(), 5) if v not in arg]
    if op == "chars_at_most":
        return [base + base[-1] * (arg - len(base))], [base + base[-1] * (arg + 1 - len(base))]
    if op == "utf8":
        return ["caf\u00e9", "\u2028"], ["a\ud800", "\udfff"]
    if op == "pattern":
        return [base], [base + " ", base + "\n", "-" + base]
    if op == "between":
        low, high = arg
        inside = [bound for bound in (low, high) if bound is not None]
        if isinstance(base, float) or isinstance(low, float):
            inside += [float(b) for b in inside]
            return inside, [b for b in (low, high) if b is not None and b != 0] + [-sys.float_info.min * 1e-10]
        return inside, [*([low - 1] if low is not None else []), *([high + 1] if high is not None else [])]
    if op == "finite":
        return [sys.float_info.max, 1e-300], [float("inf"), float("nan"), float("-inf")]
    if op == "items_between":
        low, high = arg
        # A batch of 5000 real records would pass the payload limit: its items are not records.
        item = 0 if where == "envelope" else base[0]
        return (
            [[item] * bound for bound in (low, high) if bound is not None],
            [[item] * bound for bound in ((low - 1) if low else None, (high + 1) if high else None)
             if bound is not None],
        )
    if op == "equals":
        return [arg], [arg + 1, arg - 1]
    if op == "not_after":
        return [RECEIVED + arg], [RECEIVED + arg + 1]
    raise AssertionError(f"no values for {op}: add them here when the table gains the operation")


def cases(rules: Rules = RULES) -> tuple[list[Case], list[Case]]:
    inside, outside = [], []
    for where, rule, check in rules.checks():
        ins, outs = values(where, rule, check)
        inside += [Case(where, rule, check, v) for v in ins]
        outside += [Case(where, rule, check, v) for v in outs]
    return inside, outside


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=repr)


def decide(
    topic: str, payload: bytes, received: int, landing: LandingDecoder, columnar: ArrowDecoder
) -> tuple[list[dict[str, Any]], list[tuple[str, str]], arrow_decode.Decoded]:
    """The per-element rows and refusals of one message; the columnar result, checked equal to them."""
    rows, dead = landing.decode({"topic": topic, "payload": payload, "received_ms": received})
    decoded = columnar.decode([topic], [payload], [received])
    assert sorted(map(canonical, decoded.table.to_pylist())) == sorted(map(canonical, rows))
    assert sorted(canonical(dead_letter_row(d)) for d in decoded.dead) == sorted(
        canonical(dead_letter_row(d)) for d in dead)
    return rows, [(d[0].reason, d[0].detail) for d in dead], decoded


#: Values inside one check that a stricter check of the record refuses: (field, operation, reason)
EXPECTED_REFUSED_INSIDE = [
    ("ts_ms", "between", "event_time_too_old"),  # the int64 bounds of event time: before 2000
    ("ts_ms", "between", "event_time_in_future"),  # ... and after the receiver's clock
    ("boot", "between", "out_of_range"),  # int64's ceiling, above the contract's max_boot
    ("seq", "between", "out_of_range"),  # ... and max_seq
    ("fw", "utf8", "bad_firmware"),  # a non-ASCII firmware is a string, not a version
    ("fw", "utf8", "bad_firmware"),
    ("records", "items_between", "not_object"),  # 5000 items that fit the payload are not records
]


def test_every_check_of_the_table_is_applied_alike_by_both_paths_just_inside_and_outside() -> None:
    landing, columnar = LandingDecoder(), ArrowDecoder()
    inside, outside = cases()
    # Every operation and every reason the table uses is exercised.
    assert {c.check.op for c in outside} == set(OPS)
    assert len({c.check for c in outside}) == len({check for _, _, check in RULES.checks()})
    for case in outside:
        rows, refusals, _ = decide(*case.message, landing, columnar)
        assert not rows and case.refusal in refusals, (case, refusals)
    refused_otherwise = []
    for case in inside:
        rows, refusals, decoded = decide(*case.message, landing, columnar)
        assert case.refusal not in refusals, case
        if rows:
            # Accepted by the column checks themselves, not handed back to the Validator.
            assert decoded.exact_records == decoded.exact_messages == 0, case
            assert decoded.fast_records == len(rows), case
        else:
            refused_otherwise.append((case.check.field, case.check.op, refusals[0][0]))
    assert sorted(refused_otherwise) == sorted(EXPECTED_REFUSED_INSIDE), refused_otherwise


def test_the_table_holds_the_contracts_rules_in_the_validators_order() -> None:
    limits = CONTRACT.limits
    assert [r.key for r in RULES.record] == ["v", *(s.name for s in CONTRACT.common if s.name != "v")]
    assert set(RULES.kinds) == set(CONTRACT.kinds)
    for kind, specs in CONTRACT.kinds.items():
        assert [(r.key, r.required) for r in RULES.kinds[kind]] == [(s.name, s.required) for s in specs]
    assert [r.key for r in RULES.envelope] == [s.name for s in CONTRACT.envelope]
    args = {(where, check.field, check.op): check.arg for where, _, check in RULES.checks()}
    assert args[("record", "device_id", "pattern")] == limits.identifier_pattern
    assert args[("record", "device_id", "chars_at_most")] == limits.identifier_max_length
    assert args[("kind:error", "message", "chars_at_most")] == limits.max_string_length
    assert args[("kind:heartbeat", "interval_s", "between")] == (1, 86400)
    # The lake's int64 where the contract has no bound; then the event-time rules across fields.
    assert args[("record", "ts_ms", "between")] == (INT64_MIN, INT64_MAX)
    assert args[("across", "ts_ms", "between")] == (limits.min_event_time_ms, None)
    assert args[("across", "ts_ms", "not_after")] == limits.max_future_skew_ms
    assert args[("across", "fw", "pattern")] == limits.firmware_pattern
    assert set(args[("item:quantities", "quantities.unit", "one_of")]) == CONTRACT.units
    assert args[("envelope", "records", "items_between")] == (None, limits.max_records_per_message)


def _rejection(validator: Validator, record: dict[str, Any]) -> tuple[str, str] | None:
    valid, rejected = validator.records([record], now_ms=RECEIVED)
    return None if valid else (rejected[0].reason, rejected[0].detail)


def test_a_contract_change_reaches_both_paths_through_the_table() -> None:
    limits = replace(CONTRACT.limits, max_string_length=10, identifier_max_length=4)
    changed: Contract = replace(CONTRACT, limits=limits, units=CONTRACT.units - {"kWh"})
    landing, columnar = LandingDecoder(changed), ArrowDecoder(changed)
    assert columnar.rules == landing.validator.rules == record_rules(changed)
    refused = {
        "message": ({**ERROR, "message": "x" * 11}, ("string_too_long", "message has 11 characters, at most 10 allowed")),
        "device_id": ({**HEARTBEAT, "device_id": "dev-1"}, "bad_identifier"),
        "unit": ({**USAGE, "quantities": [{"name": "e", "value": 1, "unit": "kWh"}]}, "bad_unit"),
    }
    for record, want in refused.values():
        assert _rejection(Validator(), record) is None  # the contract as shipped takes it
        rows, refusals, _ = decide(*record_message(record), landing, columnar)
        assert not rows and (refusals[0] == want if isinstance(want, tuple) else refusals[0][0] == want)
    rows, _, decoded = decide(*record_message({**ERROR, "device_id": "d2", "message": "x" * 10}), landing, columnar)
    assert rows and decoded.exact_records == 0


def _tightened(contract: Contract) -> Rules:
    """The contract's table with two rules added by hand: a ceiling on interval_s, one firmware."""
    rules = record_rules(contract)
    ceiling = Check("interval_s", "between", (None, 100), "out_of_range", "interval_s={value} is above 100 here")
    heartbeat = tuple(
        replace(rule, checks=(*rule.checks, ceiling)) if rule.key == "interval_s" else rule
        for rule in rules.kinds["heartbeat"]
    )
    one_firmware = Check("fw", "one_of", ("2.4.1", "1.0"), "bad_firmware", "fw={quoted} is not allowed here")
    return replace(rules, kinds={**rules.kinds, "heartbeat": heartbeat}, across=(*rules.across, one_firmware))


def test_a_rule_added_to_the_table_is_applied_by_both_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validate_module, "record_rules", _tightened)
    landing, columnar = LandingDecoder(), ArrowDecoder()
    assert columnar.rules == _tightened(CONTRACT)
    for record, want in (
        ({**HEARTBEAT, "interval_s": 101}, ("out_of_range", "interval_s=101 is above 100 here")),
        ({**HEARTBEAT, "fw": "2.5.0"}, ("bad_firmware", "fw='2.5.0' is not allowed here")),
        ({**FEATURE, "fw": "3.0"}, ("bad_firmware", "fw='3.0' is not allowed here")),
    ):
        rows, refusals, _ = decide(*record_message(record), landing, columnar)
        assert not rows and refusals == [want], record
    # Just inside, decided by the column checks; several messages at once (Arrow's JSON reader).
    messages = [record_message({**HEARTBEAT, "interval_s": 100}), record_message(USAGE)]
    decoded = columnar.decode(*(list(column) for column in zip(*messages, strict=True)))
    assert decoded.table.num_rows == 2 and decoded.exact_records == 0 and decoded.plain_messages == 2


def test_an_operation_either_path_lacks_is_refused_when_it_is_built(monkeypatch: pytest.MonkeyPatch) -> None:
    assert arrow_decode._COLUMN_OPS == set(OPS)
    monkeypatch.setattr(arrow_decode, "_COLUMN_OPS", arrow_decode._COLUMN_OPS - {"finite"})
    Validator()
    with pytest.raises(ValueError, match="ArrowDecoder has no 'finite' operation"):
        ArrowDecoder()
    monkeypatch.undo()
    unknown = Check("fw", "pattern", "^x$", "bad_firmware", "fw={quoted}")
    rules = replace(RULES, across=(unknown,))
    object.__setattr__(unknown, "op", "even")  # past the table's own check of its operations
    monkeypatch.setattr(validate_module, "record_rules", lambda contract: rules)
    with pytest.raises(ValueError, match="Validator has no 'even' operation"):
        Validator()


def test_a_malformed_table_is_refused() -> None:
    with pytest.raises(ValueError, match="not one of"):
        Check("x", "shorter_than", 3, "bad_enum", "x")
    with pytest.raises(ValueError, match="first check must say the type"):
        FieldRule("x", "x", "int", True, "no x", (Check("x", "between", (0, 1), "out_of_range", "x"),))
    with pytest.raises(ValueError, match="chars_at_most does not apply to a JSON integer"):
        FieldRule("x", "x", "int", True, "no x", (Check("x", "type", "integer", "wrong_type", "x"),
                                                  Check("x", "chars_at_most", 3, "string_too_long", "x")))
    with pytest.raises(ValueError, match="reads nope"):
        replace(RULES, across=(Check("nope", "pattern", "^x$", "bad_firmware", "x"),))
