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
"""

from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import date, timedelta

from fleetpulse.pipeline.model import (
    BAND_WORSENED,
    EXPANSION_CSQL,
    GATEWAY_OFFLINE,
    USAGE_DROP,
    Alert,
    Component,
    CustomerDay,
    DailySignal,
    band_rank,
    one_per_day,
)
from fleetpulse.schemas.accounts import Account

from .config import UNKNOWN_SEGMENT, HealthModel

SECONDS_PER_DAY = 86400
#: a driver must cost at least this many points, else the driver is "none"
DRIVER_MIN_POINTS = 0.5
MAX_NAMED = 5  # features / firmware versions / gateways named in one detail line


@dataclass(frozen=True)
class FleetContext:
    """Fleet-wide facts the scorer needs, computed once over all customers."""

    first_day: str  # the calendar to score (ISO dates, inclusive)
    last_day: str
    latest_fw_by_day: dict[str, str]  # fleet's newest firmware seen up to and including that day
    feature_catalog: frozenset[str]
    product_issue_fw_by_day: dict[str, frozenset[str]]  # firmware with a fleet-wide error spike that day


@dataclass(frozen=True)
class _Measure:
    """A component measured (or not) on one day, before weighting."""

    value: float | None  # None = not measurable
    detail: str
    signal: float | None = None  # the DailySignal field it feeds, when not the value itself


@dataclass(frozen=True)
class _Held:
    measure: _Measure
    day: date


@dataclass(frozen=True)
class _Usage:
    """Usage of the primary quantity over a window, on trustworthy days only."""

    days: int  # trustworthy days of the window
    total: float
    active: frozenset[str]


def signal_value_of(measures: dict[str, _Measure], name: str) -> float | None:
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


def _iso(day: date) -> str:
    return day.isoformat()


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.0f}%"


def _num(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def _named(items: Iterable[str]) -> str:
    ordered = sorted(items)
    text = ", ".join(ordered[:MAX_NAMED])
    return text + (f" (+{len(ordered) - MAX_NAMED} more)" if len(ordered) > MAX_NAMED else "")


def format_value(name: str, value: float | None) -> str:
    """A component's raw value as a CSM reads it (shared with the text report)."""
    if value is None:
        return "n/a"
    if name == "reliability":
        return f"{value:.2f} err/dev-day"
    if name == "nps":
        return f"{value:+.0f}"
    if name == "engagement":
        return f"{_pct(value)} of baseline"
    return _pct(value)


