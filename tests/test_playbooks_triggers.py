"""Every trigger type on literal daily signals: met, clear, held, and what the CSM reads."""

from __future__ import annotations

import dataclasses
from datetime import date

from fleetpulse.pipeline.playbooks.history import HOUR_MS, AccountHistory, GatewaySightings
from fleetpulse.pipeline.playbooks.triggers import CLEAR, HELD, MET, _day_ms, evaluate

from .test_playbooks_support import account, history, iso, one, sig


def states(book, hist, after=None) -> list[str]:
    return [v.state for v in evaluate(book.playbooks[0], hist, after)]


def test_band_is_met_while_red_and_says_what_it_was_before() -> None:
    book = one("{type: band, bands: [red]}")
    hist = history([sig(0, health=80), sig(1, health=40), sig(2, health=30, low=True), sig(3, health=30),
                    sig(4, health=60)])
    verdicts = evaluate(book.playbooks[0], hist)
    assert [v.state for v in verdicts] == [CLEAR, MET, HELD, MET, CLEAR]
    assert verdicts[1].what == f"Health 40 is red (since {iso(1)}; was green (80) on {iso(0)})."
    assert verdicts[3].what == f"Health 30 is red (since {iso(1)}; was green (80) on {iso(0)})."


def test_low_coverage_days_are_held_unless_the_trigger_says_never() -> None:
    hist = history([sig(0, health=30), sig(1, health=30, low=True, coverage=0.2)])
    assert states(one("{type: band}"), hist) == [MET, HELD]
    assert states(one("{type: band, coverage_hold: never}"), hist) == [MET, MET]


def test_usage_drop_compares_window_usage_with_the_baseline_before_it() -> None:
    book = one("{type: usage_drop, drop_pct: 40, window_days: 7, baseline_days: 14, baseline_min_days: 7}")
    # 9 active devices x 1000 = 9000 per day for 21 days, then 4 devices x 1000 = 4000 (-56%)
    days = [sig(i) for i in range(21)] + [sig(21 + i, active=4) for i in range(3)]
    verdicts = evaluate(book.playbooks[0], history(days))
    # the baseline is the 14 days before the current 7-day window; it needs 7 of them
    assert [v.state for v in verdicts[:13]] == [HELD] * 13
    assert "baseline has 6 of 7 trustworthy days" in verdicts[12].what
    assert {v.state for v in verdicts[13:21]} == {CLEAR}
    assert [v.state for v in verdicts[21:]] == [MET] * 3
    assert "Usage fell 56% against its baseline: 4,000 per day" in verdicts[21].what
    assert "9,000 per day" in verdicts[21].what


def test_usage_drop_ignores_low_coverage_days_on_both_sides() -> None:
    book = one("{type: usage_drop, drop_pct: 40, baseline_days: 14, baseline_min_days: 7}")
    # the baseline's outage days (usage read as 0) must not lower the baseline
    days = [sig(i, usage=0.0 if i in (3, 4, 5) else 1000.0, low=i in (3, 4, 5)) for i in range(21)]
    days.append(sig(21, usage=None))
    verdicts = evaluate(book.playbooks[0], history(days))
    assert verdicts[20].state == CLEAR and verdicts[21].state == HELD


def test_onboarding_stalled_from_day_n_until_adoption_reaches_the_target() -> None:
    book = one("{type: onboarding_stalled, after_days: 14, adoption_below: 0.5}")
    acct = account(contract_start=date.fromisoformat(iso(0)))
    days = [sig(i, stage="onboarding", adoption=0.2, active=2) for i in range(16)]
    days += [sig(16, stage="onboarding", adoption=0.6, active=6), sig(17, stage="adopting", adoption=0.6)]
    verdicts = evaluate(book.playbooks[0], history(days, acct))
    assert [v.state for v in verdicts] == [CLEAR] * 14 + [MET, MET, CLEAR, CLEAR]
    assert verdicts[14].what.startswith(f"Onboarding stalled: day 14 since the contract started ({iso(0)}), "
                                        "2 of 10 entitled devices active (20%)")


def test_expansion_needs_adoption_above_the_entitlement() -> None:
    book = one("{type: expansion, adoption_above: 1.0}")
    days = [sig(0, adoption=1.0, active=10), sig(1, adoption=1.3, active=13), sig(2, adoption=None)]
    verdicts = evaluate(book.playbooks[0], history(days))
    assert [v.state for v in verdicts] == [CLEAR, MET, CLEAR]
    assert "3 more devices in use than bought" in verdicts[1].what


