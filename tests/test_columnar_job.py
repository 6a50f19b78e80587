"""The backfill job on its columnar engine writes what its per-element engine writes.

One small lake — gateway batches over several landing files, some delivered
twice into later files, a few broken messages, gateway status — run through
``build_pipeline`` with ``engine="columnar"`` (the default) and
``engine="per_element"`` (the streaming job's transforms), for a ``--from`` /
``--to`` period. Signals, device hours, alerts, dead letters, the raw archive
and the counters must be the same.
"""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from fleetpulse.devices.simulator.generate import TelemetryGenerator
from fleetpulse.devices.simulator.registry import write_outputs
from fleetpulse.devices.simulator.simulation import SimulationConfig
from fleetpulse.pipeline.health.config import load_health_model
from fleetpulse.pipeline.jobs.backfill import JobConfig
from fleetpulse.pipeline.jobs.backfill import run as run_backfill
from fleetpulse.pipeline.jobs.metrics import counters
from fleetpulse.pipeline.lake.landing import LandingWriter
from fleetpulse.schemas import load_contract
from fleetpulse.schemas.accounts import load_accounts

SIM = SimulationConfig(seed=4, customers=3, days=4)
RECEIVED_MS = 1_795_000_000_000
IN_PROCESS = ["--runner=FnApiRunner"]


def land(root: Path) -> Path:
    fleet = SIM.build_fleet()
    paths = write_outputs(fleet, root / "sim")
    gateways = {g.gateway_id: g for g in fleet.gateways}
    contract = load_contract()
    rng = random.Random(4)
    writer = LandingWriter(root / "lake", max_rows=40)
    resend: list[tuple[str, bytes, int]] = []
    for seq, message in enumerate(TelemetryGenerator(fleet)):
        if message.withheld or message.malformed is not None:
            continue
        gw = gateways[message.gateway_id]
        ids = {"customer_id": gw.customer_id, "site_id": gw.site_id, "gateway_id": gw.gateway_id}
        envelope = {"v": 1, **ids, "batch_seq": seq, "sent_ms": RECEIVED_MS, "records": json.loads(message.payload)}
        landed = (contract.topic("gateway_batches", **ids), json.dumps(envelope).encode(), RECEIVED_MS + seq)
        if writer.add(*landed):
            writer.commit()
        if rng.random() < 0.1:  # the gateway never saw the ack: the batch lands again later
            resend.append((landed[0], landed[1], landed[2] + 90_000))
    for landed in resend:
        writer.add(*landed)
    some = contract.topic("gateway_batches", customer_id="nobody", site_id="s", gateway_id="g")
    for payload in (b"{cut sho", b'{"v": 1, "records": []}', json.dumps({"v": 3}).encode()):
        writer.add(some, payload, RECEIVED_MS)
    writer.commit()
    status = LandingWriter(root / "lake", zone="status")
    for gw in fleet.gateways:
        ids = {"customer_id": gw.customer_id, "site_id": gw.site_id, "gateway_id": gw.gateway_id}
        body = {"v": 1, **ids, "at_ms": RECEIVED_MS, "state": "online", "counters": {"sent_records": 9}}
        status.add(contract.topic("gateway_status", **ids), json.dumps(body).encode(), RECEIVED_MS)
    status.commit()
    return paths.accounts


def outputs(out: Path, lake: Path) -> dict[str, Any]:
    def rows(folder: Path) -> list[str]:
        return sorted(json.dumps(r, sort_keys=True) for f in folder.glob("part-*.parquet")
                      for r in pq.read_table(f).to_pylist())

    return {
        "signals": rows(out / "signals"),
        "device_hourly": rows(out / "device_hourly"),
        "alerts": sorted((out / "alerts.jsonl").read_text().splitlines()),
        "dead_letters": sorted((out / "dead_letters.jsonl").read_text().splitlines()),
        "archive": {
            str(f.relative_to(lake)): pq.read_table(f)
            for f in sorted((lake / "records").glob("dt=*/hour=*/part-*.parquet"))
        },
    }


@pytest.mark.slow
def test_columnar_engine_writes_what_the_per_element_engine_writes(tmp_path: Path) -> None:
    accounts = land(tmp_path)
    start = SIM.start_date
    period = {"from_day": start + timedelta(days=1), "to_day": start + timedelta(days=2)}
    results = {}
    for engine in ("per_element", "columnar"):
        out = tmp_path / engine
        job = JobConfig(lake=str(tmp_path / "lake"), out=str(out), accounts=load_accounts(accounts),
                        model=load_health_model(None), engine=engine, **period)
        totals = counters(run_backfill(job, IN_PROCESS))
        results[engine] = (
            {k: v for k, v in totals.items() if k.startswith(("fleetpulse.pipeline.decode", "fleetpulse.pipeline.dedupe", "lake."))},
            outputs(out, tmp_path / "lake"),
        )
        for f in (tmp_path / "lake" / "records").glob("dt=*/hour=*/*"):
            f.unlink()  # the next engine writes its own archive
    (count_a, out_a), (count_b, out_b) = results["per_element"], results["columnar"]
    assert count_b == count_a
    assert count_a["fleetpulse.pipeline.dedupe.duplicates"] > 0
    assert count_a["fleetpulse.pipeline.decode.dropped"] == 3
    for name in ("signals", "device_hourly", "alerts", "dead_letters"):
        assert out_b[name] == out_a[name], name
    assert out_b["archive"].keys() == out_a["archive"].keys()
    assert {k.split("/")[1] for k in out_a["archive"]} == {f"dt={d}" for d in period.values()}
    for key, archived in out_a["archive"].items():
        assert out_b["archive"][key].equals(archived, check_metadata=True), key
    assert len(out_a["signals"]) == SIM.customers * 2


def test_unknown_engine_is_refused() -> None:
    with pytest.raises(ValueError, match="engine 'vectorised'"):
        JobConfig(lake="l", out="o", accounts={}, model=load_health_model(None), engine="vectorised")
