"""Backfill rollups, columnar against per-element, and against a bare pyarrow group-by.

The data: the simulator's fleet (seeded) as a lake landing zone, the way the
lander writes it — gateway batch envelopes of up to 500 records, 200 messages
per landing file — with 3% of the batches delivered a second time into a
later file (gateway redelivery), so dedupe has copies across files to remove.
``records`` counts every record in the landing zone, copies included.

Three ways to the same device-hour rollups:

(a) **per-element Beam**: ``ReadLanding → DecodeBatches → DedupeRecords →
    DeviceHourlyRollups(window_mode="batch")`` (the backfill job before the
    columnar path; the streaming job's transforms);
(b) **columnar Beam**: ``ReadLandingTables → DecodeBatchTables →
    DedupeRecordTables → DeviceHourTables`` (the backfill job now);
(c) **bare pyarrow, same rollups**: ``Table.group_by`` calls computing every
    number of the device-hour rollups (counts, latest firmware and event time,
    the latest heartbeat's interval, usage / feature / error-firmware entries
    and sequence spans as long tables, no maps assembled) over the records
    already decoded *and deduplicated* in one in-memory Arrow table (no JSON,
    no validation, no dedupe, no Beam); checked against (b)'s device hours;
(c0) **bare pyarrow, partial**: one ``Table.group_by`` over the decoded
    records with copies (no dedupe, no maps): count, heartbeats, usage
    records, feature uses, errors, latest event time, lowest and highest seq
    per device-hour (the baseline of the first measurements);
(c') **bare pyarrow from the landing JSON**: the same group-by after
    ``pyarrow.json`` parsed the landing payloads (in memory) — no validation,
    no dedupe, no Beam.

First (a) and (b) run once each on the backfill job's runner options
(:func:`~fleetpulse.pipeline.jobs.backfill.local_beam_args`) and write their
device hours as Parquet; the rows must be identical or the run fails. The
timed runs compute the same and only count the result in a Beam counter (no
sink, no stage of its own, in either).
Ratios, in one run: b/a on the job's runner (target ≥ 10), b/c and b/c0 on
the job's runner and on the in-process FnApiRunner, and b/c' in-process
(target ≥ 0.10). Every rate counts the landing zone's records, copies
included (c runs over the ~3% fewer deduplicated ones).

    python -m bench backfill_columnar [--records N] [--quick]
"""

from __future__ import annotations

import io
import json
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from fleetpulse.devices.simulator.generate import TelemetryGenerator
from fleetpulse.devices.simulator.simulation import SimulationConfig
from fleetpulse.pipeline.jobs.backfill import local_beam_args
from fleetpulse.pipeline.lake.landing import LandingWriter, landing_files
from fleetpulse.pipeline.model import DEVICE_HOUR_SCHEMA
from fleetpulse.pipeline.outputs.tables import device_hour_row
from fleetpulse.pipeline.sources.lake import ReadLanding, ReadLandingTables
from fleetpulse.pipeline.transforms import DecodeBatches, DedupeRecords, DeviceHourlyRollups
from fleetpulse.pipeline.transforms.arrow_decode import ArrowDecoder, _json_schema
from fleetpulse.pipeline.transforms.columnar import (
    DecodeBatchTables,
    DedupeRecordTables,
    DeviceHourTables,
    dedupe_table,
    device_hours_from_table,
)
from fleetpulse.schemas import load_contract

from .harness import Comparison, compare

RECORDS = 1_000_000
QUICK_RECORDS = 20_000
SEED = 5
BATCH_RECORDS = 500
MESSAGES_PER_FILE = 200
REDELIVERED_SHARE = 0.03
HOUR_MS = 3_600_000


