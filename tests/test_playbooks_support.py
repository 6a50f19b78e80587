"""Literal inputs for the playbook tests: daily signals, accounts, playbook files (no tests here)."""

from __future__ import annotations

import dataclasses
import textwrap
from datetime import date, timedelta

from fleetpulse.pipeline.model import Component, DailySignal
from fleetpulse.pipeline.playbooks.config import PlaybookSet, parse_playbooks
from fleetpulse.pipeline.playbooks.history import AccountHistory, GatewaySightings
from fleetpulse.schemas.accounts import Account

START = date(2026, 3, 1)

HEADER = """
version: 1
report_url: https://cs.example/report/index.html
channels:
  csm-mail: {type: file, path: csm.jsonl}
  pool: {type: file, path: pool.jsonl}
  customer: {type: file, path: customer.jsonl}
  sales: {type: file, path: sales.jsonl}
routing:
  csm_channel: csm-mail
  fallback_channel: pool
"""


def iso(offset: int) -> str:
    return (START + timedelta(days=offset)).isoformat()


def account(**changes: object) -> Account:
    base = Account(
        customer_id="acme", name="Acme Dental", segment="mid_market", engagement_model="low_touch",
        arr_usd=24_000, contract_start=date(2025, 1, 1), renewal_date=date(2027, 1, 1), entitled_devices=10,
        csm_owner="jane@vendor.example", nps=None, csm_channel=None, contact_email="admin@acme.example",
    )
    return dataclasses.replace(base, **changes)


def sig(offset: int, *, customer: str = "acme", health: float = 85.0, band: str | None = None,
        stage: str = "mature", adoption: float | None = 0.9, usage: float | None = 1000.0, active: int = 9,
        entitled: int = 10, coverage: float = 1.0, low: bool = False, ttv: int | None = None,
        segment: str = "mid_market", delta: float | None = 0.0) -> DailySignal:
    """A healthy mature day by default; ``usage`` is usage per active device per day."""
    if band is None:
        band = "green" if health >= 70 else "yellow" if health >= 45 else "red"
    components = (
        Component("adoption", adoption, 90.0, 0.4, 36.0, f"{active} of {entitled} entitled devices active"),
        Component("engagement", 1.0, 100.0, 0.6, 60.0, "usage at baseline"),
    )
    return DailySignal(
        customer_id=customer, day=iso(offset), segment=segment, csm_owner="jane@vendor.example",
        entitled_devices=entitled, known_devices=entitled, active_devices=active, adoption=adoption,
        usage_per_active_device=usage, feature_breadth=0.8, error_rate=0.0, firmware_currency=1.0,
        coverage=coverage, low_coverage=low, health=health, band=band, previous_health=None,
        trend_delta=delta, trend="flat" if delta is not None else "new", stage=stage, driver="adoption",
        components=components, time_to_value_days=ttv, record_coverage=None,
    )


def history(signals: list[DailySignal], acct: Account | None = None,
            gateways: GatewaySightings | None = None) -> AccountHistory:
    acct = account() if acct is None else acct
    return AccountHistory(signals[0].customer_id, acct, tuple(signals), gateways)


def book(playbooks_yaml: str, header: str = HEADER) -> PlaybookSet:
    return parse_playbooks(textwrap.dedent(header) + "playbooks:\n" + textwrap.indent(textwrap.dedent(playbooks_yaml), "  "),
                           "test.yaml")


def one(trigger: str, episode: str = "{}", actions: str = "[{kind: notify_csm}]", filters: str = "{}",
        name: str = "pb") -> PlaybookSet:
    """A file with one playbook; trigger / episode / actions / filters as YAML flow text."""
    return book(f"""
    - name: {name}
      title: Test playbook
      step: Call the customer.
      trigger: {trigger}
      filters: {filters}
      episode: {episode}
      actions: {actions}
    """)
