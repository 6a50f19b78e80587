"""``fleetpulse retention``: usage retention by cohort and segment, and CSM coverage.

    fleetpulse retention --lake ./lake --accounts accounts.csv \\
        --base 2026-08-01:2026-08-31 --compare 2026-09-01:2026-09-29 \\
        [--by cohort|segment|both] [--quantity runtime_s] [--json retention.json]

Reads the lake's raw archive (``<lake>/records``), so it needs no InfluxDB and
no Beam run beyond the one that wrote the archive. Usage is normalised per
calendar day of each period, so periods of different lengths compare fairly.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from fleetpulse.errors import ConfigError

if TYPE_CHECKING:  # heavy modules are imported in run(), not at parser build
    from fleetpulse.pipeline.analytics.retention import CoverageRow, RetentionReport, RetentionRow
    from fleetpulse.pipeline.analytics.usage import Period

SOURCE = "command line"
BY_CHOICES = ("cohort", "segment", "both")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lake", required=True, help="the lake folder (its records/ archive is read)")
    parser.add_argument("--accounts", required=True, help="the accounts registry CSV (CRM export)")
    parser.add_argument("--base", required=True, metavar="FROM:TO",
                        help="base period, inclusive UTC days, e.g. 2026-08-01:2026-08-31")
    parser.add_argument("--compare", required=True, metavar="FROM:TO",
                        help="compare period, e.g. 2026-09-01:2026-09-29")
    parser.add_argument("--by", choices=BY_CHOICES, default="both",
                        help="group retention by contract-start cohort, segment or both (default both)")
    parser.add_argument("--quantity", default=None,
                        help="usage quantity key name_unit (default: the health model's, runtime_s)")
    parser.add_argument("--json", default=None, metavar="FILE",
                        help="also write the figures as JSON to FILE")


def parse_period(text: str, key: str) -> Period:
    from fleetpulse.pipeline.analytics.usage import Period

    try:
        return Period.parse(text)
    except ValueError as exc:
        raise ConfigError(SOURCE, key, str(exc),
                          "write FROM:TO as two ISO dates, FROM not after TO, "
                          "e.g. 2026-08-01:2026-08-31") from None


def run(args: argparse.Namespace) -> int:
    from fleetpulse.pipeline.analytics.retention import compute_retention
    from fleetpulse.pipeline.analytics.usage import (
        archive_days,
        open_archive,
        period_usage,
        split_quantity,
    )
    from fleetpulse.schemas.accounts import load_accounts

    base = parse_period(args.base, "--base")
    compare = parse_period(args.compare, "--compare")
    if base.overlaps(compare):
        raise ConfigError(SOURCE, "--compare", f"{compare} overlaps the base period {base}",
                          "choose a compare period that does not share days with --base")
    quantity = args.quantity
    if quantity is None:
        from fleetpulse.pipeline.health.config import load_health_model

        quantity = load_health_model(None).usage_quantity
    try:
        split_quantity(quantity)
    except ValueError as exc:
        raise ConfigError(SOURCE, "--quantity", str(exc), "write name_unit, e.g. runtime_s") from None
    accounts = load_accounts(args.accounts)

    try:
        archive = open_archive(args.lake)
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(SOURCE, "--lake", f"no raw archive at {args.lake}/records",
                          "pass the lake folder that `fleetpulse backfill` wrote (it holds records/)") from None
    days = archive_days(archive)
    if not days:
        raise ConfigError(SOURCE, "--lake", f"the archive {args.lake}/records holds no partitions",
                          "run `fleetpulse backfill` over the landing zone first")
    present = set(days)
    with_data = {}
    for key, period in (("--base", base), ("--compare", compare)):
        with_data[key] = sum(1 for d in period.dates() if d in present)
        if not with_data[key]:
            raise ConfigError(SOURCE, key, f"no archive partitions between {period.start} and {period.end}",
                              f"the lake holds {days[0]} to {days[-1]}; choose days inside that span")

    report = compute_retention(
        accounts,
        period_usage(archive, base, quantity),
        period_usage(archive, compare, quantity),
        base,
        compare,
        quantity=quantity,
        by=("cohort", "segment") if args.by == "both" else (args.by,),
        base_days_with_data=with_data["--base"],
        compare_days_with_data=with_data["--compare"],
    )
    print(render(report))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report.as_dict(), indent=2) + "\n", encoding="utf-8")
    return 0


# ------------------------------------------------------------------ rendering
def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.1f}"


def _signed(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:+.1f}{unit}"


def _retention_table(title: str, rows: list[RetentionRow]) -> list[str]:
    head = (f"{title:<12} {'accounts':>8} {'base-active':>11} {'retained':>8} {'new':>4} "
            f"{'NRR %':>7} {'GRR %':>7} {'logo %':>7}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r.group:<12} {r.accounts:>8} {r.base_active:>11} {r.retained:>8} {r.new_in_compare:>4} "
            f"{_pct(r.nrr):>7} {_pct(r.grr):>7} {_pct(r.logo_retention):>7}"
        )
    return lines


def _coverage_table(rows: list[CoverageRow], lift: dict[str, float | None], quantity: str) -> list[str]:
    per_day = f"{quantity}/day"
    head = (f"{'segment':<12} {'coverage':<12} {'accounts':>8} {'base-active':>11} "
            f"{'base ' + per_day:>18} {'compare ' + per_day:>21} {'growth x':>8} {'growth %':>8}")
    lines = [head, "-" * len(head)]
    for r in rows:
        growth = "-" if r.growth is None else f"{r.growth:.3f}"
        lines.append(
            f"{r.segment:<12} {r.coverage:<12} {r.accounts:>8} {r.base_active:>11} "
            f"{r.base_per_day:>18.1f} {r.compare_per_day:>21.1f} {growth:>8} {_signed(r.growth_pct):>8}"
        )
    lines.append("lift (growth % with CSM minus without, points): "
                 + ", ".join(f"{s} {_signed(v)}" for s, v in lift.items()))
    return lines


def render(report: RetentionReport) -> str:
    """The fixed-width text ``fleetpulse retention`` prints."""
    b, c = report.base, report.compare
    lines = [
        f"Usage retention of {report.quantity}: base {b} ({b.days} days, "
        f"{report.base_days_with_data if report.base_days_with_data is not None else '?'} with data), "
        f"compare {c} ({c.days} days, "
        f"{report.compare_days_with_data if report.compare_days_with_data is not None else '?'} with data)",
        "Usage is normalised per calendar day of each period. NRR = compare/base usage of the "
        "base-active; GRR caps each account at its base; logo = base-active still active.",
    ]
    for dimension, title in (("cohort", "cohort"), ("segment", "segment")):
        rows = report.rows(dimension)
        if rows:
            lines += ["", *(_retention_table(title, rows))]
    lines += ["", "CSM coverage: usage growth per day, compare vs base, every account of the group",
              *_coverage_table(report.coverage, report.lift_pp, report.quantity)]
    if report.unregistered_customers:
        shown = ", ".join(report.unregistered_customers[:10])
        lines += ["", f"not in the accounts registry (left out): {shown}"
                      + (" …" if len(report.unregistered_customers) > 10 else "")]
    for label, period, with_data in (("base", b, report.base_days_with_data),
                                     ("compare", c, report.compare_days_with_data)):
        if with_data is not None and with_data < period.days:
            lines.append(f"note: the lake has data for only {with_data} of the {period.days} "
                         f"{label} days; per-day figures still divide by {period.days}")
    return "\n".join(lines)
