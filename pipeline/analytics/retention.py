"""Usage retention by cohort and segment, and the CSM coverage comparison.

Pure functions on Arrow tables (the per-customer usage of two periods that
:func:`fleetpulse.pipeline.analytics.usage.period_usage` returns) and the
accounts registry, so they can be tested on literal data.

Definitions (``/work/shared/CS_PRIMER.md``), for a group of accounts:

* **base-active**: accounts whose usage in the base period is above zero;
  accounts that only appear in the compare period are counted as ``new`` and
  never enter the retention ratios;
* **net usage retention (NRR)** = Σ compare usage of the base-active ÷ Σ their
  base usage (expansion counts, can exceed 100%);
* **gross usage retention (GRR)** = Σ min(compare, base) ÷ Σ base over the
  base-active (only losses count, at most 100%);
* **logo retention** = base-active accounts still active in compare ÷ base-active.

Usage is **normalised per calendar day** of each period before anything is
summed, capped or divided (a 31-day base against a 29-day compare would
otherwise read as a 6% loss). So "usage" below means usage per day.

Cohorts are contract-start quarters (``2026Q1``); segments come from the
registry. Every dimension gets an ``all`` row over the whole book.

**CSM coverage** ("prove CS's value"): per segment and overall, accounts with
a ``csm_owner`` against those without; growth = Σ compare usage per day ÷ Σ
base usage per day over *every* account of the group (onboarding accounts
add growth, churned ones remove it), as a ratio and in percent, with the
number of accounts in each group; the lift is the difference of the growth
percentages in points.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fleetpulse.schemas.accounts import SEGMENTS, Account

from .usage import Period

COHORT = "cohort"
SEGMENT = "segment"
ALL = "all"
DIMENSIONS: tuple[str, ...] = (COHORT, SEGMENT)
WITH_CSM = "with_csm"
WITHOUT_CSM = "without_csm"

_ACCOUNTS_SCHEMA = pa.schema(
    [
        pa.field("customer_id", pa.string()),
        pa.field(SEGMENT, pa.string()),
        pa.field(COHORT, pa.string()),
        pa.field("coverage", pa.string()),
        pa.field(ALL, pa.string()),
    ]
)


def contract_quarter(day: date) -> str:
    """The cohort of a contract start: ``2026-02-14`` → ``"2026Q1"``."""
    return f"{day.year}Q{(day.month - 1) // 3 + 1}"


def accounts_table(accounts: Mapping[str, Account]) -> pa.Table:
    """The registry as columns: customer_id, segment, cohort, coverage, all."""
    ordered = sorted(accounts.values(), key=lambda a: a.customer_id)
    return pa.table(
        {
            "customer_id": [a.customer_id for a in ordered],
            SEGMENT: [a.segment for a in ordered],
            COHORT: [contract_quarter(a.contract_start) for a in ordered],
            "coverage": [WITH_CSM if a.csm_owner else WITHOUT_CSM for a in ordered],
            ALL: [ALL] * len(ordered),
        },
        schema=_ACCOUNTS_SCHEMA,
    )


def customer_periods(
    accounts: pa.Table,
    base_usage: pa.Table,
    compare_usage: pa.Table,
    base: Period,
    compare: Period,
) -> pa.Table:
    """One row per registry account: its dimensions plus ``base`` and ``compare`` usage per day.

    ``accounts`` is :func:`accounts_table`; the usage tables have
    ``customer_id`` and ``usage`` (customers absent from them used nothing).
    """
    table = accounts
    for label, usage, period in (("base", base_usage, base), ("compare", compare_usage, compare)):
        per_day = pc.divide(pc.cast(usage["usage"], pa.float64()), float(period.days))
        rates = pa.table({"customer_id": usage["customer_id"], label: per_day})
        table = table.join(rates, keys="customer_id", join_type="left outer")
        table = table.set_column(
            table.schema.get_field_index(label), label, pc.fill_null(table[label], 0.0)
        )
    return table.sort_by("customer_id")


def unregistered(accounts: pa.Table, *usages: pa.Table) -> list[str]:
    """Customers with usage that the registry does not know (they cannot be put in a cohort)."""
    known = accounts["customer_id"]
    found: set[str] = set()
    for usage in usages:
        ids = usage["customer_id"]
        found.update(pc.filter(ids, pc.invert(pc.is_in(ids, value_set=known))).to_pylist())
    return sorted(found)


@dataclass(frozen=True)
class RetentionRow:
    """Retention of one group (a cohort, a segment, or ``all``); ratios are fractions."""

    dimension: str  # cohort / segment
    group: str  # "2026Q1", "smb", or "all"
    accounts: int  # registry accounts in the group
    base_active: int  # usage > 0 in the base period
    retained: int  # base-active and still usage > 0 in compare
    new_in_compare: int  # usage only in compare: not part of the ratios
    base_per_day: float  # Σ base usage per day of the base-active
    compare_per_day: float  # Σ compare usage per day of the base-active
    nrr: float | None  # None when nobody was active in base
    grr: float | None
    logo_retention: float | None


@dataclass(frozen=True)
class CoverageRow:
    """Usage growth of the accounts of one segment (or ``all``) with or without a CSM."""

    segment: str
    coverage: str  # with_csm / without_csm
    accounts: int
    base_active: int
    base_per_day: float  # Σ over every account of the group
    compare_per_day: float
    growth: float | None  # compare ÷ base; None when the group had no base usage
    growth_pct: float | None  # (growth - 1) × 100


def _ratio(numerator: float, denominator: float) -> float | None:
    return numerator / denominator if denominator > 0 else None


def _group_order(dimension: str, groups: Sequence[str]) -> list[str]:
    if dimension == SEGMENT:
        rank = {s: i for i, s in enumerate(SEGMENTS)}
        return sorted(groups, key=lambda g: (rank.get(g, len(rank)), g))
    return sorted(groups)


def retention_rows(customers: pa.Table, dimension: str) -> list[RetentionRow]:
    """NRR / GRR / logo retention per group of ``dimension`` (cohort, segment or all).

    ``customers`` is :func:`customer_periods`. One group-by over the book:
    the base-active mask zeroes out everyone else before summing.
    """
    base, compare = customers["base"], customers["compare"]
    active = pc.greater(base, 0.0)
    still = pc.and_(active, pc.greater(compare, 0.0))
    new = pc.and_(pc.invert(active), pc.greater(compare, 0.0))
    zero = pa.scalar(0.0)
    columns = pa.table(
        {
            "group": customers[dimension],
            "active": pc.cast(active, pa.int64()),
            "still": pc.cast(still, pa.int64()),
            "new": pc.cast(new, pa.int64()),
            "b": pc.if_else(active, base, zero),
            "c": pc.if_else(active, compare, zero),
            "capped": pc.if_else(active, pc.min_element_wise(base, compare), zero),
        }
    )
    grouped = columns.group_by("group").aggregate(
        [
            ("group", "count"),
            ("active", "sum"),
            ("still", "sum"),
            ("new", "sum"),
            ("b", "sum"),
            ("c", "sum"),
            ("capped", "sum"),
        ]
    )
    # Per-element Python only after aggregation: one dict per group.
    by_group = {row["group"]: row for row in grouped.to_pylist()}
    rows = []
    for group in _group_order(dimension, list(by_group)):
        g = by_group[group]
        b, active_n = g["b_sum"], g["active_sum"]
        rows.append(
            RetentionRow(
                dimension=dimension,
                group=group,
                accounts=g["group_count"],
                base_active=active_n,
                retained=g["still_sum"],
                new_in_compare=g["new_sum"],
                base_per_day=b,
                compare_per_day=g["c_sum"],
                nrr=_ratio(g["c_sum"], b),
                grr=_ratio(g["capped_sum"], b),
                logo_retention=_ratio(g["still_sum"], active_n),
            )
        )
    return rows


def coverage_rows(customers: pa.Table) -> list[CoverageRow]:
    """Growth with vs without a CSM, per segment and overall (``all``)."""
    rows: list[CoverageRow] = []
    for dimension in (SEGMENT, ALL):
        grouped = (
            pa.table(
                {
                    "segment": customers[dimension],
                    "coverage": customers["coverage"],
                    "active": pc.cast(pc.greater(customers["base"], 0.0), pa.int64()),
                    "base": customers["base"],
                    "compare": customers["compare"],
                }
            )
            .group_by(["segment", "coverage"])
            .aggregate(
                [("coverage", "count"), ("active", "sum"), ("base", "sum"), ("compare", "sum")]
            )
        )
        found = {(r["segment"], r["coverage"]): r for r in grouped.to_pylist()}
        for segment in _group_order(SEGMENT, sorted({s for s, _ in found})):
            for coverage in (WITH_CSM, WITHOUT_CSM):
                r = found.get((segment, coverage))
                base = r["base_sum"] if r else 0.0
                compare = r["compare_sum"] if r else 0.0
                growth = _ratio(compare, base)
                rows.append(
                    CoverageRow(
                        segment=segment,
                        coverage=coverage,
                        accounts=r["coverage_count"] if r else 0,
                        base_active=r["active_sum"] if r else 0,
                        base_per_day=base,
                        compare_per_day=compare,
                        growth=growth,
                        growth_pct=None if growth is None else (growth - 1.0) * 100.0,
                    )
                )
    return rows


def coverage_lift(rows: Sequence[CoverageRow]) -> dict[str, float | None]:
    """Per segment: growth % with a CSM minus growth % without, in percentage points."""
    pct = {(r.segment, r.coverage): r.growth_pct for r in rows}
    lift: dict[str, float | None] = {}
    for segment in dict.fromkeys(r.segment for r in rows):
        with_csm, without = pct.get((segment, WITH_CSM)), pct.get((segment, WITHOUT_CSM))
        lift[segment] = None if with_csm is None or without is None else with_csm - without
    return lift


@dataclass(frozen=True)
class RetentionReport:
    """Everything ``fleetpulse retention`` prints, JSON-ready through :meth:`as_dict`."""

    quantity: str
    base: Period
    compare: Period
    retention: list[RetentionRow]
    coverage: list[CoverageRow]
    lift_pp: dict[str, float | None]
    unregistered_customers: list[str] = field(default_factory=list)
    base_days_with_data: int | None = None
    compare_days_with_data: int | None = None

    def rows(self, dimension: str) -> list[RetentionRow]:
        return [r for r in self.retention if r.dimension == dimension]

    def row(self, dimension: str, group: str) -> RetentionRow:
        return next(r for r in self.rows(dimension) if r.group == group)

    def as_dict(self) -> dict[str, Any]:
        def period(p: Period, with_data: int | None) -> dict[str, Any]:
            return {"from": p.start.isoformat(), "to": p.end.isoformat(), "days": p.days,
                    "days_with_data": with_data}

        return {
            "quantity": self.quantity,
            "normalisation": "usage per calendar day of each period",
            "base": period(self.base, self.base_days_with_data),
            "compare": period(self.compare, self.compare_days_with_data),
            "retention": [asdict(r) for r in self.retention],
            "csm_coverage": [asdict(r) for r in self.coverage],
            "csm_lift_pp": self.lift_pp,
            "unregistered_customers": self.unregistered_customers,
        }


def compute_retention(
    accounts: Mapping[str, Account],
    base_usage: pa.Table,
    compare_usage: pa.Table,
    base: Period,
    compare: Period,
    *,
    quantity: str,
    by: Sequence[str] = DIMENSIONS,
    base_days_with_data: int | None = None,
    compare_days_with_data: int | None = None,
) -> RetentionReport:
    """Retention rows for each dimension in ``by`` (each ending with its ``all`` row) and coverage."""
    unknown = [d for d in by if d not in DIMENSIONS]
    if unknown:
        raise ValueError(f"unknown dimension {unknown[0]!r}; use {', '.join(DIMENSIONS)}")
    table = accounts_table(accounts)
    customers = customer_periods(table, base_usage, compare_usage, base, compare)
    retention: list[RetentionRow] = []
    for dimension in by:
        retention.extend(retention_rows(customers, dimension))
        overall = retention_rows(customers, ALL)[0]
        retention.append(RetentionRow(**{**asdict(overall), "dimension": dimension}))
    coverage = coverage_rows(customers)
    return RetentionReport(
        quantity=quantity,
        base=base,
        compare=compare,
        retention=retention,
        coverage=coverage,
        lift_pp=coverage_lift(coverage),
        unregistered_customers=unregistered(table, base_usage, compare_usage),
        base_days_with_data=base_days_with_data,
        compare_days_with_data=compare_days_with_data,
    )
