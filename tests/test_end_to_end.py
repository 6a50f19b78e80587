"""The whole path against real servers:

simulator → Mosquitto (gateway's local broker) → collectors → Mosquitto (central)
→ lander → Parquet lake → Beam batch job → InfluxDB 1.x, read back with InfluxQL.

Expected figures are computed independently from the simulator's own messages
(not from the pipeline), so the test fails if any stage loses, doubles or
mis-sums a record.
"""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from collections import defaultdict

import pytest

from fleetpulse.devices.collector.collector import Collector
from fleetpulse.devices.collector.config import load_config
from fleetpulse.devices.simulator.generate import TelemetryGenerator
from fleetpulse.devices.simulator.publish import MqttSink
from fleetpulse.devices.simulator.registry import BrokerSettings, write_outputs
from fleetpulse.devices.simulator.simulation import SimulationConfig, simulate
from fleetpulse.pipeline.health.config import load_health_model
from fleetpulse.pipeline.jobs.backfill import JobConfig
from fleetpulse.pipeline.jobs.backfill import run as run_backfill
from fleetpulse.pipeline.jobs.metrics import counters
from fleetpulse.pipeline.lake.lander import Lander, LanderConfig
from fleetpulse.pipeline.outputs import tables as outputs
from fleetpulse.pipeline.outputs.influx import InfluxConfig
from fleetpulse.pipeline.outputs.points import day_start_s
from fleetpulse.schemas.accounts import load_accounts

from .servers import wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SIM = SimulationConfig(seed=11, customers=8, days=12, malformed_per_day=1)


def influxql(port: int, query: str, db: str = "fleetpulse") -> list[dict]:
    url = f"http://127.0.0.1:{port}/query?" + urllib.parse.urlencode({"db": db, "q": query, "epoch": "s"})
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = json.load(resp)
    result = body["results"][0]
    assert "error" not in result, result
    return result.get("series", [])


def expected_from_simulator() -> tuple[set[tuple[str, int]], float, int]:
    """Distinct (device, hour) pairs, total runtime seconds and record count the fleet sent."""
    hours: set[tuple[str, int]] = set()
    runtime = 0.0
    records = 0
    for message in TelemetryGenerator(SIM.build_fleet(), malformed_per_day=SIM.malformed_per_day):
        if message.withheld or message.malformed is not None:
            continue
        for record in json.loads(message.payload):
            records += 1
            hours.add((record["device_id"], record["ts_ms"] // 3_600_000))
            for q in record.get("quantities", ()):
                if q["name"] == "runtime":
                    runtime += q["value"]
    return hours, runtime, records


def test_device_to_influxdb(mosquitto_pair, influxdb_v1, tmp_path):
    local, central = mosquitto_pair
    fleet = SIM.build_fleet()
    paths = write_outputs(fleet, tmp_path / "sim", BrokerSettings("127.0.0.1", local.port))
    lake, out = tmp_path / "lake", tmp_path / "signals"

    lander = Lander(LanderConfig(lake=lake, port=central.port, commit_interval_ms=100))
    lander.start()
    collectors = [
        Collector(load_config(p, environ={"FLEETPULSE_GATEWAY__UPSTREAM__PORT": str(central.port)}))
        for p in paths.gateway_configs
    ]
    for collector in collectors:
        collector.start()
    summary = simulate(SIM, MqttSink("127.0.0.1", local.port))
    wait_until(lambda: sum(c.counters["sent_records"] for c in collectors) >= summary.records_sent,
               timeout_s=60, what="collectors to forward every record")
    for collector in collectors:
        assert collector.stop(timeout_s=30)
    batches = sum(c.counters["sent_batches"] for c in collectors)
    # Every batch, plus each gateway's status at start and its final status at stop.
    wait_until(lambda: lander.snapshot()["committed_messages"] >= batches + 2 * len(collectors),
               what="lander to commit every batch and status")
    lander.stop()

    hours, runtime_s, records = expected_from_simulator()
    assert summary.records_sent == records
    assert sum(c.counters["dead_letters"] for c in collectors) == summary.malformed_messages > 0

    urllib.request.urlopen(urllib.request.Request(
        f"http://127.0.0.1:{influxdb_v1.port}/query",
        data=urllib.parse.urlencode({"q": "CREATE DATABASE fleetpulse"}).encode()), timeout=10).close()
    influx = InfluxConfig.from_env({"INFLUX_URL": f"http://127.0.0.1:{influxdb_v1.port}", "INFLUX_DB": "fleetpulse"})
    job = JobConfig(lake=str(lake), out=str(out), accounts=load_accounts(paths.accounts),
                    model=load_health_model(None), influx=influx)
    result = run_backfill(job, [])
    totals = counters(result)
    assert totals.get("influx.dropped", 0) == 0

    # Device level: one point per device and event hour, runtime summed exactly.
    series = influxql(influxdb_v1.port, "SELECT count(records), sum(runtime_s), sum(records) FROM fp_device_hourly")
    (_, point_count, runtime_sum, record_sum) = series[0]["values"][0]
    assert point_count == len(hours)
    assert runtime_sum == pytest.approx(runtime_s, rel=1e-9)
    assert record_sum == records

    per_device = influxql(influxdb_v1.port, "SELECT count(records) FROM fp_device_hourly GROUP BY device_id")
    expected_per_device: dict[str, int] = defaultdict(int)
    for device, _hour in hours:
        expected_per_device[device] += 1
    assert {s["tags"]["device_id"]: s["values"][0][1] for s in per_device} == expected_per_device

    # Customer level: the points equal the signals the job wrote to Parquet.
    signals = outputs.read_signals(out)
    assert {s.customer_id for s in signals} == {a.customer_id for a in fleet.accounts}
    rows = influxql(influxdb_v1.port, "SELECT health, band, stage FROM fp_customer_daily GROUP BY customer_id")
    from_influx = {(s["tags"]["customer_id"], v[0]): (v[1], v[2], v[3]) for s in rows for v in s["values"]}
    from_parquet = {
        (s.customer_id, day_start_s(s.day)): (pytest.approx(s.health), s.band, s.stage) for s in signals
    }
    assert from_influx == from_parquet

    # Gateway status: the last status of each gateway (published at stop) carries the
    # counters the collector ended with; the state is offline after a clean stop.
    status = influxql(influxdb_v1.port, "SELECT last(sent_records), last(dropped_records) FROM fp_gateway_status "
                                          "GROUP BY gateway_id")
    reported = {s["tags"]["gateway_id"]: s["values"][0][1:] for s in status}
    expected_status = {
        c.config.gateway.gateway_id: [c.counters["sent_records"], sum(c.counters["dropped_records"].values())]
        for c in collectors
    }
    assert reported == expected_status

    # Replaying the same lake overwrites instead of doubling.
    run_backfill(job, [])
    again = influxql(influxdb_v1.port, "SELECT count(records), sum(runtime_s) FROM fp_device_hourly")
    assert again[0]["values"][0][1:] == [len(hours), pytest.approx(runtime_s, rel=1e-9)]

