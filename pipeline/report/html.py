"""A self-contained HTML portfolio report: one file a CSM opens in a browser, no server.

``render_html(signals, alerts, title=..., generated_at=...)`` turns the batch
job's daily signals and alerts (see :mod:`fleetpulse.pipeline.outputs.tables`)
into one HTML page:

* a header with the data's dates and the portfolio summary (customers per band,
  low-coverage accounts, alerts by severity);
* portfolio charts: customers per band over time, the lifecycle funnel on each
  customer's latest day, and the distribution of latest coverage;
* the portfolio table, worst health first, each customer linking to its section;
* one section per account: health over time on the green/yellow/red bands,
  heartbeat coverage over time (low-coverage days marked), the latest
  components (weight, score, points, detail) and the account's alerts;
* optionally, retention by cohort from ``fleetpulse retention --json``.

This module lays out the page, its tables and sections; the charts are drawn by
:mod:`fleetpulse.pipeline.report.charts`.

Self-contained on purpose: inline CSS and inline SVG, no JavaScript, no fonts,
images or links outside the file, so it can be mailed or archived and still
open years later. Every piece of text from data (customer ids and segments come
from a CRM export) goes through :func:`~fleetpulse.pipeline.report.charts.esc`
(:func:`html.escape`). The output depends only on
the arguments (``generated_at`` is passed in, ordering is stable), so the same
input renders the same bytes. Standard library only.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from fleetpulse.pipeline.health.config import HealthModel, load_health_model
from fleetpulse.pipeline.health.wording import format_value
from fleetpulse.pipeline.model import BANDS, Alert, Component, DailySignal, most_severe_first

from .charts import (
    BAND_COLOUR,
    Days,
    band_counts_chart,
    coverage_chart,
    coverage_histogram,
    esc,
    funnel_chart,
    health_chart,
    retention_chart,
)
from .text import percent, worst_first

TREND_ARROW = {"up": "\u2191", "down": "\u2193", "flat": "\u2192"}

CSS = """
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; padding: 24px 32px 48px; font: 14px/1.45 system-ui, -apple-system, "Segoe UI",
  Roboto, "Helvetica Neue", Arial, sans-serif; color: #212529; background: #f8f9fa; }
