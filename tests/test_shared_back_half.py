"""Both jobs share the back half: a gateway's "offline" status reaches live scoring as it reaches the backfill.

The same messages (a week of one customer's telemetry through one gateway,
and on the last day that gateway's status saying "offline") go once through
the streaming job (a TestStream in place of the broker; time from its
watermark) and once through the backfill over a lake holding them in the
landing and status zones. Both must mark the last day low coverage and raise
``gateway_offline`` for it, with identical signals; without the status
message neither does. Before the shared ``ScoreCustomers`` the streaming job
never read gateway status at all.
"""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream  # not collected
from apache_beam.transforms.window import TimestampedValue

from fleetpulse.pipeline.health.config import load_health_model
from fleetpulse.pipeline.jobs import backfill, ingest
from fleetpulse.pipeline.lake.landing import LandingWriter
from fleetpulse.pipeline.model import GATEWAY_OFFLINE
from fleetpulse.pipeline.outputs import tables
from fleetpulse.pipeline.sources.mqtt import MqttSourceConfig
from fleetpulse.schemas import load_contract
from fleetpulse.schemas.accounts import Account

from .test_ingest_windows import at

H = 3_600_000
DAY = 24 * H
START = 1_767_225_600_000  # 2026-01-01T00:00:00Z
DAYS = 8
IDS = {"customer_id": "c1", "site_id": "c1-s1", "gateway_id": "c1-gw1"}
ACCOUNT = Account(customer_id="c1", name="Acme", segment="smb", engagement_model="digital", arr_usd=12000,
                  contract_start=date(2025, 6, 1), renewal_date=date(2026, 12, 1), entitled_devices=2,
                  csm_owner=None, nps=None)
IN_PROCESS = ["--runner=FnApiRunner", "--direct_running_mode=in_memory"]


def _batches() -> list[tuple[dict[str, Any], int]]:
    """One batch per device-day of hourly heartbeats and usage, with the time it was received."""
    contract = load_contract()
    topic = contract.topic("gateway_batches", **IDS)
    batches = []
    for day in range(DAYS):
        for d, device in enumerate(("c1-d1", "c1-d2")):
            records = []
            for hour in range(24):
                ts = START + day * DAY + hour * H + d * 60_000
                seq = (day * 24 + hour) * 2
                records.append({"device_id": device, "ts_ms": ts, "boot": 1, "seq": seq,
                                "kind": "heartbeat", "fw": "2.4.1", "interval_s": 3600})
                records.append({"device_id": device, "ts_ms": ts + 1000, "boot": 1, "seq": seq + 1,
                                "kind": "usage", "fw": "2.4.1", "period_s": 3600,
                                "quantities": [{"name": "runtime", "value": 1800.0, "unit": "s"}]})
            received = START + (day + 1) * DAY
            envelope = {"v": 1, **IDS, "batch_seq": day * 2 + d, "sent_ms": received, "records": records}
            row = {"topic": topic, "payload": json.dumps(envelope).encode(), "received_ms": received}
            batches.append((row, min(r["ts_ms"] for r in records)))
    return batches


def _offline_status() -> dict[str, Any]:
    """The gateway's Last Will, received in the middle of the last day."""
    received = START + (DAYS - 1) * DAY + 12 * H
    payload = {"v": 1, **IDS, "at_ms": received, "state": "offline", "counters": {}}
    return {"topic": load_contract().topic("gateway_status", **IDS),
            "payload": json.dumps(payload).encode(), "received_ms": received}


def _stream(with_status: bool) -> BeamTestStream:
    stream = BeamTestStream().advance_watermark_to(at(START))
    for row, event_ms in _batches():
        stream = stream.add_elements([TimestampedValue(row, at(event_ms))])
    if with_status:
        # ReadFromMqtt stamps a message without device event time at its current watermark.
        stream = stream.add_elements([TimestampedValue(_offline_status(), at(START))])
    return stream.advance_watermark_to_infinity()


def run_streaming(root: Path, with_status: bool) -> Path:
    out = root / "stream-out"
    config = ingest.IngestConfig(
        source=MqttSourceConfig(), lake=str(root / "stream-lake"), out=str(out),
        accounts={"c1": ACCOUNT}, model=load_health_model(None), land=False,
    )
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    ingest.build_pipeline(options, config, source=_stream(with_status)).run().wait_until_finish()
    return out


def run_backfill(root: Path, with_status: bool) -> Path:
    lake, out = root / "lake", root / "batch-out"
    writer = LandingWriter(lake)
    for row, _ in _batches():
        writer.add(row["topic"], row["payload"], row["received_ms"])
    writer.commit()
    if with_status:
        status = LandingWriter(lake, zone="status")
        row = _offline_status()
        status.add(row["topic"], row["payload"], row["received_ms"])
        status.commit()
    config = backfill.JobConfig(lake=str(lake), out=str(out), accounts={"c1": ACCOUNT},
                                model=load_health_model(None))
    backfill.run(config, IN_PROCESS)
    return out


LAST_DAY = date.fromtimestamp((START + (DAYS - 1) * DAY) / 1000).isoformat()


def offline_alert_days(out: Path) -> list[str]:
    return [a.day for a in tables.read_alerts(out) if a.kind == GATEWAY_OFFLINE]


@pytest.mark.parametrize("with_status", [True, False], ids=["offline-status", "no-status"])
def test_an_offline_status_makes_the_live_day_low_coverage_as_in_the_backfill(tmp_path: Path,
                                                                               with_status: bool) -> None:
    streamed = run_streaming(tmp_path, with_status)
    batched = run_backfill(tmp_path, with_status)

    live = {s.day: s for s in tables.read_signals(streamed)}
    restated = {s.day: s for s in tables.read_signals(batched)}
    assert live.keys() == restated.keys() and LAST_DAY in live
    assert live == restated  # every day's signal, field by field
    assert live[LAST_DAY].low_coverage is with_status
    assert offline_alert_days(streamed) == offline_alert_days(batched)
    assert offline_alert_days(streamed) == ([LAST_DAY] if with_status else [])
