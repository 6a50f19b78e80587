"""Hourly device rollups in Beam: the batch window mode against event-time windows.

Both run ``DeviceHourlyRollups`` on the same lake rows on the in-process
FnApiRunner and must give identical DeviceHours. ``event_time`` mode puts
rows in fixed event-time windows (what streaming needs) and sends the batch
through Beam's general trigger machinery; ``batch`` mode keeps the global
window and carries the hour in the key, which lets the runner use its fast
batch grouping. The backfill job uses ``batch``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.options.pipeline_options import PipelineOptions

from fleetpulse.devices.simulator.generate import TelemetryGenerator
from fleetpulse.devices.simulator.simulation import SimulationConfig
from fleetpulse.pipeline.lake.schema import lake_schema
from fleetpulse.pipeline.transforms import DeviceHourlyRollups, lake_columns

from .harness import Comparison, compare


def lake_rows(days: int) -> list[dict[str, Any]]:
    fleet = SimulationConfig(seed=5, customers=8, days=days).build_fleet()
    gateways = {g.gateway_id: g for g in fleet.gateways}
    columns = lake_columns()
    rows = []
    for message in TelemetryGenerator(fleet):
        if message.withheld or message.malformed is not None:
            continue
        gw = gateways[message.gateway_id]
        for record in json.loads(message.payload):
            row = dict.fromkeys(columns)
            row.update(record)
            row.update(customer_id=gw.customer_id, site_id=gw.site_id, gateway_id=gw.gateway_id, received_ms=0)
            rows.append(row)
    return rows


def rollup(lake_file: str, mode: str) -> list[str]:
    """Run the rollups over the rows of a Parquet file, as the backfill job reads the lake.

    Returns the DeviceHours as sorted ``repr`` lines, read back from files the
    pipeline wrote (a list captured in a ``Map`` would be the pickled copy's).
    """
    options = PipelineOptions(["--runner=FnApiRunner"])
    with tempfile.TemporaryDirectory() as out_dir:
        with beam.Pipeline(options=options) as p:
            _ = (
                p
                | beam.io.ReadFromParquet(lake_file)
                | DeviceHourlyRollups(window_mode=mode)
                | beam.Map(repr)
                | beam.io.WriteToText(f"{out_dir}/hours", shard_name_template="-SS-of-NN")
            )
        lines: list[str] = []
        for shard in sorted(Path(out_dir).glob("hours-*")):
            lines.extend(shard.read_text(encoding="utf-8").splitlines())
    return sorted(lines)


def run(quick: bool = False) -> list[Comparison]:
    rows = lake_rows(3 if quick else 10)
    with tempfile.TemporaryDirectory() as tmp:
        lake_file = f"{tmp}/rows.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=lake_schema()), lake_file)
        batch, windowed = rollup(lake_file, "batch"), rollup(lake_file, "event_time")
        assert batch, "no device hours came out"
        assert batch == windowed, "modes disagree"
        return [
            compare(
                "device hourly rollups (Beam, FnApiRunner)",
                items=len(rows),
                baseline=("event_time windows", lambda: rollup(lake_file, "event_time")),
                candidate=("batch window mode", lambda: rollup(lake_file, "batch")),
                repeats=2 if quick else 3,
            )
        ]