main { max-width: 1200px; margin: 0 auto; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 32px 0 8px; border-bottom: 1px solid #dee2e6; padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.meta { color: #495057; margin: 0 0 16px; }
.cards { display: flex; flex-wrap: wrap; gap: 10px; margin: 12px 0 8px; }
.card { background: #fff; border: 1px solid #dee2e6; border-radius: 6px; padding: 8px 14px;
  min-width: 110px; }
.card .n { font-size: 22px; font-weight: 600; display: block; }
.card .l { color: #495057; font-size: 12px; }
.card.green { border-top: 4px solid #2f9e44; } .card.yellow { border-top: 4px solid #e8a600; }
.card.red { border-top: 4px solid #e03131; } .card.low { border-top: 4px solid #d9480f; }
.charts { display: flex; flex-wrap: wrap; gap: 16px; }
figure { margin: 0; background: #fff; border: 1px solid #dee2e6; border-radius: 6px; padding: 8px; }
figcaption { font-weight: 600; font-size: 13px; margin-bottom: 4px; }
svg { display: block; font: 11px system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
table { border-collapse: collapse; background: #fff; width: 100%; margin: 4px 0 8px; }
th, td { border: 1px solid #dee2e6; padding: 4px 8px; text-align: left; vertical-align: top; }
thead th { background: #f1f3f5; font-size: 12px; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tbody th { font-weight: 600; white-space: nowrap; }
.band { display: inline-block; border-radius: 10px; padding: 0 8px; color: #fff; font-size: 12px;
  font-weight: 600; }
.band-green { background: #2f9e44; } .band-yellow { background: #e8a600; color: #212529; }
.band-red { background: #e03131; } .band-other { background: #868e96; }
.trend-up { color: #2f9e44; } .trend-down { color: #e03131; } .trend-flat, .trend-new { color: #868e96; }
.low { color: #d9480f; font-weight: 600; }
.driver .detail { color: #495057; }
.sev { font-weight: 600; } .sev-critical { color: #c92a2a; } .sev-warning { color: #b35c00; }
.sev-info { color: #1c7ed6; }
section.account { background: #fff; border: 1px solid #dee2e6; border-radius: 6px; padding: 4px 16px 12px;
  margin: 16px 0; }
section.account h2 { border: 0; margin-top: 12px; }
.account .charts figure { border: 0; padding: 0; }
.meter { display: inline-block; width: 60px; height: 8px; background: #e9ecef; border-radius: 4px;
  margin-right: 6px; vertical-align: middle; }
.meter span { display: block; height: 8px; border-radius: 4px; background: #4c6ef5; }
a { color: #1864ab; }
.top { font-size: 12px; }
footer { color: #868e96; font-size: 12px; margin-top: 32px; }
@media print { body { background: #fff; padding: 0; } section.account { break-inside: avoid; } }
"""


def anchor_id(customer_id: str) -> str:
    """A stable, unique, URL-safe fragment for a customer: ``acct-c-0007``.

    Ids that need changing to be safe get a short hash, so two ids that clean
    up to the same text ("a b", "a-b") still get different anchors.
    """
    clean = re.sub(r"[^A-Za-z0-9_-]", "-", customer_id)
    if clean != customer_id or not clean:
        clean += "-" + hashlib.sha1(customer_id.encode("utf-8")).hexdigest()[:8]
    return "acct-" + clean


def band_pill(band: str) -> str:
    css = band if band in BAND_COLOUR else "other"
    return f'<span class="band band-{css}">{esc(band)}</span>'


def trend_html(signal: DailySignal) -> str:
    if signal.trend_delta is None or signal.trend not in TREND_ARROW:
        return '<span class="trend-new">new</span>'
    arrow = TREND_ARROW[signal.trend]
    return (f'<span class="trend-{signal.trend}" title="{esc(signal.trend)}">'
            f"{arrow} {signal.trend_delta:+.1f}</span>")


def coverage_html(signal: DailySignal) -> str:
    text = f"{signal.coverage * 100:.0f}%"
    return f'<span class="low">{text} LOW</span>' if signal.low_coverage else text


def driver_component(signal: DailySignal) -> Component | None:
    return next((c for c in signal.components if c.name == signal.driver), None)


def driver_html(signal: DailySignal) -> str:
    component = driver_component(signal)
    if component is None:
        return esc(signal.driver)
    return (f"<strong>{esc(component.name)}</strong> {esc(format_value(component.name, component.value))}"
            f': <span class="detail">{esc(component.detail)}</span>')


def when_text(generated_at: datetime) -> str:
    if generated_at.tzinfo is not None:
        generated_at = generated_at.astimezone(UTC)
    return generated_at.strftime("%Y-%m-%d %H:%M UTC")


def figure(caption: str, svg: str) -> str:
    return f"<figure><figcaption>{esc(caption)}</figcaption>{svg}</figure>"


# --- tables and sections ----------------------------------------------------------------------


def thead(headers: Sequence[str], numeric: Sequence[int] = ()) -> str:
    cells = "".join(f'<th scope="col"{" class=num" if i in numeric else ""}>{esc(h)}</th>'
                    for i, h in enumerate(headers))
    return f"<thead><tr>{cells}</tr></thead>"


def summary_cards(latest: Sequence[DailySignal], alerts: Sequence[Alert]) -> str:
    bands = Counter(s.band for s in latest)
    low = sum(1 for s in latest if s.low_coverage)
    severities = Counter(a.severity for a in alerts)
    alert_note = ", ".join(f"{severities[s]} {s}" for s in sorted(severities, key=lambda s: (most_severe_first(s), s)))
    cards = [("", str(len(latest)), "customers")]
    cards += [(band, str(bands.get(band, 0)), band) for band in BANDS]
    cards += [("low", str(low), "low coverage"), ("", str(len(alerts)), "alerts" + (f" ({alert_note})" if alert_note else ""))]
    body = "".join(f'<div class="card {css}"><span class="n">{esc(n)}</span><span class="l">{esc(label)}</span></div>'
                   for css, n, label in cards)
    return f'<div class="cards">{body}</div>'


def portfolio_table(ordered: Sequence[DailySignal]) -> str:
    headers = ("customer", "segment", "health", "band", "trend", "adoption", "stage", "coverage", "driver")
    rows = []
    for s in ordered:
        rows.append(
            f'<tr><th scope="row"><a href="#{anchor_id(s.customer_id)}">{esc(s.customer_id)}</a></th>'
            f"<td>{esc(s.segment)}</td><td class=num>{s.health:.1f}</td><td>{band_pill(s.band)}</td>"
            f"<td class=num>{trend_html(s)}</td><td class=num>{esc(percent(s.adoption))}</td>"
            f"<td>{esc(s.stage)}</td><td class=num>{coverage_html(s)}</td>"
            f'<td class="driver">{driver_html(s)}</td></tr>'
        )
    return (f'<table class="portfolio"><caption hidden>Customers, worst health first</caption>'
            f"{thead(headers, (2, 4, 5, 7))}<tbody>{''.join(rows)}</tbody></table>")


def components_table(signal: DailySignal) -> str:
    rows = []
    for c in signal.components:
        measurable = c.value is not None
        meter = (f'<span class="meter"><span style="width:{min(max(c.score, 0.0), 100.0):.0f}%"></span></span>'
                 if measurable else "")
        rows.append(
            f"<tr><th scope=row>{esc(c.name)}</th><td class=num>{esc(format_value(c.name, c.value))}</td>"
            f"<td class=num>{meter}{f'{c.score:.1f}' if measurable else '-'}</td>"
            f"<td class=num>{f'{c.weight * 100:.1f}%' if measurable else '-'}</td>"
            f"<td class=num>{f'{c.contribution:.1f}' if measurable else '-'}</td><td>{esc(c.detail)}</td></tr>"
        )
    return (f"<table>{thead(('component', 'value', 'score', 'weight', 'points', 'detail'), (1, 2, 3, 4))}"
            f"<tbody>{''.join(rows)}</tbody>"
            f"<tfoot><tr><th scope=row>health</th><td></td><td></td><td></td><td class=num>{signal.health:.1f}</td>"
            f"<td>sum of points</td></tr></tfoot></table>")


def alert_order(alerts: Iterable[Alert]) -> list[Alert]:
    """Newest first; on one day the most severe first."""
    ranked = sorted(alerts, key=lambda a: (most_severe_first(a.severity), a.customer_id, a.kind, a.title))
    return sorted(ranked, key=lambda a: a.day, reverse=True)


def alerts_table(alerts: Sequence[Alert], *, with_customer: bool, known: set[str]) -> str:
    headers = ["day"] + (["customer"] if with_customer else []) + ["severity", "kind", "alert", "explanation"]
    rows = []
    for a in alert_order(alerts):
        customer = ""
        if with_customer:
            name = esc(a.customer_id)
            link = f'<a href="#{anchor_id(a.customer_id)}">{name}</a>' if a.customer_id in known else name
            customer = f"<td>{link}</td>"
        rows.append(f"<tr><td class=num>{esc(a.day)}</td>{customer}"
                    f'<td><span class="sev sev-{esc(a.severity)}">{esc(a.severity)}</span></td>'
                    f"<td>{esc(a.kind)}</td><td>{esc(a.title)}</td><td>{esc(a.explanation)}</td></tr>")
    return f"<table>{thead(headers)}<tbody>{''.join(rows)}</tbody></table>"


def account_section(history: Sequence[DailySignal], alerts: Sequence[Alert], days: Days,
                    model: HealthModel) -> str:
    s = history[-1]
    csm = f"CSM {s.csm_owner}" if s.csm_owner else "no CSM assigned"
    low = sum(1 for d in history if d.low_coverage)
    facts = (f"{s.segment} \u00b7 {csm} \u00b7 latest day {s.day} \u00b7 stage {s.stage} \u00b7 "
             f"{s.entitled_devices} entitled, {s.known_devices} known, {s.active_devices} active devices "
             f"\u00b7 adoption {percent(s.adoption)}")
    facts += " \u00b7 time to value " + (
        "not reached yet" if s.time_to_value_days is None else f"{s.time_to_value_days} days")
    parts = [
        f'<section class="account" id="{anchor_id(s.customer_id)}" aria-label="{esc(s.customer_id)}">',
        f"<h2>{esc(s.customer_id)} {band_pill(s.band)} {s.health:.1f} {trend_html(s)}</h2>",
        f'<p class="meta">{esc(facts)} \u00b7 coverage {coverage_html(s)}</p>',
        f"<p>Driver: {driver_html(s)}</p>",
        '<div class="charts">',
        figure("Health over time", health_chart(history, days, model)),
        figure(f"Heartbeat coverage over time ({low} low-coverage day{'s' if low != 1 else ''})",
               coverage_chart(history, days, model)),
        "</div>",
        f"<h3>Components on {esc(s.day)}</h3>",
        components_table(s),
    ]
    if alerts:
        parts += [f"<h3>Alerts ({len(alerts)}, newest first)</h3>",
                  alerts_table(alerts, with_customer=False, known=set())]
    else:
        parts.append("<h3>Alerts</h3><p>No alerts raised.</p>")
    parts.append('<p class="top"><a href="#top">Back to the portfolio</a></p></section>')
    return "".join(parts)


# --- retention (optional) ---------------------------------------------------------------------


def ratio_cell(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return "-"
    return f"{value * 100:.0f}%"


def plain_cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}" if math.isfinite(value) else "-"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return str(value)


def dict_rows(value: Any) -> list[Mapping[str, Any]]:
    """The mappings in a list, ignoring anything else: the file comes from a tool still evolving."""
    if not isinstance(value, list):
        return []
    return [row for row in value if isinstance(row, Mapping)]


def retention_section(retention: Mapping[str, Any]) -> str:
    """Net, gross and logo usage retention per cohort and segment, then the CSM coverage
    comparison, from the JSON ``fleetpulse retention --json`` writes (keys it lacks show as ``-``)."""
    rows = dict_rows(retention.get("retention"))
    parts = ['<h2 id="retention">Usage retention</h2>']
    base, compare = retention.get("base"), retention.get("compare")
    if isinstance(base, Mapping) and isinstance(compare, Mapping):
        parts.append(
            f"<p>{esc(plain_cell(retention.get('quantity')))} per day, base "
            f"{esc(plain_cell(base.get('from')))}..{esc(plain_cell(base.get('to')))} against "
            f"{esc(plain_cell(compare.get('from')))}..{esc(plain_cell(compare.get('to')))}. "
            "NRR: usage now of the accounts active in the base period over their base usage; "
            "GRR: the same with each account capped at its base; logo: base-active accounts still active.</p>"
        )
    if not rows:
        parts.append("<p>The retention file has no rows.</p>")
    chart = retention_chart(rows)
    if chart:
        parts.append(figure("Net (blue) and gross (grey) usage retention per cohort; the dashed line is 100%",
                            chart))
    by_dimension: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_dimension.setdefault(str(row.get("dimension", "group")), []).append(row)
    headers = ("group", "accounts", "base-active", "net (NRR)", "gross (GRR)", "logo")
    for dimension in sorted(by_dimension):
        body = "".join(
            f"<tr><th scope=row>{esc(plain_cell(r.get('group')))}</th>"
            f"<td class=num>{esc(plain_cell(r.get('accounts')))}</td>"
            f"<td class=num>{esc(plain_cell(r.get('base_active')))}</td>"
            + "".join(f"<td class=num>{ratio_cell(r.get(key))}</td>" for key in ("nrr", "grr", "logo_retention"))
            + "</tr>"
            for r in by_dimension[dimension]
        )
        parts += [f"<h3>Retention by {esc(dimension)}</h3>",
                  f"<table>{thead(headers, (1, 2, 3, 4, 5))}<tbody>{body}</tbody></table>"]
    coverage = dict_rows(retention.get("csm_coverage"))
    if coverage:
        columns: list[str] = []
        for row in coverage:
            columns += [str(k) for k in row if str(k) not in columns]
        body = "".join("<tr>" + "".join(f"<td>{esc(plain_cell(r.get(c)))}</td>" for c in columns) + "</tr>"
                       for r in coverage)
        parts += ["<h3>CSM coverage: usage growth with and without an assigned CSM</h3>",
                  f"<table>{thead(columns)}<tbody>{body}</tbody></table>"]
    return "".join(parts)


# --- the page ---------------------------------------------------------------------------------


def render_html(signals: Sequence[DailySignal], alerts: Sequence[Alert], *, title: str,
                generated_at: datetime, retention: Mapping[str, Any] | None = None,
                model: HealthModel | None = None) -> str:
    """The whole report as one HTML document (str); the same arguments give the same text.

    ``signals`` are every customer's daily signals (any order), ``alerts`` the
    alerts raised; ``retention`` is the parsed ``fleetpulse retention --json``
    file, or ``None`` to leave that section out. ``model`` supplies the band and
    coverage thresholds; ``None`` uses the packaged health model.
    """
    model = model if model is not None else load_health_model(None)
    history: dict[str, list[DailySignal]] = {}
    for signal in sorted(signals, key=lambda s: (s.customer_id, s.day)):
        history.setdefault(signal.customer_id, []).append(signal)
    latest = [h[-1] for h in history.values()]
    ordered = worst_first(latest)
    by_customer: dict[str, list[Alert]] = {}
    for alert in alerts:
        by_customer.setdefault(alert.customer_id, []).append(alert)

    head = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<meta name="generator" content="fleetpulse report">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head>")
    body = ['<body><main id="top">', f"<header><h1>{esc(title)}</h1>"]
    if not signals:
        body.append(f'<p class="meta">Generated {esc(when_text(generated_at))}. No signals to report.</p></header>')
    else:
        days = Days.of(signals)
        span = days.first.isoformat() if days.count == 1 else f"{days.first} to {days.last}"
        body += [
            f'<p class="meta">Signals {esc(span)} ({days.count} day{"s" if days.count != 1 else ""}) '
            f"\u00b7 generated {esc(when_text(generated_at))} \u00b7 health bands: green from "
            f"{model.bands.green_min:g}, yellow from {model.bands.yellow_min:g}, red below; low coverage below "
            f"{model.coverage.low_coverage_below * 100:.0f}% of expected heartbeats</p>",
            summary_cards(latest, alerts),
            "</header>",
            '<h2 id="charts">Portfolio</h2><div class="charts">',
            figure("Customers per band over time", band_counts_chart(signals, days)),
            figure("Lifecycle stage, latest day", funnel_chart(latest)),
            figure("Heartbeat coverage, latest day", coverage_histogram(latest, model)),
            "</div>",
            f'<h2 id="customers">Customers, worst health first ({len(ordered)})</h2>',
            portfolio_table(ordered),
        ]
    if alerts:
        body += [f'<h2 id="alerts">Alerts ({len(alerts)}, newest first)</h2>',
                 alerts_table(alerts, with_customer=True, known=set(history))]
    if retention is not None:
        body.append(retention_section(retention))
    if signals:
        body.append('<h2 id="accounts">Accounts</h2>')
        body += [account_section(history[s.customer_id], by_customer.get(s.customer_id, []), days, model)
                 for s in ordered]
    body.append(f"<footer>fleetpulse report \u00b7 {len(signals)} daily signals, {len(history)} customers, "
                f"{len(alerts)} alerts \u00b7 generated {esc(when_text(generated_at))}</footer></main></body></html>\n")
    return head + "".join(body)
