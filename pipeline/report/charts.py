"""The SVG charts of the HTML portfolio report, and the colours and escaping they share with the page.

Each chart function returns one ``<svg>`` element as text, drawn from daily
signals (or the retention file's rows) with its own ``<title>`` and ``<desc>``
for screen readers, and a ``<title>`` tooltip on every mark:

* per account, on the portfolio's shared calendar (:class:`Days`):
  :func:`health_chart` (health on the band backgrounds) and
  :func:`coverage_chart` (heartbeat coverage against the low-coverage line);
* for the portfolio: :func:`band_counts_chart` (customers per band per day),
  :func:`funnel_chart` (lifecycle stages on the latest day) and
  :func:`coverage_histogram` (latest coverage in tenths);
* :func:`retention_chart`: net and gross usage retention per cohort.

:mod:`fleetpulse.pipeline.report.html` places them on the page. Inline SVG
only, no script; coordinates go through :func:`num` and text from data through
:func:`esc`, so the same signals draw the same bytes. Standard library only.
"""

from __future__ import annotations

import html
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from fleetpulse.pipeline.health.config import HealthModel
from fleetpulse.pipeline.model import BANDS, STAGES, DailySignal

#: stages drawn in red in the funnel: the customer is at risk or gone
ALARM_STAGES = ("at_risk", "churned")
#: strong colours for marks and pills, pale ones for the band backgrounds of a chart
BAND_COLOUR = {"green": "#2f9e44", "yellow": "#e8a600", "red": "#e03131"}
BAND_FILL = {"green": "#e3f5e6", "yellow": "#fff4cc", "red": "#fde4e4"}
LOW_COLOUR = "#d9480f"
OK_COLOUR = "#4c6ef5"
INK = "#212529"
MUTED = "#868e96"
COVERAGE_BINS = 10


def esc(text: object) -> str:
    """Text from data, escaped for element content and quoted attribute values alike."""
    return html.escape(str(text), quote=True)


def num(value: float) -> str:
    """An SVG coordinate: one decimal, no ``-0.0``, so output is stable and small."""
    text = f"{value:.1f}"
    return "0.0" if text == "-0.0" else text


