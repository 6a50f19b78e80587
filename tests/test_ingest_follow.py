"""``ingest --follow``: rounds on the local runner, each made exact by a restatement.

Real Mosquitto and InfluxDB 1.x. The golden fleet is published in two halves,
the second only after a round has taken the whole first half, so hours at the
cut receive records in two rounds (a bounded run alone would roll each of
them up twice, from half its records). After the follower stops, its
InfluxDB database must equal a backfill's over the whole lake, device hour by
device hour and customer day by customer day.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from fleetpulse.errors import ConfigError
from fleetpulse.pipeline.cli import ingest as ingest_cli
from fleetpulse.pipeline.health.config import load_health_model
from fleetpulse.pipeline.jobs.backfill import JobConfig
from fleetpulse.pipeline.jobs.backfill import run as run_backfill
from fleetpulse.pipeline.jobs.follow import FollowConfig, Follower, marker_path, touched_days
from fleetpulse.pipeline.jobs.ingest import IngestConfig
from fleetpulse.pipeline.lake.landing import landing_files
from fleetpulse.pipeline.outputs.influx import InfluxConfig
from fleetpulse.pipeline.sources.mqtt import MqttSourceConfig
from fleetpulse.schemas.accounts import load_accounts

from .servers import Server, wait_until
from .test_golden_stream_batch import (
    HOUR,
    assert_same_points,
    fleet_messages,
    query,
    write_accounts,
)
from .test_ingest_job import create_db
from .test_ingest_support import create_session, publish

PREFIX = "follow-ingest"
IN_PROCESS = ["--runner=FnApiRunner"]


def _halves(messages: list[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], list[tuple[str, bytes]]]:
    """Each gateway's first half of batches, then each gateway's second half."""
    by_topic: dict[str, list[tuple[str, bytes]]] = {}
    for message in messages:
        by_topic.setdefault(message[0], []).append(message)
    first = [m for batch in by_topic.values() for m in batch[: len(batch) // 2]]
    second = [m for batch in by_topic.values() for m in batch[len(batch) // 2:]]
    return first, second


def _hours(messages: list[tuple[str, bytes]]) -> set[tuple[str, int]]:
    return {(r["device_id"], r["ts_ms"] - r["ts_ms"] % HOUR)
            for _, payload in messages for r in json.loads(payload)["records"]}


def _landed(lake: Path) -> int:
    return sum(pq.read_metadata(f).num_rows for f in landing_files(lake))


def _influx(port: int, db: str) -> InfluxConfig:
    config = InfluxConfig.from_env({"INFLUX_URL": f"http://127.0.0.1:{port}", "INFLUX_DB": db})
    assert config is not None
    return config


def test_touched_days_are_the_event_days_of_new_panes(tmp_path: Path) -> None:
    old = tmp_path / "records/dt=2026-01-01/hour=03/part-s-a.parquet"
    new = [tmp_path / "records/dt=2026-01-03/hour=00/part-s-b.parquet",
           tmp_path / "records/dt=2026-01-02/hour=23/part-s-c.parquet",
           tmp_path / "records/dt=2026-01-02/hour=22/part-s-d.parquet"]
    assert touched_days({old}, {old, *new}) == [date(2026, 1, 2), date(2026, 1, 3)]
    assert touched_days({old}, {old}) == []


@pytest.mark.integration
def test_following_in_rounds_gives_the_whole_lake_numbers(
        mosquitto: Server, influxdb_v1: Server, tmp_path: Path) -> None:
    lake, accounts = tmp_path / "lake", tmp_path / "accounts.csv"
    write_accounts(accounts)
    for db in ("follow", "batch"):
        create_db(influxdb_v1.port, db)
    source = MqttSourceConfig(port=mosquitto.port, client_id_prefix=PREFIX,
                              stop_file=str(tmp_path / "stop"))
    create_session(mosquitto.port, source)
    messages = fleet_messages()
    first, second = _halves(messages)
    assert _hours(first) & _hours(second), "no hour is cut by the halves: the test would prove nothing"
    publish(mosquitto.port, first)

    ingest = IngestConfig(source=source, lake=str(lake), out=str(tmp_path / "out"),
                          influx=_influx(influxdb_v1.port, "follow"), accounts=load_accounts(accounts),
                          model=load_health_model(None))
    stop = threading.Event()
    rounds: list[list[date]] = []
    state = {"second_published_after": 0}

    def on_round(n: int, days: list[date]) -> None:
        rounds.append(days)
        if not state["second_published_after"] and _landed(lake) == len(first):
            publish(mosquitto.port, second, client_id="test-publisher-2")
            state["second_published_after"] = n

    follower = Follower(ingest, FollowConfig(round_s=3.0), ingest_args=[], backfill_args=IN_PROCESS,
                        stop=stop, on_round=on_round)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            follower.run()
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
            stop.set()

    thread = threading.Thread(target=run, name="follower")
    thread.start()
    try:
        def caught_up() -> bool:
            after = state["second_published_after"]
            return bool(errors) or (bool(after) and _landed(lake) == len(messages)
                                    and any(rounds[after:]) and not marker_path(str(lake), PREFIX).exists())
        wait_until(caught_up, 240, "the follower took both halves and restated them")
    finally:
        stop.set()
        Path(source.stop_file or "").touch()
        thread.join(timeout=240)
    assert not errors, errors
    assert not thread.is_alive()
    assert follower.restatements >= 2

    run_backfill(JobConfig(lake=str(lake), out=str(tmp_path / "batch"), accounts=load_accounts(accounts),
                      model=load_health_model(None), influx=_influx(influxdb_v1.port, "batch")), IN_PROCESS)
    assert_same_points(influxdb_v1.port, "follow", "batch")
    # The restatements superseded the rounds' archive panes.
    assert not list((lake / "records").glob("dt=*/hour=*/part-s-*.parquet"))


def test_an_unfinished_restatement_runs_first_when_following_starts_again(tmp_path: Path) -> None:
    lake, accounts = tmp_path / "lake", tmp_path / "accounts.csv"
    write_accounts(accounts)
    source = MqttSourceConfig(port=1, client_id_prefix=PREFIX, stop_file=str(tmp_path / "stop"))
    ingest = IngestConfig(source=source, lake=str(lake), out=str(tmp_path / "out"),
                          accounts=load_accounts(accounts), model=load_health_model(None))
    marker = marker_path(str(lake), PREFIX)
    marker.parent.mkdir(parents=True)
    marker.write_text(json.dumps({"from": "2026-01-02", "to": "2026-01-04"}))
    stop = threading.Event()
    restated: list[tuple[date | None, date | None, int | None]] = []

    def restatement(job: JobConfig, args: list[str]) -> None:
        restated.append((job.from_day, job.to_day, job.history_days))
        stop.set()  # no round after it

    follower = Follower(ingest, FollowConfig(round_s=1.0, history_days=80), ingest_args=[], backfill_args=[],
                        stop=stop, run_round=lambda config, args: None, run_restatement=restatement)
    assert follower.run() == 0
    assert restated == [(date(2026, 1, 2), date(2026, 1, 4), 80)]
    assert not marker.exists()


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    ingest_cli.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize(("extra", "key"), [
    ([], "--follow.*needs --accounts"),
    (["--accounts", "A", "--no-land"], "--follow.*--no-land"),
    (["--accounts", "A", "--idle-stop-ms", "500"], "--idle-stop-ms.*runs until stopped"),
    (["--accounts", "A", "--max-messages", "5"], "--max-messages.*runs until stopped"),
    (["--accounts", "A", "--round-s", "0"], "--round-s.*not positive"),
    (["--accounts", "A", "--", "--runner=DataflowRunner"], "--follow.*local runners"),
])
def test_follow_configuration_is_refused_at_start(extra: list[str], key: str, tmp_path: Path) -> None:
    argv = ["--lake", str(tmp_path / "lake"), "--out", str(tmp_path / "out"), "--follow",
            *[str(tmp_path / "accounts.csv") if a == "A" else a for a in extra]]
    write_accounts(tmp_path / "accounts.csv")
    with pytest.raises(ConfigError, match=key):
        ingest_cli.resolve(_parse(*argv))


@pytest.mark.integration
def test_the_command_follows_until_sigterm_then_restates_and_exits_cleanly(
        mosquitto: Server, influxdb_v1: Server, tmp_path: Path) -> None:
    lake, accounts = tmp_path / "lake", tmp_path / "accounts.csv"
    write_accounts(accounts)
    create_db(influxdb_v1.port, "cli")
    create_session(mosquitto.port, MqttSourceConfig(port=mosquitto.port, client_id_prefix=PREFIX))
    publish(mosquitto.port, fleet_messages(days=2))
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFLUX_")}
    env.update(INFLUX_URL=f"http://127.0.0.1:{influxdb_v1.port}", INFLUX_DB="cli")
    log = open(tmp_path / "follow.log", "wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetpulse", "ingest", "--broker", f"127.0.0.1:{mosquitto.port}",
         "--client-id-prefix", PREFIX, "--lake", str(lake), "--out", str(tmp_path / "out"),
         "--accounts", str(accounts), "--follow", "--round-s", "2"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        signals = tmp_path / "out" / "restated" / "signals"
        wait_until(lambda: proc.poll() is not None or any(signals.glob("part-*.parquet")), 240,
                   "a restatement wrote customer signals")
        assert proc.poll() is None, (tmp_path / "follow.log").read_text()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=240) == 0, (tmp_path / "follow.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert query(influxdb_v1.port, "cli", "fp_customer_daily")
    assert not marker_path(str(lake), PREFIX).exists()
    assert "stopped after" in (tmp_path / "follow.log").read_text()


def test_only_the_first_round_replays_what_a_killed_run_left(tmp_path: Path) -> None:
    accounts = tmp_path / "accounts.csv"
    write_accounts(accounts)
    source = MqttSourceConfig(port=1, client_id_prefix=PREFIX, stop_file=str(tmp_path / "stop"))
    ingest = IngestConfig(source=source, lake=str(tmp_path / "lake"), out=str(tmp_path / "out"),
                          accounts=load_accounts(accounts), model=load_health_model(None),
                          replay=("landing/dt=2026-01-01/part-1.parquet",))
    stop = threading.Event()
    rounds: list[IngestConfig] = []

    def round_(config: IngestConfig, args: list[str]) -> None:
        rounds.append(config)
        if len(rounds) == 3:
            stop.set()

    follower = Follower(ingest, FollowConfig(round_s=60.0), ingest_args=[], backfill_args=[], stop=stop,
                        run_round=round_, run_restatement=lambda job, args: None)
    assert follower.run() == 3
    assert [r.replay for r in rounds] == [ingest.replay, (), ()]
    # Rounds only roll up hours: customers are scored by the restatements.
    assert all(r.accounts is None and r.model is None for r in rounds)
