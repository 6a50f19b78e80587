"""Scale: ``fleetpulse backfill`` over lakes of 1×, 4× and 16× the demo, against a bare pyarrow floor.

Each lake is the simulator's fleet landed as collectors and the lander would
(:mod:`bench.lakes`: gateway batches per event hour, landing files of 100
messages, 3% of batches delivered twice), with more customers *and* more
days at each size: 24 customers × 60 days (the demo, ≈ 250k records),
48 × 120 (≈ 1M) and 96 × 240 (≈ 4M). For each lake the benchmark runs

- the whole command a user runs, ``fleetpulse backfill`` with its default
  local runner (FnApiRunner, one SDK worker process per core), validation,
  scoring, every output written; and
- the floor: a bare pyarrow pass in one process over the same landing files —
  parse the JSON (``pyarrow.json``), deduplicate by (device, boot, seq),
  roll device hours up with ``Table.group_by`` (the same numbers as a
  DeviceHour, as long tables), write them to Parquet; no validation, no
  scoring, no Beam;

and measures wall time, CPU time and peak RSS summed over every process of
the command (:mod:`bench.procs`, from ``/proc``; the floor's CPU is its own
pass, without the interpreter's start and imports, so the comparison is not
flattered by them). Targets (issue 16):

- peak RSS of the largest lake's backfill ≤ 2 GB summed;
- time per record at 16× within 1.3× of time per record at 1×;
- CPU per record of the backfill ≤ 10× the floor's on the same lake.

``python -m bench scale`` runs all three sizes (tens of minutes on two
cores); ``--quick`` runs 4 × 10 and 8 × 20 for a smoke test.
"""

from __future__ import annotations

import argparse
import io
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj
import pyarrow.parquet as pq

from fleetpulse.pipeline.lake.landing import landing_files
from fleetpulse.pipeline.transforms.arrow_decode import _json_schema
from fleetpulse.schemas import load_contract

from .bench_backfill_columnar import bare_rollups
from .lakes import write_lake
from .procs import Usage, measure

SIZES = ((24, 60), (48, 120), (96, 240))
QUICK_SIZES = ((4, 10), (8, 20))
PEAK_RSS_TARGET = 2 * 2**30
LINEAR_TARGET = 1.3
FLOOR_TARGET = 10.0
#: the floor's own CPU seconds, printed by its process (without the interpreter's start and imports)
FLOOR_CPU = "floor cpu_s="


# ------------------------------------------------------------------- the floor


def floor(lake: Path, out: Path) -> int:
    """The bare pyarrow pass over ``lake``'s landing files (see the module docstring); rows written."""
    payloads, received = [], []
    for path in landing_files(lake):
        landing = pq.read_table(path, columns=["payload", "received_ms"])
        payloads += landing["payload"].to_pylist()
        received += landing["received_ms"].to_pylist()
    envelopes = pj.read_json(
        io.BytesIO(b"\n".join(payloads)),
        read_options=pj.ReadOptions(use_threads=False, block_size=1 << 24),
        parse_options=pj.ParseOptions(explicit_schema=_json_schema(load_contract()),
                                      unexpected_field_behavior="ignore"),
    ).combine_chunks()
    lists = envelopes["records"].combine_chunks()
    flat = pc.list_flatten(lists)
    parent = pc.list_parent_indices(lists)
    columns = {f.name: flat.field(f.name) for f in flat.type}
    for name in ("customer_id", "site_id", "gateway_id"):
        columns[name] = envelopes[name].take(parent)
    columns["received_ms"] = pa.array(received, pa.int64()).take(parent)
    records = pa.table(columns)
    # Dedupe: the earliest copy of each (device, boot, seq).
    keys = ["device_id", "boot", "seq"]
    ordered = records.append_column("row", pa.array(range(records.num_rows), pa.int64())).sort_by(
        [(k, "ascending") for k in [*keys, "received_ms"]])
    first = ordered.group_by(keys, use_threads=False).aggregate([("row", "first")])["row_first"]
    survivors = records.take(first)
    rollups = bare_rollups(survivors)
    out.mkdir(parents=True, exist_ok=True)
    for name, table in rollups.items():
        pq.write_table(table, out / f"{name}.parquet", compression="zstd")
    return sum(t.num_rows for t in rollups.values())


# ----------------------------------------------------------------- the benchmark


