"""Pure evaluation of a playbook's condition over one account's ordered daily signals.

:func:`evaluate` gives one :class:`Verdict` per day: ``met``, ``clear`` or
``held`` (the day cannot be judged: low data coverage, or the measure needs
more history), with a sentence a CSM can read saying what changed or why.
The verdict of a day uses only that day and earlier ones, so evaluating a
history in one go or a day at a time gives the same answers (the ledger
relies on it: a run continues where the last one stopped).

``for_days`` and episode rules are not applied here; :mod:`.episodes` does.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from fleetpulse.pipeline.model import DailySignal

from .config import Filters, Playbook, Trigger
from .history import HOUR_MS, AccountHistory, GatewaySightings

MET, CLEAR, HELD = "met", "clear", "held"
DAY_MS = 86_400_000


@dataclass(frozen=True)
class Verdict:
    day: str
    state: str  # met / clear / held
    what: str  # met: what changed; clear / held: why


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.0f}%"


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _day_ms(day: str) -> int:
    d = date.fromisoformat(day)
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000)


def _hour_text(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:00 UTC")


def filter_reason(filters: Filters, history: AccountHistory, signal: DailySignal) -> str | None:
    """Why the account is outside the playbook's filters today, or None when it is inside."""
    account = history.account
    if filters.segments and signal.segment not in filters.segments:
        return f"segment {signal.segment} is not one of {', '.join(filters.segments)}"
    if filters.stages and signal.stage not in filters.stages:
        return f"stage {signal.stage} is not one of {', '.join(filters.stages)}"
    model = account.engagement_model if account else "unknown"
    if filters.engagement_models and model not in filters.engagement_models:
        return f"engagement model {model} is not one of {', '.join(filters.engagement_models)}"
    has_csm = bool(account and account.csm_owner)
    if filters.csm == "assigned" and not has_csm:
        return "no CSM assigned"
    if filters.csm == "unassigned" and has_csm:
        return "a CSM is assigned"
    arr = account.arr_usd if account else 0
    if arr < filters.min_arr_usd:
        return f"ARR {arr:,} USD is below {filters.min_arr_usd:,}"
    return None


