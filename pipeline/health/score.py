"""Score one customer's daily telemetry into health signals and first-cut alerts.

Pure and deterministic: :func:`score_account` takes the customer's
:class:`~fleetpulse.pipeline.model.CustomerDay` rows (any order, gaps allowed),
its CRM :class:`~fleetpulse.schemas.accounts.Account` (or ``None`` when the
telemetry's customer is missing from the CRM export), the
:class:`~fleetpulse.pipeline.health.config.HealthModel` and the fleet-wide facts
in :class:`FleetContext`, and returns one
:class:`~fleetpulse.pipeline.model.DailySignal` per calendar day plus the
:class:`~fleetpulse.pipeline.model.Alert` rows raised. The Beam transform that
groups rows per customer calls it; so do the tests, on literal rows.

Rules a CSM or CS Ops reader may need (the YAML names the numbers):

* **Calendar.** The account begins on its first data day; an account without
  any telemetry begins on its contract start (bought, not yet deployed: it shows
  up red, in onboarding, with coverage 0). Days before the first telemetry are
  not scored because the lake may start after the contract. Every calendar day
  from ``max(first_day, account begin)`` to ``last_day`` is scored; a day
  without data is a real day with coverage 0. Up to
  :attr:`HealthModel.warmup_days` of earlier history are scored but not returned,
  so trends, holds and alert onsets on ``first_day`` match a run that started
  earlier (a backfill and the live run agree).
* **Coverage.** Known devices are those seen in the last ``known_device_days``
  (today included). Coverage = heartbeats received ÷ (known devices × 86400 ÷
  heartbeat interval), capped at 1; the interval is the day's, else the last
  one seen, else ``default_heartbeat_interval_s``. No known devices, or no
  heartbeats, is coverage 0. Sequence gaps count too: when the day's records
  received ÷ records numbered (per device and boot, highest − lowest seq + 1)
  is lower, that is the coverage (``record_coverage`` keeps it apart). Below ``low_coverage_below`` the day is
  *low coverage*: not trustworthy.
* **Hold.** On a low-coverage day the ``hold_components`` (adoption, engagement,
  breadth: they read missing telemetry as missing use) keep the value of the
  last trustworthy day, for at most ``hold_max_days``; after that, or if there
  never was a trustworthy day, today's measurement is used and says so. Low
  coverage days are also left out of engagement's and usage_drop's usage sums,
  so an outage does not look like a usage drop once the data is back.
* **Weights.** A component that cannot be measured is shown with value None and
  weight 0; the others' weights are renormalised to sum to 1. If nothing is
  measurable the health is 0 (red, driver ``none``) and no risk alert is raised.
* **Driver.** The measurable component losing the most points,
  weight × (100 − score); ``none`` when nothing loses half a point.
* **Trend.** Health minus health ``trend_days`` ago; ``new`` when that day was
  not scored (before the account began), ``flat`` within ``flat_within_points``.
* **Stage**, first rule that matches: ``churned`` (renewal date passed more than
  ``churn_grace_days`` ago and no usage for ``churn_idle_days``);
  ``onboarding`` (less than ``onboarding_days`` since contract start and
  adoption below ``ttv_active_share`` or unknown); ``renewal_window`` (renewal
  at most ``renewal_window_days`` ahead, or passed less than
  ``churn_grace_days`` ago and not yet recorded); ``at_risk`` (band red);
  ``adopting`` (adoption below ``ttv_active_share``); ``mature``. Without an
  account only the last three apply.
* **Alerts**, raised on the day a condition starts, never again while it holds:
  ``band_worsened`` when a trustworthy day's band is worse than the previous
  trustworthy day's (critical into red, else warning); ``usage_drop`` when the
  window's usage per trustworthy day falls ``usage_drop_pct`` below the
  baseline's (needs ``usage_drop_min_days`` trustworthy days in the window and
  ``baseline_min_days`` in the baseline; critical when the band is red). On
  low-coverage days both are suppressed and their state frozen (a drop that
  began before an outage is not raised again after it). A day is low coverage
  when heartbeats fall below ``low_coverage_below`` of those expected, or when
  a gateway seen in the last ``known_device_days`` sent nothing at all that day
  (its devices are unknown, not idle); then ``gateway_offline`` is raised
  (again when another one goes silent; critical when coverage is 0).

The pieces: :mod:`.history` indexes the account's days and answers the raw
per-day facts (coverage, trustworthy days, usage, silent gateways);
:mod:`.components` measures each component on a day; :mod:`.alerts` words the
alerts; :mod:`.wording` writes numbers the same way everywhere. This module
runs the day loop over them: holds, weights, health, band, trend, stage, and
on which day each alert starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from fleetpulse.pipeline.model import Alert, Component, CustomerDay, DailySignal, band_rank
from fleetpulse.schemas.accounts import Account

from . import components
from .alerts import band_alert, drop_alert, expansion_alert, offline_alert, usage_drop
from .components import Measure
from .config import UNKNOWN_SEGMENT, HealthModel
from .history import AccountHistory
from .wording import pct

#: a driver must cost at least this many points, else the driver is "none"
DRIVER_MIN_POINTS = 0.5


@dataclass(frozen=True)
class FleetContext:
    """Fleet-wide facts the scorer needs, computed once over all customers."""

    first_day: str  # the calendar to score (ISO dates, inclusive)
    last_day: str
    latest_fw_by_day: dict[str, str]  # fleet's newest firmware seen up to and including that day
    feature_catalog: frozenset[str]
    product_issue_fw_by_day: dict[str, frozenset[str]]  # firmware with a fleet-wide error spike that day


@dataclass(frozen=True)
class _Held:
    measure: Measure
    day: date


def signal_value_of(measures: dict[str, Measure], name: str) -> float | None:
    """The value a measure reports as a signal (its own signal value, else its score input)."""
    m = measures.get(name)
    if m is None or m.value is None:
        return None
    return round(m.signal if m.signal is not None else m.value, 4)


def score_account(
    account: Account | None,
    days: Iterable[CustomerDay],
    model: HealthModel,
    fleet: FleetContext,
    customer_id: str,
) -> tuple[list[DailySignal], list[Alert]]:
    """Score every calendar day of one customer; see the module docstring for the rules."""
    return _Scorer(account, days, model, fleet, customer_id).run()


class _Scorer:
    """One call's state: the account's history, the fleet's facts, and the day loop over them."""

    def __init__(self, account: Account | None, days: Iterable[CustomerDay], model: HealthModel,
                 fleet: FleetContext, customer_id: str) -> None:
        self.history = AccountHistory(account, days, model, customer_id)
        self.account, self.model, self.fleet, self.customer_id = account, model, fleet, customer_id
        self.segment = account.segment if account else UNKNOWN_SEGMENT
        # Time to value is measured only when the scored span began on or before
        # the contract start: then the first data day is the first device online.
        # For an account already deployed when the span began, that day is unknown.
        self.onboarding_seen = bool(
            account is not None and fleet.first_day
            and date.fromisoformat(fleet.first_day) <= account.contract_start
        )

    def measurers(self) -> dict[str, Callable[[date], Measure]]:
        """Each component's measure of a day, by the name the model's YAML gives it."""
        history, fleet = self.history, self.fleet
        return {
            "adoption": lambda day: components.adoption(history, day),
            "engagement": lambda day: components.engagement(history, day),
            "breadth": lambda day: components.breadth(history, day, fleet.feature_catalog),
            "reliability": lambda day: components.reliability(history, day, fleet.product_issue_fw_by_day),
            "firmware": lambda day: components.firmware(history, day, fleet.latest_fw_by_day.get(day.isoformat())),
            "nps": lambda day: components.nps(history, day),
        }

    def run(self) -> tuple[list[DailySignal], list[Alert]]:
        history = self.history
        if history.begin is None:
            return [], []
        first, last = date.fromisoformat(self.fleet.first_day), date.fromisoformat(self.fleet.last_day)
        emit_from = max(first, history.begin)
        if emit_from > last:
            return [], []
        model = self.model
        held: dict[str, _Held] = {}
        health_by_day: dict[date, float] = {}
        last_trusted_band: str | None = None
        dropping = False
        saturated_days, expanding = 0, False
        ttv_day: date | None = None
        silent_alerted: frozenset[str] = frozenset()
        signals: list[DailySignal] = []
        alerts: list[Alert] = []
        measurers = self.measurers()
        day = max(history.begin, emit_from - timedelta(days=model.warmup_days))
        while day <= last:
            coverage, known = history.coverage(day)
            # A gateway that sent nothing all day hides its devices entirely: no
            # data is not no usage, so the day is low coverage even when the
            # other gateways keep the customer's share of heartbeats high.
            silent = history.silent_gateways(day)
            low = coverage < model.coverage.low_coverage_below or bool(silent)
            measures: dict[str, Measure] = {}
            for spec in model.components:
                measure = measurers[spec.name](day)
                if spec.name in model.coverage.hold_components:
                    measure = self.hold(spec.name, measure, day, low, coverage, held)
                measures[spec.name] = measure
            adoption = measures["adoption"].value if "adoption" in measures else None
            if ttv_day is None and self.onboarding_seen and not low and adoption is not None \
                    and adoption >= model.lifecycle.ttv_active_share:
                ttv_day = day
            signal = self.signal(day, measures, coverage, known, low, health_by_day)
            if ttv_day is not None and history.data_days:
                signal = dataclasses.replace(signal, time_to_value_days=(ttv_day - history.data_days[0]).days)
            health_by_day[day] = signal.health
            measurable = any(c.weight > 0 for c in signal.components)

            raised: list[Alert] = []
            if not low and measurable:
                if last_trusted_band is not None and band_rank(signal.band) > band_rank(last_trusted_band):
                    raised.append(band_alert(model, signal, last_trusted_band))
                last_trusted_band = signal.band
                drop = usage_drop(history, day)
                if drop is not None:
                    now_dropping = drop.percent >= model.alerts.usage_drop_pct
                    if now_dropping and not dropping:
                        raised.append(drop_alert(model, signal, drop))
                    dropping = now_dropping
                # Expansion: saturated entitlement, sustained. Counted on trustworthy
                # days only (a held value is not evidence of more use).
                if adoption is not None and adoption > model.alerts.expansion_utilisation:
                    saturated_days += 1
                    if saturated_days >= model.alerts.expansion_days and not expanding:
                        raised.append(expansion_alert(model, signal, saturated_days))
                        expanding = True
                else:
                    saturated_days, expanding = 0, False
            if silent and set(silent) - silent_alerted:
                raised.append(offline_alert(model, signal, silent, set(silent) - silent_alerted,
                                            history.reported_offline(day)))
            silent_alerted = frozenset(silent)

            if day >= emit_from:
                signals.append(signal)
                alerts.extend(raised)
            day += timedelta(days=1)
        return signals, alerts

    def hold(self, name: str, measure: Measure, day: date, low: bool, coverage: float,
             held: dict[str, _Held]) -> Measure:
        """On a low-coverage day, the last trustworthy value of ``name`` if recent enough; else today's."""
        if not low:
            if measure.value is not None:
                held[name] = _Held(measure, day)
            return measure
        prior = held.get(name)
        if prior is not None and (day - prior.day).days <= self.model.coverage.hold_max_days:
            return Measure(prior.measure.value,
                           f"held from {prior.day.isoformat()} (coverage today {pct(coverage)}): "
                           f"{prior.measure.detail}",
                           prior.measure.signal)
        why = "no earlier trustworthy day" if prior is None else \
            f"last trustworthy value from {prior.day.isoformat()} is older than {self.model.coverage.hold_max_days} days"
        return Measure(measure.value, f"low coverage {pct(coverage)}, not held ({why}): {measure.detail}",
                       measure.signal)

    def signal(self, day: date, measures: dict[str, Measure], coverage: float, known: frozenset[str],
               low: bool, health_by_day: dict[date, float]) -> DailySignal:
        model = self.model
        # Contract-date stages (onboarding, renewal window, churned) are known
        # before the score, so they may weigh the components differently:
        # during onboarding, rolling devices out is what matters most.
        weights = model.weights_for(self.segment, self.stage(day, None, signal_value_of(measures, "adoption")))
        total = sum(weights[n] for n, m in measures.items() if m.value is not None)
        scored: list[Component] = []
        health = 0.0
        for spec in model.components:
            m = measures[spec.name]
            if m.value is None or total <= 0:
                detail = m.detail
                if weights[spec.name] > 0:
                    detail += "; its weight went to the other components"
                scored.append(Component(spec.name, None, 0.0, 0.0, 0.0, detail))
                continue
            weight = weights[spec.name] / total
            score = spec.scoring.score(m.value)
            health += score * weight
            scored.append(Component(spec.name, round(m.value, 4), round(score, 1), round(weight, 4),
                                    round(score * weight, 2), m.detail))
        health = round(health, 1)
        band = model.bands.band(health)
        losses = [(c.weight * (100 - c.score), c.name) for c in scored if c.weight > 0]
        best = max(losses, key=lambda pair: pair[0], default=(0.0, "none"))  # first of equals: config order
        driver = best[1] if best[0] >= DRIVER_MIN_POINTS else "none"
        previous = health_by_day.get(day - timedelta(days=model.trend_days))
        delta = None if previous is None else round(health - previous, 1)
        if delta is None:
            trend = "new"
        elif abs(delta) <= model.flat_within_points:
            trend = "flat"
        else:
            trend = "up" if delta > 0 else "down"
        def signal_value(name: str) -> float | None:
            return signal_value_of(measures, name)

        adoption = signal_value("adoption")
        history = self.history
        active = {dev for row in history.rows(history.window(day, model.window_days)) for dev in row.active_devices}

        return DailySignal(
            customer_id=self.customer_id,
            day=day.isoformat(),
            segment=self.segment,
            csm_owner=self.account.csm_owner if self.account else None,
            entitled_devices=history.entitled,
            known_devices=len(known),
            active_devices=len(active),
            adoption=adoption,
            usage_per_active_device=signal_value("engagement"),
            feature_breadth=signal_value("breadth"),
            error_rate=signal_value("reliability"),
            firmware_currency=signal_value("firmware"),
            coverage=round(coverage, 4),
            record_coverage=None if (rc := history.record_coverage(day)) is None else round(rc, 4),
            low_coverage=low,
            health=health,
            band=band,
            previous_health=previous,
            trend_delta=delta,
            trend=trend,
            stage=self.stage(day, band, adoption),
            driver=driver,
            components=tuple(scored),
        )

    def stage(self, day: date, band: str | None, adoption: float | None) -> str:
        life = self.model.lifecycle
        below_ttv = adoption is not None and adoption < life.ttv_active_share
        if self.account is not None:
            to_renewal = (self.account.renewal_date - day).days
            if to_renewal < -life.churn_grace_days:
                last_active = self.history.last_active(day)
                if last_active is None or (day - last_active).days >= life.churn_idle_days:
                    return "churned"
            since_start = (day - self.account.contract_start).days
            if 0 <= since_start < life.onboarding_days and (adoption is None or below_ttv):
                return "onboarding"
            if -life.churn_grace_days <= to_renewal <= life.renewal_window_days:
                return "renewal_window"
        if band == "red":
            return "at_risk"
        return "adopting" if below_ttv else "mature"