def _batches(records: int) -> Iterator[tuple[str, bytes, int, int]]:
    """(topic, payload, received_ms, records) of gateway batches until ``records`` are sent."""
    fleet = SimulationConfig(seed=SEED, customers=48, days=3650).build_fleet()
    gateways = {g.gateway_id: g for g in fleet.gateways}
    contract = load_contract()
    generator = TelemetryGenerator(fleet)
    left, batch_seq = records, 0
    for day in range(fleet.days):
        pending: dict[str, list[dict[str, Any]]] = {}
        for message in generator.day(day):
            if message.withheld or message.malformed is not None:
                continue
            pending.setdefault(message.gateway_id, []).extend(json.loads(message.payload))
        for gateway_id, day_records in pending.items():
            gw = gateways[gateway_id]
            ids = {"customer_id": gw.customer_id, "site_id": gw.site_id, "gateway_id": gw.gateway_id}
            for start in range(0, len(day_records), BATCH_RECORDS):
                chunk = day_records[start : start + BATCH_RECORDS][:left]
                received_ms = max(r["ts_ms"] for r in chunk) + 60_000
                batch_seq += 1
                envelope = {"v": 1, **ids, "batch_seq": batch_seq, "sent_ms": received_ms, "records": chunk}
                yield contract.topic("gateway_batches", **ids), json.dumps(envelope).encode(), received_ms, len(chunk)
                left -= len(chunk)
                if left <= 0:
                    return


def write_landing(lake: Path, records: int) -> int:
    """A landing zone of ``records`` records (copies included); returns the number written."""
    rng = random.Random(SEED)
    writer = LandingWriter(lake, max_rows=MESSAGES_PER_FILE)
    redeliver: list[tuple[str, bytes, int, int]] = []
    written = 0
    for topic, payload, received_ms, count in _batches(records):
        if written + count > records:
            break
        if writer.add(topic, payload, received_ms):
            writer.commit()
        written += count
        if rng.random() < REDELIVERED_SHARE:
            redeliver.append((topic, payload, received_ms + 60_000, count))
        # A resent batch lands a few files later, with its own received_ms.
        while redeliver and (len(redeliver) > 20 or rng.random() < 0.05):
            again = redeliver.pop(0)
            if written + again[3] > records:
                redeliver.clear()
                break
            if writer.add(*again[:3]):
                writer.commit()
            written += again[3]
    writer.commit()
    return written


#: the in-process FnApiRunner (one process; no shipping of tables between workers)
IN_PROCESS = ["--runner=FnApiRunner"]


class _CountRows(beam.DoFn):
    """The timed runs' sink, the same for both paths: rows counted in a Beam counter.

    It fuses into the last stage of the rollups; a ``Count.Globally`` would add
    a stage of its own (~0.45 s on the job's runner) that is no part of the rollups.
    """

    def __init__(self, rows_of: Any) -> None:
        self.rows_of = rows_of
        self.rows = Metrics.counter("bench", "rows")

    def process(self, element: Any) -> None:
        self.rows.inc(self.rows_of(element))


def _run(p: beam.Pipeline) -> int:
    """Run ``p`` to its end; the rows :class:`_CountRows` counted (0 when it wrote files instead)."""
    result = p.run()
    result.wait_until_finish()
    counters = result.metrics().query(MetricsFilter().with_namespace("bench").with_name("rows"))["counters"]
    return sum(int(c.committed or c.attempted or 0) for c in counters)


def per_element(lake: str, out: str | None, runner: list[str]) -> int:
    """The per-element rollups; their rows are written to ``out``, or only counted (timed runs)."""
    p = beam.Pipeline(options=PipelineOptions(runner))
    decoded = p | ReadLanding(lake) | DecodeBatches()
    hours = decoded.main | DedupeRecords() | DeviceHourlyRollups(window_mode="batch")
    if out is None:
        _ = hours | beam.ParDo(_CountRows(lambda _: 1))
    else:
        _ = (
            hours
            | beam.Map(device_hour_row)
            | beam.io.WriteToParquet(f"{out}/part", DEVICE_HOUR_SCHEMA, file_name_suffix=".parquet")
        )
    return _run(p)


