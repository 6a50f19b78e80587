"""Running a simulation: build the fleet, stream its days into a sink, count what went out.

This is the in-process API (the demo orchestrator and the CLI both call it)::

    config = SimulationConfig(seed=7, customers=24, days=60)
    fleet = config.build_fleet()
    write_outputs(fleet, "fleetpulse-sim", BrokerSettings("127.0.0.1", 1883))
    summary = simulate(config, MqttSink("127.0.0.1", 1883), fleet=fleet)

``simulate`` opens the sink, sends every day's messages (skipping those of
gateways that are offline that day), waits until the sink has delivered
everything (for MQTT: every PUBACK received) and returns a
:class:`SimulationSummary`. Planted malformed messages are included in
``messages_sent`` and counted again in ``malformed_messages``; each one yields
exactly one rejection at the collector (one dead letter) and no valid record.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

from .fleet import Fleet, build_fleet
from .generate import TelemetryGenerator
from .publish import Sink

DEFAULT_START_DATE = date(2026, 8, 1)


@dataclass(frozen=True)
class SimulationConfig:
    seed: int = 7
    customers: int = 24
    days: int = 60
    start_date: date = DEFAULT_START_DATE
    malformed_per_day: int = 0
    seconds_per_day: float = 0.0  # wall-clock pacing of one simulated day; 0 = as fast as possible

    def __post_init__(self) -> None:
        for name in ("customers", "days"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.malformed_per_day < 0:
            raise ValueError(f"malformed_per_day must be >= 0, got {self.malformed_per_day}")
        if self.seconds_per_day < 0:
            raise ValueError(f"seconds_per_day must be >= 0, got {self.seconds_per_day}")

    def build_fleet(self) -> Fleet:
        return build_fleet(self.seed, self.customers, self.start_date, self.days)


@dataclass
class SimulationSummary:
    """What a run sent. ``messages_sent`` includes the malformed ones."""

    days: int = 0
    messages_sent: int = 0
    records_sent: int = 0  # valid records only
    malformed_messages: int = 0
    malformed_by_kind: dict[str, int] = field(default_factory=dict)
    messages_withheld: int = 0  # from gateways offline that day: never sent
    records_withheld: int = 0
    records_by_customer: dict[str, int] = field(default_factory=dict)
    paths: tuple[Path, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "days": self.days,
            "messages_sent": self.messages_sent,
            "records_sent": self.records_sent,
            "malformed_messages": self.malformed_messages,
            "malformed_by_kind": dict(self.malformed_by_kind),
            "messages_withheld": self.messages_withheld,
            "records_withheld": self.records_withheld,
            "records_by_customer": dict(self.records_by_customer),
            "paths": [str(p) for p in self.paths],
        }


def simulate(
    config: SimulationConfig,
    sink: Sink,
    progress: Callable[[int, int], None] | None = None,
    *,
    fleet: Fleet | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> SimulationSummary:
    """Stream the simulated fleet into ``sink``; ``progress(days_done, days)`` after each day.

    ``fleet`` defaults to ``config.build_fleet()``; pass the one given to
    :func:`~.registry.write_outputs` to skip building it twice.
    """
    fleet = fleet or config.build_fleet()
    generator = TelemetryGenerator(fleet, malformed_per_day=config.malformed_per_day)
    summary = SimulationSummary(records_by_customer={c.customer_id: 0 for c in fleet.customers})
    sink.open()
    try:
        started = clock()
        for day in range(fleet.days):
            for message in generator.day(day):
                if message.withheld:
                    summary.messages_withheld += 1
                    summary.records_withheld += message.records
                    continue
                sink.send(message)
                summary.messages_sent += 1
                if message.malformed is not None:
                    summary.malformed_messages += 1
                    kinds = summary.malformed_by_kind
                    kinds[message.malformed] = kinds.get(message.malformed, 0) + 1
                else:
                    summary.records_sent += message.records
                    summary.records_by_customer[message.customer_id] += message.records
            summary.days = day + 1
            if progress is not None:
                progress(day + 1, fleet.days)
            if config.seconds_per_day > 0 and day + 1 < fleet.days:
                # Pace against the start, so slow days do not push the schedule back.
                delay = started + (day + 1) * config.seconds_per_day - clock()
                if delay > 0:
                    sleep(delay)
        sink.drain()
    finally:
        sink.close()
    summary.paths = sink.paths
    return summary