@dataclass(frozen=True)
class Run:
    customers: int
    days: int
    records: int
    devices: int
    backfill: Usage
    floor: Usage

    @property
    def us_per_record(self) -> float:
        return self.backfill.wall_s / self.records * 1e6

    @property
    def cpu_us_per_record(self) -> float:
        return self.backfill.cpu_s / self.records * 1e6

    @property
    def floor_cpu_us_per_record(self) -> float:
        return self.floor.cpu_s / self.records * 1e6

    def line(self) -> str:
        return (f"scale {self.customers} customers × {self.days} days: {self.records:,} records, "
                f"{self.devices} devices — backfill {self.backfill.wall_s:.1f} s wall "
                f"({self.us_per_record:.0f} µs/record), {self.backfill.cpu_s:.1f} s CPU "
                f"({self.cpu_us_per_record:.0f} µs/record), peak RSS {self.backfill.peak_rss_mb:,.0f} MB summed "
                f"over {self.backfill.processes} processes; floor {self.floor.cpu_s:.1f} s CPU "
                f"({self.floor_cpu_us_per_record:.1f} µs/record), peak {self.floor.peak_rss_mb:,.0f} MB")


@dataclass(frozen=True)
class Target:
    name: str
    value: float
    limit: float
    unit: str

    @property
    def ok(self) -> bool:
        return self.value <= self.limit

    def line(self) -> str:
        return f"scale target {self.name}: {self.value:,.2f}{self.unit} (≤ {self.limit:g}{self.unit}): " + (
            "PASS" if self.ok else "FAIL")


def _python() -> str:
    return sys.executable


def measure_lake(root: Path, customers: int, days: int, logs: Path) -> Run:
    lake = write_lake(root / "lake", customers, days)
    try:
        name = f"{customers}x{days}"
        backfill = measure(
            [str(Path(_python()).with_name("fleetpulse")), "backfill", "--lake", str(lake.root),
             "--accounts", str(lake.accounts), "--out", str(root / "out")],
            log=logs / f"backfill-{name}.log",
        )
        if backfill.returncode != 0:
            raise RuntimeError(f"backfill of {name} failed ({backfill.returncode}): see {logs}/backfill-{name}.log")
        bare = measure([_python(), "-m", "bench.bench_scale", "--floor", str(lake.root), str(root / "floor")],
                       log=logs / f"floor-{name}.log")
        if bare.returncode != 0:
            raise RuntimeError(f"floor of {name} failed ({bare.returncode}): see {logs}/floor-{name}.log")
        own = [line for line in (logs / f"floor-{name}.log").read_text().splitlines() if line.startswith(FLOOR_CPU)]
        bare = replace(bare, cpu_s=float(own[-1][len(FLOOR_CPU):]))
        return Run(customers, days, lake.records, lake.devices, backfill, bare)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def targets(runs: list[Run]) -> list[Target]:
    small, large = runs[0], runs[-1]
    return [
        Target(f"peak RSS of the largest lake ({large.records:,} records)",
               large.backfill.peak_rss_bytes / 2**20, PEAK_RSS_TARGET / 2**20, " MB"),
        Target(f"time per record at {large.records / small.records:.0f}× / at 1×",
               large.us_per_record / small.us_per_record, LINEAR_TARGET, "×"),
        *(Target(f"CPU per record / the floor's, {run.records:,} records",
                 run.cpu_us_per_record / run.floor_cpu_us_per_record, FLOOR_TARGET, "×") for run in runs),
    ]


def run(quick: bool = False) -> list[Target]:
    logs = Path(tempfile.gettempdir()) / "fleetpulse-bench-scale"
    logs.mkdir(exist_ok=True)
    runs = []
    for customers, days in QUICK_SIZES if quick else SIZES:
        with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
            one = measure_lake(Path(tmp), customers, days, logs)
        print(one.line(), flush=True)
        runs.append(one)
    return targets(runs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_scale")
    parser.add_argument("--floor", nargs=2, metavar=("LAKE", "OUT"), help="run the floor alone (as the benchmark does)")
    parser.add_argument("--quick", action="store_true", help=f"lakes of {QUICK_SIZES} (customers, days) only")
    args = parser.parse_args(argv)
    if args.floor:
        started = time.process_time()
        rows = floor(Path(args.floor[0]), Path(args.floor[1]))
        print(f"floor: {rows} rollup rows\n{FLOOR_CPU}{time.process_time() - started:.3f}")
        return 0
    failed = False
    for result in run(quick=args.quick):
        print(result.line())
        failed |= not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