def columnar(lake: str, out: str | None, runner: list[str]) -> int:
    """The columnar rollups; their tables are written to ``out``, or only counted (timed runs)."""
    p = beam.Pipeline(options=PipelineOptions(runner))
    tables = (
        (p | ReadLandingTables(lake) | DecodeBatchTables()).main
        | DedupeRecordTables()
        | DeviceHourTables()
    )
    if out is None:
        _ = tables | beam.ParDo(_CountRows(lambda t: t.num_rows))
    else:
        _ = tables | beam.io.WriteToParquetBatched(
            f"{out}/part", DEVICE_HOUR_SCHEMA, file_name_suffix=".parquet"
        )
    return _run(p)


def bare_group_by(records: pa.Table) -> pa.Table:
    ts = records["ts_ms"]
    kind = records["kind"]
    table = pa.table(
        {
            "customer_id": records["customer_id"],
            "site_id": records["site_id"],
            "gateway_id": records["gateway_id"],
            "device_id": records["device_id"],
            "hour_ms": pc.multiply(pc.divide(ts, HOUR_MS), HOUR_MS),
            "ts_ms": ts,
            "seq": records["seq"],
            "heartbeat": pc.cast(pc.equal(kind, "heartbeat"), pa.int64()),
            "usage": pc.cast(pc.equal(kind, "usage"), pa.int64()),
            "count": records["count"],
            "error": pc.cast(pc.is_in(records["severity"], pa.array(["error", "critical"])), pa.int64()),
        }
    )
    return table.group_by(["customer_id", "site_id", "gateway_id", "device_id", "hour_ms"]).aggregate(
        [
            ("ts_ms", "count"),
            ("heartbeat", "sum"),
            ("usage", "sum"),
            ("count", "sum"),
            ("error", "sum"),
            ("ts_ms", "max"),
            ("seq", "min"),
            ("seq", "max"),
        ]
    )


def bare_rollups(records: pa.Table) -> dict[str, pa.Table]:
    """Every number of the device-hour rollups with bare ``Table.group_by`` (no maps built).

    The same rollups as (b) over the same records, already decoded and
    deduplicated: the counts, the latest record's firmware and event time, the
    latest heartbeat's interval, and the usage / feature / error-firmware maps
    and sequence spans as long tables (one row per device-hour and key) —
    the numbers of a DeviceHour without assembling them into one row.
    """
    keys = ["customer_id", "site_id", "gateway_id", "device_id", "hour_ms"]
    ts, kind, severity = records["ts_ms"], records["kind"], records["severity"]
    is_error = pc.fill_null(pc.and_(pc.equal(kind, "error"), pc.is_in(severity, pa.array(["error", "critical"]))), False)
    is_feature = pc.equal(kind, "feature")
    table = pa.table(
        {
            **{k: records[k] for k in keys[:4]},
            "hour_ms": pc.multiply(pc.divide(ts, HOUR_MS), HOUR_MS),
            "ts_ms": ts, "boot": records["boot"], "seq": records["seq"], "fw": records["fw"],
            "heartbeat": pc.cast(pc.equal(kind, "heartbeat"), pa.int64()),
            "usage": pc.cast(pc.equal(kind, "usage"), pa.int64()),
            "feature_uses": pc.if_else(is_feature, pc.fill_null(records["count"], 0), 0),
            "error": pc.cast(is_error, pa.int64()),
            "critical": pc.cast(pc.and_(is_error, pc.fill_null(pc.equal(severity, "critical"), False)), pa.int64()),
        }
    )
    counts = table.group_by(keys).aggregate(
        [("ts_ms", "count"), ("heartbeat", "sum"), ("usage", "sum"), ("feature_uses", "sum"),
         ("error", "sum"), ("critical", "sum")]
    )
    # Latest record per device-hour: (ts_ms, boot, seq) order, then an ordered "last".
    latest = (
        table.select([*keys, "ts_ms", "boot", "seq", "fw"])
        .sort_by([(k, "ascending") for k in [*keys, "ts_ms", "boot", "seq"]])
        .group_by(keys, use_threads=False).aggregate([("fw", "last"), ("ts_ms", "last")])
    )
    heartbeats = pa.table({**{k: table[k] for k in keys}, "ts_ms": ts, "boot": records["boot"],
                           "seq": records["seq"], "interval_s": records["interval_s"]}).filter(pc.equal(kind, "heartbeat"))
    interval = (
        heartbeats.sort_by([(k, "ascending") for k in [*keys, "ts_ms", "boot", "seq"]])
        .group_by(keys, use_threads=False).aggregate([("interval_s", "last")])
    )
    spans = table.group_by([*keys, "boot"]).aggregate([("seq", "min"), ("seq", "max"), ("seq", "count")])
    features = (
        pa.table({**{k: table[k] for k in keys}, "feature": records["feature"], "count": table["feature_uses"]})
        .filter(is_feature).group_by([*keys, "feature"]).aggregate([("count", "sum")])
    )
    error_fw = table.filter(is_error).group_by([*keys, "fw"]).aggregate([("fw", "count")])
    usage_rows = table.filter(pc.equal(kind, "usage"))
    quantities = records["quantities"].filter(pc.equal(kind, "usage"))
    parent = pc.list_parent_indices(quantities)
    flat = pc.list_flatten(quantities)
    usage = pa.table(
        {**{k: usage_rows[k].take(parent) for k in keys},
         "quantity": pc.binary_join_element_wise(pc.struct_field(flat, "name"), pc.struct_field(flat, "unit"), "_"),
         "value": pc.struct_field(flat, "value")}
    ).group_by([*keys, "quantity"]).aggregate([("value", "sum")])
    return {"counts": counts, "latest": latest, "interval": interval, "spans": spans,
            "features": features, "error_fw": error_fw, "usage": usage}


