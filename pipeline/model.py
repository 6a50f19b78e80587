"""The rows that flow between pipeline stages, as plain frozen dataclasses.

    lake record (dict, lake schema) ──DeviceHourlyRollups──▶ DeviceHour
    DeviceHour ──CustomerDailyUsage──▶ CustomerDay
    CustomerDay history + Account ──ScoreAccounts──▶ DailySignal, Alert

Record rows stay dicts keyed by the lake's column names (the telemetry
contract); everything after the first aggregation is one of these types.
Timestamps are epoch milliseconds (UTC) unless the name says otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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
    band: str  # green / yellow / red
    previous_health: float | None
    trend_delta: float | None  # health now minus health trend_days ago
    trend: str  # up / down / flat / new
    stage: str  # onboarding / adopting / mature / renewal_window / at_risk / churned
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
    kind: str  # band_worsened / usage_drop / gateway_offline / expansion_csql
    severity: str  # info / warning / critical
    title: str
    explanation: str  # what changed and why, naming the driving component
    health: float
    band: str
    driver: str
    coverage: float
