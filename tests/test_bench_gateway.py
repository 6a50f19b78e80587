"""Smoke tests for bench/bench_gateway.py: each measurement runs at a tiny size and gives sane figures.

They check that the benchmark works (records arrive, the spool is drained,
the figures are consistent), not the issue's targets: those are ratios on
full-size data, recorded in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.bench_gateway import (
    RECORDS_PER_MESSAGE,
    DrainResult,
    device_messages,
    drain,
    fill_spool,
    forward_rate,
    spool_commit,
)
from fleetpulse.devices.collector.spool import Spool
from fleetpulse.schemas import Validator

NOW_MS = 1_785_600_000_000


def test_device_messages_are_valid_and_hold_exactly_the_records_asked_for() -> None:
    messages = device_messages(25, devices=2, now_ms=NOW_MS)
    assert [len(json.loads(body)) for _, body in messages] == [RECORDS_PER_MESSAGE, RECORDS_PER_MESSAGE, 5]
    validator = Validator()
    seqs = []
    for device, body in messages:
        valid, rejected = validator.device_payload(body, now_ms=NOW_MS)
        assert rejected == []
        assert {r["device_id"] for r in valid} == {device}
        seqs += [r["seq"] for r in valid]
    assert sorted(seqs) == list(range(25))


def test_drain_result_passes_only_under_the_rss_target() -> None:
    result = DrainResult(backlog_bytes=5 << 20, records=1000, fill_s=0.1, idle_peak_rss_kb=20_000,
                         peak_rss_kb=63 * 1024, first_batch_s=0.5, drain_s=2.0)
    assert result.ok and result.rate == 500
    assert "PASS" in result.line() and "500 records/s" in result.line()
    over = DrainResult(backlog_bytes=5 << 20, records=1000, fill_s=0.1, idle_peak_rss_kb=20_000,
                       peak_rss_kb=64 * 1024, first_batch_s=0.5, drain_s=2.0)
    assert not over.ok and "FAIL" in over.line()


def test_fill_spool_reaches_the_size_and_every_record_reads_back(tmp_path: Path) -> None:
    records = fill_spool(tmp_path / "spool", 1 << 20, 8 << 20)
    spool = Spool(tmp_path / "spool", quota_bytes=8 << 20, fsync=False)
    report = spool.open()
    try:
        assert report.backlog_records == records
        assert report.backlog_bytes >= 1 << 20
        got, _ = spool.read(records + 1)
        assert len(got) == records
        assert [json.loads(r.data)["seq"] for r in got[:3]] == [0, 1, 2]
    finally:
        spool.close()


def test_spool_group_commit_beats_a_commit_per_record(tmp_path: Path) -> None:
    result = spool_commit(tmp_path, records=300, repeats=1, group=64)
    assert result.baseline.items == result.candidate.items == 300
    # 300 fsyncs against 5: the ordering holds even on a noisy machine.
    assert result.ratio > 1


@pytest.mark.integration
def test_forward_rate_runs_both_forwarders_end_to_end(tmp_path: Path) -> None:
    result = forward_rate(tmp_path, records=300, repeats=1)  # raises unless all 300 arrive, each way
    assert result.baseline.items == result.candidate.items == 300
    for measurement in (result.baseline, result.candidate):
        assert 0 < measurement.seconds < 30
    assert result.line().startswith("gateway forward rate")


@pytest.mark.integration
def test_drain_measures_a_collector_that_empties_a_backlog(tmp_path: Path) -> None:
    result = drain(tmp_path, backlog_mb=5)  # raises unless every record arrives and the spool is empty
    assert result.backlog_bytes >= 5 << 20
    assert result.records > 20_000
    assert 0 < result.first_batch_s < 30 and result.drain_s > 0
    # A Python process with paho: more than a few MB, far less than the backlog.
    assert 5 * 1024 < result.idle_peak_rss_kb <= result.peak_rss_kb + 1024
    assert result.peak_rss_kb < 200 * 1024