def check_bare_rollups(bare: dict[str, pa.Table], hours: pa.Table) -> None:
    """The bare rollups hold the same numbers as the pipeline's device hours (floats aside)."""
    def total(column: str) -> int:
        return int(pc.sum(hours[column]).as_py())

    def entries(column: str) -> int:
        return sum(len(chunk.flatten() if pa.types.is_list(chunk.type) else chunk.keys)
                   for chunk in hours[column].chunks)

    counts = bare["counts"]
    want = {
        "device-hours": (counts.num_rows, hours.num_rows),
        "records": (int(pc.sum(counts["ts_ms_count"]).as_py()), total("records")),
        "heartbeats": (int(pc.sum(counts["heartbeat_sum"]).as_py()), total("heartbeats")),
        "usage records": (int(pc.sum(counts["usage_sum"]).as_py()), total("usage_records")),
        "feature uses": (int(pc.sum(counts["feature_uses_sum"]).as_py()), total("feature_uses")),
        "errors": (int(pc.sum(counts["error_sum"]).as_py()), total("errors")),
        "critical errors": (int(pc.sum(counts["critical_sum"]).as_py()), total("critical_errors")),
        "latest event times": (int(pc.sum(bare["latest"]["ts_ms_last"]).as_py()), total("last_ts_ms")),
        "seq spans": (bare["spans"].num_rows, entries("seq_spans")),
        "usage entries": (bare["usage"].num_rows, entries("usage")),
        "feature entries": (bare["features"].num_rows, entries("features")),
        "error-firmware entries": (bare["error_fw"].num_rows, entries("error_fw")),
    }
    wrong = {name: pair for name, pair in want.items() if pair[0] != pair[1]}
    if wrong:
        raise AssertionError(f"bare pyarrow rollups differ from the pipeline's: {wrong}")


def bare_json_group_by(payloads: list[bytes]) -> pa.Table:
    """Bare pyarrow from the landing JSON: parse (no validation, no dedupe), flatten, group_by."""
    envelopes = pj.read_json(
        io.BytesIO(b"\n".join(payloads)),
        read_options=pj.ReadOptions(use_threads=True, block_size=1 << 22),
        parse_options=pj.ParseOptions(explicit_schema=_json_schema(load_contract()),
                                      unexpected_field_behavior="ignore"),
    ).combine_chunks()
    lists = envelopes["records"].combine_chunks()
    records = pc.list_flatten(lists)
    parent = pc.list_parent_indices(lists)
    columns = {f.name: records.field(f.name) for f in records.type}
    for name in ("customer_id", "site_id", "gateway_id"):
        columns[name] = envelopes[name].take(parent)
    return bare_group_by(pa.table(columns))


