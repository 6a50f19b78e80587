"""``backfill --from/--to`` writes the period exactly as a run over the whole lake would.

A day's signals look back (trends, baselines, coverage holds, alert onsets),
so a backfill of a period reads the history before ``--from`` for scoring
and writes only the period: its signals, alerts and device hours are the
whole-lake run's rows of those days, and only the period's raw archive
partitions are rewritten. ``--history-days`` bounds the history read and is
refused when shorter than the health model's warmup.
"""

from __future__ import annotations

import argparse
import json
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing.util import assert_that, equal_to

from fleetpulse.devices.simulator.simulation import SimulationConfig
from fleetpulse.errors import ConfigError
from fleetpulse.pipeline.cli import backfill as cli
from fleetpulse.pipeline.health.config import load_health_model
from fleetpulse.pipeline.jobs.backfill import JobConfig
from fleetpulse.pipeline.jobs.backfill import run as run_backfill
from fleetpulse.pipeline.lake.landing import LandingWriter
from fleetpulse.pipeline.sources.lake import ReadLandingTables
from fleetpulse.schemas.accounts import load_accounts

from .test_jobs import land_fleet

# Long enough that the period's first day has a week of history behind it.
SIM = SimulationConfig(seed=11, customers=3, days=12)
IN_PROCESS = ["--runner=FnApiRunner"]


def _rows(folder: Path) -> list[dict[str, Any]]:
    return [r for f in sorted(folder.glob("part-*.parquet")) for r in pq.read_table(f).to_pylist()]


def _key(row: dict[str, Any]) -> str:
    return json.dumps(row, sort_keys=True, default=str)


def _written(out: Path) -> dict[str, list[str]]:
    return {
        "signals": sorted(_key(r) for r in _rows(out / "signals")),
        "device_hourly": sorted(_key(r) for r in _rows(out / "device_hourly")),
        "alerts": sorted((out / "alerts.jsonl").read_text().splitlines()),
    }


def _in_period(written: dict[str, list[str]], first: date, last: date) -> dict[str, list[str]]:
    low = int((first - date(1970, 1, 1)).total_seconds()) * 1000
    high = int((last + timedelta(days=1) - date(1970, 1, 1)).total_seconds()) * 1000

    def day_of(line: str) -> str:
        return str(json.loads(line)["day"])

    def hour_of(line: str) -> int:
        return int(json.loads(line)["hour_ms"])

    return {
        "signals": [s for s in written["signals"] if first.isoformat() <= day_of(s) <= last.isoformat()],
        "device_hourly": [h for h in written["device_hourly"] if low <= hour_of(h) < high],
        "alerts": [a for a in written["alerts"] if first.isoformat() <= day_of(a) <= last.isoformat()],
    }


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("history")
    accounts = land_fleet(root, SIM, status=False)
    return root / "lake", accounts


def _run(lake: Path, accounts: Path, out: Path, **period: Any) -> dict[str, list[str]]:
    job = JobConfig(lake=str(lake), out=str(out), accounts=load_accounts(accounts),
                    model=load_health_model(None), **period)
    run_backfill(job, IN_PROCESS)
    return _written(out)


@pytest.mark.slow
def test_a_period_backfill_writes_the_whole_lake_runs_rows_of_its_days(
        lake: tuple[Path, Path], tmp_path: Path) -> None:
    root, accounts = lake
    first, last = SIM.start_date + timedelta(days=8), SIM.start_date + timedelta(days=9)
    whole = _run(root, accounts, tmp_path / "whole")
    archive_before = {p: p.stat().st_mtime_ns for p in (root / "records").glob("dt=*/hour=*/*.parquet")}

    period = _run(root, accounts, tmp_path / "period", from_day=first, to_day=last)

    expected = _in_period(whole, first, last)
    assert period["signals"] and period["device_hourly"]
    assert {json.loads(s)["day"] for s in period["signals"]} == {first.isoformat(), last.isoformat()}
    for name in ("signals", "device_hourly", "alerts"):
        assert period[name] == expected[name], name
    # Only the period's partitions were rewritten; the history was read, not written.
    rewritten = {p.parts[-3] for p, mtime in archive_before.items() if p.stat().st_mtime_ns != mtime}
    assert rewritten == {f"dt={first}", f"dt={last}"}

    # Without history (the old behaviour) the period's look-back signals differ: the
    # comparison above is able to fail.
    bare = _run(root, accounts, tmp_path / "bare", from_day=first, to_day=last, history_days=0)
    assert bare["device_hourly"] == expected["device_hourly"]
    assert bare["signals"] != expected["signals"]


def test_history_days_is_validated_at_start(tmp_path: Path) -> None:
    accounts = land_fleet(tmp_path, SimulationConfig(seed=1, customers=1, days=1), status=False)
    warmup = load_health_model(None).warmup_days

    def resolve(*argv: str) -> JobConfig:
        parser = argparse.ArgumentParser()
        cli.add_arguments(parser)
        return cli.resolve(parser.parse_args(["--lake", str(tmp_path / "lake"), "--accounts", str(accounts),
                                              "--out", str(tmp_path / "out"), *argv]))

    with pytest.raises(ConfigError, match=f"--history-days.*warmup_days \\({warmup}\\).*at least {warmup}"):
        resolve("--from", "2026-08-01", "--history-days", str(warmup - 1))
    with pytest.raises(ConfigError, match="--history-days.*without --from"):
        resolve("--history-days", str(warmup))
    config = resolve("--from", "2026-08-01", "--history-days", str(warmup))
    assert config.read_from_day == date(2026, 8, 1) - timedelta(days=warmup) and config.has_history
    assert resolve("--from", "2026-08-01").read_from_day is None  # the whole lake
    assert not resolve().has_history


def test_a_bounded_history_skips_landing_files_that_arrived_too_early(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    day_ms = 86_400_000
    start = int((date(2026, 3, 1) - date(1970, 1, 1)).total_seconds()) * 1000
    for n in range(6):  # one landing file per arrival day, 2026-03-01 .. 03-06
        writer = LandingWriter(lake)
        writer.add("t", json.dumps({"n": n}).encode(), start + n * day_ms + 3_600_000)
        writer.commit()

    def check(since: date | None, expected: list[int]) -> None:
        with beam.Pipeline(options=PipelineOptions(IN_PROCESS)) as p:
            tables = p | ReadLandingTables(str(lake), since=since)
            days = tables | beam.FlatMap(lambda t: [(ms - start) // day_ms for ms in t["received_ms"].to_pylist()])
            assert_that(days, equal_to(expected))

    check(None, [0, 1, 2, 3, 4, 5])
    check(date(2026, 3, 4), [3, 4, 5])
    check(date(2026, 4, 1), [])
    # --from 03-06 with 1 day of history reads records from 03-05, so files from 03-03 on.
    model = load_health_model(None)
    config = JobConfig(lake=str(lake), out="o", accounts={}, model=model,
                       from_day=date(2026, 3, 6), history_days=1)
    assert config.landing_from_day == date(2026, 3, 3)
    assert JobConfig(lake=str(lake), out="o", accounts={}, model=model,
                     from_day=date(2026, 3, 6)).landing_from_day is None
