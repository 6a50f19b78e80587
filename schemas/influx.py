"""The InfluxDB measurement design, loaded from ``influx_v1.json``, and the check against it.

The JSON file beside this module is the single source of truth for what
FleetPulse writes to InfluxDB: measurement names, tags, field names and field
types, and the timestamp rule (window start). The InfluxDB sink checks every
point with :meth:`InfluxDesign.check` before encoding it, so a point with an
unknown tag or field, or a value of the wrong type, becomes a dead letter with
a reason here instead of a field-type conflict on the server (which would
reject the whole batch). Prose: ``INFLUX_V1.md``. Standard library only.
"""

from __future__ import annotations

import json
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from fleetpulse.errors import RejectedInput, quote

from .contract import load_contract

SUPPORTED_VERSIONS = (1,)

#: Bounded reasons a point breaks the design (counter labels; ``detail`` quotes the value).
DESIGN_REASONS = (
    "not_a_point",
    "unknown_measurement",
    "unknown_tag",
    "missing_tag",
    "bad_tag_value",
    "unknown_field",
    "missing_field",
    "wrong_type",
    "out_of_range",
    "bad_enum",
    "string_too_long",
    "bad_timestamp",
    "misaligned_timestamp",
)

FIELD_TYPES = ("int", "float", "bool", "string")

# Pattern caches are per measurement; bounded so a stream of junk keys cannot grow them.
_PATTERN_CACHE_MAX = 4096


class DesignViolation(RejectedInput):
    """A point that does not fit the measurement design."""

    REASONS = DESIGN_REASONS


@dataclass(frozen=True)
class TagSpec:
    """One tag of a measurement. Empty optional tags are omitted from the point."""

    name: str
    required: bool
    doc: str = ""
    max_length: int | None = None
    format: str | None = None  # "identifier": the telemetry contract's identifier rule


@dataclass(frozen=True)
class InfluxFieldSpec:
    """One field (or a family of fields matched by a pattern) and its fixed type."""

    name: str
    type: str
    required: bool = False
    doc: str = ""
    min: float | None = None
    max: float | None = None
    values: tuple[str, ...] = ()
    max_length: int | None = None


@dataclass(frozen=True)
class FieldPattern:
    """Fields allowed by name pattern, e.g. ``<quantity>_<unit>`` floats."""

    regex: re.Pattern[str]
    spec: InfluxFieldSpec


