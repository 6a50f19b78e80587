"""Device records for the simulated fleet, one simulated day at a time.

:class:`TelemetryGenerator` walks the days of a :class:`~.fleet.Fleet` in
order and yields, per device and day, ONE :class:`DeviceMessage`: the JSON
array of the records that device sent that day, ordered by event time (devices
batch). Records follow the telemetry contract v1 (``schemas/telemetry_v1.json``):
every record has ``device_id``, ``ts_ms`` (inside that UTC day), ``boot``,
``seq`` (from 0 in each boot, strictly increasing), ``kind`` and ``fw``.

Per device-day (roughly 8-15 records):

* heartbeats every 4 h (``interval_s`` 14400) while the device is powered, plus
  one right after each (re)boot; a device not yet deployed sends nothing;
* usage (three 4-hour blocks of runtime / cycles / energy) and feature records
  only on the days the device is in use; an idle device still heartbeats;
* errors at a low base rate, plus the fleet-wide firmware spike.

Randomness per device-day comes from its own RNG derived from stable strings,
and the only state carried from day to day is the boot counter, the sequence
number and the firmware, so generation streams in constant memory per device.
Messages of a gateway that is offline that day are still produced (the device
went on working) but marked ``withheld``: sinks do not send them.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fleetpulse.schemas import load_contract

from .fleet import (
    LATEST_FIRMWARE,
    Customer,
    Device,
    Fleet,
    derive_rng,
)

HEARTBEAT_INTERVAL_S = 14400
USAGE_PERIOD_S = 14400
DAY_S = 86400
#: End of each usage block, seconds into the (UTC) day.
USAGE_BLOCK_ENDS_S = (12 * 3600, 16 * 3600, 20 * 3600)
#: Chance an in-use device is used on a given day.
DAILY_USE_PROBABILITY = 0.96
REBOOT_PROBABILITY = 0.015
BASE_ERROR_PROBABILITY = 0.04
SPIKE_HIT_PROBABILITY = 0.8

#: code -> severity of the everyday errors (consumables, jams, network blips).
BASE_ERRORS: dict[str, tuple[str, str]] = {
    "E101": ("warning", "paper jam cleared"),
    "E205": ("info", "toner low"),
    "E310": ("warning", "network reconnect"),
    "E412": ("error", "fuser temperature out of range"),
}

MALFORMED_KINDS: tuple[str, ...] = (
    "not_json",
    "missing_field",
    "bad_identifier",
    "negative_quantity",
    "unknown_kind",
)


def topic_prefix(gateway_id: str) -> str:
    """The prefix under which one simulated gateway's devices publish on a shared broker."""
    return f"sim/{gateway_id}/"


@dataclass(frozen=True)
class DeviceMessage:
    """One MQTT message of one device: a JSON array of records (or a planted bad payload)."""

    day: int
    customer_id: str
    site_id: str
    gateway_id: str
    device_id: str
    topic: str  # the contract's device topic, without the simulator's prefix
    payload: bytes
    records: int  # valid records inside; 0 for a malformed message
    malformed: str | None = None  # which MALFORMED_KINDS, None when valid
    withheld: bool = False  # its gateway is offline that day: not sent

    @property
    def prefixed_topic(self) -> str:
        """The topic a simulated gateway's local broker sees: ``sim/<gateway_id>/`` + topic."""
        return topic_prefix(self.gateway_id) + self.topic


@dataclass
class _DeviceState:
    boot: int
    seq: int
    boot_ts_ms: int
    fw: str
    phase_s: int  # offset of the heartbeat schedule, so devices do not beat in unison
    deployed: bool


def _day_start_ms(fleet: Fleet, day: int) -> int:
    d = fleet.date_of(day)
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp()) * 1000


