"""The golden test: the streaming job and a backfill over the lake it wrote give the same numbers.

A seeded multi-day fleet (duplicates included) goes through real Mosquitto
into ``fleetpulse ingest`` (device hourly rollups and customer signals to one
InfluxDB 1.x database); then ``fleetpulse backfill`` recomputes everything
from the landing zone the stream wrote into a second database. Every device
hour and every customer day must be identical, field by field.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from fleetpulse.pipeline.sources.mqtt import MqttSourceConfig
from fleetpulse.schemas import load_contract

from .servers import Server
from .test_ingest_job import create_db
from .test_ingest_support import create_session, publish

pytestmark = pytest.mark.integration

PREFIX = "golden-ingest"
DAY = 86_400_000
HOUR = 3_600_000
START = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def fleet_messages(seed: int = 3, days: int = 5) -> list[tuple[str, bytes]]:
    """Two customers, their gateways and devices, hourly usage and heartbeats, in time order.

    One customer's usage fades over the days; every fourth batch is sent twice.
    """
    contract = load_contract()
    rng = random.Random(seed)
    messages: list[tuple[str, bytes]] = []
    for c in range(2):
        customer = f"c-{c:04d}"
        for g in range(2):
            site, gateway = f"{customer}-s1", f"{customer}-gw{g}"
            records: list[dict[str, Any]] = []
            for d in range(3):
                device = f"{gateway}-d{d}"
                seq = 0
                for hour in range(days * 24):
                    ts = START + hour * HOUR + rng.randrange(0, 600_000)
                    records.append({"device_id": device, "ts_ms": ts, "boot": 1, "seq": seq,
                                    "kind": "heartbeat", "fw": "2.4.1", "interval_s": 3600})
                    seq += 1
                    fade = 1.0 if c == 0 else max(0.1, 1 - hour / (days * 24))
                    if rng.random() < 0.8 * fade:
                        records.append({"device_id": device, "ts_ms": ts + 1000, "boot": 1, "seq": seq,
                                        "kind": "usage", "fw": "2.4.1", "period_s": 3600,
                                        "quantities": [{"name": "runtime", "unit": "s",
                                                        "value": rng.randrange(600, 3000)}]})
                        seq += 1
            records.sort(key=lambda r: (r["ts_ms"], r["device_id"]))
            ids = {"customer_id": customer, "site_id": site, "gateway_id": gateway}
            topic = contract.topic("gateway_batches", **ids)
            for n, start in enumerate(range(0, len(records), 40)):
                envelope = {"v": 1, **ids, "batch_seq": n, "sent_ms": START + n,
                            "records": records[start:start + 40]}
                message = (topic, json.dumps(envelope).encode())
                messages.append(message)
                if n % 4 == 3:
                    messages.append(message)
    return messages


def write_accounts(path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["customer_id", "name", "segment", "engagement_model", "arr_usd",
                         "contract_start", "renewal_date", "entitled_devices", "csm_owner"])
        writer.writerow(["c-0000", "Steady", "mid_market", "low_touch", 50000, "2025-06-01", "2026-06-01", 6,
                         "ana@example.com"])
        writer.writerow(["c-0001", "Fading", "smb", "digital", 12000, "2025-09-01", "2026-03-01", 6, ""])


def query(port: int, db: str, measurement: str) -> dict[tuple, dict[str, Any]]:
    """Every point of ``measurement``: (tags..., time) -> fields."""
    url = f"http://127.0.0.1:{port}/query?" + urllib.parse.urlencode(
        {"db": db, "q": f"SELECT * FROM {measurement}", "epoch": "ms"})
    with urllib.request.urlopen(url, timeout=30) as resp:
        result = json.load(resp)["results"][0]
    assert "error" not in result, result
    points: dict[tuple, dict[str, Any]] = {}
    for series in result.get("series", []):
        columns = series["columns"]
        for values in series["values"]:
            row = dict(zip(columns, values, strict=True))
            tags = tuple(sorted((k, v) for k, v in row.items() if isinstance(v, str)))
            points[(row["time"], tags)] = {k: v for k, v in row.items() if not isinstance(v, str)}
    return points


def assert_same_points(port: int, candidate: str, expected: str,
                       measurements: tuple[str, ...] = ("fp_device_hourly", "fp_customer_daily")) -> None:
    """Database ``candidate`` holds exactly ``expected``'s points of ``measurements``, field by field."""
    for measurement in measurements:
        got, want = query(port, candidate, measurement), query(port, expected, measurement)
        assert got, f"{candidate} holds no {measurement}"
        assert got.keys() == want.keys(), measurement
        for key, fields in want.items():
            assert got[key] == pytest.approx(fields), (measurement, key)


def run_cli(args: list[str], influx_port: int, db: str, log: Path) -> None:
    env = dict(os.environ, INFLUX_URL=f"http://127.0.0.1:{influx_port}", INFLUX_DB=db)
    with open(log, "wb") as err:
        proc = subprocess.run([sys.executable, "-m", "fleetpulse", *args], env=env, stdout=subprocess.DEVNULL,
                              stderr=err, timeout=600, check=False)
    assert proc.returncode == 0, f"fleetpulse {args[0]} exited {proc.returncode}; see {log}"


def test_streaming_and_backfill_over_the_same_lake_give_identical_rollups_and_signals(
        mosquitto: Server, influxdb_v1: Server, tmp_path: Path) -> None:
    lake, accounts = tmp_path / "lake", tmp_path / "accounts.csv"
    write_accounts(accounts)
    for db in ("stream", "batch"):
        create_db(influxdb_v1.port, db)
    create_session(mosquitto.port, MqttSourceConfig(port=mosquitto.port, client_id_prefix=PREFIX))
    messages = fleet_messages()
    publish(mosquitto.port, messages)

    run_cli(["ingest", "--broker", f"127.0.0.1:{mosquitto.port}", "--client-id-prefix", PREFIX,
             "--lake", str(lake), "--out", str(tmp_path / "stream"), "--accounts", str(accounts),
             "--idle-stop-ms", "800"], influxdb_v1.port, "stream", tmp_path / "ingest.log")
    run_cli(["backfill", "--lake", str(lake), "--out", str(tmp_path / "batch"), "--accounts", str(accounts)],
            influxdb_v1.port, "batch", tmp_path / "backfill.log")

    assert_same_points(influxdb_v1.port, "stream", "batch")
    hours = query(influxdb_v1.port, "batch", "fp_device_hourly")
    assert len(hours) == 2 * 2 * 3 * 5 * 24  # every device hour, once
    days = query(influxdb_v1.port, "batch", "fp_customer_daily")
    assert {dict(tags)["customer_id"] for _, tags in days} == {"c-0000", "c-0001"}
    # The backfill's hour files supersede the stream's panes: each record once in the archive.
    keys: list[tuple] = []
    for part in (lake / "records").glob("dt=*/hour=*/*.parquet"):
        table = pq.read_table(part, columns=["device_id", "boot", "seq"])
        keys.extend(zip(*(table.column(c).to_pylist() for c in ("device_id", "boot", "seq")), strict=True))
    assert len(keys) == len(set(keys)) > 0
    assert not list((lake / "records").glob("dt=*/hour=*/part-s-*.parquet"))
