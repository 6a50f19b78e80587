"""The batch job: the InfluxDB v2 write path end to end (VictoriaMetrics speaks
/api/v2/write), and configuration errors that stop it before anything runs."""

from __future__ import annotations

import json
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from fleetpulse import cli
from fleetpulse.devices.simulator.generate import TelemetryGenerator
from fleetpulse.devices.simulator.registry import write_outputs
from fleetpulse.devices.simulator.simulation import SimulationConfig
from fleetpulse.pipeline.health.config import load_health_model
from fleetpulse.pipeline.jobs.backfill import JobConfig
from fleetpulse.pipeline.jobs.backfill import run as run_backfill
from fleetpulse.pipeline.lake.landing import LandingWriter
from fleetpulse.pipeline.outputs import tables as outputs
from fleetpulse.pipeline.outputs.influx import InfluxConfig
from fleetpulse.pipeline.outputs.points import day_start_s
from fleetpulse.schemas import load_contract
from fleetpulse.schemas.accounts import load_accounts

from .servers import wait_until

SIM = SimulationConfig(seed=3, customers=8, days=6)
RECEIVED_MS = 1_795_000_000_000  # after the simulated span


def land_fleet(root: Path, sim: SimulationConfig = SIM, *, status: bool = True) -> Path:
    """A lake whose landing zone holds the fleet's records in gateway envelopes; returns accounts.csv."""
    fleet = sim.build_fleet()
    paths = write_outputs(fleet, root / "sim")
    gateways = {g.gateway_id: g for g in fleet.gateways}
    contract = load_contract()
    writer = LandingWriter(root / "lake")
    for seq, message in enumerate(TelemetryGenerator(fleet)):
        if message.withheld or message.malformed is not None:
            continue
        gw = gateways[message.gateway_id]
        ids = {"customer_id": gw.customer_id, "site_id": gw.site_id, "gateway_id": gw.gateway_id}
        envelope = {"v": 1, **ids, "batch_seq": seq, "sent_ms": RECEIVED_MS,
                    "records": json.loads(message.payload)}
        writer.add(contract.topic("gateway_batches", **ids), json.dumps(envelope).encode(), RECEIVED_MS)
    writer.commit()
    if status:
        # Each gateway's status as its collector would publish it at stop.
        statuses = LandingWriter(root / "lake", zone="status")
        for gw in fleet.gateways:
            ids = {"customer_id": gw.customer_id, "site_id": gw.site_id, "gateway_id": gw.gateway_id}
            body = {"v": 1, **ids, "at_ms": RECEIVED_MS, "state": "online",
                    "counters": {"sent_records": 100, "dead_letters": 2, "dropped_records": {"not_json": 2}}}
            statuses.add(contract.topic("gateway_status", **ids), json.dumps(body).encode(), RECEIVED_MS)
        statuses.commit()
    return Path(paths.accounts)


def vm_series(port: int, match: str, key: str = "customer_id") -> dict[tuple[str, int], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/internal/force_flush", timeout=10):
        pass
    url = f"http://127.0.0.1:{port}/api/v1/export?" + urllib.parse.urlencode({"match[]": match})
    with urllib.request.urlopen(url, timeout=10) as resp:
        lines = [json.loads(line) for line in resp.read().decode().splitlines() if line]
    return {
        (series["metric"][key], ts // 1000): value
        for series in lines
        for ts, value in zip(series["timestamps"], series["values"], strict=True)
    }


@pytest.mark.integration
def test_job_writes_customer_signals_through_the_v2_api(victoria_metrics, tmp_path):
    accounts = land_fleet(tmp_path)
    influx = InfluxConfig.from_env({
        "INFLUX_URL": f"http://127.0.0.1:{victoria_metrics.port}",
        "INFLUX_TOKEN": "test-token", "INFLUX_ORG": "acme", "INFLUX_BUCKET": "fleetpulse",
    })
    job = JobConfig(lake=str(tmp_path / "lake"), out=str(tmp_path / "out"),
                    accounts=load_accounts(accounts), model=load_health_model(None), influx=influx)
    run_backfill(job, [])
    signals = outputs.read_signals(tmp_path / "out")
    expected = {(s.customer_id, day_start_s(s.day)): s.health for s in signals}
    assert len({s.customer_id for s in signals}) == SIM.customers

    match = '{__name__="fp_customer_daily_health"}'
    wait_until(lambda: len(vm_series(victoria_metrics.port, match)) >= len(expected),
               timeout_s=20, what="health samples in VictoriaMetrics")
    assert vm_series(victoria_metrics.port, match) == pytest.approx(expected)
    band_rank = vm_series(victoria_metrics.port, '{__name__="fp_customer_daily_band_rank"}')
    ranks = {"green": 0, "yellow": 1, "red": 2}
    assert band_rank == {(s.customer_id, day_start_s(s.day)): ranks[s.band] for s in signals}

    # Gateway status: the drops every gateway reported, one point per gateway and minute.
    drops = vm_series(victoria_metrics.port, '{__name__="fp_gateway_status_dropped_records"}', key="gateway_id")
    minute_s = RECEIVED_MS // 60_000 * 60
    assert drops == {(g.gateway_id, minute_s): 2 for g in SIM.build_fleet().gateways}


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_missing_lake_stops_with_one_line(tmp_path, capsys):
    accounts = tmp_path / "accounts.csv"
    code = cli.main(["backfill", "--lake", str(tmp_path / "nope"), "--accounts", str(accounts),
                     "--out", str(tmp_path / "out")])
    assert code == 2
    line = one_error_line(capsys)
    assert "--lake" in line and "fix:" in line


def test_bad_accounts_and_bad_influx_env_name_the_key(tmp_path, capsys, monkeypatch):
    accounts = land_fleet(tmp_path)
    text = accounts.read_text().replace(",smb,", ",small,", 1)
    accounts.write_text(text)
    argv = ["backfill", "--lake", str(tmp_path / "lake"), "--accounts", str(accounts), "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    line = one_error_line(capsys)
    assert str(accounts) in line and ".segment" in line and "fix:" in line

    write_outputs(SIM.build_fleet(), tmp_path / "sim")  # a good registry again
    monkeypatch.setenv("INFLUX_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("INFLUX_API_VERSION", "7")
    assert cli.main(argv) == 2
    line = one_error_line(capsys)
    assert "environment" in line and "INFLUX_API_VERSION" in line


@pytest.mark.parametrize(
    ("flags", "key"),
    [
        (["--from", "2026-13-01"], "--from"),
        (["--to", "20260801"], "--to"),
        (["--from", "2026-08-05", "--to", "2026-08-01"], "--to"),
    ],
)
def test_bad_period_stops_with_one_line_naming_the_flag(tmp_path, capsys, flags, key):
    code = cli.main(["backfill", "--lake", str(tmp_path), "--accounts", str(tmp_path / "a.csv"),
                     "--out", str(tmp_path / "out"), *flags])
    assert code == 2
    line = one_error_line(capsys)
    assert key in line and "fix:" in line
    assert "YYYY-MM-DD" in line or "swap the dates" in line


def test_period_days_are_inclusive_utc():
    from fleetpulse.pipeline.cli.backfill import parse_day
    from fleetpulse.pipeline.jobs.backfill import period_ms

    low, high = period_ms(parse_day("--from", "2026-08-01"), parse_day("--to", "2026-08-31"))
    assert (low, high) == (1_785_542_400_000, 1_788_220_800_000)  # 08-01T00:00Z, 09-01T00:00Z
    assert period_ms(None, None) == (None, None)