@dataclass(frozen=True)
class MeasurementSpec:
    """A measurement: its tags (the series key), fields and timestamp window."""

    name: str
    doc: str
    window_s: int
    tags: Mapping[str, TagSpec]
    fields: Mapping[str, InfluxFieldSpec]
    patterns: tuple[FieldPattern, ...]
    identifier_re: re.Pattern[str] = field(repr=False, compare=False)
    identifier_max_length: int = 64
    _pattern_cache: dict[str, InfluxFieldSpec | None] = field(
        default_factory=dict, repr=False, compare=False
    )

    required_fields: frozenset[str] = field(default=frozenset(), repr=False, compare=False)

    def field_spec(self, key: str) -> InfluxFieldSpec | None:
        """The spec of field ``key``: exact names first, then the patterns; None if unknown."""
        spec = self.fields.get(key)
        if spec is not None:
            return spec
        cache = self._pattern_cache
        if key in cache:
            return cache[key]
        found = next((p.spec for p in self.patterns if p.regex.fullmatch(key)), None)
        if len(cache) < _PATTERN_CACHE_MAX:
            cache[key] = found
        return found

    # ----------------------------------------------------------------- checks
    def check_tags(self, tags: Mapping[str, Any]) -> dict[str, str]:
        """Return the tags to write (empty optional ones dropped) or raise DesignViolation."""
        out: dict[str, str] = {}
        for key, value in tags.items():
            spec = self.tags.get(key)
            if spec is None:
                raise DesignViolation(
                    "unknown_tag",
                    f"{self.name} has no tag {quote(key)}; tags: {sorted(self.tags)}",
                )
            if value is None or value == "":
                continue
            if not isinstance(value, str):
                raise DesignViolation(
                    "wrong_type", f"{self.name} tag {key} must be a string, got {quote(value)}"
                )
            if spec.format == "identifier" and (
                len(value) > self.identifier_max_length or not self.identifier_re.fullmatch(value)
            ):
                raise DesignViolation(
                    "bad_tag_value",
                    f"{self.name} tag {key}={quote(value)} is not an identifier "
                    f"({self.identifier_re.pattern}, at most {self.identifier_max_length} characters)",
                )
            if spec.max_length is not None and len(value) > spec.max_length:
                raise DesignViolation(
                    "bad_tag_value",
                    f"{self.name} tag {key} has {len(value)} characters, at most {spec.max_length}",
                )
            out[key] = value
        for key, spec in self.tags.items():
            if spec.required and key not in out:
                raise DesignViolation("missing_tag", f"{self.name} point has no {key} tag")
        return out

    def check_fields(self, fields: Mapping[str, Any]) -> dict[str, int | float | bool | str]:
        """Return the fields to write, typed as designed (int->float for float fields).

        ``None`` values are treated as absent, so a signal that could not be
        computed (a first day has no trend) is left out instead of written as 0.
        """
        out: dict[str, int | float | bool | str] = {}
        fixed = self.fields
        for key, value in fields.items():
            if value is None:
                continue
            spec = fixed.get(key)
            if spec is None and isinstance(key, str):
                spec = self.field_spec(key)
            if spec is None:
                raise DesignViolation(
                    "unknown_field", f"{self.name} has no field {quote(key)} (see INFLUX_V1.md)"
                )
            out[key] = self._typed(key, spec, value)
        if not self.required_fields <= out.keys():
            missing = sorted(self.required_fields - out.keys())
            raise DesignViolation("missing_field", f"{self.name} point has no {', '.join(missing)}")
        return out

    def _typed(self, key: str, spec: InfluxFieldSpec, value: Any) -> int | float | bool | str:
        kind = spec.type
        number: int | float
        cls = type(value)
        # Exact-type fast paths first: the ABC checks below are slow and this runs per field.
        if kind == "int" and cls is int or kind == "float" and cls is float:
            number = value
        elif kind == "int":
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise DesignViolation(
                    "wrong_type", f"{self.name}.{key} is an int field, got {quote(value)}"
                )
            number = int(value)
        elif kind == "float":
            # An int written as-is would be an int on the wire (type conflict);
            # the design says float, so it is converted.
            if isinstance(value, bool) or not isinstance(value, numbers.Real):
                raise DesignViolation(
                    "wrong_type", f"{self.name}.{key} is a float field, got {quote(value)}"
                )
            try:
                number = float(value)
            except OverflowError:  # an int beyond the float range (about 1.8e308)
                raise DesignViolation(
                    "out_of_range", f"{self.name}.{key}={quote(value)} does not fit a float"
                ) from None
        elif kind == "bool":
            if not isinstance(value, bool):
                raise DesignViolation(
                    "wrong_type", f"{self.name}.{key} is a bool field, got {quote(value)}"
                )
            return value
        else:
            if not isinstance(value, str):
                raise DesignViolation(
                    "wrong_type", f"{self.name}.{key} is a string field, got {quote(value)}"
                )
            if spec.values and value not in spec.values:
                raise DesignViolation(
                    "bad_enum",
                    f"{self.name}.{key}={quote(value)} is not one of {list(spec.values)}",
                )
            if spec.max_length is not None and len(value) > spec.max_length:
                raise DesignViolation(
                    "string_too_long",
                    f"{self.name}.{key} has {len(value)} characters, at most {spec.max_length}",
                )
            return value
        if (spec.min is not None and number < spec.min) or (
            spec.max is not None and number > spec.max
        ):
            raise DesignViolation(
                "out_of_range", f"{self.name}.{key}={number!r} is outside [{spec.min}, {spec.max}]"
            )
        return number

    def check_timestamp(self, ts_s: Any) -> int:
        """The point's timestamp must be an int window start (so replays overwrite)."""
        if isinstance(ts_s, bool) or not isinstance(ts_s, numbers.Integral):
            raise DesignViolation(
                "bad_timestamp", f"{self.name} ts_s must be integer seconds, got {quote(ts_s)}"
            )
        ts = int(ts_s)
        if ts % self.window_s:
            raise DesignViolation(
                "misaligned_timestamp",
                f"{self.name} ts_s={ts} is not a multiple of {self.window_s}s; "
                f"use the window start ({ts - ts % self.window_s})",
            )
        return ts


