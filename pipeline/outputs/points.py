"""Rows → InfluxDB points, following the measurement design in ``schemas/influx_v1.json``.

Points are plain dicts ``{"measurement", "tags", "fields", "ts_s"}`` stamped
with their window start (hour or day), so writing the same window again
overwrites the earlier point instead of adding a second one.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from fleetpulse.pipeline.model import DailySignal, DeviceHour, band_rank
from fleetpulse.pipeline.transforms.status import COUNTER_FIELDS


def day_start_s(day: str) -> int:
    d = date.fromisoformat(day)
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp())


def device_hour_point(hour: DeviceHour) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "records": hour.records,
        "heartbeats": hour.heartbeats,
        "usage_records": hour.usage_records,
        "feature_uses": hour.feature_uses,
        "errors": hour.errors,
        "critical_errors": hour.critical_errors,
        "active": 1 if hour.usage_records else 0,
        "fw": hour.fw,
    }
    fields.update((key, float(value)) for key, value in hour.usage.items())
    return {
        "measurement": "fp_device_hourly",
        "tags": {
            "customer_id": hour.customer_id,
            "site_id": hour.site_id,
            "gateway_id": hour.gateway_id,
            "device_id": hour.device_id,
        },
        "fields": fields,
        "ts_s": hour.hour_ms // 1000,
    }


def customer_day_point(signal: DailySignal) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "health": float(signal.health),
        "band": signal.band,
        "band_rank": band_rank(signal.band),
        "stage": signal.stage,
        "driver": signal.driver,
        "low_coverage": signal.low_coverage,
        "coverage": float(signal.coverage),
        "active_devices": signal.active_devices,
        "entitled_devices": signal.entitled_devices,
        "known_devices": signal.known_devices,
    }
    optional = {
        "trend_delta": signal.trend_delta,
        "adoption": signal.adoption,
        "usage_per_active_device": signal.usage_per_active_device,
        "feature_breadth": signal.feature_breadth,
        "error_rate": signal.error_rate,
        "firmware_currency": signal.firmware_currency,
        "record_coverage": signal.record_coverage,
    }
    # A measure that could not be computed is left out, never written as 0.
    fields.update((key, float(value)) for key, value in optional.items() if value is not None)
    if signal.time_to_value_days is not None:
        fields["time_to_value_days"] = signal.time_to_value_days
    for component in signal.components:
        fields[f"c_{component.name}_score"] = float(component.score)
        fields[f"c_{component.name}_contribution"] = float(component.contribution)
    tags = {"customer_id": signal.customer_id, "segment": signal.segment}
    if signal.csm_owner:
        tags["csm"] = signal.csm_owner
    return {
        "measurement": "fp_customer_daily",
        "tags": tags,
        "fields": fields,
        "ts_s": day_start_s(signal.day),
    }


def gateway_status_point(row: dict[str, Any]) -> dict[str, Any]:
    """A gateway status row (see ``transforms/status.py``) → one ``fp_gateway_status`` point."""
    fields: dict[str, Any] = {"online": 1 if row["state"] == "online" else 0, "state": row["state"]}
    for key in COUNTER_FIELDS:
        if row.get(key) is not None:
            fields[key] = row[key]
    return {
        "measurement": "fp_gateway_status",
        "tags": {"customer_id": row["customer_id"], "site_id": row["site_id"], "gateway_id": row["gateway_id"]},
        "fields": fields,
        "ts_s": row["minute_ms"] // 1000,
    }
