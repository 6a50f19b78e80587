"""The telemetry contract, loaded from its machine-readable definition.

``telemetry_v1.json`` beside this module is the single source of truth: the
gateway collector, the pipeline's decoder and the lake's Arrow schema all read
it through :func:`load_contract`. Standard library only, so the gateway can use
it on a Raspberry Pi.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

SUPPORTED_VERSIONS = (1,)


@dataclass(frozen=True)
class FieldSpec:
    """One field of a record, a record body or the envelope."""

    name: str
    type: str
    required: bool
    doc: str = ""
    min: int | None = None
    max: int | None = None
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Limits:
    max_payload_bytes: int
    max_records_per_message: int
    identifier_pattern: str
    identifier_max_length: int
    max_string_length: int
    max_quantities_per_usage: int
    max_future_skew_ms: int
    min_event_time_ms: int
    max_seq: int
    max_boot: int
    firmware_pattern: str


@dataclass(frozen=True)
class Contract:
    """A loaded contract version; see ``schemas/TELEMETRY_V1.md`` for the prose."""

    version: int
    limits: Limits
    units: frozenset[str]
    severities: tuple[str, ...]
    common: tuple[FieldSpec, ...]
    kinds: dict[str, tuple[FieldSpec, ...]]
    envelope: tuple[FieldSpec, ...]
    topics: dict[str, dict[str, str]]
    lake: dict[str, Any]
    identifier_re: re.Pattern[str] = field(repr=False, compare=False)
    firmware_re: re.Pattern[str] = field(repr=False, compare=False)
    _topic_res: dict[str, re.Pattern[str]] = field(default_factory=dict, repr=False, compare=False)

    def topic(self, name: str, **ids: str) -> str:
        """The concrete topic ``name`` (e.g. ``gateway_batches``) for the given identifiers."""
        return self.topics[name]["pattern"].format(**ids)

    def topic_ids(self, name: str, topic: str, *, prefix: str = "") -> dict[str, str] | None:
        """The identifiers in ``topic`` (a topic of ``name`` behind ``prefix``), or None if it is not one."""
        if not topic.startswith(prefix):
            return None
        match = self.topic_re(name).fullmatch(topic, len(prefix))
        return match.groupdict() if match else None

    def topic_re(self, name: str) -> re.Pattern[str]:
        """Topic ``name``'s pattern as a regex with one named group per ``{placeholder}``."""
        compiled = self._topic_res.get(name)
        if compiled is None:
            parts = re.split(r"\{(\w+)\}", self.topics[name]["pattern"])
            # re.split with a group alternates literal text and placeholder names.
            compiled = re.compile("".join(
                re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
            ))
            self._topic_res[name] = compiled
        return compiled

    def subscription(self, name: str) -> str:
        """The wildcard subscription that matches every topic of ``name``."""
        return self.topics[name]["subscribe"]

    @property
    def quantity_fields(self) -> tuple[FieldSpec, ...]:
        """The fields of one quantity of a usage record, as the ``quantities`` field's doc defines
        them: name an identifier, value a finite number >= 0, unit one of ``units``."""
        return (
            FieldSpec("name", "identifier", True, "What was measured (e.g. runtime)."),
            FieldSpec("value", "number", True, "How much, finite and not negative.", min=0),
            FieldSpec("unit", "enum", True, "One of the contract's units.", values=tuple(sorted(self.units))),
        )

    @property
    def body_fields(self) -> tuple[FieldSpec, ...]:
        """Every kind's body fields, each name once, in definition order."""
        seen: dict[str, FieldSpec] = {}
        for specs in self.kinds.values():
            for spec in specs:
                seen.setdefault(spec.name, spec)
        return tuple(seen.values())


def _fields(section: dict[str, Any]) -> tuple[FieldSpec, ...]:
    return tuple(
        FieldSpec(
            name=name,
            type=spec["type"],
            required=bool(spec.get("required", False)),
            doc=spec.get("doc", ""),
            min=spec.get("min"),
            max=spec.get("max"),
            values=tuple(spec.get("values", ())),
        )
        for name, spec in section.items()
    )


@cache
def load_contract(version: int = 1) -> Contract:
    """Load contract ``version`` from the packaged JSON definition."""
    if version not in SUPPORTED_VERSIONS:
        raise ValueError(
            f"telemetry contract v{version} is not known; supported: {SUPPORTED_VERSIONS}"
        )
    text = resources.files(__package__).joinpath(f"telemetry_v{version}.json").read_text("utf-8")
    raw = json.loads(text)
    limits = Limits(**raw["limits"])
    return Contract(
        version=raw["version"],
        limits=limits,
        units=frozenset(raw["units"]),
        severities=tuple(raw["severities"]),
        common=_fields(raw["record"]["common"]),
        kinds={kind: _fields(body) for kind, body in raw["record"]["kinds"].items()},
        envelope=_fields(raw["envelope"]),
        topics=raw["topics"],
        lake=raw["lake"],
        identifier_re=re.compile(limits.identifier_pattern),
        firmware_re=re.compile(limits.firmware_pattern),
    )
