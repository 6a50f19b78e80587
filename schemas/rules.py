"""The record-level rules of the telemetry contract, as one table that every validator reads.

:func:`record_rules` derives the table from a loaded :class:`~.contract.Contract`
(its field specs, limits and units): for every field of a record, of each
kind's body, of a quantity and of the batch envelope, the checks in the order
they are applied, each with the dead letter's ``reason`` and ``detail``. Two
interpreters read it and nothing else:

* :class:`~.validate.Validator` applies it to one decoded JSON value at a time
  (the gateway, the per-element pipeline, and every record the columnar path
  cannot decide), and gives the first failing check's reason and detail;
* :class:`fleetpulse.pipeline.transforms.arrow_decode.ArrowDecoder` applies the
  same checks as Arrow kernels over whole columns, and only ever *accepts*
  there: a record failing any check is handed to the Validator for its dead
  letter.

So a rule is added or changed here, once, and both paths follow. A check is
an operation from the small fixed set :data:`OPS` with its argument; each
interpreter implements every operation and refuses a table holding one it does
not know, so a new kind of check cannot reach one path only.

Standard library only: the gateway reads this on a Raspberry Pi.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from fleetpulse.errors import quote

from .contract import Contract, FieldSpec, Limits

#: Integers without a bound in the contract must still fit the lake's int64 columns.
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

#: JSON value types a ``type`` check names (a boolean is none of them, although Python's True == 1).
JSON_TYPES = ("string", "integer", "number", "array", "object")

#: Every operation a check may use, with its argument. Each check runs on a value that passed
#: the checks before it in its field (so the ones after a ``type`` check see that type).
OPS: Mapping[str, str] = {
    "type": "the value is of the JSON type named by the argument (one of JSON_TYPES)",
    "one_of": "the value is a string, one of the argument's (a tuple of strings)",
    "chars_at_most": "a string of at most the argument's number of characters (code points)",
    "utf8": "a string UTF-8 can encode (JSON may escape a lone surrogate; no argument)",
    "pattern": "a string the argument (a regular expression, anchored ^...$) matches as a whole",
    "between": "a number within the argument (low, high), both inclusive; None is unbounded",
    "finite": "a number that is neither NaN nor infinite as a float (no argument)",
    "items_between": "an array whose length is within the argument (low, high); None is unbounded",
    "equals": "the argument itself, of its type (True is not 1)",
    "not_after": "a number at most the argument more than the receiver's clock (skipped without one)",
}

#: What each operation may be applied to: the JSON types its field must have.
_OP_TYPES: Mapping[str, frozenset[str]] = {
    "type": frozenset(JSON_TYPES),
    "one_of": frozenset({"string"}),
    "chars_at_most": frozenset({"string"}),
    "utf8": frozenset({"string"}),
    "pattern": frozenset({"string"}),
    "between": frozenset({"integer", "number"}),
    "finite": frozenset({"integer", "number"}),
    "items_between": frozenset({"array"}),
    "equals": frozenset(JSON_TYPES),
    "not_after": frozenset({"integer", "number"}),
}

#: The record field that names the record's kind, and so which body rules apply.
DISCRIMINATOR = "kind"


def _literal(text: str) -> str:
    """``text`` as it should appear in a detail template (braces are not placeholders)."""
    return text.replace("{", "{{").replace("}", "}}")


@dataclass(frozen=True)
class Check:
    """One rule on one value, and the dead letter it gives when the value breaks it.

    ``detail`` is a :meth:`str.format` template with these placeholders:
    ``{value}`` (the value), ``{quoted}`` (:func:`~fleetpulse.errors.quote` of
    it), ``{length}`` (its ``len``), ``{ahead_s}`` (whole seconds past the
    receiver's clock), ``{record[...]}`` (the record's fields checked so far)
    and ``{item[...]}`` (the array item's fields checked so far).
    """

    field: str  # the field it reads, as named in details ("device_id", "quantities.name")
    op: str
    arg: Any
    reason: str
    detail: str

    def __post_init__(self) -> None:
        if self.op not in OPS:
            raise ValueError(f"check of {self.field}: operation {self.op!r} is not one of {sorted(OPS)}")
        if self.op == "type" and self.arg not in JSON_TYPES:
            raise ValueError(f"check of {self.field}: type {self.arg!r} is not one of {JSON_TYPES}")

    def describe(
        self,
        value: Any,
        *,
        now_ms: int | None = None,
        record: Mapping[str, Any] | None = None,
        item: Mapping[str, Any] | None = None,
    ) -> str:
        """The detail of a dead letter for ``value`` breaking this check."""
        try:
            length: int | None = len(value)
        except TypeError:
            length = None
        ahead_s = None
        if now_ms is not None and isinstance(value, int | float):
            ahead_s = (value - now_ms) // 1000
        return self.detail.format(
            value=value, quoted=quote(value), length=length, ahead_s=ahead_s,
            record=record or {}, item=item or {},
        )


@dataclass(frozen=True)
class ItemRule:
    """What each item of an array field must be: ``checks`` on the item, then its ``fields``."""

    checks: tuple[Check, ...]
    fields: tuple[FieldRule, ...]

    def __post_init__(self) -> None:
        for item_field in self.fields:
            # An item's absent field is checked as null, which its first check refuses.
            if not item_field.required or item_field.missing is not None or item_field.items is not None:
                raise ValueError(f"{item_field.name}: an item's field is required, checked as null when "
                                 "absent, and holds no array of its own")


@dataclass(frozen=True)
class FieldRule:
    """The checks of one field, in order: the first one a value breaks gives the dead letter."""

    name: str  # as named in details ("device_id", "quantities.name")
    key: str  # its key in the object that holds it
    type: str  # the contract's type (identifier, int, string, enum, number, quantities, records)
    required: bool
    #: the missing_field detail when absent; None: an absent value is checked as null (array items)
    missing: str | None
    checks: tuple[Check, ...]
    items: ItemRule | None = None
    keep: bool = True  # whether the validated object keeps it (a record's v is not kept)

    def __post_init__(self) -> None:
        if not self.checks or self.checks[0].op not in ("type", "one_of"):
            raise ValueError(f"{self.name}: the first check must say the type (type or one_of)")
        json_type = self.json_type
        for check in self.checks:
            if check.op == "not_after":  # the receiver's clock is known to the record, not a field
                raise ValueError(f"{self.name}: not_after is a check across a record's fields")
            if json_type not in _OP_TYPES.get(check.op, ()):
                raise ValueError(f"{self.name}: {check.op} does not apply to a JSON {json_type}")
        if (self.items is not None) != (json_type == "array" and self.type != "records"):
            raise ValueError(f"{self.name}: item rules go with an array of objects, and only there")

    @property
    def json_type(self) -> str:
        """The JSON type its values have once the first check passed."""
        first = self.checks[0]
        return str(first.arg) if first.op == "type" else "string"


@dataclass(frozen=True)
class Rules:
    """Every record-level rule of one contract version, in the order the Validator applies them.

    A record: ``record`` (its version, then its common fields), then
    ``across`` (checks on common fields already validated: sequence and boot
    ceilings, firmware, event time), then ``kinds[record[DISCRIMINATOR]]``
    (its body). A batch: ``envelope`` (version, header fields, records list).
    """

    version: int
    record: tuple[FieldRule, ...]
    across: tuple[Check, ...]
    kinds: dict[str, tuple[FieldRule, ...]]
    envelope: tuple[FieldRule, ...]
    discriminator: str = DISCRIMINATOR

    def __post_init__(self) -> None:
        types = {rule.key: rule.json_type for rule in self.record}
        for check in self.across:
            if check.field not in types:
                raise ValueError(f"check across fields reads {check.field}, which no common field rule has")
            if types[check.field] not in _OP_TYPES.get(check.op, ()):
                raise ValueError(f"{check.field}: {check.op} does not apply to a JSON {types[check.field]}")
        if self.discriminator not in types:
            raise ValueError(f"the kind field {self.discriminator} has no rule")

    def fields(self) -> Iterator[tuple[str, FieldRule]]:
        """Every field rule with where it applies: ``record``, ``kind:<kind>``, ``item:<field>``, ``envelope``."""
        for where, rules in (("record", self.record), *((f"kind:{k}", r) for k, r in self.kinds.items()),
                             ("envelope", self.envelope)):
            for rule in rules:
                yield where, rule
                if rule.items is not None:
                    for item_field in rule.items.fields:
                        yield f"item:{rule.name}", item_field

    def checks(self) -> Iterator[tuple[str, FieldRule | None, Check]]:
        """Every check of the table with where it applies (see :meth:`fields`; ``across`` has no field rule)."""
        for where, rule in self.fields():
            for check in rule.checks:
                yield where, rule, check
            if rule.items is not None:
                for check in rule.items.checks:
                    yield f"item:{rule.name}", rule, check
        for check in self.across:
            yield "across", None, check


# ------------------------------------------------------------- from the contract


def _type_check(name: str, json_type: str, detail: str, reason: str = "wrong_type") -> Check:
    return Check(name, "type", json_type, reason, detail)


def _spec_checks(spec: FieldSpec, limits: Limits, name: str) -> tuple[Check, ...]:
    """The checks of a contract field of a scalar type, with the reasons and details of the contract."""
    label = _literal(name)
    if spec.type == "identifier":
        refused = (
            f"{label}={{quoted}} must match {_literal(limits.identifier_pattern)} "
            f"and be at most {limits.identifier_max_length} characters"
        )
        return (
            _type_check(name, "string", f"{label} must be a string, got {{quoted}}"),
            Check(name, "chars_at_most", limits.identifier_max_length, "bad_identifier", refused),
            Check(name, "pattern", limits.identifier_pattern, "bad_identifier", refused),
        )
    if spec.type == "int":
        low = INT64_MIN if spec.min is None else spec.min
        high = INT64_MAX if spec.max is None else spec.max
        return (
            _type_check(name, "integer", f"{label} must be an integer, got {{quoted}}"),
            Check(name, "between", (low, high), "out_of_range", f"{label}={{value}} is outside [{low}, {high}]"),
        )
    if spec.type == "string":
        return (
            _type_check(name, "string", f"{label} must be a string, got {{quoted}}"),
            Check(name, "chars_at_most", limits.max_string_length, "string_too_long",
                  f"{label} has {{length}} characters, at most {limits.max_string_length} allowed"),
            Check(name, "utf8", None, "not_utf8", f"{label} holds a lone surrogate"),
        )
    if spec.type == "enum":
        return (Check(name, "one_of", spec.values, "bad_enum",
                      f"{label}={{quoted}} is not one of {_literal(repr(list(spec.values)))}"),)
    raise ValueError(f"contract field {name} has type {spec.type!r}, which has no rules")


def _version_rule(contract: Contract, what: str, *, required: bool, keep: bool) -> FieldRule:
    return FieldRule(
        name="v", key="v", type="int", required=required, missing=f"{what} has no v", keep=keep,
        checks=(
            _type_check("v", "integer", f"{what} v must be an integer, got {{quoted}}"),
            Check("v", "equals", contract.version, "unsupported_version",
                  f"{what} v={{value}}, this validator speaks v{contract.version}"),
        ),
    )


def _quantities_rule(spec: FieldSpec, contract: Contract) -> FieldRule:
    """A usage record's quantities: a bounded non-empty array of {name, value, unit} objects."""
    limits, name = contract.limits, spec.name
    not_a_list = f"{_literal(name)} must be a non-empty list, got {{quoted}}"
    item_fields = []
    for item in contract.quantity_fields:
        path = f"{name}.{item.name}"
        if item.type == "number":
            # The quantity's own detail: which quantity, and what a value must be.
            refused = f"quantity {{item[name]}} {item.name} {{quoted}} must be a finite number >= {item.min}"
            checks: tuple[Check, ...] = (
                _type_check(path, "number", refused, "bad_quantity"),
                Check(path, "finite", None, "bad_quantity", refused),
                Check(path, "between", (item.min, item.max), "bad_quantity", refused),
            )
        elif item.type == "enum":  # the unit
            checks = (Check(path, "one_of", item.values, "bad_unit",
                            f"quantity {{item[name]}} {item.name} {{quoted}} is not one of "
                            f"{_literal(repr(list(item.values)))}"),)
        else:
            checks = _spec_checks(item, limits, path)
        item_fields.append(FieldRule(path, item.name, item.type, True, None, checks))
    return FieldRule(
        name=name, key=name, type=spec.type, required=spec.required,
        missing=None,  # set by the kind
        checks=(
            _type_check(name, "array", not_a_list, "bad_quantity"),
            Check(name, "items_between", (1, None), "bad_quantity", not_a_list),
            Check(name, "items_between", (None, limits.max_quantities_per_usage), "bad_quantity",
                  f"{{length}} {_literal(name)}, at most {limits.max_quantities_per_usage}"),
        ),
        items=ItemRule(
            checks=(_type_check(name, "object", "quantity {quoted} is not an object", "bad_quantity"),),
            fields=tuple(item_fields),
        ),
    )


def _field_rule(spec: FieldSpec, contract: Contract, missing: str) -> FieldRule:
    if spec.type == "quantities":
        return replace(_quantities_rule(spec, contract), missing=missing)
    checks = _spec_checks(spec, contract.limits, spec.name)
    return FieldRule(spec.name, spec.name, spec.type, spec.required, missing, checks)


def _utc_day(epoch_ms: int) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC).date().isoformat()


