"""``fleetpulse ingest`` end to end against real Mosquitto and InfluxDB 1.x.

A seeded fleet (with resent batches, so the stream holds duplicates) is
published to the broker; the ingest job runs as a process, as it would be
deployed; the lake's archive and InfluxDB must hold exactly the unique
records and the rollups computed independently from the fleet. The process
is also killed mid-stream and restarted, and run with 1,000 malformed
messages interleaved."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fleetpulse.pipeline.outputs.bundles import outputs_dir, pending_dir, read_json_lines_parts
from fleetpulse.pipeline.sources.mqtt import MqttSourceConfig

from . import test_ingest_support as support
from .servers import Server, wait_until
from .test_ingest_support import Fleet, malformed_messages, publish, seeded_fleet

pytestmark = pytest.mark.integration

PREFIX = "it-ingest"


def create_db(port: int, db: str) -> None:
    data = urllib.parse.urlencode({"q": f"CREATE DATABASE {db}"}).encode()
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/query", data=data), timeout=10).close()


def ingest(
    broker: Server, lake: Path, *extra: str, influx: tuple[int, str] | None = None
) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.pop("INFLUX_URL", None)
    if influx is not None:
        env.update(INFLUX_URL=f"http://127.0.0.1:{influx[0]}", INFLUX_DB=influx[1])
    argv = [
        sys.executable, "-m", "fleetpulse", "ingest",
        "--broker", f"127.0.0.1:{broker.port}", "--client-id-prefix", PREFIX,
        "--lake", str(lake), "--out", str(lake / "out"), *extra,
    ]
    lake.parent.mkdir(parents=True, exist_ok=True)
    log = open(lake.parent / f"ingest-{time.monotonic_ns()}.log", "wb")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return proc


def finish(proc: subprocess.Popen[bytes], timeout_s: float = 120) -> None:
    rc = proc.wait(timeout=timeout_s)
    assert rc == 0, f"ingest exited {rc}"


def create_session(broker: Server, lake: Path) -> None:
    """The ingest reader's persistent session and subscription, as ``ingest``'s defaults make them."""
    support.create_session(broker.port, MqttSourceConfig(port=broker.port, client_id_prefix=PREFIX))


def archived(lake: Path) -> list[tuple[str, int, int]]:
    rows: list[tuple[str, int, int]] = []
    for part in sorted((lake / "records").glob("dt=*/hour=*/part-*.parquet")):
        table = pq.read_table(part, columns=["device_id", "boot", "seq"])
        rows.extend(zip(*(table.column(c).to_pylist() for c in ("device_id", "boot", "seq")), strict=True))
    return rows


def hourly_points(port: int, db: str) -> dict[tuple[str, int], tuple[int, float]]:
    url = f"http://127.0.0.1:{port}/query?" + urllib.parse.urlencode(
        {"db": db, "q": "SELECT records, runtime_s FROM fp_device_hourly GROUP BY device_id", "epoch": "ms"}
    )
    with urllib.request.urlopen(url, timeout=10) as resp:
        result = json.load(resp)["results"][0]
    assert "error" not in result, result
    points: dict[tuple[str, int], tuple[int, float]] = {}
    for series in result.get("series", []):
        device = series["tags"]["device_id"]
        for t, records, runtime in series["values"]:
            points[(device, t)] = (records, runtime or 0.0)
    return points


def expected_points(fleet: Fleet) -> dict[tuple[str, int], tuple[int, float]]:
    return {key: (count, float(fleet.runtime_s.get(key, 0))) for key, count in fleet.hourly.items()}


def check_exactly_once(lake: Path, fleet: Fleet, influx: tuple[int, str]) -> None:
    rows = archived(lake)
    assert Counter(rows).most_common(1)[0][1] == 1, "a record is archived twice"
    assert set(rows) == fleet.unique
    assert hourly_points(*influx) == expected_points(fleet)


def test_ingest_writes_each_record_once_and_the_expected_rollups(
    mosquitto: Server, influxdb_v1: Server, tmp_path: Path
) -> None:
    fleet = seeded_fleet(seed=7)
    assert len(fleet.messages) > len({m for m in fleet.messages})  # duplicates in the stream
    lake = tmp_path / "lake"
    create_db(influxdb_v1.port, "clean")
    create_session(mosquitto, lake)
    publish(mosquitto.port, fleet.messages)
    finish(ingest(mosquitto, lake, "--idle-stop-ms", "800", influx=(influxdb_v1.port, "clean")))
    check_exactly_once(lake, fleet, (influxdb_v1.port, "clean"))
    assert read_json_lines_parts(lake / "out" / "dead_letters") == []
    assert not list(pending_dir(lake, PREFIX).iterdir())  # a clean end leaves nothing to replay


def test_ingest_runs_on_the_direct_runner_in_streaming_mode(
    mosquitto: Server, influxdb_v1: Server, tmp_path: Path
) -> None:
    """``-- --runner=DirectRunner``: Beam's DirectRunner picks its engine (Prism where it can be
    downloaded; here the FnApiRunner, as Prism's binary is unreachable) and the job is the same."""
    fleet = seeded_fleet(seed=8)
    lake = tmp_path / "lake"
    create_db(influxdb_v1.port, "direct")
    create_session(mosquitto, lake)
    publish(mosquitto.port, fleet.messages)
    finish(ingest(mosquitto, lake, "--idle-stop-ms", "800", "--", "--runner=DirectRunner",
                  influx=(influxdb_v1.port, "direct")))
    check_exactly_once(lake, fleet, (influxdb_v1.port, "direct"))


