"""Usage retention and CSM coverage (``fleetpulse retention``) over the lake's raw archive.

A literal five-account book, written as archive partitions, is checked
against hand-computed NRR / GRR / logo retention and CSM growth; a simulated
fleet (archive rows written straight from the generator, no Beam) checks that
the planted decliners lose usage and the steady accounts keep it.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from fleetpulse import cli
from fleetpulse.devices.simulator.generate import TelemetryGenerator
from fleetpulse.devices.simulator.registry import write_outputs
from fleetpulse.devices.simulator.simulation import SimulationConfig
from fleetpulse.pipeline.analytics import retention as ret
from fleetpulse.pipeline.analytics.usage import (
    PARTITION_SCHEMA,
    Period,
    archive_days,
    open_archive,
    period_usage,
    split_quantity,
)
from fleetpulse.pipeline.lake.schema import lake_schema
from fleetpulse.pipeline.transforms.rows import lake_columns, lake_row
from fleetpulse.schemas.accounts import COLUMNS, Account, load_accounts

RECEIVED_MS = 1_795_000_000_000
BASE = Period(date(2026, 8, 1), date(2026, 8, 10))  # 10 days
COMPARE = Period(date(2026, 8, 11), date(2026, 8, 15))  # 5 days: per-day normalisation matters


# ------------------------------------------------------------------ fixture
def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def usage(customer: str, device: str, at: str, runtime_s: float, seq: int) -> dict[str, Any]:
    """A usage record row carrying runtime plus quantities that must not be counted."""
    record = {
        "device_id": device, "ts_ms": ms(at), "boot": 1, "seq": seq, "kind": "usage", "fw": "3.2.1",
        "period_s": 14400,
        "quantities": [
            {"name": "cycles", "value": 7.0, "unit": "count"},
            {"name": "runtime", "value": float(runtime_s), "unit": "s"},
            {"name": "runtime", "value": 5.0, "unit": "h"},  # same name, other unit: not runtime_s
        ],
    }
    stamp = {"customer_id": customer, "site_id": f"{customer}-s1", "gateway_id": f"{customer}-g1"}
    return lake_row(lake_columns(), stamp, record, RECEIVED_MS)


def heartbeat(customer: str, device: str, at: str, seq: int) -> dict[str, Any]:
    record = {"device_id": device, "ts_ms": ms(at), "boot": 1, "seq": seq, "kind": "heartbeat",
              "fw": "3.2.1", "interval_s": 14400, "uptime_s": 1000}
    stamp = {"customer_id": customer, "site_id": f"{customer}-s1", "gateway_id": f"{customer}-g1"}
    return lake_row(lake_columns(), stamp, record, RECEIVED_MS)


def write_archive(lake: Path, rows: list[dict[str, Any]]) -> None:
    """Rows → ``<lake>/records/dt=…/hour=…/part-00000.parquet``, as the archive writer lays them out."""
    by_partition: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        at = datetime.fromtimestamp(row["ts_ms"] / 1000, tz=UTC)
        by_partition[f"dt={at:%Y-%m-%d}/hour={at:%H}"].append(row)
    for partition, part_rows in by_partition.items():
        folder = lake / "records" / partition
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part_rows, schema=lake_schema()), folder / "part-00000.parquet")


def write_accounts(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({"name": "", "engagement_model": "low_touch", "arr_usd": "1000",
                             "renewal_date": "2027-12-31", "entitled_devices": "5", "nps": "",
                             **row})
    return path


# Five accounts, two cohorts (2025Q1, 2025Q3), two segments (smb, enterprise):
#   c-exp    smb         2025Q1  CSM ann   base 1000 s / 10 d = 100/d   compare 1500 s / 5 d = 300/d  (expands)
#   c-shr    smb         2025Q3  no CSM    base 2000 s / 10 d = 200/d   compare  500 s / 5 d = 100/d  (shrinks)
#   c-churn  enterprise  2025Q1  CSM bo    base 3000 s / 10 d = 300/d   compare    0              (churns)
#   c-new    enterprise  2025Q3  no CSM    base    0                    compare  400 s / 5 d =  80/d  (new)
#   c-steady enterprise  2025Q1  no CSM    base  500 s / 10 d =  50/d   compare  250 s / 5 d =  50/d
ACCOUNTS = [
    {"customer_id": "c-exp", "segment": "smb", "contract_start": "2025-02-10", "csm_owner": "ann"},
    {"customer_id": "c-shr", "segment": "smb", "contract_start": "2025-08-01", "csm_owner": ""},
    {"customer_id": "c-churn", "segment": "enterprise", "contract_start": "2025-03-31", "csm_owner": "bo"},
    {"customer_id": "c-new", "segment": "enterprise", "contract_start": "2025-09-30", "csm_owner": ""},
    {"customer_id": "c-steady", "segment": "enterprise", "contract_start": "2025-01-01", "csm_owner": ""},
]


def book_rows() -> list[dict[str, Any]]:
    return [
        # c-exp: base 250 × 4 = 1000 on one device; compare 1000 + 500 = 1500 on two devices
        usage("c-exp", "d-e1", "2026-08-01 12:00", 250, 1),
        usage("c-exp", "d-e1", "2026-08-03 23:59", 250, 2),
        usage("c-exp", "d-e1", "2026-08-05 04:00", 250, 3),
        usage("c-exp", "d-e1", "2026-08-10 23:30", 250, 4),  # last base day
        usage("c-exp", "d-e1", "2026-08-11 00:10", 1000, 5),  # first compare day
        usage("c-exp", "d-e2", "2026-08-15 20:00", 500, 1),  # last compare day
        # outside both periods: must never be read
        usage("c-exp", "d-e1", "2026-07-31 23:59", 99999, 0),
        usage("c-exp", "d-e1", "2026-08-16 00:00", 99999, 6),
        # c-shr: base 2000; compare 500, and a second device that reports zero runtime (not active)
        usage("c-shr", "d-s1", "2026-08-02 12:00", 2000, 1),
        usage("c-shr", "d-s1", "2026-08-12 12:00", 500, 2),
        usage("c-shr", "d-s2", "2026-08-12 12:00", 0, 1),
        # c-churn: base 3000; compare only heartbeats
        usage("c-churn", "d-c1", "2026-08-04 12:00", 1500, 1),
        usage("c-churn", "d-c2", "2026-08-04 16:00", 1500, 1),
        heartbeat("c-churn", "d-c1", "2026-08-13 08:00", 2),
        # c-new: compare only
        heartbeat("c-new", "d-n1", "2026-08-09 08:00", 1),
        usage("c-new", "d-n1", "2026-08-14 12:00", 400, 2),
        # c-steady: base 500, compare 250
        usage("c-steady", "d-t1", "2026-08-06 12:00", 500, 1),
        usage("c-steady", "d-t1", "2026-08-13 12:00", 250, 2),
        # not in the accounts registry
        usage("c-ghost", "d-g1", "2026-08-06 12:00", 10, 1),
    ]


@pytest.fixture
def book(tmp_path: Path) -> tuple[Path, Path]:
    write_archive(tmp_path / "lake", book_rows())
    return tmp_path / "lake", write_accounts(tmp_path / "accounts.csv", ACCOUNTS)


def usage_dict(table: pa.Table) -> dict[str, tuple[float, int]]:
    return {r["customer_id"]: (r["usage"], r["active_devices"]) for r in table.to_pylist()}


# ------------------------------------------------------------------ usage
def test_period_usage_reads_only_the_period_and_the_quantity(book):
    lake, _ = book
    archive = open_archive(lake)
    assert usage_dict(period_usage(archive, BASE, "runtime_s")) == {
        "c-churn": (3000.0, 2),  # two devices with runtime
        "c-exp": (1000.0, 1),  # 4 × 250; the 07-31 record is outside
        "c-ghost": (10.0, 1),
        "c-shr": (2000.0, 1),
        "c-steady": (500.0, 1),
    }
    assert usage_dict(period_usage(archive, COMPARE, "runtime_s")) == {
        "c-exp": (1500.0, 2),  # the 08-16 record is outside
        "c-new": (400.0, 1),
        "c-shr": (500.0, 1),  # d-s2 reported 0 s: not an active device
        "c-steady": (250.0, 1),
    }
    # another quantity of the same records: 7 cycles per usage record
    assert usage_dict(period_usage(archive, COMPARE, "cycles_count"))["c-exp"] == (14.0, 2)
    assert period_usage(archive, Period(date(2027, 1, 1), date(2027, 1, 2)), "runtime_s").num_rows == 0


def test_archive_days_and_partition_pruning(book):
    lake, _ = book
    archive = open_archive(lake)
    assert archive_days(archive)[0] == "2026-07-31"
    assert archive_days(archive)[-1] == "2026-08-16"
    # dt is a partition column: the filter selects fragments without opening the others
    fragments = list(archive.get_fragments(filter=ds.field("dt") == "2026-08-04"))
    assert [Path(f.path).parent.parent.name for f in fragments] == ["dt=2026-08-04", "dt=2026-08-04"]


def test_period_and_quantity_parsing():
    assert Period.parse("2026-08-01:2026-08-31").days == 31
    assert Period.parse("2026-09-01:2026-09-01").days == 1
    for bad in ("2026-08-01", "2026-08-31:2026-08-01", "2026-13-01:2026-13-02", "a:b:c"):
        with pytest.raises(ValueError):
            Period.parse(bad)
    assert split_quantity("runtime_s") == ("runtime", "s")
    assert split_quantity("print_pages_count") == ("print_pages", "count")
    with pytest.raises(ValueError):
        split_quantity("runtime")
    assert ret.contract_quarter(date(2025, 3, 31)) == "2025Q1"
    assert ret.contract_quarter(date(2025, 10, 1)) == "2025Q4"


# --------------------------------------------------------------- retention
def book_report(lake: Path, accounts_csv: Path) -> ret.RetentionReport:
    archive = open_archive(lake)
    return ret.compute_retention(
        load_accounts(accounts_csv),
        period_usage(archive, BASE, "runtime_s"),
        period_usage(archive, COMPARE, "runtime_s"),
        BASE, COMPARE, quantity="runtime_s",
    )


def test_retention_by_cohort_and_segment_equals_the_hand_computation(book):
    report = book_report(*book)
    approx = pytest.approx

    # 2025Q1 = c-exp, c-churn, c-steady; all three active in base.
    #   Σ base/d = 100 + 300 + 50 = 450;  Σ compare/d = 300 + 0 + 50 = 350
    #   NRR = 350/450;  GRR = (min(100,300) + min(300,0) + min(50,50))/450 = 150/450;  logo = 2/3
    q1 = report.row("cohort", "2025Q1")
    assert (q1.accounts, q1.base_active, q1.retained, q1.new_in_compare) == (3, 3, 2, 0)
    assert (q1.nrr, q1.grr, q1.logo_retention) == (approx(350 / 450), approx(150 / 450), approx(2 / 3))
    # 2025Q3 = c-shr (200 → 100) and c-new (new: not base-active, not in the ratios)
    #   NRR = 100/200;  GRR = 100/200;  logo = 1/1
    q3 = report.row("cohort", "2025Q3")
    assert (q3.accounts, q3.base_active, q3.retained, q3.new_in_compare) == (2, 1, 1, 1)
    assert (q3.nrr, q3.grr, q3.logo_retention) == (approx(0.5), approx(0.5), approx(1.0))
    # all: Σ base/d = 100 + 200 + 300 + 50 = 650;  Σ compare/d = 300 + 100 + 0 + 50 = 450 (c-new left out)
    #   GRR = (100 + 100 + 0 + 50)/650 = 250/650;  logo = 3/4
    everyone = report.row("cohort", "all")
    assert (everyone.accounts, everyone.base_active, everyone.retained, everyone.new_in_compare) == (5, 4, 3, 1)
    assert everyone.base_per_day == approx(650.0)
    assert everyone.compare_per_day == approx(450.0)
    assert (everyone.nrr, everyone.grr, everyone.logo_retention) == (
        approx(450 / 650), approx(250 / 650), approx(3 / 4))

    # smb = c-exp (100 → 300), c-shr (200 → 100):  NRR = 400/300 > 100%;  GRR = (100 + 100)/300
    smb = report.row("segment", "smb")
    assert (smb.nrr, smb.grr, smb.logo_retention) == (approx(400 / 300), approx(200 / 300), approx(1.0))
    # enterprise = c-churn (300 → 0), c-steady (50 → 50), c-new (left out):
    #   NRR = 50/350;  GRR = (0 + 50)/350;  logo = 1/2
    ent = report.row("segment", "enterprise")
    assert (ent.accounts, ent.base_active, ent.new_in_compare) == (3, 2, 1)
    assert (ent.nrr, ent.grr, ent.logo_retention) == (approx(50 / 350), approx(50 / 350), approx(0.5))
    assert [r.group for r in report.rows("segment")] == ["smb", "enterprise", "all"]
    assert report.row("segment", "all") == ret.RetentionRow(**{**report.row("cohort", "all").__dict__,
                                                               "dimension": "segment"})
    assert report.unregistered_customers == ["c-ghost"]


def test_csm_coverage_growth_equals_the_hand_computation(book):
    report = book_report(*book)
    growth = {(r.segment, r.coverage): (r.accounts, r.growth, r.growth_pct) for r in report.coverage}
    approx = pytest.approx
    # smb with CSM: c-exp 100 → 300/d = ×3.0 (+200%); without: c-shr 200 → 100/d = ×0.5 (−50%)
    assert growth[("smb", "with_csm")] == (1, approx(3.0), approx(200.0))
    assert growth[("smb", "without_csm")] == (1, approx(0.5), approx(-50.0))
    # enterprise with CSM: c-churn 300 → 0 = ×0 (−100%)
    # without: c-new + c-steady, (0 + 50) → (80 + 50) = 130/50 = ×2.6 (+160%): onboarding counts as growth
    assert growth[("enterprise", "with_csm")] == (1, approx(0.0), approx(-100.0))
    assert growth[("enterprise", "without_csm")] == (2, approx(2.6), approx(160.0))
    # all with CSM: (100 + 300) → (300 + 0) = 300/400 = ×0.75 (−25%)
    # all without: (200 + 0 + 50) → (100 + 80 + 50) = 230/250 = ×0.92 (−8%)
    assert growth[("all", "with_csm")] == (2, approx(0.75), approx(-25.0))
    assert growth[("all", "without_csm")] == (3, approx(0.92), approx(-8.0))
    # lift = growth % with − without: smb 200 − (−50) = 250; enterprise −100 − 160 = −260; all −25 − (−8) = −17
    assert report.lift_pp == {"smb": approx(250.0), "enterprise": approx(-260.0), "all": approx(-17.0)}


def test_retention_on_literal_tables_without_a_lake():
    accounts = {
        "a": load_accounts_row("a", "mid_market", "2026-04-01", "kim"),
        "b": load_accounts_row("b", "mid_market", "2026-04-02", None),
    }
    base = pa.table({"customer_id": ["a"], "usage": [70.0], "active_devices": [1]})
    compare = pa.table({"customer_id": ["a", "b"], "usage": [140.0, 9.0], "active_devices": [1, 1]})
    week = Period(date(2026, 9, 1), date(2026, 9, 7))
    fortnight = Period(date(2026, 9, 8), date(2026, 9, 21))
    report = ret.compute_retention(accounts, base, compare, week, fortnight, quantity="runtime_s",
                                   by=("cohort",))
    # a: 70/7 = 10 per day → 140/14 = 10 per day: flat once normalised per day (raw totals say ×2)
    row = report.row("cohort", "2026Q2")
    assert (row.nrr, row.grr, row.logo_retention, row.new_in_compare) == (1.0, 1.0, 1.0, 1)
    assert report.rows("segment") == []
    with pytest.raises(ValueError, match="dimension"):
        ret.compute_retention(accounts, base, compare, week, fortnight, quantity="runtime_s", by=("csm",))


def load_accounts_row(customer_id: str, segment: str, start: str, csm: str | None) -> Account:
    return Account(customer_id=customer_id, name=customer_id, segment=segment,
                       engagement_model="digital", arr_usd=1, contract_start=date.fromisoformat(start),
                       renewal_date=date(2028, 1, 1), entitled_devices=1, csm_owner=csm, nps=None)


# ---------------------------------------------------------------------- CLI
def retention_cli(lake: Path, accounts_csv: Path, *extra: str,
                  base: str = "2026-08-01:2026-08-10", compare: str = "2026-08-11:2026-08-15") -> int:
    return cli.main(["retention", "--lake", str(lake), "--accounts", str(accounts_csv),
                     "--base", base, "--compare", compare, *extra])


def test_cli_prints_the_tables_and_writes_json(book, tmp_path, capsys):
    lake, accounts_csv = book
    out = tmp_path / "out" / "retention.json"
    assert retention_cli(lake, accounts_csv, "--json", str(out)) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    smb = next(line for line in lines if line.startswith("smb ") and "%" not in line)
    assert smb.split() == ["smb", "2", "2", "2", "0", "133.3", "66.7", "100.0"]
    q1 = next(line for line in lines if line.startswith("2025Q1"))
    assert q1.split() == ["2025Q1", "3", "3", "2", "0", "77.8", "33.3", "66.7"]
    coverage = next(line for line in lines if line.startswith("enterprise") and "without_csm" in line)
    assert coverage.split()[-2:] == ["2.600", "+160.0"]
    assert "smb +250.0, enterprise -260.0, all -17.0" in text
    assert "normalised per calendar day" in text
    assert "c-ghost" in text

    # the book has records on 8 of the 10 base days (none on 08-07 and 08-08)
    assert "data for only 8 of the 10 base days" in text

    figures = json.loads(out.read_text())
    assert figures["base"] == {"from": "2026-08-01", "to": "2026-08-10", "days": 10, "days_with_data": 8}
    assert figures["compare"]["days"] == 5
    everyone = next(r for r in figures["retention"] if r["dimension"] == "cohort" and r["group"] == "all")
    assert everyone["nrr"] == pytest.approx(450 / 650)
    assert figures["csm_lift_pp"]["smb"] == pytest.approx(250.0)


def test_cli_by_segment_only(book, capsys):
    assert retention_cli(*book, "--by", "segment") == 0
    text = capsys.readouterr().out
    assert "2025Q1" not in text
    assert "enterprise" in text


@pytest.mark.parametrize(
    ("base", "compare", "key"),
    [
        ("2026-08-01", "2026-08-11:2026-08-15", "--base"),
        ("2026-08-10:2026-08-01", "2026-08-11:2026-08-15", "--base"),
        ("2026-08-01:2026-08-10", "2026-09-31:2026-10-01", "--compare"),
        ("2026-08-01:2026-08-10", "2026-08-05:2026-08-15", "--compare"),  # overlaps base
        ("2026-01-01:2026-01-31", "2026-08-11:2026-08-15", "--base"),  # no data in the lake
    ],
)
def test_cli_bad_periods_name_the_key(book, capsys, base, compare, key):
    assert retention_cli(*book, base=base, compare=compare) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fleetpulse retention: command line: {key}: ")
    assert "fix:" in err


def test_cli_empty_or_missing_lake_names_lake(book, tmp_path, capsys):
    _, accounts_csv = book
    (tmp_path / "empty" / "records").mkdir(parents=True)
    for lake in (tmp_path / "empty", tmp_path / "nowhere"):
        assert retention_cli(lake, accounts_csv) == 2
        assert "command line: --lake: " in capsys.readouterr().err


def test_cli_bad_quantity_names_the_key(book, capsys):
    assert retention_cli(*book, "--quantity", "runtime") == 2
    assert "command line: --quantity: " in capsys.readouterr().err


# ------------------------------------------------------ the simulated fleet
def write_fleet_archive(lake: Path, generator: TelemetryGenerator) -> None:
    """The generator's usage records as archive rows, written per hour partition in one dataset write."""
    columns = lake_columns()
    gateways = {g.gateway_id: g for g in generator.fleet.gateways}
    rows = []
    for message in generator:
        if message.withheld or message.malformed is not None:
            continue  # never sent: the lake would not have them
        gw = gateways[message.gateway_id]
        stamp = {"customer_id": gw.customer_id, "site_id": gw.site_id, "gateway_id": gw.gateway_id}
        # Usage records only: retention reads nothing else (the literal book covers skipping
        # heartbeats), and the other ~75% of the records would triple the test's time.
        rows.extend(lake_row(columns, stamp, record, RECEIVED_MS)
                    for record in json.loads(message.payload) if record["kind"] == "usage")
    table = pa.Table.from_pylist(rows, schema=lake_schema())
    at = pc.cast(table["ts_ms"], pa.timestamp("ms", tz="UTC"))
    table = table.append_column("dt", pc.strftime(at, "%Y-%m-%d")).append_column("hour", pc.strftime(at, "%H"))
    ds.write_dataset(table, lake / "records", format="parquet",
                     partitioning=ds.partitioning(PARTITION_SCHEMA, flavor="hive"),
                     basename_template="part-0000{i}.parquet", existing_data_behavior="overwrite_or_ignore")