def record_rules(contract: Contract) -> Rules:
    """The rule table of ``contract`` (see the module docstring)."""
    limits = contract.limits
    record: list[FieldRule] = [_version_rule(contract, "record", required=False, keep=False)]
    for spec in contract.common:
        if spec.name == "v":
            continue
        if spec.name == DISCRIMINATOR:
            # The kind selects the body: it must be one of the kinds the contract defines.
            names = tuple(sorted(contract.kinds))
            if sorted(spec.values) != list(names):
                raise ValueError(f"contract v{contract.version}: {DISCRIMINATOR} values {list(spec.values)} "
                                 f"are not the kinds {list(names)}")
            checks = (Check(spec.name, "one_of", names, "unknown_kind",
                            f"{DISCRIMINATOR}={{quoted}} is not one of {_literal(repr(list(names)))}"),)
            record.append(FieldRule(spec.name, spec.name, spec.type, True, f"record has no {spec.name}", checks))
            continue
        record.append(_field_rule(spec, contract, f"record has no {spec.name}"))
    too_large = "boot={record[boot]} seq={record[seq]} too large"
    across = (
        Check("seq", "between", (None, limits.max_seq), "out_of_range", too_large),
        Check("boot", "between", (None, limits.max_boot), "out_of_range", too_large),
        Check("fw", "pattern", limits.firmware_pattern, "bad_firmware",
              "fw={quoted} is not a dotted version like 2.4.1"),
        Check("ts_ms", "between", (limits.min_event_time_ms, None), "event_time_too_old",
              f"ts_ms={{value}} is before {_utc_day(limits.min_event_time_ms)}"),
        Check("ts_ms", "not_after", limits.max_future_skew_ms, "event_time_in_future",
              "ts_ms={value} is {ahead_s}s ahead of the receiver's clock"),
    )
    kinds = {
        kind: tuple(_field_rule(spec, contract, f"{kind} record has no {spec.name}") for spec in specs)
        for kind, specs in contract.kinds.items()
    }
    envelope: list[FieldRule] = [_version_rule(contract, "batch", required=True, keep=True)]
    for spec in contract.envelope:
        if spec.name == "v":
            continue
        if spec.type == "records":
            continue  # last, below
        envelope.append(_field_rule(spec, contract, f"batch has no {spec.name}"))
    for spec in contract.envelope:
        if spec.type == "records":
            no_list = f"batch has no {spec.name} list"
            envelope.append(FieldRule(
                spec.name, spec.name, spec.type, True, no_list, keep=False,
                checks=(
                    _type_check(spec.name, "array", no_list, "missing_field"),
                    Check(spec.name, "items_between", (None, limits.max_records_per_message), "too_many_records",
                          f"{{length}} records, at most {limits.max_records_per_message}"),
                ),
            ))
    return Rules(contract.version, tuple(record), across, kinds, tuple(envelope))
