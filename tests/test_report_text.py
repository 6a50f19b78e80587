"""The plain-text portfolio and account reports, on literal signals."""

from __future__ import annotations

import dataclasses

import pytest

from fleetpulse.pipeline.model import Alert, Component, DailySignal
from fleetpulse.pipeline.report.text import render_account, render_portfolio, safe


def signal(customer: str, health: float, band: str, **changes: object) -> DailySignal:
    components = (
        Component("adoption", 0.5, 62.5, 0.25, 15.62, "2 of 4 entitled devices active in the last 7 days (50%)"),
        Component("engagement", 0.9, 80.0, 0.35, 28.0, "3,240 runtime_s per active device per day, 90% of baseline"),
        Component("breadth", 1.0, 100.0, 0.10, 10.0, "3 of 3 features used in the last 7 days"),
        Component("reliability", 0.3, 40.0, 0.15, 6.0, "9 error records over 30 active device-days"),
        Component("firmware", 1.0, 100.0, 0.15, 15.0, "4 of 4 devices on the newest firmware 2.0.0"),
        Component("nps", None, 0.0, 0.0, 0.0, "not measurable: no NPS answer in the CRM"),
    )
    base = DailySignal(
        customer_id=customer, day="2024-03-01", segment="mid_market", csm_owner="jane", entitled_devices=4,
        known_devices=4, active_devices=2, adoption=0.5, usage_per_active_device=3240.0, feature_breadth=1.0,
        error_rate=0.3, firmware_currency=1.0, coverage=0.98, low_coverage=False, health=health, band=band,
        previous_health=health + 12.5, trend_delta=-12.5, trend="down", stage="adopting", driver="adoption",
        components=components,
    )
    return dataclasses.replace(base, **changes)


def alert(customer: str, day: str, kind: str, severity: str = "warning") -> Alert:
    return Alert(customer_id=customer, day=day, kind=kind, severity=severity, title=f"{kind} title",
                 explanation="Health 40 (red). " + "Driver: adoption 50% explained at length. " * 5,
                 health=40.0, band="red", driver="adoption", coverage=0.98)


def rows_of(text: str, names: list[str]) -> list[str]:
    return [line for line in text.splitlines() if line.split("  ")[0].strip() in names]


def test_portfolio_lists_worst_first_with_every_column() -> None:
    latest = [
        signal("good", 91.0, "green", trend="up", trend_delta=6.0, previous_health=85.0, stage="mature"),
        signal("bad", 40.2, "red", stage="at_risk"),
        signal("meh", 60.0, "yellow", trend="new", trend_delta=None, previous_health=None,
               coverage=0.3, low_coverage=True),
    ]
    text = render_portfolio(latest, [])
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("customer"))
    for column in ("segment", "health", "band", "trend", "adoption", "stage", "coverage", "driver"):
        assert column in header
    rows = rows_of(text, ["good", "bad", "meh"])
    assert [r.split()[0] for r in rows] == ["bad", "meh", "good"]
    bad, meh, good = rows
    assert "40.2" in bad and "red" in bad and "v -12.5" in bad and "50%" in bad and "at_risk" in bad
    assert "adoption 50%: 2 of 4 entitled devices active" in bad
    assert "new" in meh and "30% LOW" in meh
    assert "^ +6.0" in good
    # fixed width: every row of the table starts its columns at the same offsets
    starts = {line.index("mid_market") for line in rows}
    assert len(starts) == 1 and header.index("segment") in starts
    assert "green 1, yellow 1, red 1; low coverage 1" in text
    assert "Alerts raised: none" in text


def test_portfolio_lists_alerts_with_their_explanation() -> None:
    alerts = [
        alert("bad", "2024-03-01", "usage_drop"),
        alert("bad", "2024-02-28", "band_worsened", "critical"),
    ]
    text = render_portfolio([signal("bad", 40.0, "red")], alerts)
    section = text.split("Alerts raised: 2", 1)[1]
    assert section.index("2024-02-28  bad  band_worsened  critical: band_worsened title") < \
        section.index("2024-03-01  bad  usage_drop  warning: usage_drop title")
    explanation = [line for line in section.splitlines() if line.startswith("    ")]
    assert explanation and all(len(line) <= 100 for line in explanation)
    assert "Driver: adoption 50% explained" in " ".join(explanation)


def test_output_is_terminal_safe() -> None:
    hostile = signal("bad", 40.0, "red", driver="breadth")
    hostile = dataclasses.replace(hostile, components=tuple(
        dataclasses.replace(c, detail="unused: \x1b[31mred\x1b[0m caf\u00e9") if c.name == "breadth" else c
        for c in hostile.components))
    text = render_portfolio([hostile], [])
    assert "\x1b" not in text and all(" " <= ch <= "~" or ch == "\n" for ch in text)
    assert "\\x1b[31mred" in text and "caf\\xe9" in text
    account = render_account([hostile])
    assert "\x1b" not in account
    assert safe("tab\there") == "tab\\there"


def test_driver_detail_is_clipped_to_keep_rows_readable() -> None:
    long = signal("bad", 40.0, "red")
    long = dataclasses.replace(long, components=tuple(
        dataclasses.replace(c, detail="x" * 300) if c.name == "adoption" else c for c in long.components))
    row = rows_of(render_portfolio([long], []), ["bad"])[0]
    assert row.endswith("...") and len(row) < 200


def test_account_explains_components_and_the_last_14_days() -> None:
    history = [
        signal("acme", 60.0 + i, "yellow", day=f"2024-03-{i + 1:02d}") for i in range(20)
    ]
    text = render_account(list(reversed(history)))  # any order
    lines = text.splitlines()
    assert lines[0] == "acme (mid_market, CSM jane) on 2024-03-20"
    assert "Health 79.0 yellow, trend v -12.5 (was 91.5), stage adopting" in text
    assert "Coverage 98% of expected heartbeats" in text
    assert "Driver: adoption" in text
    adoption = next(line for line in lines if line.startswith("adoption "))
    for cell in ("50%", "62.5", "25.0%", "15.6", "2 of 4 entitled devices active"):
        assert cell in adoption
    nps = next(line for line in lines if line.startswith("nps "))
    assert "n/a" in nps and "not measurable" in nps
    days = [line for line in lines if line.startswith("2024-03-")]
    assert [d.split()[0] for d in days] == [f"2024-03-{i:02d}" for i in range(7, 21)]
    assert days[-1].endswith("#" * 16)  # 79 / 5 rounded


def test_account_without_history_and_with_mixed_customers() -> None:
    assert render_account([]) == "No signals for this account.\n"
    with pytest.raises(ValueError, match="one customer"):
        render_account([signal("a", 50.0, "yellow"), signal("b", 50.0, "yellow")])


def test_empty_portfolio() -> None:
    text = render_portfolio([], [])
    assert text.startswith("Customer health: no signals")