# --- frames and axes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Frame:
    """A chart's size and plot area; maps values to pixels (y grows downwards)."""

    width: int
    height: int
    left: int = 44
    right: int = 12
    top: int = 10
    bottom: int = 26

    @property
    def plot_width(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_height(self) -> float:
        return self.height - self.top - self.bottom

    def y(self, value: float, lo: float, hi: float) -> float:
        share = 0.0 if hi <= lo else (min(max(value, lo), hi) - lo) / (hi - lo)
        return self.top + self.plot_height * (1 - share)

    def slot(self, index: int, slots: int) -> tuple[float, float]:
        """Left edge and width of slot ``index`` of ``slots`` equal slots across the plot."""
        width = self.plot_width / max(slots, 1)
        return self.left + index * width, width

    def centre(self, index: int, slots: int) -> float:
        x, width = self.slot(index, slots)
        return x + width / 2


@dataclass(frozen=True)
class Days:
    """The portfolio's calendar: every account chart shares it, so charts line up."""

    first: date
    last: date

    @classmethod
    def of(cls, signals: Sequence[DailySignal]) -> Days:
        days = sorted({s.day for s in signals})
        return cls(date.fromisoformat(days[0]), date.fromisoformat(days[-1]))

    @property
    def count(self) -> int:
        return (self.last - self.first).days + 1

    def index(self, day: str) -> int:
        return (date.fromisoformat(day) - self.first).days

    def labels(self) -> list[tuple[int, str]]:
        """First, middle and last day: enough to read the axis, few enough not to overlap."""
        picks = sorted({0, (self.count - 1) // 2, self.count - 1})
        return [(i, date.fromordinal(self.first.toordinal() + i).isoformat()) for i in picks]


def svg_open(frame: Frame, title: str, desc: str = "") -> list[str]:
    parts = [f'<svg width="{frame.width}" height="{frame.height}" viewBox="0 0 {frame.width} {frame.height}" '
             f'role="img"><title>{esc(title)}</title>']
    if desc:
        parts.append(f"<desc>{esc(desc)}</desc>")
    return parts


def x_axis(frame: Frame, days: Days) -> list[str]:
    parts = [f'<line x1="{frame.left}" y1="{num(frame.top + frame.plot_height)}" '
             f'x2="{num(frame.width - frame.right)}" y2="{num(frame.top + frame.plot_height)}" stroke="{MUTED}"/>']
    for index, label in days.labels():
        x = frame.centre(index, days.count)
        anchor = "start" if index == 0 and days.count > 1 else "end" if index == days.count - 1 and days.count > 1 \
            else "middle"
        parts.append(f'<text x="{num(x)}" y="{frame.height - 8}" text-anchor="{anchor}" fill="{MUTED}">'
                     f"{esc(label)}</text>")
    return parts


def y_label(frame: Frame, y: float, text: str) -> str:
    return (f'<text x="{frame.left - 6}" y="{num(y + 4)}" text-anchor="end" fill="{MUTED}">{esc(text)}</text>')


def low_coverage_columns(history: Sequence[DailySignal], days: Days, frame: Frame) -> list[str]:
    """A shaded column behind each low-coverage day, so a day with no data at all is still visible."""
    parts = []
    for signal in history:
        if signal.low_coverage:
            x, width = frame.slot(days.index(signal.day), days.count)
            parts.append(f'<rect x="{num(x)}" y="{frame.top}" width="{num(width)}" height="{num(frame.plot_height)}" '
                         f'fill="{LOW_COLOUR}" fill-opacity="0.18"><title>{esc(signal.day)}: low coverage '
                         f"({signal.coverage * 100:.0f}% of expected heartbeats)</title></rect>")
    return parts


# --- account charts ---------------------------------------------------------------------------


def health_chart(history: Sequence[DailySignal], days: Days, model: HealthModel) -> str:
    """Health over time on the band backgrounds; hollow marks on low-coverage days."""
    frame = Frame(560, 200)
    bands = model.bands
    customer = history[-1].customer_id
    parts = svg_open(frame, f"Health of {customer} over time",
                     f"Daily health 0 to 100; green from {bands.green_min:g}, yellow from {bands.yellow_min:g}, "
                     "red below; hollow marks on shaded columns are low-coverage days.")
    for band, lo, hi in reversed(bands.ranges()):
        top, bottom = frame.y(hi, 0, 100), frame.y(lo, 0, 100)
        parts.append(f'<rect x="{frame.left}" y="{num(top)}" width="{num(frame.plot_width)}" '
                     f'height="{num(bottom - top)}" fill="{BAND_FILL[band]}"><title>{band}: '
                     f"{lo:g} to {hi:g}</title></rect>")
    for value in sorted({0.0, bands.yellow_min, bands.green_min, 100.0}):
        parts.append(y_label(frame, frame.y(value, 0, 100), f"{value:g}"))
    parts += low_coverage_columns(history, days, frame)
    # One path, broken where a day is missing, so a gap is not drawn as a trend.
    path: list[str] = []
    previous = -2
    points: list[tuple[float, float, DailySignal]] = []
    for signal in history:
        index = days.index(signal.day)
        x, y = frame.centre(index, days.count), frame.y(signal.health, 0, 100)
        path.append(f"{'L' if index == previous + 1 else 'M'}{num(x)} {num(y)}")
        points.append((x, y, signal))
        previous = index
    parts.append(f'<path d="{" ".join(path)}" fill="none" stroke="{INK}" stroke-width="1.5"/>')
    for x, y, signal in points:
        colour = BAND_COLOUR.get(signal.band, MUTED)
        fill = "#fff" if signal.low_coverage else colour
        note = ", low coverage" if signal.low_coverage else ""
        parts.append(f'<circle cx="{num(x)}" cy="{num(y)}" r="3" fill="{fill}" stroke="{colour}" '
                     f'stroke-width="1.5"><title>{esc(signal.day)}: health {signal.health:.1f} '
                     f"({esc(signal.band)}){note}</title></circle>")
    parts += x_axis(frame, days)
    parts.append("</svg>")
    return "".join(parts)


def coverage_chart(history: Sequence[DailySignal], days: Days, model: HealthModel) -> str:
    """Heartbeat coverage per day as bars; low-coverage days in orange under the threshold line."""
    frame = Frame(560, 200)
    threshold = model.coverage.low_coverage_below
    customer = history[-1].customer_id
    parts = svg_open(frame, f"Heartbeat coverage of {customer} over time",
                     f"Share of expected heartbeats received per day; below {threshold * 100:.0f}% "
                     "the day is low coverage (orange, shaded column).")
    for value in (0.0, threshold, 1.0):
        parts.append(y_label(frame, frame.y(value, 0, 1), f"{value * 100:.0f}%"))
    parts += low_coverage_columns(history, days, frame)
    for signal in history:
        x, width = frame.slot(days.index(signal.day), days.count)
        gap = min(1.0, width * 0.2)
        top = frame.y(signal.coverage, 0, 1)
        colour = LOW_COLOUR if signal.low_coverage else OK_COLOUR
        note = " LOW" if signal.low_coverage else ""
        parts.append(f'<rect x="{num(x + gap / 2)}" y="{num(top)}" width="{num(max(width - gap, 0.5))}" '
                     f'height="{num(frame.top + frame.plot_height - top)}" fill="{colour}"><title>'
                     f"{esc(signal.day)}: coverage {signal.coverage * 100:.0f}%{note}</title></rect>")
    y = frame.y(threshold, 0, 1)
    parts.append(f'<line x1="{frame.left}" y1="{num(y)}" x2="{num(frame.width - frame.right)}" y2="{num(y)}" '
                 f'stroke="{LOW_COLOUR}" stroke-dasharray="4 3"/>')
    parts += x_axis(frame, days)
    parts.append("</svg>")
    return "".join(parts)


# --- portfolio charts -------------------------------------------------------------------------


def band_counts_chart(signals: Sequence[DailySignal], days: Days) -> str:
    """Customers per band per day, stacked: red at the bottom, where the eye starts."""
    frame = Frame(440, 220)
    per_day: dict[str, Counter[str]] = {}
    for signal in signals:
        per_day.setdefault(signal.day, Counter())[signal.band] += 1
    peak = max(sum(c.values()) for c in per_day.values())
    parts = svg_open(frame, "Customers per health band over time",
                     "Stacked bars, one per day: red at the bottom, then yellow, then green.")
    for value in sorted({0, peak}):
        parts.append(y_label(frame, frame.y(value, 0, peak), str(value)))
    for day in sorted(per_day):
        counts = per_day[day]
        x, width = frame.slot(days.index(day), days.count)
        gap = min(1.0, width * 0.2)
        base = 0
        summary = ", ".join(f"{band} {counts.get(band, 0)}" for band in BANDS)
        other = sum(n for band, n in counts.items() if band not in BAND_COLOUR)
        for band in reversed(BANDS):
            n = counts.get(band, 0)
            if not n:
                continue
            top, bottom = frame.y(base + n, 0, peak), frame.y(base, 0, peak)
            parts.append(f'<rect x="{num(x + gap / 2)}" y="{num(top)}" width="{num(max(width - gap, 0.5))}" '
                         f'height="{num(bottom - top)}" fill="{BAND_COLOUR[band]}"><title>{esc(day)}: '
                         f"{summary}{f', other {other}' if other else ''}</title></rect>")
            base += n
    parts += x_axis(frame, days)
    parts.append("</svg>")
    return "".join(parts)


def funnel_chart(latest: Sequence[DailySignal]) -> str:
    """Customers per lifecycle stage on their latest day, in lifecycle order."""
    counts = Counter(s.stage for s in latest)
    stages = list(STAGES) + sorted(set(counts) - set(STAGES))
    row, label_width = 24, 110
    frame = Frame(320, 12 + row * len(stages), left=label_width, right=36, top=6, bottom=6)
    peak = max(counts.values(), default=0) or 1
    parts = svg_open(frame, "Lifecycle funnel: customers per stage on their latest day",
                     "One bar per stage: " + ", ".join(f"{stage} {counts.get(stage, 0)}" for stage in stages))
    for i, stage in enumerate(stages):
        n = counts.get(stage, 0)
        y = frame.top + i * row
        width = frame.plot_width * n / peak
        colour = BAND_COLOUR["red"] if stage in ALARM_STAGES else OK_COLOUR
        parts.append(f'<text x="{label_width - 8}" y="{num(y + 16)}" text-anchor="end" fill="{INK}">'
                     f"{esc(stage)}</text>")
        parts.append(f'<rect x="{label_width}" y="{num(y + 4)}" width="{num(max(width, 1.0))}" height="16" '
                     f'fill="{colour if n else "#dee2e6"}"><title>{esc(stage)}: {n}</title></rect>')
        parts.append(f'<text x="{num(label_width + max(width, 1.0) + 4)}" y="{num(y + 16)}" fill="{INK}">'
                     f"{n}</text>")
    parts.append("</svg>")
    return "".join(parts)


def coverage_histogram(latest: Sequence[DailySignal], model: HealthModel) -> str:
    """How many customers' latest coverage falls in each tenth; low-coverage customers stacked in orange.

    Orange follows each signal's own ``low_coverage`` flag rather than the bin:
    a silent gateway makes a day low coverage even when the heartbeat share is high.
    """
    threshold = model.coverage.low_coverage_below
    low = [0] * COVERAGE_BINS
    ok = [0] * COVERAGE_BINS
    for signal in latest:
        index = min(max(math.floor(signal.coverage * COVERAGE_BINS), 0), COVERAGE_BINS - 1)
        (low if signal.low_coverage else ok)[index] += 1
    frame = Frame(340, 220, left=32, bottom=40)
    peak = max(a + b for a, b in zip(low, ok, strict=True)) or 1
    parts = svg_open(frame, "Distribution of heartbeat coverage on each customer's latest day",
                     f"Customers per tenth of coverage; low-coverage customers in orange (below "
                     f"{threshold * 100:.0f}% of expected heartbeats, or a gateway silent).")
    for value in sorted({0, peak}):
        parts.append(y_label(frame, frame.y(value, 0, peak), str(value)))
    for i in range(COVERAGE_BINS):
        n = low[i] + ok[i]
        lo, hi = i * 100 // COVERAGE_BINS, (i + 1) * 100 // COVERAGE_BINS
        x, width = frame.slot(i, COVERAGE_BINS)
        top = frame.y(n, 0, peak)
        middle = frame.y(low[i], 0, peak)
        bottom = frame.top + frame.plot_height
        title = f"<title>coverage {lo}\u2013{hi}%: {n} customers, {low[i]} low coverage</title>"
        for y0, y1, colour in ((top, middle, OK_COLOUR), (middle, bottom, LOW_COLOUR)):
            if y1 - y0 > 0:
                parts.append(f'<rect x="{num(x + 2)}" y="{num(y0)}" width="{num(width - 4)}" '
                             f'height="{num(y1 - y0)}" fill="{colour}">{title}</rect>')
        if n:
            parts.append(f'<text x="{num(x + width / 2)}" y="{num(top - 3)}" text-anchor="middle" '
                         f'fill="{INK}">{n}</text>')
        # Labels on the bin edges, so "60" reads as the threshold line it is.
        parts.append(f'<text x="{num(x)}" y="{frame.height - 24}" text-anchor="middle" fill="{MUTED}">{lo}</text>')
    parts.append(f'<text x="{num(frame.width - frame.right)}" y="{frame.height - 24}" text-anchor="middle" '
                 f'fill="{MUTED}">100</text>')
    parts.append(f'<line x1="{frame.left}" y1="{num(frame.top + frame.plot_height)}" '
                 f'x2="{num(frame.width - frame.right)}" y2="{num(frame.top + frame.plot_height)}" stroke="{MUTED}"/>')
    parts.append(f'<text x="{num(frame.left + frame.plot_width / 2)}" y="{frame.height - 6}" '
                 f'text-anchor="middle" fill="{MUTED}">coverage, % of expected heartbeats</text>')
    parts.append("</svg>")
    return "".join(parts)


# --- retention --------------------------------------------------------------------------------


def retention_chart(rows: Sequence[Mapping[str, Any]]) -> str:
    """Net and gross usage retention per cohort as paired bars, with the 100% line."""
    cohorts = [r for r in rows if r.get("dimension") == "cohort" and r.get("group") != "all"
               and isinstance(r.get("nrr"), int | float) and isinstance(r.get("grr"), int | float)]
    if not cohorts:
        return ""
    row, label_width = 30, 70
    peak = max(1.0, *(float(r["nrr"]) for r in cohorts), *(float(r["grr"]) for r in cohorts))
    frame = Frame(420, 16 + row * len(cohorts), left=label_width, right=60, top=8, bottom=8)
    parts = svg_open(frame, "Usage retention by contract-start cohort",
                     "; ".join(f"{r['group']}: net {float(r['nrr']) * 100:.0f}%, gross {float(r['grr']) * 100:.0f}%"
                               for r in cohorts))
    full = label_width + frame.plot_width / peak
    parts.append(f'<line x1="{num(full)}" x2="{num(full)}" y1="{frame.top}" y2="{num(frame.top + row * len(cohorts))}" '
                 f'stroke="{INK}" stroke-dasharray="3 3"><title>100%</title></line>')
    for i, r in enumerate(cohorts):
        y = frame.top + i * row
        parts.append(f'<text x="{label_width - 8}" y="{num(y + 17)}" text-anchor="end" fill="{INK}">'
                     f"{esc(r['group'])}</text>")
        for j, (key, colour, label) in enumerate((("nrr", OK_COLOUR, "net"), ("grr", "#adb5bd", "gross"))):
            value = float(r[key])
            width = frame.plot_width * value / peak
            parts.append(f'<rect x="{label_width}" y="{num(y + 3 + j * 12)}" width="{num(max(width, 1.0))}" '
                         f'height="11" fill="{colour}"><title>{esc(r["group"])} {label} '
                         f"{value * 100:.0f}%</title></rect>")
        parts.append(f'<text x="{num(label_width + frame.plot_width * float(r["nrr"]) / peak + 4)}" '
                     f'y="{num(y + 13)}" fill="{INK}">{float(r["nrr"]) * 100:.0f}%</text>')
    parts.append("</svg>")
    return "".join(parts)
