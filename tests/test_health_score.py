"""Health scoring on small hand-made CustomerDay rows: each component, the edge cases, the alerts."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import date, timedelta

import pytest

from fleetpulse.pipeline.health.config import HealthModel, load_health_model
from fleetpulse.pipeline.health.score import FleetContext, score_account
from fleetpulse.pipeline.model import Alert, Component, CustomerDay, DailySignal
from fleetpulse.schemas.accounts import Account

START = date(2024, 1, 1)
DEVICES = ("d1", "d2", "d3", "d4")
CATALOG = frozenset({"copy", "fax", "scan"})
LATEST_FW = "2.0.0"


@pytest.fixture(scope="module")
def model() -> HealthModel:
    return load_health_model(None)


def iso(offset: int) -> str:
    return (START + timedelta(days=offset)).isoformat()


def account(**changes: object) -> Account:
    base = Account(
        customer_id="acme", name="Acme", segment="mid_market", engagement_model="low_touch", arr_usd=120_000,
        contract_start=date(2023, 1, 1), renewal_date=date(2026, 1, 1), entitled_devices=4,
        csm_owner="jane@vendor.example", nps=None,
    )
    return dataclasses.replace(base, **changes)


def cday(
    offset: int,
    *,
    devices: Sequence[str] = DEVICES,
    active: Sequence[str] | None = None,
    gateways: Sequence[str] = ("gw1",),
    heartbeats: int | None = None,
    interval_s: int = 60,
    runtime_per_device: float = 3600.0,
    features: Sequence[str] = tuple(CATALOG),
    errors: int = 0,
    error_fw: dict[str, int] | None = None,
    fw: str = LATEST_FW,
    customer: str = "acme",
) -> CustomerDay:
    """One healthy day by default: every device active for an hour, full heartbeats, every feature."""
    active = devices if active is None else active
    return CustomerDay(
        customer_id=customer,
        day=iso(offset),
        reporting_devices=tuple(sorted(devices)),
        active_devices=tuple(sorted(active)),
        gateways=tuple(sorted(gateways)),
        heartbeats=len(devices) * 86400 // interval_s if heartbeats is None else heartbeats,
        expected_heartbeats=len(devices) * 86400 / interval_s,
        heartbeat_interval_s=interval_s if devices else 0,
        usage={"runtime_s": runtime_per_device * len(active)} if active else {},
        features={f: 3 for f in features},
        errors=errors,
        critical_errors=0,
        error_fw=error_fw or {},
        device_fw={d: fw for d in devices},
    )


def fleet(first: int, last: int, *, latest: str = LATEST_FW,
          issues: dict[int, frozenset[str]] | None = None) -> FleetContext:
    return FleetContext(
        first_day=iso(first), last_day=iso(last),
        latest_fw_by_day={iso(i): latest for i in range(-60, last + 1)},
        feature_catalog=CATALOG,
        product_issue_fw_by_day={iso(i): fws for i, fws in (issues or {}).items()},
    )


def by_day(signals: list[DailySignal]) -> dict[str, DailySignal]:
    return {s.day: s for s in signals}


def comp(signal: DailySignal, name: str) -> Component:
    return next(c for c in signal.components if c.name == name)


def kinds(alerts: list[Alert]) -> list[tuple[str, str]]:
    return [(a.day, a.kind) for a in alerts]


# ---- components -----------------------------------------------------------------------------


def test_steady_account_scores_full_marks_and_weights_sum_to_one(model: HealthModel) -> None:
    rows = [cday(i) for i in range(40)]
    signals, alerts = score_account(account(), rows, model, fleet(0, 39), "acme")
    last = signals[-1]
    assert len(signals) == 40 and signals[0].day == iso(0)  # data began after the contract start
    assert (last.health, last.band, last.stage, last.driver, last.trend) == (100.0, "green", "mature", "none", "flat")
    assert last.coverage == 1.0 and not last.low_coverage
    assert sum(c.weight for c in last.components) == pytest.approx(1.0)
    assert sum(c.contribution for c in last.components) == pytest.approx(last.health)
    assert comp(last, "nps").value is None  # no answer in the CRM
    assert alerts == []  # every entitled device in use is not yet more than was bought


def test_adoption_counts_distinct_active_devices_over_seven_days(model: HealthModel) -> None:
    rows = [cday(i, active=("d1",) if i % 2 else ("d2",)) for i in range(7)]
    rows += [cday(i, active=("d3",)) for i in range(7, 8)]
    signals, _ = score_account(account(entitled_devices=5), rows, model, fleet(0, 7), "acme")
    day6, day7 = signals[6], signals[7]
    assert (day6.active_devices, day6.adoption) == (2, 0.4)
    assert (day7.active_devices, day7.adoption) == (3, 0.6)  # d1, d2 still in the window, plus d3
    adoption = comp(day7, "adoption")
    assert adoption.detail == "3 of 5 entitled devices active in the last 7 days (60%)"
    assert adoption.score == pytest.approx(75.0)  # linear 0 -> 0.8


def test_zero_entitlement_drops_adoption_and_renormalises_the_rest(model: HealthModel) -> None:
    signals, _ = score_account(account(entitled_devices=0), [cday(0)], model, fleet(0, 0), "acme")
    adoption = comp(signals[0], "adoption")
    assert adoption.value is None and adoption.weight == 0 and adoption.contribution == 0
    assert "0 entitled devices" in adoption.detail and "weight went to the other components" in adoption.detail
    assert signals[0].adoption is None
    weighted = [c for c in signals[0].components if c.weight > 0]
    # engagement has no baseline on the first day either: breadth, reliability, firmware share the weight
    assert [c.name for c in weighted] == ["breadth", "reliability", "firmware"]
    assert sum(c.weight for c in weighted) == pytest.approx(1.0)
    assert comp(signals[0], "breadth").weight == pytest.approx(0.10 / 0.40, abs=1e-4)
    assert signals[0].health == 100.0


def test_engagement_compares_usage_per_active_device_with_the_own_baseline(model: HealthModel) -> None:
    rows = [cday(i) for i in range(35)]  # 3600 s per device per day
    rows += [cday(i, runtime_per_device=2700.0) for i in range(35, 42)]  # 25% less from day 35
    signals, _ = score_account(account(), rows, model, fleet(0, 41), "acme")
    last = by_day(signals)[iso(41)]
    engagement = comp(last, "engagement")
    assert engagement.value == pytest.approx(0.75)
    assert engagement.score == pytest.approx(50.0)
    assert last.usage_per_active_device == pytest.approx(2700.0)
    assert "2,700 runtime_s per active device per day" in engagement.detail
    assert "75% of the 28-day baseline (3,600)" in engagement.detail
    assert last.driver == "engagement"


def test_first_day_has_no_trend_and_no_baseline(model: HealthModel) -> None:
    signals, alerts = score_account(account(), [cday(0)], model, fleet(0, 0), "acme")
    first = signals[0]
    assert (first.trend, first.previous_health, first.trend_delta) == ("new", None, None)
    engagement = comp(first, "engagement")
    assert engagement.value is None and "no baseline yet" in engagement.detail
    assert alerts == []


def test_engagement_needs_baseline_min_days(model: HealthModel) -> None:
    rows = [cday(i) for i in range(14)]
    signals, _ = score_account(account(), rows, model, fleet(0, 13), "acme")
    assert comp(signals[12], "engagement").value is None  # 6 baseline days before the last 7
    assert comp(signals[13], "engagement").value == pytest.approx(1.0)  # 7


def test_breadth_is_features_used_over_the_catalog_and_names_the_unused(model: HealthModel) -> None:
    rows = [cday(0, features=("scan",)), cday(1, features=("scan", "copy", "not_in_catalog"))]
    signals, _ = score_account(account(), rows, model, fleet(0, 1), "acme")
    assert signals[0].feature_breadth == 0.3333  # signal fields are rounded to 4 places
    assert comp(signals[0], "breadth").detail.endswith("unused: copy, fax")
    assert signals[1].feature_breadth == 0.6667  # a feature outside the catalog is ignored


def test_reliability_does_not_charge_fleet_wide_firmware_errors(model: HealthModel) -> None:
    rows = [
        cday(0, errors=2, error_fw={"1.9.0": 2}),
        cday(1, errors=40, error_fw={"1.9.0": 4, "2.0.0": 36}),  # 2.0.0 is a product issue that day
    ]
    issues = {1: frozenset({"2.0.0"})}
    signals, _ = score_account(account(), rows, model, fleet(0, 1, issues=issues), "acme")
    reliability = comp(signals[1], "reliability")
    assert signals[1].error_rate == pytest.approx(6 / 8)  # 2 + 4 charged over 8 active device-days
    assert "36 more on firmware 2.0.0 not charged: fleet-wide product issue" in reliability.detail
    assert reliability.score == 15  # the <= 1.0 threshold row
    unexcused, _ = score_account(account(), rows, model, fleet(0, 1), "acme")
    assert unexcused[1].error_rate == pytest.approx(42 / 8)
    assert comp(unexcused[1], "reliability").score == 0


def test_reliability_counts_errors_of_devices_that_only_fail(model: HealthModel) -> None:
    rows = [cday(0, active=(), errors=8)]
    signals, _ = score_account(account(), rows, model, fleet(0, 0), "acme")
    assert signals[0].error_rate == pytest.approx(2.0)
    assert "over 4 reporting device-days" in comp(signals[0], "reliability").detail


def test_firmware_is_the_share_on_the_fleets_newest(model: HealthModel) -> None:
    rows = [cday(0, devices=("d1", "d2"), fw="1.9.0"), cday(1, devices=("d3", "d4"))]
    signals, _ = score_account(account(), rows, model, fleet(0, 1), "acme")
    assert signals[0].firmware_currency == 0.0
    # d1 and d2 are still known (seen within 14 days) and still on 1.9.0
    assert signals[1].firmware_currency == 0.5
    assert comp(signals[1], "firmware").detail == (
        "2 of 4 devices on the newest firmware 2.0.0; behind: 1.9.0 x2")


def test_nps_is_shown_but_weightless_by_default(model: HealthModel) -> None:
    signals, _ = score_account(account(nps=30), [cday(0)], model, fleet(0, 0), "acme")
    nps = comp(signals[0], "nps")
    assert (nps.value, nps.score, nps.weight, nps.contribution) == (30.0, 80.0, 0.0, 0.0)


# ---- calendar, coverage, lifecycle ----------------------------------------------------------


def test_days_in_any_order_and_duplicate_panes_give_the_same_result(model: HealthModel) -> None:
    rows = [cday(i, active=DEVICES[: 1 + i % 4]) for i in range(20)]
    partial = dataclasses.replace(rows[5], heartbeats=10)  # an earlier, smaller pane of day 5
    ordered = score_account(account(), rows, model, fleet(0, 19), "acme")
    shuffled = score_account(account(), [partial, *reversed(rows)], model, fleet(0, 19), "acme")
    assert ordered == shuffled


def test_later_first_day_gives_the_same_numbers_as_a_full_run(model: HealthModel) -> None:
    rows = [cday(i) for i in range(30)] + [cday(i, active=()) for i in range(30, 40)]
    full_signals, full_alerts = score_account(account(), rows, model, fleet(0, 39), "acme")
    tail_signals, tail_alerts = score_account(account(), rows, model, fleet(35, 39), "acme")
    assert tail_signals == full_signals[35:]
    assert tail_alerts == [a for a in full_alerts if a.day >= iso(35)]


def test_no_data_at_all(model: HealthModel) -> None:
    assert score_account(None, [], model, fleet(0, 5), "ghost") == ([], [])
    signals, alerts = score_account(account(contract_start=START + timedelta(days=3)), [], model,
                                    fleet(0, 5), "acme")
    assert [s.day for s in signals] == [iso(3), iso(4), iso(5)]  # from the contract start
    first = signals[0]
    assert (first.coverage, first.low_coverage, first.known_devices, first.adoption) == (0.0, True, 0, 0.0)
    assert "no earlier trustworthy day" in comp(first, "adoption").detail
    assert first.stage == "onboarding" and first.band == "red"
    assert alerts == []  # nothing went silent: there is no gateway to name


def test_gaps_are_real_days_with_zero_coverage(model: HealthModel) -> None:
    signals, _ = score_account(account(), [cday(0), cday(3)], model, fleet(0, 3), "acme")
    assert [s.day for s in signals] == [iso(i) for i in range(4)]
    assert [s.coverage for s in signals] == [1.0, 0.0, 0.0, 1.0]
    assert signals[1].known_devices == 4


def test_devices_without_heartbeats_have_zero_coverage(model: HealthModel) -> None:
    signals, _ = score_account(account(), [cday(0, heartbeats=0)], model, fleet(0, 0), "acme")
    assert signals[0].known_devices == 4
    assert (signals[0].coverage, signals[0].low_coverage) == (0.0, True)


def test_coverage_counts_known_devices_that_went_quiet(model: HealthModel) -> None:
    rows = [cday(0), cday(1, devices=("d1", "d2"))]  # d3, d4 silent on day 1
    signals, _ = score_account(account(), rows, model, fleet(0, 1), "acme")
    assert (signals[1].known_devices, signals[1].coverage, signals[1].low_coverage) == (4, 0.5, True)


def test_account_missing_from_the_crm_is_scored_on_what_is_measurable(model: HealthModel) -> None:
    rows = [cday(i, customer="stray") for i in range(3)]
    signals, _ = score_account(None, rows, model, fleet(0, 2), "stray")
    last = signals[-1]
    assert (last.segment, last.entitled_devices, last.csm_owner, last.adoption) == ("unknown", 0, None, None)
    assert "customer not in the CRM export" in comp(last, "adoption").detail
    assert last.health == 100.0 and last.stage == "mature"


def test_rows_of_another_customer_are_refused(model: HealthModel) -> None:
    with pytest.raises(ValueError, match="'other'"):
        score_account(account(), [cday(0, customer="other")], model, fleet(0, 0), "acme")


def test_stage_onboarding_until_time_to_value(model: HealthModel) -> None:
    acct = account(contract_start=START, entitled_devices=10)
    few, _ = score_account(acct, [cday(0)], model, fleet(0, 0), "acme")  # 4 of 10 active
    assert few[0].stage == "onboarding"
    most, _ = score_account(account(contract_start=START, entitled_devices=5), [cday(0)], model, fleet(0, 0),
                            "acme")
    assert most[0].stage == "mature"  # 80% active: time to value reached


def test_renewal_window_ahead_and_just_passed(model: HealthModel) -> None:
    soon, _ = score_account(account(renewal_date=START + timedelta(days=60)), [cday(0)], model, fleet(0, 0),
                            "acme")
    assert soon[0].stage == "renewal_window"
    passed, _ = score_account(account(renewal_date=START - timedelta(days=10)), [cday(0)], model, fleet(0, 0),
                              "acme")
    assert passed[0].stage == "renewal_window"  # still in use: the renewal is not recorded yet


def test_renewal_date_long_past_with_no_usage_is_churned(model: HealthModel) -> None:
    acct = account(renewal_date=START)
    rows = [cday(i) for i in range(10)] + [cday(i, active=()) for i in range(10, 60)]
    signals, _ = score_account(acct, rows, model, fleet(0, 59), "acme")
    stages = by_day(signals)
    assert stages[iso(20)].stage == "renewal_window"  # within the 30-day grace
    assert stages[iso(35)].stage != "churned"  # grace over, but last usage only 26 days ago
    assert stages[iso(39)].stage == "churned"  # 30 days without usage
    used, _ = score_account(acct, [cday(i) for i in range(60)], model, fleet(0, 59), "acme")
    assert used[-1].stage == "mature"  # renewal long past but still used: CRM not updated, not churned


# ---- holds and alerts -----------------------------------------------------------------------


def two_gateway_days(offset: int, *, silent: bool = False, active: Sequence[str] | None = None) -> CustomerDay:
    """d1, d2 behind gw1; d3, d4 behind gw2, which goes silent when ``silent``."""
    devices = ("d1", "d2") if silent else DEVICES
    return cday(offset, devices=devices, gateways=("gw1",) if silent else ("gw1", "gw2"), active=active)


def test_low_coverage_holds_adoption_and_raises_gateway_offline_not_usage_drop(model: HealthModel) -> None:
    rows = [two_gateway_days(i) for i in range(40)]
    rows += [two_gateway_days(i, silent=True) for i in range(40, 50)]
    rows += [two_gateway_days(i) for i in range(50, 53)]
    signals, alerts = score_account(account(), rows, model, fleet(0, 52), "acme")
    days = by_day(signals)
    outage = days[iso(48)]
    assert outage.low_coverage and outage.coverage == 0.5
    # gw2's devices are gone from the 7-day window: measured adoption would be 50%, held stays 100%
    assert outage.active_devices == 2
    assert outage.adoption == 1.0
    assert comp(outage, "adoption").detail.startswith(f"held from {iso(39)} (coverage today 50%)")
    assert comp(outage, "engagement").detail.startswith(f"held from {iso(39)}")
    assert outage.band == "green"
    assert kinds(alerts) == [(iso(40), "gateway_offline")]  # once, on onset; no usage_drop, no band change
    offline = alerts[0]
    assert offline.title == "Gateway gw2 sent nothing today"
    assert f"gw2 last seen {iso(39)}" in offline.explanation
    assert "coverage is 50% of the heartbeats expected from 4 known devices" in offline.explanation
    assert "adoption, engagement, breadth are held" in offline.explanation
    assert offline.severity == "warning" and offline.coverage == 0.5
    # back online: trustworthy again, and the outage days are not read as a usage drop
    after = days[iso(52)]
    assert not after.low_coverage and after.adoption == 1.0 and after.band == "green"
    # Even with a lenient heartbeat threshold (50% would pass), the silent gateway alone
    # makes the day low coverage: its devices are unknown, not idle.
    lenient = dataclasses.replace(model, coverage=dataclasses.replace(model.coverage, low_coverage_below=0.4))
    lenient_signals, lenient_alerts = score_account(account(), rows, lenient, fleet(0, 52), "acme")
    assert kinds(lenient_alerts) == [(iso(40), "gateway_offline")]
    assert by_day(lenient_signals)[iso(48)].low_coverage and by_day(lenient_signals)[iso(48)].adoption == 1.0


def test_hold_is_bounded_by_hold_max_days(model: HealthModel) -> None:
    rows = [cday(i) for i in range(10)]  # then silence: no rows at all
    signals, alerts = score_account(account(), rows, model, fleet(0, 30), "acme")
    days = by_day(signals)
    assert days[iso(23)].adoption == 1.0  # 14 days after the last trustworthy day: still held
    assert days[iso(24)].adoption == 0.0
    assert "older than 14 days" in comp(days[iso(24)], "adoption").detail
    assert kinds(alerts) == [(iso(10), "gateway_offline")]
    assert alerts[0].severity == "critical"  # nothing at all arrives


def test_second_gateway_going_silent_is_a_new_alert(model: HealthModel) -> None:
    rows = [cday(i, gateways=("gw1", "gw2", "gw3")) for i in range(5)]
    rows += [cday(5, devices=("d1",), gateways=("gw1", "gw3"))]
    rows += [cday(i, devices=("d1",), gateways=("gw1",)) for i in range(6, 9)]
    _, alerts = score_account(account(), rows, model, fleet(0, 8), "acme")
    assert kinds(alerts) == [(iso(5), "gateway_offline"), (iso(6), "gateway_offline")]
    assert alerts[1].title == "Gateway gw3 sent nothing today"
    assert "Gateways gw2, gw3 went silent" in alerts[1].explanation


def test_alerts_are_raised_on_onset_not_every_day(model: HealthModel) -> None:
    rows = [cday(i) for i in range(40)] + [cday(i, active=()) for i in range(40, 60)]
    _, alerts = score_account(account(), rows, model, fleet(0, 59), "acme")
    assert [a.kind for a in alerts].count("usage_drop") == 1
    assert len(kinds(alerts)) == len(set(kinds(alerts)))
    band_changes = [a.title for a in alerts if a.kind == "band_worsened"]
    assert band_changes == ["Health fell from green to yellow (65)", "Health fell from yellow to red (40)"]
    assert [a.severity for a in alerts if a.kind == "band_worsened"] == ["warning", "critical"]


def test_scenario_steady_then_sudden_drop(model: HealthModel) -> None:
    """Usage stops on day 40 while heartbeats keep coming: yellow within days, driven by engagement."""
    rows = [cday(i) for i in range(40)] + [cday(i, active=(), features=()) for i in range(40, 47)]
    signals, alerts = score_account(account(), rows, model, fleet(0, 46), "acme")
    days = by_day(signals)
    assert all(days[iso(i)].band == "green" for i in range(40))
    assert all(not days[iso(i)].low_coverage for i in range(47))  # heartbeats never stopped
    turned = next(s for s in signals if s.band != "green")
    assert turned.day <= iso(43)  # within four days of the drop
    assert turned.driver == "engagement"
    assert days[iso(46)].band == "red"
    drop = next(a for a in alerts if a.kind == "usage_drop")
    assert iso(40) < drop.day <= iso(43)
    assert drop.title == "Usage down 43% against the 28-day baseline"
    assert "runtime_s averaged 8,229 per day over the last 7 trustworthy days" in drop.explanation
    assert "43% below the baseline of 14,400 per day" in drop.explanation
    # the explanation stands alone: what changed, driver with value and points, trend, coverage
    assert "Driver: engagement 57% of baseline, score 14 x weight 35% = 5.0 of 35.0 points" in drop.explanation
    assert "Coverage 100% of expected heartbeats." in drop.explanation
    assert "trend down" in drop.explanation
    band = next(a for a in alerts if a.kind == "band_worsened")
    assert band.day == turned.day and band.driver == "engagement"


def test_alert_explanation_shows_low_coverage_and_new_trend(model: HealthModel) -> None:
    rows = [cday(0), cday(1, devices=("d1",), gateways=())]
    _, alerts = score_account(account(), rows, model, fleet(0, 1), "acme")
    assert kinds(alerts) == [(iso(1), "gateway_offline")]
    assert "no trend yet (first week)" in alerts[0].explanation
    assert "(low: data incomplete)" in alerts[0].explanation


def test_expansion_lead_needs_saturation_sustained_on_trustworthy_days(model: HealthModel) -> None:
    # 3 entitled, 4 devices in use: 133% of the entitlement, every day.
    over = account(entitled_devices=3)
    rows = [cday(i) for i in range(10)]
    rows += [cday(10, heartbeats=0)]  # an outage day: not evidence either way, the run is frozen
    rows += [cday(i) for i in range(11, 40)]
    signals, alerts = score_account(over, rows, model, fleet(0, 39), "acme")
    leads = [a for a in alerts if a.kind == "expansion_csql"]
    # 14 trustworthy saturated days: 0-9 and 11-14 (day 10 does not count).
    assert kinds(leads) == [(iso(14), "expansion_csql")]
    assert "4 of 3 entitled devices active" in leads[0].explanation
    assert "1 more device in use than bought" in leads[0].explanation
    assert leads[0].severity == "info" and "CS-qualified lead" in leads[0].explanation

    # Dropping below the entitlement ends the lead; saturating again re-raises it.
    rows = [cday(i) for i in range(20)]
    rows += [cday(i, active=("d1",)) for i in range(20, 30)]
    rows += [cday(i) for i in range(30, 60)]
    _, alerts = score_account(over, rows, model, fleet(0, 59), "acme")
    # Adoption is a 7-day window: it falls below the entitlement on day 27 (days 21-27 only d1)
    # and is saturated again from day 30, so the second lead comes 14 days later, on day 43.
    assert [a.day for a in alerts if a.kind == "expansion_csql"] == [iso(13), iso(43)]


def test_time_to_value_counts_days_from_first_device_to_the_adoption_share(model: HealthModel) -> None:
    onboarding = account(contract_start=START, entitled_devices=4)
    # One more device rolled out every 5 days: 1 → 4 devices; 80% of 4 is reached with 4 devices.
    rows = [cday(i, devices=DEVICES[: 1 + i // 5]) for i in range(20)]
    rows += [cday(i) for i in range(20, 30)]
    signals, _ = score_account(onboarding, rows, model, fleet(0, 29), "acme")
    days = by_day(signals)
    assert days[iso(14)].time_to_value_days is None  # 3 of 4 = 75% < 80%
    assert days[iso(15)].time_to_value_days == 15  # the 4th device on day 15
    assert days[iso(29)].time_to_value_days == 15  # it stays the first time, not today's
    # An account deployed before the telemetry began: its onboarding was not seen.
    signals, _ = score_account(account(), [cday(i) for i in range(10)], model, fleet(0, 9), "acme")
    assert {s.time_to_value_days for s in signals} == {None}


def test_sequence_gaps_lower_coverage_even_with_full_heartbeats(model: HealthModel) -> None:
    rows = [dataclasses.replace(cday(i), records=100, expected_records=100) for i in range(10)]
    rows.append(dataclasses.replace(cday(10), records=40, expected_records=100))  # 60 numbered records lost
    signals, _ = score_account(account(), rows, model, fleet(0, 10), "acme")
    days = by_day(signals)
    assert days[iso(9)].coverage == 1.0 and days[iso(9)].record_coverage == 1.0
    lossy = days[iso(10)]
    assert lossy.record_coverage == 0.4 and lossy.coverage == 0.4 and lossy.low_coverage
    assert comp(lossy, "adoption").detail.startswith(f"held from {iso(9)}")
    # No sequence information at all (older data): heartbeats alone decide.
    plain, _ = score_account(account(), [cday(i) for i in range(3)], model, fleet(0, 2), "acme")
    assert {s.record_coverage for s in plain} == {None} and plain[-1].coverage == 1.0


def test_a_gateway_reporting_offline_makes_the_day_low_coverage_at_once(model: HealthModel) -> None:
    rows = [cday(i, gateways=("gw1", "gw2")) for i in range(10)]
    # Day 10: data still arrives (full heartbeats) but gw2's Last Will said offline.
    rows.append(dataclasses.replace(cday(10, gateways=("gw1", "gw2")), offline_gateways=("gw2",)))
    signals, alerts = score_account(account(), rows, model, fleet(0, 10), "acme")
    day = by_day(signals)[iso(10)]
    assert day.low_coverage and day.coverage == 1.0  # the heartbeats alone would have trusted it
    assert kinds(alerts) == [(iso(10), "gateway_offline")]
    assert alerts[0].title == "Gateway gw2 reported offline today"
