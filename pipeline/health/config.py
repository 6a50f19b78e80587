"""The customer health model as configuration: weights, scoring, bands, lifecycle.

CS Ops owns the model; it is a YAML file, validated once when it is loaded::

    from fleetpulse.pipeline.health.config import load_health_model
    model = load_health_model(None)             # the packaged default_health.yaml
    model = load_health_model("my_health.yaml")  # a complete model of your own

The packaged ``default_health.yaml`` documents every key. Any problem (an
unknown key, a weight that is not a number, weights summing to 0, bands out of
order...) raises :class:`~fleetpulse.errors.ConfigError` naming the file, the
dotted key (``components.adoption.weight``) and the fix. Nothing here knows
about telemetry; :mod:`fleetpulse.pipeline.health.score` applies the model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from fleetpulse.errors import ConfigError
from fleetpulse.pipeline.model import BANDS, PROFILE_STAGES
from fleetpulse.schemas.accounts import SEGMENTS

#: The components the scorer knows how to measure, in display order.
COMPONENTS = ("adoption", "engagement", "breadth", "reliability", "firmware", "nps")
#: Components whose value comes from usage records, the only ones that may be held.
HOLDABLE = ("adoption", "engagement", "breadth")
#: Segment of telemetry whose customer is missing from the CRM export.
UNKNOWN_SEGMENT = "unknown"
DEFAULT_MODEL = "default_health.yaml"


@dataclass(frozen=True)
class Threshold:
    """One row of a thresholds scoring: matches when value <= at_most / >= at_least."""

    score: float
    at_most: float | None = None
    at_least: float | None = None

    def matches(self, value: float) -> bool:
        if self.at_most is not None:
            return value <= self.at_most
        if self.at_least is not None:
            return value >= self.at_least
        return True


@dataclass(frozen=True)
class Scoring:
    """How a raw measure becomes a 0..100 score: ``linear`` or ``thresholds``."""

    kind: str  # linear / thresholds
    zero_at: float = 0.0
    full_at: float = 1.0
    thresholds: tuple[Threshold, ...] = ()

    def score(self, value: float) -> float:
        if self.kind == "thresholds":
            for row in self.thresholds:
                if row.matches(value):
                    return row.score
            return 0.0
        share = (value - self.zero_at) / (self.full_at - self.zero_at)
        return 100.0 * min(1.0, max(0.0, share))


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    weight: float  # as configured (not normalised)
    scoring: Scoring


@dataclass(frozen=True)
class Bands:
    green_min: float = 70.0
    yellow_min: float = 45.0

    def band(self, health: float) -> str:
        """The best band whose lower bound the health reaches (red below every bound, NaN included)."""
        return next((band for band, low, _ in self.ranges() if health >= low), BANDS[-1])

    def ranges(self) -> tuple[tuple[str, float, float], ...]:
        """Each band with the health it covers, ``(band, from, below)``, in :data:`BANDS` order."""
        green, yellow, red = BANDS
        return ((green, self.green_min, 100.0), (yellow, self.yellow_min, self.green_min),
                (red, 0.0, self.yellow_min))


@dataclass(frozen=True)
class Lifecycle:
    onboarding_days: int = 90
    ttv_active_share: float = 0.8
    renewal_window_days: int = 90
    churn_grace_days: int = 30
    churn_idle_days: int = 30


@dataclass(frozen=True)
class CoveragePolicy:
    low_coverage_below: float = 0.6
    known_device_days: int = 14
    hold_components: tuple[str, ...] = HOLDABLE
    hold_max_days: int = 14
    default_heartbeat_interval_s: int = 60


@dataclass(frozen=True)
class AlertPolicy:
    usage_drop_pct: float = 40.0
    usage_drop_min_days: int = 3
    #: expansion_csql: adoption (active ÷ entitled) above this share ...
    expansion_utilisation: float = 1.0
    #: ... on this many consecutive trustworthy days
    expansion_days: int = 14


@dataclass(frozen=True)
class HealthModel:
    """A validated health model; build it with :func:`load_health_model`."""

    source: str
    usage_quantity: str
    window_days: int
    trend_days: int
    flat_within_points: float
    baseline_days: int
    baseline_min_days: int
    bands: Bands
    components: tuple[ComponentSpec, ...]
    #: segment -> component -> weight, overriding the component's own weight
    segment_weights: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    #: lifecycle stage -> component -> weight, applied on top of the segment's weights
    stage_weights: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    lifecycle: Lifecycle = Lifecycle()
    coverage: CoveragePolicy = CoveragePolicy()
    alerts: AlertPolicy = AlertPolicy()
    #: the YAML the model was read from, kept so that the jobs can write it beside
    #: the signals it scored (the reports then draw the bands it used)
    text: str = field(default="", repr=False, compare=False)

    def weights_for(self, segment: str, stage: str | None = None) -> dict[str, float]:
        """The configured (not yet normalised) weight of each component for a segment and stage.

        The stage profile wins over the segment profile, which wins over the
        component's own weight.
        """
        seg = self.segment_weights.get(segment, {})
        stg = self.stage_weights.get(stage, {}) if stage else {}
        return {c.name: stg.get(c.name, seg.get(c.name, c.weight)) for c in self.components}

    def component(self, name: str) -> ComponentSpec | None:
        return next((c for c in self.components if c.name == name), None)

    @property
    def warmup_days(self) -> int:
        """History scored before the first reported day so holds, trends and alert onsets match a full run."""
        return (
            self.window_days + self.baseline_days + self.trend_days
            + self.coverage.hold_max_days + self.coverage.known_device_days
        )


def load_health_model(path: str | Path | None = None) -> HealthModel:
    """Read and validate a health model; ``None`` loads the packaged default."""
    if path is None:
        resource = resources.files(__package__) / DEFAULT_MODEL
        source = str(resource)
        text = resource.read_text(encoding="utf-8")
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                source, "file", f"cannot read the health model ({exc.strerror})",
                "pass the path of a health model YAML, or none for the packaged default",
            ) from None
    return dataclasses.replace(_Parser(source).model(parse_yaml(text, source)), text=text)


def parse_yaml(text: str, source: str) -> Any:
    """A YAML document; a syntax error is a ConfigError naming the file and the line."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "yaml"
        raise ConfigError(source, where, f"not valid YAML ({getattr(exc, 'problem', exc)})",
                          "fix the YAML syntax at that line") from None


