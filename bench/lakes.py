"""Seeded lakes of the simulator's fleet, landed the way collectors and the lander land them.

The scale benchmark (:mod:`bench.bench_scale`) and the largest-element test
(``tests/test_element_sizes.py``) need lakes of a chosen size with a real
fleet's shape: the simulator's customers, sites, gateways and devices, their
records per device-hour, and their offline days (withheld messages are left
out, as a gateway that is down sends nothing). Only the size is chosen —
more customers *and* more days for a larger lake, never more records per
device.

How a message gets into the lake here is how it gets there in production:

- a gateway batches its devices' records into envelopes of at most
  :data:`BATCH_RECORDS` records (the collector's ``batch.max_records``), one
  envelope per gateway and event hour at most (a collector sends every few
  seconds, so an envelope never spans hours of a live fleet);
- the lander commits a landing file every :data:`LANDER_COMMIT_MESSAGES`
  messages (its ``commit_max_messages``), named by the first message's arrival;
- :data:`REDELIVERED_SHARE` of the envelopes arrive a second time a few files
  later (a gateway that lost a PUBACK resends), so dedupe has copies to drop.

    python -m bench.lakes --customers 24 --days 60 --out /tmp/lake     # the demo's size
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from fleetpulse.devices.simulator.generate import TelemetryGenerator
from fleetpulse.devices.simulator.registry import accounts_csv
from fleetpulse.devices.simulator.simulation import DEFAULT_START_DATE, SimulationConfig
from fleetpulse.pipeline.lake.landing import LandingWriter
from fleetpulse.schemas import load_contract

BATCH_RECORDS = 500
LANDER_COMMIT_MESSAGES = 100
REDELIVERED_SHARE = 0.03
HOUR_MS = 3_600_000
#: a received_ms this long after the envelope's newest record (a collector's batch delay)
DELAY_MS = 30_000


@dataclass(frozen=True)
class Lake:
    """What :func:`write_lake` wrote."""

    root: Path  # the lake root (``landing/`` under it)
    accounts: Path  # the fleet's accounts.csv (the CRM export the backfill joins)
    records: int  # records in the landing zone, copies included
    unique_records: int  # records without the redelivered copies
    messages: int  # gateway batch messages, copies included
    customers: int
    devices: int
    days: int
    start: date


def _envelopes(config: SimulationConfig) -> Iterator[tuple[str, bytes, int, int]]:
    """(topic, payload, received_ms, records) of the fleet's gateway batches, day by day."""
    fleet = config.build_fleet()
    gateways = {g.gateway_id: g for g in fleet.gateways}
    contract = load_contract()
    generator = TelemetryGenerator(fleet)
    batch_seq: dict[str, int] = {}
    for day in range(fleet.days):
        pending: dict[tuple[str, int], list[dict[str, Any]]] = {}
        for message in generator.day(day):
            if message.withheld or message.malformed is not None:
                continue
            for record in json.loads(message.payload):
                hour = record["ts_ms"] - record["ts_ms"] % HOUR_MS
                pending.setdefault((message.gateway_id, hour), []).append(record)
        for (gateway_id, _), records in sorted(pending.items(), key=lambda item: (item[0][1], item[0][0])):
            gw = gateways[gateway_id]
            ids = {"customer_id": gw.customer_id, "site_id": gw.site_id, "gateway_id": gw.gateway_id}
            topic = contract.topic("gateway_batches", **ids)
            for start in range(0, len(records), BATCH_RECORDS):
                chunk = records[start : start + BATCH_RECORDS]
                received_ms = max(r["ts_ms"] for r in chunk) + DELAY_MS
                batch_seq[gateway_id] = batch_seq.get(gateway_id, 0) + 1
                envelope = {"v": 1, **ids, "batch_seq": batch_seq[gateway_id], "sent_ms": received_ms,
                            "records": chunk}
                yield topic, json.dumps(envelope, separators=(",", ":")).encode(), received_ms, len(chunk)


def write_lake(root: Path | str, customers: int, days: int, *, seed: int = 7,
               start: date = DEFAULT_START_DATE) -> Lake:
    """A landing zone of the seeded fleet of ``customers`` over ``days`` under ``root``."""
    root = Path(root)
    config = SimulationConfig(seed=seed, customers=customers, days=days, start_date=start)
    fleet = config.build_fleet()
    root.mkdir(parents=True, exist_ok=True)
    accounts = root / "accounts.csv"
    accounts.write_text(accounts_csv(fleet.accounts), encoding="utf-8", newline="")
    rng = random.Random(seed)
    writer = LandingWriter(root, max_rows=LANDER_COMMIT_MESSAGES)
    redeliver: list[tuple[str, bytes, int, int]] = []
    records = unique = messages = 0

    def land(topic: str, payload: bytes, received_ms: int, count: int) -> None:
        nonlocal records, messages
        if writer.add(topic, payload, received_ms):
            writer.commit()
        records += count
        messages += 1

    for topic, payload, received_ms, count in _envelopes(config):
        land(topic, payload, received_ms, count)
        unique += count
        if rng.random() < REDELIVERED_SHARE:
            redeliver.append((topic, payload, received_ms + 60_000, count))
        # A resent batch lands a few files later, with its own received_ms.
        while redeliver and (len(redeliver) > 20 or rng.random() < 0.05):
            land(*redeliver.pop(0))
    for again in redeliver:
        land(*again)
    writer.commit()
    devices = len(fleet.devices)
    return Lake(root, accounts, records, unique, messages, customers, devices, days, start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.lakes", description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=24)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", required=True, help="lake root to write (landing/ and accounts.csv)")
    args = parser.parse_args(argv)
    lake = write_lake(args.out, args.customers, args.days, seed=args.seed)
    print(f"{lake.records} records ({lake.unique_records} unique) in {lake.messages} messages, "
          f"{lake.customers} customers, {lake.devices} devices, {lake.days} days → {lake.root}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