def test_simulated_decliners_lose_usage_and_steady_accounts_keep_it(tmp_path):
    sim = SimulationConfig(seed=7, customers=24, days=60)
    fleet = sim.build_fleet()
    truth = fleet.truth()
    accounts_csv = write_outputs(fleet, tmp_path / "sim").accounts
    write_fleet_archive(tmp_path / "lake", TelemetryGenerator(fleet))
    patterns = truth["patterns"]
    drop_days = {truth["customers"][c]["drop_day"] for c in patterns["sudden_drop"]}
    assert len(drop_days) == 1
    drop = date.fromisoformat(drop_days.pop())
    # base = the first three weeks; compare = from the drop day to the end (18 days), so the
    # drop lies between the base period and the compare period and the lengths differ.
    base = Period(fleet.start_date, fleet.date_of(20))
    compare = Period(drop, fleet.end_date)
    assert base.end < drop and compare.days != base.days

    archive = open_archive(tmp_path / "lake")
    assert archive_days(archive)[0] == fleet.start_date.isoformat()
    assert Path(archive.files[0]).name == "part-00000.parquet"
    base_usage = period_usage(archive, base, "runtime_s")
    compare_usage = period_usage(archive, compare, "runtime_s")
    customers = ret.customer_periods(ret.accounts_table(load_accounts(accounts_csv)), base_usage,
                                     compare_usage, base, compare)
    per_customer = {r["customer_id"]: r for r in customers.to_pylist()}

    def grr(customer_id: str) -> float:
        row = per_customer[customer_id]
        return min(row["base"], row["compare"]) / row["base"]

    for customer_id in patterns["sudden_drop"] + patterns["gradual_decline"]:
        assert grr(customer_id) < 0.70, customer_id
    for customer_id in patterns["steady"]:
        assert grr(customer_id) > 0.85, customer_id

    report = ret.compute_retention(load_accounts(accounts_csv), base_usage, compare_usage, base,
                                   compare, quantity="runtime_s")
    everyone = report.row("segment", "all")
    assert everyone.accounts == sim.customers
    assert everyone.grr is not None and everyone.grr <= 1.0
    assert report.unregistered_customers == []
