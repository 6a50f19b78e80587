"""Plain-text health reports for a terminal: the portfolio table and one account explained.

``render_portfolio(latest, alerts)`` lists every customer's latest signal worst
first, with the component that drives its score, then the alerts raised.
``render_account(history)`` explains one customer: its components, weights,
scores and contributions, and the last 14 days of health.

Output is ASCII only: any other character coming from data (feature names,
firmware, CRM fields) is escaped, so a report can never emit terminal control
sequences. Standard library only.
"""

from __future__ import annotations

import textwrap
from collections.abc import Iterable, Sequence

from fleetpulse.pipeline.health.config import HealthModel
from fleetpulse.pipeline.health.wording import format_value
from fleetpulse.pipeline.model import BANDS, Alert, DailySignal, most_severe_first, worst_band_first

TREND_ARROW = {"up": "^", "down": "v", "flat": "="}
DRIVER_WIDTH = 90
WRAP_WIDTH = 100
HISTORY_DAYS = 14


def safe(text: object) -> str:
    """Printable ASCII only: everything else is shown as a Python escape (\\x1b, \\u00e9)."""
    out = []
    for ch in str(text):
        if " " <= ch <= "~":
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


def clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def trend_cell(signal: DailySignal) -> str:
    """Arrow and delta: ``^ +6.5``, ``v -12.0``, ``= +1.0``; ``new`` before a week of history."""
    if signal.trend_delta is None or signal.trend not in TREND_ARROW:
        return "new"
    return f"{TREND_ARROW[signal.trend]} {signal.trend_delta:+.1f}"


def percent(share: float | None) -> str:
    return "-" if share is None else f"{share * 100:.0f}%"


def coverage_cell(signal: DailySignal) -> str:
    return f"{signal.coverage * 100:.0f}%" + (" LOW" if signal.low_coverage else "")


def driver_cell(signal: DailySignal) -> str:
    component = next((c for c in signal.components if c.name == signal.driver), None)
    if component is None:
        return signal.driver
    return f"{component.name} {format_value(component.name, component.value)}: {component.detail}"


def table(headers: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[int] = ()) -> list[str]:
    """Fixed-width columns, two spaces apart; columns listed in ``right`` are right-aligned."""
    cells = [[safe(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]

    def line(row: Sequence[str]) -> str:
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  ".join(parts).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells]


def worst_first(latest: Iterable[DailySignal]) -> list[DailySignal]:
    """The portfolio's order, in both reports: lowest health, then worst band, then customer id."""
    return sorted(latest, key=lambda s: (s.health, worst_band_first(s.band), s.customer_id))


def render_portfolio(latest: list[DailySignal], alerts: list[Alert]) -> str:
    """The portfolio: one row per customer, worst health first, then the alerts raised."""
    if latest:
        days = sorted({s.day for s in latest})
        when = days[0] if len(days) == 1 else f"{days[0]} .. {days[-1]}"
        title = f"Customer health, {when}: {len(latest)} customers, worst first"
    else:
        title = "Customer health: no signals"
    lines = [safe(title), ""]
    ordered = worst_first(latest)
    if ordered:
        lines += table(
            ("customer", "segment", "health", "band", "trend", "adoption", "stage", "coverage", "driver"),
            (
                (s.customer_id, s.segment, f"{s.health:.1f}", s.band, trend_cell(s), percent(s.adoption),
                 s.stage, coverage_cell(s), clip(driver_cell(s), DRIVER_WIDTH))
                for s in ordered
            ),
            right=(2, 4, 5, 7),
        )
        counts = ", ".join(f"{band} {sum(1 for s in latest if s.band == band)}" for band in BANDS)
        low = sum(1 for s in latest if s.low_coverage)
        lines += ["", f"{counts}; low coverage {low}"]
    lines += ["", f"Alerts raised: {len(alerts)}" if alerts else "Alerts raised: none"]
    ranked = sorted(alerts, key=lambda a: (a.day, most_severe_first(a.severity), a.customer_id, a.kind))
    for alert in ranked:
        lines.append(safe(f"{alert.day}  {alert.customer_id}  {alert.kind}  {alert.severity}: {alert.title}"))
        lines += textwrap.wrap(safe(alert.explanation), WRAP_WIDTH, initial_indent="    ",
                               subsequent_indent="    ")
    return "\n".join(lines) + "\n"


def bands_line(model: HealthModel) -> str:
    """The bands of the model that scored the signals, e.g. ``green 70-100, yellow 50-70, red 0-50``."""
    return "Bands: " + ", ".join(f"{band} {low:g}-{high:g}" for band, low, high in model.bands.ranges())


def render_account(history: list[DailySignal], model: HealthModel | None = None) -> str:
    """One account explained from its daily signals (any order, one customer); with the ``model``
    that scored them, the bands' cut-offs too."""
    if not history:
        return "No signals for this account.\n"
    customers = {s.customer_id for s in history}
    if len(customers) > 1:
        raise ValueError(f"render_account takes one customer's history, got {sorted(customers)}")
    ordered = sorted(history, key=lambda s: s.day)
    s = ordered[-1]
    if s.trend_delta is None:
        trend = "new (no health a week ago)"
    else:
        trend = f"{trend_cell(s)} (was {s.previous_health:.1f})"
    csm = f", CSM {s.csm_owner}" if s.csm_owner else ", no CSM assigned"
    lines = [
        f"{s.customer_id} ({s.segment}{csm}) on {s.day}",
        f"Health {s.health:.1f} {s.band}, trend {trend}, stage {s.stage}",
        f"Devices: {s.entitled_devices} entitled, {s.known_devices} known, {s.active_devices} active; "
        f"adoption {percent(s.adoption)}; time to value "
        + ("not reached yet" if s.time_to_value_days is None else f"{s.time_to_value_days} days"),
        f"Coverage {coverage_cell(s)} of expected heartbeats"
        + (" - usage components may be held at their last trustworthy values" if s.low_coverage else ""),
        f"Driver: {s.driver}",
        *([bands_line(model)] if model is not None else []),
        "",
    ]
    lines = [safe(line) for line in lines]
    lines += table(
        ("component", "value", "score", "weight", "points", "detail"),
        (
            (c.name, format_value(c.name, c.value),
             "-" if c.value is None else f"{c.score:.1f}",
             "-" if c.value is None else f"{c.weight * 100:.1f}%",
             "-" if c.value is None else f"{c.contribution:.1f}",
             c.detail)
            for c in s.components
        ),
        right=(1, 2, 3, 4),
    )
    lines += [f"health = sum of points = {s.health:.1f}", "", f"Last {HISTORY_DAYS} days"]
    lines += table(
        ("day", "health", "band", "coverage", "driver", ""),
        (
            (d.day, f"{d.health:.1f}", d.band, coverage_cell(d), d.driver, "#" * round(d.health / 5))
            for d in ordered[-HISTORY_DAYS:]
        ),
        right=(1, 3),
    )
    return "\n".join(lines) + "\n"
