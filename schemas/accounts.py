"""The accounts registry contract: the CRM export that says who the customers are.

It lives with the telemetry contract because two sides share it: the
simulator writes it (``devices/simulator``) and the pipeline joins it as a
side input.

A CSV with one row per customer (``accounts.csv``; the simulator writes one).
Columns, in any order, extra columns ignored:

=================  ========  ==================================================
column             required  meaning
=================  ========  ==================================================
customer_id        yes       identifier matching the telemetry contract
name               no        display name (defaults to customer_id)
segment            yes       ``smb`` / ``mid_market`` / ``enterprise``
engagement_model   yes       ``digital`` / ``low_touch`` / ``high_touch``
arr_usd            yes       annual recurring revenue, integer USD >= 0
contract_start     yes       ISO date YYYY-MM-DD
renewal_date       yes       ISO date, not before contract_start
entitled_devices   yes       devices bought, integer >= 0
csm_owner          no        assigned CSM (e-mail or name); empty = none
nps                no        latest NPS/CSAT answer -100..100; empty = unknown
csm_channel        no        where this account's CSM alerts go: a channel name
                             from the playbooks file; empty = its default
contact_email      no        the customer's contact for digital touches
                             (e-mail); empty = none
=================  ========  ==================================================

The last two columns are optional and may be absent altogether: older exports
still load (playbooks then route by their defaults).

Every problem raises :class:`~fleetpulse.errors.ConfigError` naming the file,
the row and column, and the fix. Standard library only.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path

from fleetpulse.errors import ConfigError

from .contract import load_contract

#: a channel name as the playbooks file spells it
CHANNEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
#: loose on purpose: the mail server is the judge; this catches a wrong column
EMAIL = re.compile(r"[^@\s,;<>]+@[^@\s,;<>]+\.[^@\s,;<>]+")

#: the registry's columns, in the order the simulator writes them
COLUMNS = (
    "customer_id",
    "name",
    "segment",
    "engagement_model",
    "arr_usd",
    "contract_start",
    "renewal_date",
    "entitled_devices",
    "csm_owner",
    "nps",
    "csm_channel",
    "contact_email",
)
SEGMENTS = ("smb", "mid_market", "enterprise")
ENGAGEMENT_MODELS = ("digital", "low_touch", "high_touch")
REQUIRED = (
    "customer_id",
    "segment",
    "engagement_model",
    "arr_usd",
    "contract_start",
    "renewal_date",
    "entitled_devices",
)


@dataclass(frozen=True)
class Account:
    customer_id: str
    name: str
    segment: str
    engagement_model: str
    arr_usd: int
    contract_start: date
    renewal_date: date
    entitled_devices: int
    csm_owner: str | None
    nps: int | None
    #: channel name (defined in the playbooks file) for this account's CSM alerts; None = routing default
    csm_channel: str | None = None
    #: the customer's contact for digital touches; None = none known
    contact_email: str | None = None


class _Row:
    """One CSV row with typed getters whose errors name the file, row and column."""

    def __init__(self, source: str, line: int, raw: dict[str, str | None]) -> None:
        self.source, self.line, self.raw = source, line, raw

    def bad(self, column: str, problem: str, fix: str) -> ConfigError:
        return ConfigError(self.source, f"row {self.line}.{column}", problem, fix)

    def text(self, column: str) -> str:
        return (self.raw.get(column) or "").strip()

    def integer(self, column: str, low: int, high: int | None = None) -> int:
        text = self.text(column)
        try:
            value = int(text)
        except ValueError:
            raise self.bad(column, f"{text!r} is not an integer", f"write a whole number >= {low}") from None
        if value < low or (high is not None and value > high):
            raise self.bad(column, f"{value} is out of range", f"use a value in [{low}, {high}]")
        return value

    def day(self, column: str) -> date:
        text = self.text(column)
        try:
            return date.fromisoformat(text)
        except ValueError:
            raise self.bad(column, f"{text!r} is not a date", "write it as YYYY-MM-DD") from None

    def optional(self, column: str, pattern: re.Pattern[str], fix: str) -> str | None:
        text = self.text(column)
        if not text:
            return None
        if not pattern.fullmatch(text):
            raise self.bad(column, f"{text!r} is not valid", fix)
        return text

    def choice(self, column: str, allowed: tuple[str, ...]) -> str:
        text = self.text(column)
        if text not in allowed:
            raise self.bad(column, f"{text!r} is not allowed", f"use one of {', '.join(allowed)}")
        return text


def load_accounts(path: str | Path) -> dict[str, Account]:
    """Read and validate the registry; returns accounts by customer_id."""
    path = Path(path)
    source = str(path)
    try:
        handle = path.open(newline="", encoding="utf-8")
    except OSError as exc:
        raise ConfigError(
            source, "accounts", f"cannot read the accounts registry ({exc.strerror})",
            "pass --accounts with the path of the CRM export CSV",
        ) from None
    identifier = load_contract().identifier_re
    accounts: dict[str, Account] = {}
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(
                source, f"header.{missing[0]}", f"column {missing[0]!r} is missing",
                f"the header must contain {', '.join(REQUIRED)}",
            )
        for line, raw in enumerate(reader, start=2):
            row = _Row(source, line, raw)
            customer_id = row.text("customer_id")
            if not identifier.fullmatch(customer_id):
                raise row.bad("customer_id", f"{customer_id!r} is not a valid identifier",
                          "use letters, digits and . _ : - (at most 64)")
            if customer_id in accounts:
                raise row.bad("customer_id", f"{customer_id!r} appears twice", "keep one row per customer")
            start, renewal = row.day("contract_start"), row.day("renewal_date")
            if renewal < start:
                raise row.bad("renewal_date", f"{renewal} is before contract_start {start}",
                          "fix the dates in the CRM export")
            accounts[customer_id] = Account(
                customer_id=customer_id,
                name=row.text("name") or customer_id,
                segment=row.choice("segment", SEGMENTS),
                engagement_model=row.choice("engagement_model", ENGAGEMENT_MODELS),
                arr_usd=row.integer("arr_usd", 0),
                contract_start=start,
                renewal_date=renewal,
                entitled_devices=row.integer("entitled_devices", 0),
                csm_owner=row.text("csm_owner") or None,
                nps=row.integer("nps", -100, 100) if row.text("nps") else None,
                csm_channel=row.optional("csm_channel", CHANNEL_NAME,
                                         "write a channel name from the playbooks file, or leave it empty"),
                contact_email=row.optional("contact_email", EMAIL,
                                           "write one e-mail address, or leave it empty"),
            )
    if not accounts:
        raise ConfigError(source, "rows", "the registry has no accounts", "export at least one customer")
    return accounts