def test_renewal_risk_within_the_window_and_below_the_health() -> None:
    book = one("{type: renewal_risk, within_days: 30, health_below: 60}")
    acct = account(renewal_date=date.fromisoformat(iso(40)))
    days = [sig(5, health=50), sig(10, health=50), sig(11, health=65), sig(12, health=59)]
    verdicts = evaluate(book.playbooks[0], history(days, acct))
    assert [v.state for v in verdicts] == [CLEAR, MET, CLEAR, MET]
    assert f"renewal on {iso(40)} (30 days)" in verdicts[1].what
    unknown = AccountHistory("acme", None, tuple(days))  # not in the registry: no renewal date
    assert states(book, unknown) == [CLEAR] * 4


def test_gateway_offline_counts_hours_silent_at_the_end_of_the_day() -> None:
    book = one("{type: gateway_offline, hours: 12, known_days: 14}")
    day0 = _day_ms(iso(0))
    gw1 = tuple(day0 + h * HOUR_MS for h in range(72))  # three full days
    gw2 = tuple(day0 + h * HOUR_MS for h in range(24 + 10))  # stops at 10:00 on day 1
    sightings = GatewaySightings({"gw1": gw1, "gw2": gw2}, horizon_ms=day0 + 72 * HOUR_MS)
    days = [sig(0), sig(1), sig(2)]
    verdicts = evaluate(book.playbooks[0], history(days, gateways=sightings))
    # day 1 ends 14 h after gw2's last hour (09:00-10:00): more than 12 h
    assert [v.state for v in verdicts] == [CLEAR, MET, MET]
    assert f"gw2 silent for 14 h (last seen {iso(1)} 09:00 UTC)" in verdicts[1].what
    assert "gw1" not in verdicts[1].what
    # the lake ends at 06:00 on day 2: silence after the horizon is not counted
    short = dataclasses.replace(sightings, horizon_ms=day0 + 24 * HOUR_MS + 11 * HOUR_MS)
    assert states(book, history(days[:2], gateways=short)) == [CLEAR, CLEAR]
    # no sightings at all: cannot judge
    assert states(book, history(days)) == [HELD] * 3


def test_gateway_unseen_for_known_days_is_decommissioned_not_offline() -> None:
    book = one("{type: gateway_offline, hours: 12, known_days: 2}")
    day0 = _day_ms(iso(0))
    sightings = GatewaySightings({"gw": tuple(day0 + h * HOUR_MS for h in range(10))}, day0 + 10 * 24 * HOUR_MS)
    assert states(book, history([sig(0), sig(1), sig(2)], gateways=sightings)) == [MET, MET, CLEAR]


def test_time_to_value_and_threshold() -> None:
    assert states(one("{type: time_to_value}"), history([sig(0), sig(1, ttv=12)])) == [CLEAR, MET]
    book = one("{type: threshold, signal: adoption, below: 0.5}")
    assert states(book, history([sig(0, adoption=0.4), sig(1, adoption=0.6), sig(2, adoption=None)])) == [
        MET, CLEAR, HELD]


def test_filters_clear_the_condition_outside_them() -> None:
    days = [sig(0, health=30, segment="smb"), sig(1, health=30, stage="onboarding")]
    assert states(one("{type: band}", filters="{segments: [smb]}"), history(days)) == [MET, CLEAR]
    no_csm = account(csm_owner=None)
    assert states(one("{type: band}", filters="{csm: assigned}"), history(days, no_csm)) == [CLEAR, CLEAR]
    verdict = evaluate(one("{type: band}", filters="{min_arr_usd: 50000}").playbooks[0], history(days))[0]
    assert verdict.state == CLEAR and "ARR 24,000 USD is below 50,000" in verdict.what


def test_a_day_is_judged_from_itself_and_earlier_days_only() -> None:
    book = one("{type: usage_drop, drop_pct: 40, baseline_days: 14, baseline_min_days: 7}")
    days = [sig(i) for i in range(21)] + [sig(21 + i, active=2) for i in range(5)]
    whole = evaluate(book.playbooks[0], history(days))
    for cut in range(1, len(days)):
        # judging a prefix, then the rest after it, gives the verdicts of judging the whole
        assert evaluate(book.playbooks[0], history(days[:cut]))[-1] == whole[cut - 1]
        assert evaluate(book.playbooks[0], history(days), after_day=iso(cut - 1)) == whole[cut:]