class _Scorer:
    """One call's state: the account's days indexed by date, memoised coverage, and the running holds."""

    def __init__(self, account: Account | None, days: Iterable[CustomerDay], model: HealthModel,
                 fleet: FleetContext, customer_id: str) -> None:
        self.account, self.model, self.fleet, self.customer_id = account, model, fleet, customer_id
        if account is not None and account.customer_id != customer_id:
            raise ValueError(f"account {account.customer_id!r} passed to score customer {customer_id!r}")
        rows = list(days)
        for row in rows:
            if row.customer_id != customer_id:
                raise ValueError(f"row of {row.customer_id!r} passed to score customer {customer_id!r}")
        # Two rows for one day are two restatements of it: the scoring join's rule picks the same one.
        self.by_day: dict[date, CustomerDay] = {date.fromisoformat(row.day): row for row in one_per_day(rows)}
        self.data_days = sorted(self.by_day)
        self.active_days = [d for d in self.data_days if self.by_day[d].active_devices]
        self.interval_days = [d for d in self.data_days if self.by_day[d].heartbeat_interval_s > 0]
        # Days before the first telemetry are unknown, not zero (the lake may start after the contract):
        # an account with telemetry begins with it; one with none is scored from its contract start.
        self.begin: date | None = self.data_days[0] if self.data_days else (
            account.contract_start if account else None)
        self.segment = account.segment if account else UNKNOWN_SEGMENT
        self.entitled = account.entitled_devices if account else 0
        self._coverage: dict[date, tuple[float, frozenset[str]]] = {}
        # Time to value is measured only when the scored span began on or before
        # the contract start: then the first data day is the first device online.
        # For an account already deployed when the span began, that day is unknown.
        self.onboarding_seen = bool(
            account is not None and fleet.first_day
            and date.fromisoformat(fleet.first_day) <= account.contract_start
        )

    # ---- raw facts per day -------------------------------------------------------------

    def window(self, end: date, length: int) -> list[date]:
        return [end - timedelta(days=i) for i in range(length - 1, -1, -1)]

    def rows(self, dates: Iterable[date]) -> list[CustomerDay]:
        return [row for d in dates if (row := self.by_day.get(d)) is not None]

    def interval_s(self, day: date) -> int:
        i = bisect.bisect_right(self.interval_days, day)
        if i == 0:
            return self.model.coverage.default_heartbeat_interval_s
        return self.by_day[self.interval_days[i - 1]].heartbeat_interval_s

    def coverage(self, day: date) -> tuple[float, frozenset[str]]:
        """(coverage, known devices) of a day; depends on raw data only, so it is memoised."""
        cached = self._coverage.get(day)
        if cached is not None:
            return cached
        known = frozenset(
            dev for row in self.rows(self.window(day, self.model.coverage.known_device_days))
            for dev in row.reporting_devices
        )
        row = self.by_day.get(day)
        heartbeats = row.heartbeats if row else 0
        if not known or heartbeats <= 0:
            result = (0.0, known)
        else:
            expected = len(known) * SECONDS_PER_DAY / self.interval_s(day)
            # Sequence gaps: records the devices numbered but that never arrived
            # (lost on the way) lower coverage too; the lower of the two counts.
            records = self.record_coverage(day)
            share = min(1.0, heartbeats / expected, 1.0 if records is None else records)
            result = (share, known)
        self._coverage[day] = result
        return result

    def record_coverage(self, day: date) -> float | None:
        """Records received ÷ records the sequence numbers say were sent that day (None: unknown)."""
        row = self.by_day.get(day)
        if row is None or row.expected_records <= 0:
            return None
        return min(1.0, row.records / row.expected_records)

    def trusted(self, day: date) -> bool:
        """A day of the account's life whose telemetry can be read as the customer's behaviour."""
        if self.begin is None or day < self.begin:
            return False
        return self.coverage(day)[0] >= self.model.coverage.low_coverage_below

    def usage(self, dates: Iterable[date]) -> _Usage:
        quantity = self.model.usage_quantity
        trusted = [d for d in dates if self.trusted(d)]
        rows = self.rows(trusted)
        return _Usage(
            days=len(trusted),
            total=sum(row.usage.get(quantity, 0.0) for row in rows),
            active=frozenset(dev for row in rows for dev in row.active_devices),
        )

    def baseline_dates(self, day: date) -> list[date]:
        window = self.model.window_days
        return self.window(day - timedelta(days=window), self.model.baseline_days)

    def last_active(self, day: date) -> date | None:
        i = bisect.bisect_right(self.active_days, day)
        return self.active_days[i - 1] if i else None

    # ---- components --------------------------------------------------------------------

    def adoption(self, day: date) -> _Measure:
        active = {dev for row in self.rows(self.window(day, self.model.window_days)) for dev in row.active_devices}
        if self.entitled <= 0:
            reason = "customer not in the CRM export" if self.account is None else "0 entitled devices in the CRM"
            return _Measure(None, f"not measurable: {reason} ({len(active)} devices active)")
        share = len(active) / self.entitled
        return _Measure(share, f"{len(active)} of {self.entitled} entitled devices active "
                               f"in the last {self.model.window_days} days ({_pct(share)})")

    def engagement(self, day: date) -> _Measure:
        model, quantity = self.model, self.model.usage_quantity
        current = self.usage(self.window(day, model.window_days))
        # Baseline: usage per active device-day in window-sized blocks, so it compares like with like
        # (a 28-day set of distinct devices is larger than a 7-day one when devices are used now and then).
        baseline_dates = self.baseline_dates(day)
        weighted, base_days = 0.0, 0
        for start in range(len(baseline_dates), 0, -model.window_days):
            block = self.usage(baseline_dates[max(0, start - model.window_days):start])
            if block.days and block.active and block.total > 0:
                weighted += block.total / len(block.active)  # = rate * days
                base_days += block.days
        if base_days < model.baseline_min_days:
            return _Measure(None, f"not measurable: no baseline yet ({base_days} of {model.baseline_min_days} "
                                  f"trustworthy days with {quantity} usage in the {model.baseline_days} days "
                                  f"before the last {model.window_days})")
        if current.days == 0:
            return _Measure(None, f"not measurable: no trustworthy day in the last {model.window_days}")
        baseline = weighted / base_days
        if not current.active:
            return _Measure(0.0, f"no {quantity} usage in the last {model.window_days} days (baseline "
                                 f"{_num(baseline)} per active device per day)", signal=0.0)
        rate = current.total / (len(current.active) * current.days)
        ratio = rate / baseline
        return _Measure(ratio, f"{_num(rate)} {quantity} per active device per day over the last "
                               f"{model.window_days} days, {_pct(ratio)} of the {model.baseline_days}-day "
                               f"baseline ({_num(baseline)})", signal=rate)

    def breadth(self, day: date) -> _Measure:
        catalog = self.fleet.feature_catalog
        if not catalog:
            return _Measure(None, "not measurable: the fleet's feature catalog is empty")
        used = {f for row in self.rows(self.window(day, self.model.window_days))
                for f, uses in row.features.items() if uses > 0} & catalog
        share = len(used) / len(catalog)
        detail = f"{len(used)} of {len(catalog)} features used in the last {self.model.window_days} days"
        if catalog - used:
            detail += f"; unused: {_named(catalog - used)}"
        return _Measure(share, detail)

    def reliability(self, day: date) -> _Measure:
        charged = excused = active_days = reporting_days = 0
        excused_fw: set[str] = set()
        for row in self.rows(self.window(day, self.model.window_days)):
            issue = self.fleet.product_issue_fw_by_day.get(row.day, frozenset())
            fleet_errors = sum(n for fw, n in row.error_fw.items() if fw in issue)
            excused_fw.update(fw for fw, n in row.error_fw.items() if fw in issue and n > 0)
            excused += fleet_errors
            charged += max(0, row.errors - fleet_errors)
            active_days += len(row.active_devices)
            reporting_days += len(row.reporting_devices)
        # Errors per *active* device-day; a fleet that only errors (no usage at all) is still measured,
        # per reporting device-day, rather than hiding the errors behind "not measurable".
        basis, unit = (active_days, "active") if active_days else (reporting_days, "reporting")
        if basis == 0:
            return _Measure(None, f"not measurable: no device reported in the last {self.model.window_days} days")
        rate = charged / basis
        detail = (f"{charged} error records over {basis} {unit} device-days in the last "
                  f"{self.model.window_days} days ({rate:.2f} per device-day)")
        if excused:
            detail += f"; {excused} more on firmware {_named(excused_fw)} not charged: fleet-wide product issue"
        return _Measure(rate, detail)

    def firmware(self, day: date) -> _Measure:
        latest = self.fleet.latest_fw_by_day.get(_iso(day))
        if not latest:
            return _Measure(None, "not measurable: the fleet's newest firmware is unknown for this day")
        device_fw: dict[str, str] = {}
        for row in self.rows(self.window(day, self.model.coverage.known_device_days)):
            device_fw.update(row.device_fw)  # oldest first, so each device keeps its latest firmware
        if not device_fw:
            return _Measure(None, f"not measurable: no device reported in the last "
                                  f"{self.model.coverage.known_device_days} days")
        behind = sorted(fw for fw in device_fw.values() if fw != latest)
        share = 1 - len(behind) / len(device_fw)
        detail = f"{len(device_fw) - len(behind)} of {len(device_fw)} devices on the newest firmware {latest}"
        if behind:
            counts = {fw: behind.count(fw) for fw in behind}
            detail += "; behind: " + _named(f"{fw} x{n}" for fw, n in counts.items())
        return _Measure(share, detail)

    def nps(self, day: date) -> _Measure:
        if self.account is None or self.account.nps is None:
            return _Measure(None, "not measurable: no NPS answer in the CRM")
        return _Measure(float(self.account.nps), f"latest NPS answer {self.account.nps:+d} (from the CRM)")

    # ---- the day loop ------------------------------------------------------------------

    def run(self) -> tuple[list[DailySignal], list[Alert]]:
        if self.begin is None:
            return [], []
        first, last = date.fromisoformat(self.fleet.first_day), date.fromisoformat(self.fleet.last_day)
        emit_from = max(first, self.begin)
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
        measurers: dict[str, Callable[[date], _Measure]] = {
            "adoption": self.adoption, "engagement": self.engagement, "breadth": self.breadth,
            "reliability": self.reliability, "firmware": self.firmware, "nps": self.nps,
        }
        day = max(self.begin, emit_from - timedelta(days=model.warmup_days))
        while day <= last:
            coverage, known = self.coverage(day)
            # A gateway that sent nothing all day hides its devices entirely: no
            # data is not no usage, so the day is low coverage even when the
            # other gateways keep the customer's share of heartbeats high.
            silent = self.silent_gateways(day)
            low = coverage < model.coverage.low_coverage_below or bool(silent)
            measures: dict[str, _Measure] = {}
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
            if ttv_day is not None and self.data_days:
                signal = dataclasses.replace(signal, time_to_value_days=(ttv_day - self.data_days[0]).days)
            health_by_day[day] = signal.health
            measurable = any(c.weight > 0 for c in signal.components)

            raised: list[Alert] = []
            if not low and measurable:
                if last_trusted_band is not None and band_rank(signal.band) > band_rank(last_trusted_band):
                    raised.append(self.band_alert(signal, last_trusted_band))
                last_trusted_band = signal.band
                drop = self.usage_drop(day)
                if drop is not None:
                    now_dropping = drop[0] >= model.alerts.usage_drop_pct
                    if now_dropping and not dropping:
                        raised.append(self.drop_alert(signal, *drop))
                    dropping = now_dropping
                # Expansion: saturated entitlement, sustained. Counted on trustworthy
                # days only (a held value is not evidence of more use).
                if adoption is not None and adoption > model.alerts.expansion_utilisation:
                    saturated_days += 1
                    if saturated_days >= model.alerts.expansion_days and not expanding:
                        raised.append(self.expansion_alert(signal, saturated_days))
                        expanding = True
                else:
                    saturated_days, expanding = 0, False
            if silent and set(silent) - silent_alerted:
                raised.append(self.offline_alert(signal, silent, set(silent) - silent_alerted))
            silent_alerted = frozenset(silent)

            if day >= emit_from:
                signals.append(signal)
                alerts.extend(raised)
            day += timedelta(days=1)
        return signals, alerts

    def hold(self, name: str, measure: _Measure, day: date, low: bool, coverage: float,
             held: dict[str, _Held]) -> _Measure:
        if not low:
            if measure.value is not None:
                held[name] = _Held(measure, day)
            return measure
        prior = held.get(name)
        if prior is not None and (day - prior.day).days <= self.model.coverage.hold_max_days:
            return _Measure(prior.measure.value,
                            f"held from {_iso(prior.day)} (coverage today {_pct(coverage)}): {prior.measure.detail}",
                            prior.measure.signal)
        why = "no earlier trustworthy day" if prior is None else \
            f"last trustworthy value from {_iso(prior.day)} is older than {self.model.coverage.hold_max_days} days"
        return _Measure(measure.value, f"low coverage {_pct(coverage)}, not held ({why}): {measure.detail}",
                        measure.signal)

    def signal(self, day: date, measures: dict[str, _Measure], coverage: float, known: frozenset[str],
               low: bool, health_by_day: dict[date, float]) -> DailySignal:
        model = self.model
        # Contract-date stages (onboarding, renewal window, churned) are known
        # before the score, so they may weigh the components differently:
        # during onboarding, rolling devices out is what matters most.
        weights = model.weights_for(self.segment, self.stage(day, None, signal_value_of(measures, "adoption")))
        total = sum(weights[n] for n, m in measures.items() if m.value is not None)
        components: list[Component] = []
        health = 0.0
        for spec in model.components:
            m = measures[spec.name]
            if m.value is None or total <= 0:
                detail = m.detail
                if weights[spec.name] > 0:
                    detail += "; its weight went to the other components"
                components.append(Component(spec.name, None, 0.0, 0.0, 0.0, detail))
                continue
            weight = weights[spec.name] / total
            score = spec.scoring.score(m.value)
            health += score * weight
            components.append(Component(spec.name, round(m.value, 4), round(score, 1), round(weight, 4),
                                        round(score * weight, 2), m.detail))
        health = round(health, 1)
        band = model.bands.band(health)
        losses = [(c.weight * (100 - c.score), c.name) for c in components if c.weight > 0]
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
        active = {dev for row in self.rows(self.window(day, model.window_days)) for dev in row.active_devices}

        return DailySignal(
            customer_id=self.customer_id,
            day=_iso(day),
            segment=self.segment,
            csm_owner=self.account.csm_owner if self.account else None,
            entitled_devices=self.entitled,
            known_devices=len(known),
            active_devices=len(active),
            adoption=adoption,
            usage_per_active_device=signal_value("engagement"),
            feature_breadth=signal_value("breadth"),
            error_rate=signal_value("reliability"),
            firmware_currency=signal_value("firmware"),
            coverage=round(coverage, 4),
            record_coverage=None if (rc := self.record_coverage(day)) is None else round(rc, 4),
            low_coverage=low,
            health=health,
            band=band,
            previous_health=previous,
            trend_delta=delta,
            trend=trend,
            stage=self.stage(day, band, adoption),
            driver=driver,
            components=tuple(components),
        )

    def stage(self, day: date, band: str | None, adoption: float | None) -> str:
        life = self.model.lifecycle
        below_ttv = adoption is not None and adoption < life.ttv_active_share
        if self.account is not None:
            to_renewal = (self.account.renewal_date - day).days
            if to_renewal < -life.churn_grace_days:
                last_active = self.last_active(day)
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

    # ---- alerts ------------------------------------------------------------------------

    def usage_drop(self, day: date) -> tuple[float, float, float, int] | None:
        """(drop %, usage per day now, baseline per day, window days) or None when it cannot be judged."""
        model = self.model
        current = self.usage(self.window(day, model.window_days))
        base = self.usage(self.baseline_dates(day))
        if current.days < model.alerts.usage_drop_min_days or base.days < model.baseline_min_days:
            return None
        base_per_day = base.total / base.days
        if base_per_day <= 0:
            return None
        now_per_day = current.total / current.days
        return (1 - now_per_day / base_per_day) * 100, now_per_day, base_per_day, current.days

    def silent_gateways(self, day: date) -> dict[str, date]:
        """Gateways that are out today, with the day each was last seen.

        Out means seen in the known-device window but sending nothing today, or
        reported offline by its own status today (its Last Will or a clean stop):
        then part of the day's data may be missing even if some arrived.
        """
        today = self.by_day.get(day)
        present = set(today.gateways) if today else set()
        seen: dict[str, date] = {}
        for d in self.window(day - timedelta(days=1), self.model.coverage.known_device_days - 1):
            row = self.by_day.get(d)
            for gw in row.gateways if row else ():
                if gw not in present:
                    seen[gw] = d  # dates ascend, so the last write is the last sighting
        for gw in today.offline_gateways if today else ():
            seen[gw] = day
        return seen

    def explain(self, signal: DailySignal) -> str:
        """Health, band, trend, driver and coverage in words: the part every alert shares."""
        if signal.trend == "new":
            trend = "no trend yet (first week)"
        else:
            trend = f"trend {signal.trend} {signal.trend_delta:+.1f} points over {self.model.trend_days} days"
        text = f"Health {signal.health:.0f} ({signal.band}), {trend}, stage {signal.stage}."
        driver = next((c for c in signal.components if c.name == signal.driver), None)
        if driver is None:
            text += " No component costs more than half a point."
        else:
            text += (f" Driver: {driver.name} {format_value(driver.name, driver.value)}, score {driver.score:.0f}"
                     f" x weight {driver.weight * 100:.0f}% = {driver.contribution:.1f} of "
                     f"{driver.weight * 100:.1f} points ({driver.detail}).")
        text += f" Coverage {_pct(signal.coverage)} of expected heartbeats"
        text += " (low: data incomplete)." if signal.low_coverage else "."
        return text

    def alert(self, signal: DailySignal, kind: str, severity: str, title: str, what: str) -> Alert:
        return Alert(
            customer_id=signal.customer_id, day=signal.day, kind=kind, severity=severity, title=title,
            explanation=f"{what} {self.explain(signal)}", health=signal.health, band=signal.band,
            driver=signal.driver, coverage=signal.coverage,
        )

    def band_alert(self, signal: DailySignal, was: str) -> Alert:
        severity = "critical" if signal.band == "red" else "warning"
        return self.alert(signal, BAND_WORSENED, severity,
                          f"Health fell from {was} to {signal.band} ({signal.health:.0f})",
                          f"Band changed from {was} to {signal.band} since the previous trustworthy day.")

    def drop_alert(self, signal: DailySignal, drop_pct: float, now: float, base: float, days: int) -> Alert:
        quantity = self.model.usage_quantity
        severity = "critical" if signal.band == "red" else "warning"
        return self.alert(signal, USAGE_DROP, severity,
                          f"Usage down {drop_pct:.0f}% against the {self.model.baseline_days}-day baseline",
                          f"{quantity} averaged {_num(now)} per day over the last {days} trustworthy days, "
                          f"{drop_pct:.0f}% below the baseline of {_num(base)} per day "
                          f"(alert at {self.model.alerts.usage_drop_pct:.0f}%).")

    def expansion_alert(self, signal: DailySignal, days: int) -> Alert:
        entitled, active = signal.entitled_devices, signal.active_devices
        extra = active - entitled
        beyond = f"; {extra} more device{'s' if extra != 1 else ''} in use than bought" if extra > 0 else ""
        return self.alert(
            signal, EXPANSION_CSQL, "info",
            f"Expansion lead: {_pct(signal.adoption)} of the entitlement in use for {days} days",
            f"{active} of {entitled} entitled devices active in the last {self.model.window_days} days "
            f"({_pct(signal.adoption)}), above {_pct(self.model.alerts.expansion_utilisation)} on "
            f"{days} consecutive trustworthy days{beyond}. A CS-qualified lead for Sales: the customer "
            f"is likely to need more devices or a higher tier.",
        )

    def offline_alert(self, signal: DailySignal, silent: dict[str, date], new: set[str]) -> Alert:
        today = self.by_day.get(date.fromisoformat(signal.day))
        reported = set(today.offline_gateways) if today else set()
        last_seen = "; ".join(f"{gw} last seen {_iso(silent[gw])}" for gw in sorted(silent)[:MAX_NAMED])
        held = ", ".join(self.model.coverage.hold_components) or "nothing"
        severity = "critical" if signal.coverage == 0 else "warning"
        def noun(names: Iterable[str]) -> str:
            names = list(names)
            return f"{'Gateway' if len(names) == 1 else 'Gateways'} {_named(names)}"

        return self.alert(
            signal, GATEWAY_OFFLINE, severity,
            f"{noun(new)} {'reported offline' if new <= reported else 'sent nothing'} today",
            f"{noun(silent)} went silent or reported offline ({last_seen}); coverage is {_pct(signal.coverage)} of the "
            f"heartbeats expected from {signal.known_devices} known devices. Treat this as a connectivity "
            f"problem, not a usage change: {held} are held at their last trustworthy values and risk "
            f"alerts are paused until coverage is back above "
            f"{_pct(self.model.coverage.low_coverage_below)}.",
        )