class _Parser:
    """Walks the YAML document; every complaint names the dotted key."""

    def __init__(self, source: str) -> None:
        self.source = source

    def error(self, key: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(self.source, key, problem, fix)

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...] | None = None,
                required: tuple[str, ...] = ()) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(key or "document", f"expected a mapping, got {type(value).__name__}",
                             "write key: value pairs here")
        prefix = f"{key}." if key else ""
        for name in value:
            if not isinstance(name, str) or (allowed is not None and name not in allowed):
                raise self.error(f"{prefix}{name}", f"unknown key {name!r}",
                                 f"use one of {', '.join(allowed or ())} or remove it")
        for name in required:
            if name not in value:
                raise self.error(f"{prefix}{name}", "is missing", f"add {name} to {key or 'the file'}")
        return value

    def number(self, value: Any, key: str, low: float | None = None, high: float | None = None,
               low_open: bool = False) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(key, f"{value!r} is not a number", "write a plain number")
        number = float(value)
        if number != number or (low is not None and (number < low or (low_open and number == low))) \
                or (high is not None and number > high):
            span = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, " \
                   f"{high if high is not None else 'inf'}]"
            raise self.error(key, f"{value!r} is out of range", f"use a value in {span}")
        return number

    def integer(self, value: Any, key: str, low: int, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(key, f"{value!r} is not a whole number", f"write an integer >= {low}")
        if value < low or (high is not None and value > high):
            raise self.error(key, f"{value} is out of range", f"use a whole number in [{low}, {high or 'inf'}]")
        return value

    def model(self, data: Any) -> HealthModel:
        top = self.mapping(data, "", (
            "version", "usage_quantity", "window_days", "trend_days", "flat_within_points",
            "baseline_days", "baseline_min_days", "bands", "components", "segments",
            "stages", "lifecycle", "coverage", "alerts",
        ), required=("components",))
        if top.get("version", 1) != 1:
            raise self.error("version", f"version {top['version']!r} is not supported", "use version: 1")
        quantity = top.get("usage_quantity", "runtime_s")
        if not isinstance(quantity, str) or "_" not in quantity:
            raise self.error("usage_quantity", f"{quantity!r} is not a quantity key",
                             "write name_unit as in the rollups, e.g. runtime_s")
        window = self.integer(top.get("window_days", 7), "window_days", 1, 366)
        baseline_days = self.integer(top.get("baseline_days", 28), "baseline_days", 1, 3660)
        baseline_min = self.integer(top.get("baseline_min_days", 7), "baseline_min_days", 1)
        if baseline_min > baseline_days:
            raise self.error("baseline_min_days", f"{baseline_min} is longer than baseline_days {baseline_days}",
                             "make baseline_min_days at most baseline_days")
        components = self.components(top["components"])
        return HealthModel(
            source=self.source,
            usage_quantity=quantity,
            window_days=window,
            trend_days=self.integer(top.get("trend_days", 7), "trend_days", 1, 366),
            flat_within_points=self.number(top.get("flat_within_points", 3), "flat_within_points", 0, 100),
            baseline_days=baseline_days,
            baseline_min_days=baseline_min,
            bands=self.bands(top.get("bands", {})),
            components=components,
            segment_weights=self.profiles("segments", (*SEGMENTS, UNKNOWN_SEGMENT), top.get("segments", {}), components),
            stage_weights=self.profiles("stages", PROFILE_STAGES, top.get("stages", {}), components),
            lifecycle=self.lifecycle(top.get("lifecycle", {})),
            coverage=self.coverage(top.get("coverage", {})),
            alerts=self.alerts(top.get("alerts", {})),
        )

    def bands(self, value: Any) -> Bands:
        bands = self.mapping(value, "bands", ("green_min", "yellow_min"))
        green = self.number(bands.get("green_min", 70), "bands.green_min", 0, 100)
        yellow = self.number(bands.get("yellow_min", 45), "bands.yellow_min", 0, 100)
        if yellow >= green:
            raise self.error("bands.yellow_min", f"{yellow:g} is not below green_min {green:g}",
                             "bands must be ordered: 0 <= yellow_min < green_min <= 100")
        return Bands(green_min=green, yellow_min=yellow)

    def components(self, value: Any) -> tuple[ComponentSpec, ...]:
        table = self.mapping(value, "components", COMPONENTS)
        specs = []
        for name in COMPONENTS:  # display order is fixed, whatever the file's order
            if name not in table:
                continue
            key = f"components.{name}"
            body = self.mapping(table[name], key, ("weight", "linear", "thresholds"), required=("weight",))
            weight = self.number(body["weight"], f"{key}.weight", 0)
            if ("linear" in body) == ("thresholds" in body):
                raise self.error(f"{key}.linear", "needs exactly one of linear or thresholds",
                                 "give linear: {zero_at: X, full_at: Y} or a thresholds list")
            if "linear" in body:
                lin = self.mapping(body["linear"], f"{key}.linear", ("zero_at", "full_at"),
                                   required=("zero_at", "full_at"))
                zero = self.number(lin["zero_at"], f"{key}.linear.zero_at")
                full = self.number(lin["full_at"], f"{key}.linear.full_at")
                if zero == full:
                    raise self.error(f"{key}.linear.full_at", "equals zero_at",
                                     "give two different values: where the score is 0 and where it is 100")
                scoring = Scoring("linear", zero_at=zero, full_at=full)
            else:
                scoring = Scoring("thresholds", thresholds=self.thresholds(body["thresholds"], f"{key}.thresholds"))
            specs.append(ComponentSpec(name, weight, scoring))
        if sum(s.weight for s in specs) <= 0:
            first = f"components.{specs[0].name}.weight" if specs else "components"
            raise self.error(first, "the component weights sum to 0", "give at least one component a weight > 0")
        return tuple(specs)

    def thresholds(self, value: Any, key: str) -> tuple[Threshold, ...]:
        if not isinstance(value, list) or not value:
            raise self.error(key, "expected a non-empty list", "write rows like - {at_most: 0.1, score: 100}")
        rows = []
        for i, raw in enumerate(value):
            row_key = f"{key}[{i}]"
            row = self.mapping(raw, row_key, ("at_most", "at_least", "score"), required=("score",))
            if "at_most" in row and "at_least" in row:
                raise self.error(f"{row_key}.at_least", "a row takes at_most or at_least, not both",
                                 "split it into two rows")
            catch_all = "at_most" not in row and "at_least" not in row
            if catch_all and i != len(value) - 1:
                raise self.error(row_key, "a row with only a score matches everything, so rows after it never apply",
                                 "move it to the end of the list")
            rows.append(Threshold(
                score=self.number(row["score"], f"{row_key}.score", 0, 100),
                at_most=self.number(row["at_most"], f"{row_key}.at_most") if "at_most" in row else None,
                at_least=self.number(row["at_least"], f"{row_key}.at_least") if "at_least" in row else None,
            ))
        return tuple(rows)

    def profiles(self, section: str, names: tuple[str, ...], value: Any,
                 components: tuple[ComponentSpec, ...]) -> dict[str, dict[str, float]]:
        """Weight overrides per segment or per stage: ``{name: {weights: {component: w}}}``."""
        table = self.mapping(value, section, names)
        configured = tuple(c.name for c in components)
        out: dict[str, dict[str, float]] = {}
        for segment, raw in table.items():
            key = f"{section}.{segment}"
            body = self.mapping(raw, key, ("weights",), required=("weights",))
            weights = self.mapping(body["weights"], f"{key}.weights", configured)
            parsed = {n: self.number(w, f"{key}.weights.{n}", 0) for n, w in weights.items()}
            total = sum(parsed.get(c.name, c.weight) for c in components)
            if total <= 0:
                raise self.error(f"{key}.weights", "the weights sum to 0",
                                 f"give at least one component a weight > 0 in {key}")
            out[segment] = parsed
        return out

    def lifecycle(self, value: Any) -> Lifecycle:
        body = self.mapping(value, "lifecycle", (
            "onboarding_days", "ttv_active_share", "renewal_window_days", "churn_grace_days", "churn_idle_days",
        ))
        d = Lifecycle()
        return Lifecycle(
            onboarding_days=self.integer(body.get("onboarding_days", d.onboarding_days), "lifecycle.onboarding_days", 0),
            ttv_active_share=self.number(body.get("ttv_active_share", d.ttv_active_share),
                                         "lifecycle.ttv_active_share", 0, 1, low_open=True),
            renewal_window_days=self.integer(body.get("renewal_window_days", d.renewal_window_days),
                                             "lifecycle.renewal_window_days", 0),
            churn_grace_days=self.integer(body.get("churn_grace_days", d.churn_grace_days),
                                          "lifecycle.churn_grace_days", 0),
            churn_idle_days=self.integer(body.get("churn_idle_days", d.churn_idle_days),
                                         "lifecycle.churn_idle_days", 1),
        )

    def coverage(self, value: Any) -> CoveragePolicy:
        body = self.mapping(value, "coverage", (
            "low_coverage_below", "known_device_days", "hold_components", "hold_max_days",
            "default_heartbeat_interval_s",
        ))
        d = CoveragePolicy()
        hold = body.get("hold_components", list(d.hold_components))
        if not isinstance(hold, list) or any(h not in HOLDABLE for h in hold):
            raise self.error("coverage.hold_components", f"{hold!r} is not a list of usage components",
                             f"list some of {', '.join(HOLDABLE)} (or [] to hold nothing)")
        return CoveragePolicy(
            low_coverage_below=self.number(body.get("low_coverage_below", d.low_coverage_below),
                                           "coverage.low_coverage_below", 0, 1),
            known_device_days=self.integer(body.get("known_device_days", d.known_device_days),
                                           "coverage.known_device_days", 1, 366),
            hold_components=tuple(h for h in HOLDABLE if h in hold),
            hold_max_days=self.integer(body.get("hold_max_days", d.hold_max_days), "coverage.hold_max_days", 0, 366),
            default_heartbeat_interval_s=self.integer(
                body.get("default_heartbeat_interval_s", d.default_heartbeat_interval_s),
                "coverage.default_heartbeat_interval_s", 1, 86400),
        )

    def alerts(self, value: Any) -> AlertPolicy:
        body = self.mapping(value, "alerts", (
            "usage_drop_pct", "usage_drop_min_days", "expansion_utilisation", "expansion_days"))
        d = AlertPolicy()
        return AlertPolicy(
            expansion_utilisation=self.number(
                body.get("expansion_utilisation", d.expansion_utilisation), "alerts.expansion_utilisation",
                0, 10, low_open=True),
            expansion_days=self.integer(body.get("expansion_days", d.expansion_days), "alerts.expansion_days", 1),
            usage_drop_pct=self.number(body.get("usage_drop_pct", d.usage_drop_pct),
                                       "alerts.usage_drop_pct", 0, 100, low_open=True),
            usage_drop_min_days=self.integer(body.get("usage_drop_min_days", d.usage_drop_min_days),
                                             "alerts.usage_drop_min_days", 1),
        )
