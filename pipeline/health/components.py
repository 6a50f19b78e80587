"""The health components, each measured on one day of an account's history before weighting.

Every function returns a :class:`Measure`: the raw value the component's
scoring curve reads (``None`` when it cannot be measured) and one line a CSM
can read about it. Those that compare the account with the fleet take the
fleet's fact they need as an argument. The day loop in :mod:`.score` holds
values over low-coverage days, weights and scores them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date

from .history import AccountHistory
from .wording import named, num, pct


@dataclass(frozen=True)
class Measure:
    """A component measured (or not) on one day, before weighting."""

    value: float | None  # None = not measurable
    detail: str
    signal: float | None = None  # the DailySignal field it feeds, when not the value itself


def adoption(history: AccountHistory, day: date) -> Measure:
    """Share of the entitled devices active in the window."""
    window_days = history.model.window_days
    active = {dev for row in history.rows(history.window(day, window_days)) for dev in row.active_devices}
    if history.entitled <= 0:
        reason = "customer not in the CRM export" if history.account is None else "0 entitled devices in the CRM"
        return Measure(None, f"not measurable: {reason} ({len(active)} devices active)")
    share = len(active) / history.entitled
    return Measure(share, f"{len(active)} of {history.entitled} entitled devices active "
                          f"in the last {window_days} days ({pct(share)})")


def engagement(history: AccountHistory, day: date) -> Measure:
    """Usage per active device-day in the window against the account's own baseline."""
    model, quantity = history.model, history.model.usage_quantity
    current = history.usage(history.window(day, model.window_days))
    # Baseline: usage per active device-day in window-sized blocks, so it compares like with like
    # (a 28-day set of distinct devices is larger than a 7-day one when devices are used now and then).
    baseline_dates = history.baseline_dates(day)
    weighted, base_days = 0.0, 0
    for start in range(len(baseline_dates), 0, -model.window_days):
        block = history.usage(baseline_dates[max(0, start - model.window_days):start])
        if block.days and block.active and block.total > 0:
            weighted += block.total / len(block.active)  # = rate * days
            base_days += block.days
    if base_days < model.baseline_min_days:
        return Measure(None, f"not measurable: no baseline yet ({base_days} of {model.baseline_min_days} "
                             f"trustworthy days with {quantity} usage in the {model.baseline_days} days "
                             f"before the last {model.window_days})")
    if current.days == 0:
        return Measure(None, f"not measurable: no trustworthy day in the last {model.window_days}")
    baseline = weighted / base_days
    if not current.active:
        return Measure(0.0, f"no {quantity} usage in the last {model.window_days} days (baseline "
                            f"{num(baseline)} per active device per day)", signal=0.0)
    rate = current.total / (len(current.active) * current.days)
    ratio = rate / baseline
    return Measure(ratio, f"{num(rate)} {quantity} per active device per day over the last "
                          f"{model.window_days} days, {pct(ratio)} of the {model.baseline_days}-day "
                          f"baseline ({num(baseline)})", signal=rate)


def breadth(history: AccountHistory, day: date, catalog: frozenset[str]) -> Measure:
    """Share of the fleet's feature catalog used in the window."""
    if not catalog:
        return Measure(None, "not measurable: the fleet's feature catalog is empty")
    window_days = history.model.window_days
    used = {f for row in history.rows(history.window(day, window_days))
            for f, uses in row.features.items() if uses > 0} & catalog
    share = len(used) / len(catalog)
    detail = f"{len(used)} of {len(catalog)} features used in the last {window_days} days"
    if catalog - used:
        detail += f"; unused: {named(catalog - used)}"
    return Measure(share, detail)


def reliability(history: AccountHistory, day: date,
                issue_fw_by_day: Mapping[str, frozenset[str]]) -> Measure:
    """Error records per device-day in the window, less those of a fleet-wide firmware issue that day."""
    window_days = history.model.window_days
    charged = excused = active_days = reporting_days = 0
    excused_fw: set[str] = set()
    for row in history.rows(history.window(day, window_days)):
        issue = issue_fw_by_day.get(row.day, frozenset())
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
        return Measure(None, f"not measurable: no device reported in the last {window_days} days")
    rate = charged / basis
    detail = (f"{charged} error records over {basis} {unit} device-days in the last "
              f"{window_days} days ({rate:.2f} per device-day)")
    if excused:
        detail += f"; {excused} more on firmware {named(excused_fw)} not charged: fleet-wide product issue"
    return Measure(rate, detail)


def firmware(history: AccountHistory, day: date, latest: str | None) -> Measure:
    """Share of the known devices on ``latest``, the fleet's newest firmware that day."""
    if not latest:
        return Measure(None, "not measurable: the fleet's newest firmware is unknown for this day")
    known_days = history.model.coverage.known_device_days
    device_fw: dict[str, str] = {}
    for row in history.rows(history.window(day, known_days)):
        device_fw.update(row.device_fw)  # oldest first, so each device keeps its latest firmware
    if not device_fw:
        return Measure(None, f"not measurable: no device reported in the last {known_days} days")
    behind = sorted(fw for fw in device_fw.values() if fw != latest)
    share = 1 - len(behind) / len(device_fw)
    detail = f"{len(device_fw) - len(behind)} of {len(device_fw)} devices on the newest firmware {latest}"
    if behind:
        counts = {fw: behind.count(fw) for fw in behind}
        detail += "; behind: " + named(f"{fw} x{n}" for fw, n in counts.items())
    return Measure(share, detail)


def nps(history: AccountHistory, day: date) -> Measure:
    """The latest NPS answer in the CRM (the same every day)."""
    account = history.account
    if account is None or account.nps is None:
        return Measure(None, "not measurable: no NPS answer in the CRM")
    return Measure(float(account.nps), f"latest NPS answer {account.nps:+d} (from the CRM)")