class TelemetryGenerator:
    """Streams the fleet's device messages day by day (days must be consumed in order)."""

    def __init__(self, fleet: Fleet, *, malformed_per_day: int = 0) -> None:
        if malformed_per_day < 0:
            raise ValueError(f"malformed_per_day must be >= 0, got {malformed_per_day}")
        self.fleet = fleet
        self.malformed_per_day = malformed_per_day
        self._contract = load_contract(1)
        self._next_day = 0
        self._state: dict[str, _DeviceState] = {}
        self._devices: dict[str, Device] = {d.device_id: d for d in fleet.devices}
        start_ms = _day_start_ms(fleet, 0)
        for device in fleet.devices:
            rng = derive_rng(fleet.seed, "device-init", device.device_id)
            uptime_s = rng.randint(3600, 40 * DAY_S)
            self._state[device.device_id] = _DeviceState(
                boot=rng.randint(1, 30),
                seq=uptime_s * 10 // DAY_S,  # roughly what it sent since it booted
                boot_ts_ms=start_ms - uptime_s * 1000,
                fw=device.initial_fw,
                phase_s=rng.randrange(HEARTBEAT_INTERVAL_S),
                deployed=device.deploy_day is None,
            )

    # ------------------------------------------------------------ iteration
    def __iter__(self) -> Iterator[DeviceMessage]:
        for day in range(self._next_day, self.fleet.days):
            yield from self.day(day)

    def day(self, day: int) -> Iterator[DeviceMessage]:
        """The messages of simulated ``day`` (0-based); consume it fully before the next."""
        if day != self._next_day:
            raise ValueError(f"days must be generated in order: expected day {self._next_day}, got {day}")
        if not 0 <= day < self.fleet.days:
            raise ValueError(f"day {day} is outside the simulated span of {self.fleet.days} days")
        return self._day(day)

    def _day(self, day: int) -> Iterator[DeviceMessage]:
        day_ms = _day_start_ms(self.fleet, day)
        for customer in self.fleet.customers:
            for gateway in customer.gateways:
                withheld = self.fleet.gateway_offline(gateway.gateway_id, day)
                for device_id in gateway.device_ids:
                    device = self._devices[device_id]
                    records = self._device_day(customer, device, day, day_ms)
                    if not records:
                        continue
                    yield DeviceMessage(
                        day=day,
                        customer_id=customer.customer_id,
                        site_id=device.site_id,
                        gateway_id=device.gateway_id,
                        device_id=device.device_id,
                        topic=self._contract.topic("device_telemetry", device_id=device.device_id),
                        payload=_encode(records),
                        records=len(records),
                        withheld=withheld,
                    )
        yield from self._malformed(day, day_ms)
        self._next_day = day + 1

    # -------------------------------------------------------------- activity
    def _in_use_fraction(self, customer: Customer, day: int) -> float:
        progress = day / max(1, self.fleet.days - 1)
        if customer.pattern == "gradual_decline":
            return customer.in_use_fraction - 0.52 * progress
        if customer.pattern == "sudden_drop" and customer.drop_day is not None:
            return customer.in_use_fraction if day < customer.drop_day else 0.1
        return customer.in_use_fraction

    def _intensity(self, customer: Customer, day: int) -> float:
        progress = day / max(1, self.fleet.days - 1)
        weekday = self.fleet.date_of(day).weekday()
        factor = 0.8 if weekday >= 5 else 1.0
        if customer.pattern == "gradual_decline":
            factor *= 1.0 - 0.45 * progress
        return factor

    def _breadth(self, customer: Customer, day: int) -> int:
        if customer.pattern == "gradual_decline":
            progress = day / max(1, self.fleet.days - 1)
            return max(1, round(customer.feature_breadth - (customer.feature_breadth - 2) * progress))
        return customer.feature_breadth

    # --------------------------------------------------------------- records
    def _device_day(
        self, customer: Customer, device: Device, day: int, day_ms: int
    ) -> list[dict[str, Any]]:
        state = self._state[device.device_id]
        first_s = 0
        if not state.deployed:
            if device.deploy_day is None or day < device.deploy_day:
                return []
            # First power-on at the customer's site.
            first_s = device.deploy_at_s
            state.deployed = True
            state.boot, state.seq = 1, 0
            state.boot_ts_ms = day_ms + first_s * 1000
            if device.upgrade_day is not None and device.upgrade_day < day:
                state.fw = LATEST_FIRMWARE

        rng = derive_rng(self.fleet.seed, "device-day", device.device_id, day)
        # Reboots as (second of day, firmware after it).
        reboots: list[tuple[int, str]] = []
        if device.upgrade_day == day:
            if device.upgrade_at_s > first_s:
                reboots.append((device.upgrade_at_s, LATEST_FIRMWARE))
            else:
                state.fw = LATEST_FIRMWARE
        if rng.random() < REBOOT_PROBABILITY:
            reboots.append((rng.randint(first_s + 60, DAY_S - 120), ""))
        reboots.sort()

        def fw_at(second: int) -> str:
            fw = state.fw
            for at, new_fw in reboots:
                if at <= second and new_fw:
                    fw = new_fw
            return fw

        # (second of day, kind, body); boot and seq are assigned once sorted.
        events: list[tuple[int, str, dict[str, Any]]] = []
        heartbeat = {"interval_s": HEARTBEAT_INTERVAL_S}
        if device.deploy_day == day:
            events.append((first_s, "heartbeat", heartbeat))
        for at, _ in reboots:
            events.append((at + 5, "heartbeat", heartbeat))
        for j in range(DAY_S // HEARTBEAT_INTERVAL_S):
            at = min(DAY_S - 1, max(0, state.phase_s + j * HEARTBEAT_INTERVAL_S + rng.randint(-20, 20)))
            if at >= first_s:
                events.append((at, "heartbeat", heartbeat))

        in_use = device.rank < self._in_use_fraction(customer, day)
        if in_use and rng.random() < DAILY_USE_PROBABILITY:
            intensity = self._intensity(customer, day)
            self._usage(events, rng, customer, device, intensity, first_s)
            for feature in customer.feature_order[: self._breadth(customer, day)]:
                if rng.random() < 0.55:
                    at = rng.randint(max(first_s, 8 * 3600), 20 * 3600)
                    count = max(1, round(rng.randint(1, 12) * intensity))
                    events.append((at, "feature", {"feature": feature, "count": count}))

        if rng.random() < BASE_ERROR_PROBABILITY:
            code = rng.choice(sorted(BASE_ERRORS))
            severity, message = BASE_ERRORS[code]
            events.append(
                (rng.randint(first_s, DAY_S - 1), "error", {"code": code, "severity": severity, "message": message})
            )
        spike = self.fleet.firmware_spike
        if spike.first_day <= day <= spike.last_day and rng.random() < SPIKE_HIT_PROBABILITY:
            for _ in range(rng.randint(1, 2)):
                at = rng.randint(first_s, DAY_S - 1)
                if fw_at(at) == spike.version:
                    severity = "critical" if rng.random() < 0.2 else "error"
                    body = {"code": spike.code, "severity": severity, "message": "spooler watchdog reset"}
                    events.append((at, "error", body))

        events.sort(key=lambda e: e[0])
        return self._stamp(device.device_id, state, events, reboots, day_ms)

    def _usage(
        self,
        events: list[tuple[int, str, dict[str, Any]]],
        rng: random.Random,
        customer: Customer,
        device: Device,
        intensity: float,
        first_s: int,
    ) -> None:
        blocks = [end + rng.randint(0, 300) for end in USAGE_BLOCK_ENDS_S]
        blocks = [end for end in blocks if end > first_s]
        if not blocks:
            return
        total_s = customer.runtime_h * 3600 * device.usage_factor * intensity * rng.uniform(0.7, 1.3)
        weights = [rng.uniform(0.2, 1.0) for _ in blocks]
        for end, weight in zip(blocks, weights, strict=True):
            period_s = min(USAGE_PERIOD_S, end - first_s)
            runtime_s = min(period_s, int(total_s * weight / sum(weights)))
            if runtime_s < 1:
                continue
            cycles = max(1, round(runtime_s / rng.uniform(40, 90)))
            energy_kwh = round(runtime_s / 3600 * rng.uniform(0.4, 0.55), 3)
            body = {
                "period_s": period_s,
                "quantities": [
                    {"name": "runtime", "value": runtime_s, "unit": "s"},
                    {"name": "cycles", "value": cycles, "unit": "count"},
                    {"name": "energy", "value": energy_kwh, "unit": "kWh"},
                ],
            }
            events.append((end, "usage", body))

    @staticmethod
    def _stamp(
        device_id: str,
        state: _DeviceState,
        events: list[tuple[int, str, dict[str, Any]]],
        reboots: list[tuple[int, str]],
        day_ms: int,
    ) -> list[dict[str, Any]]:
        pending = list(reboots)

        def reboot(at: int, new_fw: str) -> None:
            state.boot += 1
            state.seq = 0
            state.boot_ts_ms = day_ms + at * 1000
            if new_fw:
                state.fw = new_fw

        records: list[dict[str, Any]] = []
        for at, kind, body in events:
            while pending and pending[0][0] <= at:
                reboot(*pending.pop(0))
            ts_ms = day_ms + at * 1000
            record: dict[str, Any] = {
                "device_id": device_id,
                "ts_ms": ts_ms,
                "boot": state.boot,
                "seq": state.seq,
                "kind": kind,
                "fw": state.fw,
            }
            record.update(body)
            if kind == "heartbeat":
                record["uptime_s"] = max(0, (ts_ms - state.boot_ts_ms) // 1000)
            records.append(record)
            state.seq += 1
        for at, new_fw in pending:  # rebooted after its last record of the day
            reboot(at, new_fw)
        return records

    # ------------------------------------------------------------- malformed
    def _malformed(self, day: int, day_ms: int) -> Iterator[DeviceMessage]:
        if not self.malformed_per_day:
            return
        candidates = [
            d for d in self.fleet.devices if not self.fleet.gateway_offline(d.gateway_id, day)
        ]
        if not candidates:
            return
        rng = derive_rng(self.fleet.seed, "malformed", day)
        for i in range(self.malformed_per_day):
            kind = MALFORMED_KINDS[(day * self.malformed_per_day + i) % len(MALFORMED_KINDS)]
            device = rng.choice(candidates)
            ts_ms = day_ms + rng.randint(0, DAY_S - 1) * 1000
            yield DeviceMessage(
                day=day,
                customer_id=device.customer_id,
                site_id=device.site_id,
                gateway_id=device.gateway_id,
                device_id=device.device_id,
                topic=self._contract.topic("device_telemetry", device_id=device.device_id),
                payload=malformed_payload(kind, device.device_id, ts_ms, self._state[device.device_id].fw),
                records=0,
                malformed=kind,
            )


def malformed_payload(kind: str, device_id: str, ts_ms: int, fw: str) -> bytes:
    """A device message that breaks the contract in one way; each yields ONE rejection."""
    base: dict[str, Any] = {
        "device_id": device_id,
        "ts_ms": ts_ms,
        "boot": 0,
        "seq": 0,
        "kind": "heartbeat",
        "fw": fw,
        "interval_s": HEARTBEAT_INTERVAL_S,
    }
    if kind == "not_json":
        return _encode([base])[:-7]  # cut short, as a device losing power mid-write would
    if kind == "missing_field":
        del base["seq"]
    elif kind == "bad_identifier":
        base["device_id"] = device_id + " #1"
    elif kind == "negative_quantity":
        del base["interval_s"]
        base["kind"] = "usage"
        base["period_s"] = USAGE_PERIOD_S
        base["quantities"] = [{"name": "runtime", "value": -120, "unit": "s"}]
    elif kind == "unknown_kind":
        base["kind"] = "telepathy"
    else:
        raise ValueError(f"unknown malformed kind {kind!r}; one of {MALFORMED_KINDS}")
    return _encode([base])


def _encode(records: list[dict[str, Any]]) -> bytes:
    return json.dumps(records, separators=(",", ":")).encode("utf-8")