def _read(folder: str) -> pa.Table:
    table = pa.concat_tables(
        pq.read_table(f, schema=DEVICE_HOUR_SCHEMA) for f in sorted(Path(folder).glob("part-*.parquet"))
    )
    keys = ["customer_id", "site_id", "gateway_id", "device_id", "hour_ms"]
    return table.sort_by([(k, "ascending") for k in keys])


def _decoded_records(lake: Path) -> pa.Table:
    decoder = ArrowDecoder()
    tables = []
    for path in landing_files(lake):
        landing = pq.read_table(path)
        tables.append(
            decoder.decode(
                landing["topic"].to_pylist(), landing["payload"].to_pylist(), landing["received_ms"].to_pylist()
            ).table
        )
    return pa.concat_tables(tables).combine_chunks()


def run(quick: bool = False, records: int | None = None) -> list[Comparison]:
    wanted = records or (QUICK_RECORDS if quick else RECORDS)
    job_runner = local_beam_args()
    with tempfile.TemporaryDirectory(prefix="bench-backfill-") as tmp:
        root = Path(tmp)
        lake = str(root / "lake")
        n = write_landing(root / "lake", wanted)
        # Same data, same runner: the two paths must write identical device-hour rows.
        per_element(lake, str(root / "per_element"), job_runner)
        columnar(lake, str(root / "columnar"), job_runner)
        a, b = _read(str(root / "per_element")), _read(str(root / "columnar"))
        if not a.equals(b):
            raise AssertionError("columnar and per-element device hours differ")
        if device_hours_from_table(a) != device_hours_from_table(b):
            raise AssertionError("columnar and per-element DeviceHours differ")
        # The timed runs' counting sink sees every row in both paths.
        for name, counted in (("per-element", per_element(lake, None, job_runner)),
                              ("columnar", columnar(lake, None, job_runner))):
            if counted != a.num_rows:
                raise AssertionError(f"the {name} timed run counted {counted} of {a.num_rows} device hours")
        decoded = _decoded_records(root / "lake")
        payloads = [p for f in landing_files(root / "lake") for p in pq.read_table(f)["payload"].to_pylist()]
        if bare_json_group_by(payloads).num_rows != bare_group_by(decoded).num_rows:
            raise AssertionError("bare pyarrow from JSON and from records group differently")
        if decoded.num_rows != n:
            raise AssertionError(f"decoded {decoded.num_rows} of {n} records")
        deduplicated = dedupe_table(decoded)[0]
        check_bare_rollups(bare_rollups(deduplicated), b)
        # Timed runs compute the same rollups and only count them (no sink in either path).
        label = f"backfill rollups, {n:,} records ({a.num_rows:,} device-hours)"
        mode = "job runner: FnApiRunner " + " ".join(job_runner[1:3])
        in_process = (("in-process FnApiRunner", IN_PROCESS),)
        both = ((mode, job_runner), *in_process)
        return [
            compare(
                f"{label}, {mode}",
                items=n,
                baseline=("per-element Beam", lambda: per_element(lake, None, job_runner)),
                candidate=("columnar Beam", lambda: columnar(lake, None, job_runner)),
                # Best of 3 each, alternating: one pass of either caught by another job's
                # burst on this shared machine no longer decides the ratio.
                repeats=3,
                target_ratio=10.0,
            ),
            *(
                compare(
                    f"{label}, {runner_label}",
                    items=n,
                    baseline=(name, bare),
                    candidate=("columnar Beam", lambda runner=runner: columnar(lake, None, runner)),
                    repeats=3,
                    target_ratio=0.10,
                )
                for name, bare, runners in (
                    ("bare pyarrow group_by, same rollups", lambda: bare_rollups(deduplicated), both),
                    ("bare pyarrow group_by", lambda: bare_group_by(decoded), both),
                    ("bare pyarrow read_json + group_by", lambda: bare_json_group_by(payloads), in_process),
                )
                for runner_label, runner in runners
            ),
        ]