class _Evaluator:
    """One playbook over one history; ``at(i)`` judges day ``i`` from days ``<= i`` only."""

    def __init__(self, playbook: Playbook, history: AccountHistory) -> None:
        self.playbook, self.history = playbook, history
        self.trigger: Trigger = playbook.trigger
        self.signals = history.signals
        self.index = {s.day: i for i, s in enumerate(self.signals)}

    def at(self, i: int) -> Verdict:
        s = self.signals[i]
        outside = filter_reason(self.playbook.filters, self.history, s)
        if outside is not None:
            return Verdict(s.day, CLEAR, f"outside the playbook's filters: {outside}")
        if self.trigger.coverage_hold == "low_coverage" and s.low_coverage:
            return Verdict(s.day, HELD, f"data coverage {_pct(s.coverage)} is low: not judged until it is back")
        state, what = getattr(self, self.trigger.type)(i, s)
        return Verdict(s.day, state, what)

    # ---- one method per trigger type ----------------------------------------------

    def band(self, i: int, s: DailySignal) -> tuple[str, str]:
        if s.band not in self.trigger.bands:
            return CLEAR, f"band {s.band}"
        # The last trustworthy day outside the bands says when and from where it entered them.
        since, before = s.day, None
        for p in reversed(self.signals[:i]):
            if p.low_coverage:
                continue
            if p.band not in self.trigger.bands:
                before = p
                break
            since = p.day
        was = f"; was {before.band} ({before.health:.0f}) on {before.day}" if before else ""
        return MET, f"Health {s.health:.0f} is {s.band} (since {since}{was})."

    def _usage(self, s: DailySignal) -> float | None:
        """Usage per day over the signal's trailing window, all active devices together."""
        if s.low_coverage or s.usage_per_active_device is None:
            return None
        return s.usage_per_active_device * s.active_devices

    def usage_drop(self, i: int, s: DailySignal) -> tuple[str, str]:
        t = self.trigger
        now = self._usage(s)
        if now is None:
            return HELD, "usage per day not measurable yet (needs the health model's engagement baseline)"
        today = date.fromisoformat(s.day)
        base: list[float] = []
        for back in range(t.window_days, t.window_days + t.baseline_days):
            j = self.index.get((today - timedelta(days=back)).isoformat())
            if j is not None and j < i and (u := self._usage(self.signals[j])) is not None:
                base.append(u)
        if len(base) < t.baseline_min_days:
            return HELD, f"baseline has {len(base)} of {t.baseline_min_days} trustworthy days"
        baseline = sum(base) / len(base)
        if baseline <= 0:
            return HELD, "no usage in the baseline"
        drop = (1 - now / baseline) * 100
        if drop < t.drop_pct:
            return CLEAR, f"usage {drop:+.0f}% against baseline" if drop > 0 else "usage at or above baseline"
        return MET, (f"Usage fell {drop:.0f}% against its baseline: {_num(now)} per day over the last "
                     f"{t.window_days} days ({s.active_devices} active devices) vs {_num(baseline)} per day "
                     f"in the {t.baseline_days} days before (alert at {t.drop_pct:.0f}%).")

    def onboarding_stalled(self, i: int, s: DailySignal) -> tuple[str, str]:
        t = self.trigger
        if s.stage != "onboarding":
            return CLEAR, f"stage {s.stage}, not onboarding"
        account = self.history.account
        start = account.contract_start if account else date.fromisoformat(self.signals[0].day)
        age = (date.fromisoformat(s.day) - start).days
        if age < t.after_days:
            return CLEAR, f"day {age} of onboarding, judged from day {t.after_days}"
        if s.time_to_value_days is not None or (s.adoption is not None and s.adoption >= t.adoption_below):
            return CLEAR, f"adoption {_pct(s.adoption)} reached {_pct(t.adoption_below)}"
        return MET, (f"Onboarding stalled: day {age} since the contract started ({start}), "
                     f"{s.active_devices} of {s.entitled_devices} entitled devices active ({_pct(s.adoption)}), "
                     f"below the {_pct(t.adoption_below)} rollout target; time to value not reached.")

    def expansion(self, i: int, s: DailySignal) -> tuple[str, str]:
        t = self.trigger
        if s.adoption is None or s.adoption <= t.adoption_above:
            return CLEAR, f"adoption {_pct(s.adoption)}"
        extra = s.active_devices - s.entitled_devices
        more = f"; {extra} more devices in use than bought" if extra > 0 else ""
        return MET, (f"Expansion lead: {s.active_devices} of {s.entitled_devices} entitled devices active "
                     f"({_pct(s.adoption)}), above {_pct(t.adoption_above)} of the entitlement{more}.")

    def renewal_risk(self, i: int, s: DailySignal) -> tuple[str, str]:
        t = self.trigger
        account = self.history.account
        if account is None:
            return CLEAR, "no renewal date: the account is not in the registry"
        left = (account.renewal_date - date.fromisoformat(s.day)).days
        if not 0 <= left <= t.within_days:
            return CLEAR, f"renewal in {left} days"
        if s.health >= t.health_below:
            return CLEAR, f"health {s.health:.0f} at or above {t.health_below:.0f}"
        return MET, (f"Renewal at risk: renewal on {account.renewal_date} ({left} days) with health "
                     f"{s.health:.0f} ({s.band}), below {t.health_below:.0f}.")

    def gateway_offline(self, i: int, s: DailySignal) -> tuple[str, str]:
        sightings = self.history.gateways
        if sightings is None:
            return HELD, "no gateway sightings (device hours) to judge from"
        silent = list(silent_gateways(sightings, s.day, self.trigger))
        if not silent:
            return CLEAR, "every known gateway forwarded data"
        parts = [f"{gw} silent for {hours:.0f} h (last seen {_hour_text(last)})" for gw, hours, last in silent]
        return MET, (f"{'Gateway' if len(silent) == 1 else 'Gateways'} offline: {'; '.join(parts)}. Data "
                     f"coverage {_pct(s.coverage)}: treat this as connectivity, not a usage change.")

    def time_to_value(self, i: int, s: DailySignal) -> tuple[str, str]:
        if s.time_to_value_days is None:
            return CLEAR, "time to value not reached"
        return MET, (f"Time to value reached: {s.active_devices} of {s.entitled_devices} entitled devices "
                     f"active ({_pct(s.adoption)}) {s.time_to_value_days} days after the first device came online.")

    def threshold(self, i: int, s: DailySignal) -> tuple[str, str]:
        t = self.trigger
        value = getattr(s, t.signal)
        if value is None:
            return HELD, f"{t.signal} not measurable"
        if t.below is not None and value < t.below:
            return MET, f"{t.signal} is {value:g}, below {t.below:g}."
        if t.above is not None and value > t.above:
            return MET, f"{t.signal} is {value:g}, above {t.above:g}."
        return CLEAR, f"{t.signal} is {value:g}"


def silent_gateways(sightings: GatewaySightings, day: str, trigger: Trigger) -> Iterator[tuple[str, float, int]]:
    """(gateway, hours silent, last hour seen) for known gateways silent longer than ``trigger.hours`` at the day's end."""
    as_of = min(_day_ms(day) + DAY_MS, sightings.horizon_ms)
    known_from = as_of - trigger.known_days * DAY_MS
    for gw, hours in sorted(sightings.hours_ms.items()):
        k = bisect.bisect_left(hours, as_of)  # hours before as_of
        if k == 0:
            continue  # not seen yet
        last = hours[k - 1]
        if last < known_from:
            continue  # not seen for known_days: decommissioned, not offline
        silent_h = (as_of - last - HOUR_MS) / HOUR_MS
        if silent_h > trigger.hours:
            yield gw, silent_h, last


def evaluate(playbook: Playbook, history: AccountHistory, after_day: str | None = None) -> list[Verdict]:
    """The verdict of every day after ``after_day`` (all days when None), oldest first."""
    ev = _Evaluator(playbook, history)
    return [ev.at(i) for i, s in enumerate(history.signals) if after_day is None or s.day > after_day]