@dataclass(frozen=True)
class InfluxDesign:
    """A loaded design version; see ``schemas/INFLUX_V1.md`` for the prose."""

    version: int
    precision: str
    measurements: Mapping[str, MeasurementSpec]

    def check(
        self, measurement: str, tags: Mapping[str, Any], fields: Mapping[str, Any], ts_s: Any
    ) -> tuple[dict[str, str], dict[str, int | float | bool | str], int]:
        """Return (tags, fields, ts_s) as they must be written, or raise DesignViolation."""
        spec = self.measurements.get(measurement)
        if spec is None:
            raise DesignViolation(
                "unknown_measurement",
                f"{quote(measurement)} is not one of {sorted(self.measurements)}",
            )
        return spec.check_tags(tags), spec.check_fields(fields), spec.check_timestamp(ts_s)


def _field_spec(name: str, raw: Mapping[str, Any]) -> InfluxFieldSpec:
    kind = raw["type"]
    if kind not in FIELD_TYPES:
        raise ValueError(f"influx design: field {name} has type {kind!r}, not one of {FIELD_TYPES}")
    return InfluxFieldSpec(
        name=name,
        type=kind,
        required=bool(raw.get("required", False)),
        doc=raw.get("doc", ""),
        min=raw.get("min"),
        max=raw.get("max"),
        values=tuple(raw.get("values", ())),
        max_length=raw.get("max_length"),
    )


@cache
def load_influx_design(version: int = 1) -> InfluxDesign:
    """Load design ``version`` from the packaged JSON definition."""
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(f"influx design v{version} is not known; supported: {SUPPORTED_VERSIONS}")
    text = resources.files(__package__).joinpath(f"influx_v{version}.json").read_text("utf-8")
    raw = json.loads(text)
    contract = load_contract(1)
    identifier_re = contract.identifier_re
    units = "|".join(re.escape(unit) for unit in sorted(contract.units, key=lambda u: (-len(u), u)))
    measurements: dict[str, MeasurementSpec] = {}
    for name, body in raw["measurements"].items():
        tags = {
            key: TagSpec(
                name=key,
                required=bool(spec.get("required", False)),
                doc=spec.get("doc", ""),
                max_length=spec.get("max_length"),
                format=spec.get("format"),
            )
            for key, spec in body["tags"].items()
        }
        fields = {key: _field_spec(key, spec) for key, spec in body["fields"].items()}
        overlap = set(tags) & set(fields)
        if overlap:
            raise ValueError(f"influx design: {name} uses {sorted(overlap)} as both tag and field")
        patterns = []
        for entry in body.get("field_patterns", ()):
            pattern = entry["pattern"]
            if entry.get("units_from") == "telemetry":
                pattern = pattern.replace("<units>", units)
            patterns.append(FieldPattern(re.compile(pattern), _field_spec(pattern, entry)))
        measurements[name] = MeasurementSpec(
            name=name,
            doc=body.get("doc", ""),
            window_s=int(body["window_s"]),
            tags=tags,
            fields=fields,
            patterns=tuple(patterns),
            identifier_re=identifier_re,
            identifier_max_length=contract.limits.identifier_max_length,
            required_fields=frozenset(key for key, spec in fields.items() if spec.required),
        )
    return InfluxDesign(
        version=raw["version"], precision=raw["precision"], measurements=measurements
    )
