"""The health model's first-cut alerts: the usage-drop measure and each alert's words.

The day loop in :mod:`.score` decides on which day an alert is raised (the
onset rules are in its docstring); this module measures the usage drop it
judges and builds each :class:`~fleetpulse.pipeline.model.Alert`. Every
explanation says what happened, then :func:`explain`: health, band, trend,
driver and coverage in words, the part every alert shares.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from fleetpulse.pipeline.model import (
    BAND_WORSENED,
    EXPANSION_CSQL,
    GATEWAY_OFFLINE,
    USAGE_DROP,
    Alert,
    DailySignal,
)

from .config import HealthModel
from .history import AccountHistory
from .wording import MAX_NAMED, format_value, named, num, pct


@dataclass(frozen=True)
class UsageDrop:
    """Usage per trustworthy day in the window against the baseline's."""

    percent: float  # how far below the baseline (negative: above it)
    now_per_day: float
    base_per_day: float
    days: int  # trustworthy days of the window


def usage_drop(history: AccountHistory, day: date) -> UsageDrop | None:
    """The drop on ``day``, or None when it cannot be judged (too few trustworthy days, no baseline usage)."""
    model = history.model
    current = history.usage(history.window(day, model.window_days))
    base = history.usage(history.baseline_dates(day))
    if current.days < model.alerts.usage_drop_min_days or base.days < model.baseline_min_days:
        return None
    base_per_day = base.total / base.days
    if base_per_day <= 0:
        return None
    now_per_day = current.total / current.days
    return UsageDrop((1 - now_per_day / base_per_day) * 100, now_per_day, base_per_day, current.days)


def explain(model: HealthModel, signal: DailySignal) -> str:
    """Health, band, trend, driver and coverage in words: the part every alert shares."""
    if signal.trend == "new":
        trend = "no trend yet (first week)"
    else:
        trend = f"trend {signal.trend} {signal.trend_delta:+.1f} points over {model.trend_days} days"
    text = f"Health {signal.health:.0f} ({signal.band}), {trend}, stage {signal.stage}."
    driver = next((c for c in signal.components if c.name == signal.driver), None)
    if driver is None:
        text += " No component costs more than half a point."
    else:
        text += (f" Driver: {driver.name} {format_value(driver.name, driver.value)}, score {driver.score:.0f}"
                 f" x weight {driver.weight * 100:.0f}% = {driver.contribution:.1f} of "
                 f"{driver.weight * 100:.1f} points ({driver.detail}).")
    text += f" Coverage {pct(signal.coverage)} of expected heartbeats"
    text += " (low: data incomplete)." if signal.low_coverage else "."
    return text


def _alert(model: HealthModel, signal: DailySignal, kind: str, severity: str, title: str, what: str) -> Alert:
    return Alert(
        customer_id=signal.customer_id, day=signal.day, kind=kind, severity=severity, title=title,
        explanation=f"{what} {explain(model, signal)}", health=signal.health, band=signal.band,
        driver=signal.driver, coverage=signal.coverage,
    )


def band_alert(model: HealthModel, signal: DailySignal, was: str) -> Alert:
    """The band is worse than ``was``, the previous trustworthy day's."""
    severity = "critical" if signal.band == "red" else "warning"
    return _alert(model, signal, BAND_WORSENED, severity,
                  f"Health fell from {was} to {signal.band} ({signal.health:.0f})",
                  f"Band changed from {was} to {signal.band} since the previous trustworthy day.")


def drop_alert(model: HealthModel, signal: DailySignal, drop: UsageDrop) -> Alert:
    """Usage fell ``drop.percent`` below the baseline."""
    severity = "critical" if signal.band == "red" else "warning"
    return _alert(model, signal, USAGE_DROP, severity,
                  f"Usage down {drop.percent:.0f}% against the {model.baseline_days}-day baseline",
                  f"{model.usage_quantity} averaged {num(drop.now_per_day)} per day over the last {drop.days} "
                  f"trustworthy days, {drop.percent:.0f}% below the baseline of {num(drop.base_per_day)} per day "
                  f"(alert at {model.alerts.usage_drop_pct:.0f}%).")


def expansion_alert(model: HealthModel, signal: DailySignal, days: int) -> Alert:
    """The entitlement has been saturated for ``days`` trustworthy days: a lead for Sales."""
    entitled, active = signal.entitled_devices, signal.active_devices
    extra = active - entitled
    beyond = f"; {extra} more device{'s' if extra != 1 else ''} in use than bought" if extra > 0 else ""
    return _alert(
        model, signal, EXPANSION_CSQL, "info",
        f"Expansion lead: {pct(signal.adoption)} of the entitlement in use for {days} days",
        f"{active} of {entitled} entitled devices active in the last {model.window_days} days "
        f"({pct(signal.adoption)}), above {pct(model.alerts.expansion_utilisation)} on "
        f"{days} consecutive trustworthy days{beyond}. A CS-qualified lead for Sales: the customer "
        f"is likely to need more devices or a higher tier.",
    )


def offline_alert(model: HealthModel, signal: DailySignal, silent: dict[str, date], new: set[str],
                  reported: frozenset[str]) -> Alert:
    """Gateways ``new`` went out today, ``silent`` are all that are out (with their last sighting);
    ``reported`` are those whose own status said offline."""
    last_seen = "; ".join(f"{gw} last seen {silent[gw].isoformat()}" for gw in sorted(silent)[:MAX_NAMED])
    held = ", ".join(model.coverage.hold_components) or "nothing"
    severity = "critical" if signal.coverage == 0 else "warning"

    def noun(names: Iterable[str]) -> str:
        names = list(names)
        return f"{'Gateway' if len(names) == 1 else 'Gateways'} {named(names)}"

    return _alert(
        model, signal, GATEWAY_OFFLINE, severity,
        f"{noun(new)} {'reported offline' if new <= reported else 'sent nothing'} today",
        f"{noun(silent)} went silent or reported offline ({last_seen}); coverage is {pct(signal.coverage)} of the "
        f"heartbeats expected from {signal.known_devices} known devices. Treat this as a connectivity "
        f"problem, not a usage change: {held} are held at their last trustworthy values and risk "
        f"alerts are paused until coverage is back above "
        f"{pct(model.coverage.low_coverage_below)}.",
    )
