"""A seeded, deterministic simulator of a hardware vendor's installed fleet.

``fleetpulse simulate`` (or :func:`simulate` in-process) builds a fleet of
customer accounts, their sites, gateways and devices, and streams the telemetry
those devices would send, one simulated day at a time. The same seed and
arguments give byte-identical outputs: every random draw comes from a
``random.Random`` derived from stable strings (seed, entity id, day).

Fleet
    Accounts in segments ``smb`` (most), ``mid_market`` and ``enterprise``
    (few), with an engagement model that follows the segment (digital /
    low_touch / high_touch), ARR, contract start and next renewal, an
    entitlement (devices bought: SMB 3-10, mid-market 10-30, enterprise
    30-80), a CSM for every high-touch and some low-touch accounts, and an NPS
    for some. Enterprise accounts have 2-3 sites with a gateway each, the
    others one. Identifiers: ``c-0007``, ``c-0007-s1``, ``c-0007-gw1``,
    ``c-0007-d012``. Devices run firmware 3.1.0, 3.2.0 or 3.2.1 (latest); some
    upgrade (and reboot) during the span.

Planted patterns (one per account; all seven present once there are 7+ accounts)
    ``fast_onboarding``     contract starts in the span; ~90% of the
                            entitlement deployed and used within ~2 weeks.
    ``stalled_onboarding``  contract starts in the span; only ~25% of the
                            entitlement ever arrives and is used.
    ``steady``              ~85-95% of devices in use, stable usage, 4-5
                            features.
    ``gradual_decline``     devices in use fall from ~92% to ~40% over the
                            span; runtime per device and feature breadth too.
    ``sudden_drop``         normal until ~70% through the span, then ~90% of
                            devices stop being used; heartbeats continue.
    ``expansion``           30-50% more devices than entitled appear in the
                            first half of the span: utilisation above 100%.
    ``gateway_offline``     one gateway sends nothing for the last days of
                            the span (up to 7) although its devices are used
                            normally: no data is not no usage. The first such
                            account is an enterprise when there is one, so
                            only one of its sites goes dark.
    Fleet-wide, firmware 3.2.0 emits error records (code E731, severity
    error/critical) on most of its devices for a few days around 40% of the
    span — a product issue, not a customer one; one or two extra errors per
    affected device-day, not enough to sink a healthy account.

Telemetry (contract ``schemas/telemetry_v1.json``)
    Per device and day one MQTT message: a JSON array of ~8-15 records ordered
    by ``ts_ms`` — heartbeats every 4 h whenever the device is powered (also
    when idle), usage (runtime s, cycles count, energy kWh in 4-hour blocks)
    and feature records on days it is used, occasional errors. ``boot``
    increments at reboots and ``seq`` restarts at 0 in each boot. Devices not
    yet deployed send nothing. ``malformed_per_day`` plants bad messages (not
    JSON, missing field, bad identifier, negative quantity, unknown kind), each
    of which must end as exactly one dead letter.

Outputs under ``--out`` (default ``./fleetpulse-sim``)
    ``accounts.csv``          the CRM export (no pattern in it).
    ``truth.json``            patterns per account, the firmware spike
                              (version, code, days), offline gateways and days.
    ``gateways/<id>.toml``    one collector config per simulated gateway; its
                              ``local.topic_prefix`` is ``sim/<gateway_id>/``.
    MQTT (``--broker``)       QoS 1 to ``sim/<gateway_id>/fleetpulse/v1/devices/<device_id>/telemetry``.
    ``telemetry/<id>.jsonl``  with ``--to-files``: the same messages, one
                              ``{"topic", "payload"}`` per line.

Modules: :mod:`.fleet` (model and patterns), :mod:`.generate` (records),
:mod:`.registry` (accounts.csv, truth.json, gateway configs), :mod:`.publish`
(MQTT and file sinks), :mod:`.simulation` (:func:`simulate`), :mod:`.cli`.
"""

from __future__ import annotations

import importlib
from typing import Any

# Exported names -> defining module, imported on first use so that
# `fleetpulse --help` does not pay for paho-mqtt.
_EXPORTS = {
    "Fleet": "fleet",
    "build_fleet": "fleet",
    "PATTERNS": "fleet",
    "DeviceMessage": "generate",
    "TelemetryGenerator": "generate",
    "BrokerSettings": "registry",
    "write_outputs": "registry",
    "accounts_csv": "registry",
    "FileSink": "publish",
    "MqttSink": "publish",
    "SimulationConfig": "simulation",
    "SimulationSummary": "simulation",
    "simulate": "simulation",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