def test_malformed_messages_are_dead_lettered_and_change_nothing_else(
    mosquitto_pair: tuple[Server, Server], influxdb_v1: Server, tmp_path: Path
) -> None:
    fleet = seeded_fleet(seed=9)
    bad = malformed_messages(1000)
    mixed: list[tuple[str, bytes]] = []
    for i, message in enumerate(bad):  # interleaved: a valid message every ~20 bad ones
        mixed.append(message)
        if i % 20 == 0 and fleet.messages[i // 20:i // 20 + 1]:
            mixed.append(fleet.messages[i // 20])
    mixed.extend(fleet.messages[len(bad) // 20 + 1:])
    runs = {"clean": (mosquitto_pair[0], fleet.messages), "mixed": (mosquitto_pair[1], mixed)}
    for db, (broker, messages) in runs.items():
        lake = tmp_path / db / "lake"
        create_db(influxdb_v1.port, db)
        create_session(broker, lake)
        publish(broker.port, messages)
        finish(ingest(broker, lake, "--idle-stop-ms", "800", influx=(influxdb_v1.port, db)))

    clean, mixed_lake = tmp_path / "clean" / "lake", tmp_path / "mixed" / "lake"
    check_exactly_once(clean, fleet, (influxdb_v1.port, "clean"))
    assert sorted(archived(mixed_lake)) == sorted(archived(clean))
    assert hourly_points(influxdb_v1.port, "mixed") == hourly_points(influxdb_v1.port, "clean")
    check_exactly_once(clean, fleet, (influxdb_v1.port, "clean"))
    dead = [json.loads(line) for line in read_json_lines_parts(mixed_lake / "out" / "dead_letters")]
    assert len(dead) == 1000
    assert all(d["reason"] and d["detail"] for d in dead)
    assert Counter(d["reason"] for d in dead) == {
        "not_utf8": 200, "missing_field": 200, "bad_identifier": 200,
        "topic_mismatch": 200, "not_object": 200,
    }


def test_killed_mid_stream_and_restarted_loses_nothing_and_doubles_nothing(
    mosquitto: Server, influxdb_v1: Server, tmp_path: Path
) -> None:
    fleet = seeded_fleet(seed=11)
    half = len(fleet.messages) // 2
    lake = tmp_path / "lake"
    create_db(influxdb_v1.port, "restart")
    create_session(mosquitto, lake)
    influx = (influxdb_v1.port, "restart")

    first = ingest(mosquitto, lake, "--max-messages-per-bundle", "5", influx=influx)
    publish(mosquitto.port, fleet.messages[:half])
    landed, derived = pending_dir(lake, PREFIX), outputs_dir(lake, PREFIX)
    wait_until(
        lambda: landed.exists() and len(list(landed.iterdir())) >= 2 and derived.exists()
        and any(derived.iterdir()),
        60,
        "landed bundles and archived records",
    )
    first.send_signal(signal.SIGKILL)
    assert first.wait(timeout=30) == -signal.SIGKILL
    # The killed run had already archived part of what it landed: the restart must
    # replay the rest without archiving that part again.
    assert archived(lake)

    publish(mosquitto.port, fleet.messages[half:])
    finish(ingest(mosquitto, lake, "--idle-stop-ms", "800", influx=influx))
    check_exactly_once(lake, fleet, influx)


def test_ingest_takes_a_queued_backlog_whole_with_no_loss(mosquitto: Server, tmp_path: Path) -> None:
    # 30,000 records in 300 messages of 100, queued in the broker before the job starts.
    # The rate is measured in bench/bench_ingest.py (python -m bench ingest), not here.
    fleet = seeded_fleet(seed=5, gateways=10, devices_per_gateway=10, records_per_device=300,
                         batch_records=100, resend_every=10**9)
    lake = tmp_path / "lake"
    create_session(mosquitto, lake)
    publish(mosquitto.port, fleet.messages)
    finish(ingest(mosquitto, lake, "--idle-stop-ms", "800"))
    rows = archived(lake)
    assert len(rows) == len(fleet.unique) == 30_000 and set(rows) == fleet.unique
