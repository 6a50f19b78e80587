"""The rows that flow between pipeline stages, as plain frozen dataclasses.

    lake record (dict, lake schema) ──DeviceHourlyRollups──▶ DeviceHour
    DeviceHour ──CustomerDailyUsage──▶ CustomerDay
    CustomerDay history + Account ──ScoreAccounts──▶ DailySignal, Alert

Record rows stay dicts keyed by the lake's column names (the telemetry
contract); everything after the first aggregation is one of these types.
Timestamps are epoch milliseconds (UTC) unless the name says otherwise.

The words these rows carry are declared here once, in their order:
:data:`BANDS`, :data:`STAGES`, :data:`SEVERITIES` and :data:`ALERT_KINDS`.
Every rank means the same thing: **worse is higher** (green 0, yellow 1,
red 2; info 0, warning 1, critical 2), which is also InfluxDB's ``band_rank``
field. Views that list worst first sort on :func:`worst_band_first` and
:func:`most_severe_first`. The severity of a telemetry *record* (info /
warning / error / critical) is another vocabulary, the telemetry contract's
(``schemas/telemetry_v1.json``).

:func:`restatement_rank` is the one rule for restated days: of several
versions of one customer's day (accumulating panes, a replay), the largest is
the latest; :func:`one_per_day` applies it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

import pyarrow as pa

#: Health bands, best first: a band's rank is its index, so worse is higher.
BANDS: tuple[str, ...] = ("green", "yellow", "red")
#: Lifecycle stages in the order a customer moves through them (rules in health/score.py).
STAGES: tuple[str, ...] = ("onboarding", "adopting", "mature", "renewal_window", "at_risk", "churned")
#: Stages known before the score, from contract dates and adoption alone, so a health
#: model can give them their own weights without a circular definition (health/config.py).
PROFILE_STAGES: tuple[str, ...] = ("onboarding", "renewal_window", "churned")
#: Severity of an alert or a playbook, least severe first: more severe is higher.
SEVERITIES: tuple[str, ...] = ("info", "warning", "critical")
#: The first-cut alerts the scorer raises (health/score.py), one constant per kind.
BAND_WORSENED = "band_worsened"
USAGE_DROP = "usage_drop"
GATEWAY_OFFLINE = "gateway_offline"
EXPANSION_CSQL = "expansion_csql"
ALERT_KINDS: tuple[str, ...] = (BAND_WORSENED, USAGE_DROP, GATEWAY_OFFLINE, EXPANSION_CSQL)


def _rank(vocabulary: tuple[str, ...], what: str, name: str) -> int:
    try:
        return vocabulary.index(name)
    except ValueError:
        raise ValueError(f"{name!r} is not a {what}; one of {', '.join(vocabulary)}") from None


def band_rank(band: str) -> int:
    """green 0, yellow 1, red 2: worse is higher (InfluxDB's ``band_rank``). ValueError for another word."""
    return _rank(BANDS, "band", band)


def severity_rank(severity: str) -> int:
    """info 0, warning 1, critical 2: more severe is higher. ValueError for another word."""
    return _rank(SEVERITIES, "severity", severity)


def worst_band_first(band: str) -> int:
    """Sort key listing red, yellow, green; a band outside :data:`BANDS` comes before red.

    Where the unknown words go is the reports' order as it always was: a row
    the model cannot place is looked at first, an alert of a severity it does
    not know last.
    """
    return -band_rank(band) if band in BANDS else -len(BANDS)


def most_severe_first(severity: str) -> int:
    """Sort key listing critical, warning, info; a severity outside :data:`SEVERITIES` comes after info."""
    return -severity_rank(severity) if severity in SEVERITIES else 1


def quantity_key(name: str, unit: str) -> str:
    """The one spelling of a usage quantity with its unit: ``runtime_s``, ``energy_kWh``."""
    return f"{name}_{unit}"


@dataclass(frozen=True)
class DeviceHour:
    """One device's activity in one event-time hour (window start ``hour_ms``)."""

    customer_id: str
    site_id: str
    gateway_id: str
    device_id: str
    hour_ms: int
    records: int
    heartbeats: int
    #: heartbeats the device promised in this hour: 3600 / interval_s of its heartbeats (0 if none seen)
    expected_heartbeats: float
    usage_records: int
    feature_uses: int
    errors: int  # error records with severity error or critical
    critical_errors: int
    usage: dict[str, float] = field(default_factory=dict)  # quantity_key -> sum
    features: dict[str, int] = field(default_factory=dict)  # feature -> uses
    error_fw: dict[str, int] = field(default_factory=dict)  # firmware -> error records (severity >= error)
    fw: str = ""  # firmware of the latest record in the hour
    last_ts_ms: int = 0
    #: boot -> (lowest seq, highest seq, records) seen in the hour; records are
    #: deduplicated, so highest - lowest + 1 - records is the gap inside the span
    seq_spans: dict[int, tuple[int, int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class CustomerDay:
    """One customer's telemetry in one UTC day, summed over its devices' hours."""

    customer_id: str
    day: str  # ISO date, UTC
    reporting_devices: tuple[str, ...]  # device ids with any record this day, sorted
    active_devices: tuple[str, ...]  # device ids with usage this day, sorted
    gateways: tuple[str, ...]  # gateway ids with any record this day, sorted
    heartbeats: int
    expected_heartbeats: float  # summed over reporting devices (per-day promise)
    heartbeat_interval_s: int  # the most common interval among its devices (0 if none)
    usage: dict[str, float]  # quantity_key -> sum
    features: dict[str, int]  # feature -> uses
    errors: int
    critical_errors: int
    error_fw: dict[str, int]  # firmware -> error records
    device_fw: dict[str, str]  # device id -> latest firmware that day
    #: records received, and records the devices' sequence numbers say were sent
    #: (per device and boot, highest - lowest + 1 within the day); 0 when unknown
    records: int = 0
    expected_records: int = 0
    #: gateways whose status said offline that day (their Last Will, or a clean stop)
    offline_gateways: tuple[str, ...] = ()


@dataclass(frozen=True)
class Component:
    """One health component's part of a score: the explanation is data."""

    name: str
    value: float | None  # the raw measure (e.g. adoption 0.82), None when not measurable
    score: float  # 0..100
    weight: float  # normalised so the weights of a score sum to 1
    contribution: float  # score * weight, points of the 0..100 health
    detail: str  # one line a CSM can read: "41 of 50 entitled devices active"


@dataclass(frozen=True)
class DailySignal:
    """A customer's signals for one day: adoption, health and its explanation."""

    customer_id: str
    day: str
    segment: str
    csm_owner: str | None
    entitled_devices: int
    known_devices: int
    active_devices: int
    adoption: float | None
    usage_per_active_device: float | None
    feature_breadth: float | None
    error_rate: float | None
    firmware_currency: float | None
    coverage: float  # the lower of heartbeat and record (sequence) coverage
    low_coverage: bool
    health: float
    band: str  # one of BANDS
    previous_health: float | None
    trend_delta: float | None  # health now minus health trend_days ago
    trend: str  # up / down / flat / new
    stage: str  # one of STAGES
    driver: str  # the component that costs the most points
    components: tuple[Component, ...]
    #: days from the first device online to the first trustworthy day with adoption
    #: at the time-to-value share (lifecycle.ttv_active_share); None until reached,
    #: and None when the scored span began after the contract start (onboarding not seen)
    time_to_value_days: int | None = None
    #: records received ÷ records the sequence numbers say were sent, that day (None: unknown)
    record_coverage: float | None = None


@dataclass(frozen=True)
class Alert:
    """A first-cut alert: raised on the day a condition starts, with its reason."""

    customer_id: str
    day: str
    kind: str  # one of ALERT_KINDS
    severity: str  # one of SEVERITIES
    title: str
    explanation: str  # what changed and why, naming the driving component
    health: float
    band: str
    driver: str
    coverage: float


def restatement_rank(day: CustomerDay) -> tuple[int, int, int, int, str]:
    """The one rule for restated days: of several versions of one customer's day, the largest wins.

    Accumulating panes of a day only grow, so the largest is the latest. The
    tail, a digest of the whole day (deterministic: every mapping in it is
    sorted), makes the order total, so a choice never depends on arrival order;
    a digest rather than the content keeps the rank small where it is stored
    per customer-day (the fleet context's accumulator).
    """
    digest = hashlib.blake2b(repr(day).encode("utf-8"), digest_size=8).hexdigest()
    return (len(day.reporting_devices), day.heartbeats, day.errors, sum(day.features.values()), digest)


def one_per_day(days: Iterable[CustomerDay]) -> list[CustomerDay]:
    """One customer's days sorted by day; of several restatements of a day, the latest by :func:`restatement_rank`."""
    chosen: dict[str, CustomerDay] = {}
    for day in days:
        seen = chosen.get(day.day)
        if seen is None or restatement_rank(day) > restatement_rank(seen):
            chosen[day.day] = day
    return [chosen[d] for d in sorted(chosen)]


# --------------------------------------------------------------- Arrow forms
# The Parquet tables of the rows above (the outputs' signals/ and device_hourly/,
# and the columnar engine's device-hour tables), beside the rows they hold:
# a field added to a dataclass is added here (tests check the names agree).

COMPONENT = pa.struct(
    [
        ("name", pa.string()),
        ("value", pa.float64()),
        ("score", pa.float64()),
        ("weight", pa.float64()),
        ("contribution", pa.float64()),
        ("detail", pa.string()),
    ]
)

SIGNAL_SCHEMA = pa.schema(
    [
        ("customer_id", pa.string()),
        ("day", pa.string()),
        ("segment", pa.string()),
        ("csm_owner", pa.string()),
        ("entitled_devices", pa.int64()),
        ("known_devices", pa.int64()),
        ("active_devices", pa.int64()),
        ("adoption", pa.float64()),
        ("usage_per_active_device", pa.float64()),
        ("feature_breadth", pa.float64()),
        ("error_rate", pa.float64()),
        ("firmware_currency", pa.float64()),
        ("coverage", pa.float64()),
        ("low_coverage", pa.bool_()),
        ("health", pa.float64()),
        ("band", pa.string()),
        ("previous_health", pa.float64()),
        ("trend_delta", pa.float64()),
        ("trend", pa.string()),
        ("stage", pa.string()),
        ("driver", pa.string()),
        ("components", pa.list_(COMPONENT)),
        ("time_to_value_days", pa.int64()),
        ("record_coverage", pa.float64()),
    ]
)

DEVICE_HOUR_SCHEMA = pa.schema(
    [
        ("customer_id", pa.string()),
        ("site_id", pa.string()),
        ("gateway_id", pa.string()),
        ("device_id", pa.string()),
        ("hour_ms", pa.int64()),
        ("records", pa.int64()),
        ("heartbeats", pa.int64()),
        ("expected_heartbeats", pa.float64()),
        ("usage_records", pa.int64()),
        ("feature_uses", pa.int64()),
        ("errors", pa.int64()),
        ("critical_errors", pa.int64()),
        ("usage", pa.map_(pa.string(), pa.float64())),
        ("features", pa.map_(pa.string(), pa.int64())),
        ("error_fw", pa.map_(pa.string(), pa.int64())),
        ("fw", pa.string()),
        ("last_ts_ms", pa.int64()),
        ("seq_spans", pa.list_(pa.struct([("boot", pa.int64()), ("min_seq", pa.int64()),
                                          ("max_seq", pa.int64()), ("records", pa.int64())]))),
    ]
)
