"""What every alert and touch carries, as template variables and as a structured payload.

An alert explains itself so nobody needs the CSM's memory to act on it: the
account, what changed, the health components and their contributions, the
trend, the data coverage, the playbook step and a link to the account in the
HTML report. :func:`alert_content` builds both forms from one signal;
templates (``string.Template``, ``$name``) pick from :data:`~.config.TEMPLATE_VARS`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from fleetpulse.pipeline.model import DailySignal
from fleetpulse.pipeline.report.html import anchor_id

from .config import MessageTemplate, Playbook, PlaybookSet
from .history import AccountHistory

EVENT_TEXT = {"open": "Opened", "renotify": "Still open", "resolve": "Resolved"}
PAYLOAD_SCHEMA = "fleetpulse.alert.v1"


@dataclass(frozen=True)
class AlertContent:
    variables: dict[str, str]
    payload: dict[str, Any]

    def render(self, template: MessageTemplate) -> tuple[str, str]:
        return template.render(self.variables)


def _pct(share: float | None) -> str:
    return "n/a" if share is None else f"{share * 100:.0f}%"


def components_text(signal: DailySignal) -> str:
    lines = []
    for c in signal.components:
        if c.weight <= 0:
            continue
        mark = " <- driver" if c.name == signal.driver else ""
        value = "n/a" if c.value is None else f"{c.value:g}"
        lines.append(f"- {c.name}: value {value}, score {c.score:.0f} x weight {c.weight * 100:.0f}% = "
                     f"{c.contribution:.1f} points ({c.detail}){mark}")
    return "\n".join(lines) or "- no component measurable"


def report_link(book: PlaybookSet, customer_id: str) -> str:
    return f"{book.report_url}#{anchor_id(customer_id)}" if book.report_url else ""


def alert_content(book: PlaybookSet, playbook: Playbook, history: AccountHistory, signal: DailySignal, *,
                  event: str, episode_id: str, opened_day: str, what: str) -> AlertContent:
    account = history.account
    days_open = (date.fromisoformat(signal.day) - date.fromisoformat(opened_day)).days
    event_text = EVENT_TEXT[event] + (f" (day {days_open + 1})" if event == "renotify" else "")
    trend = "no trend yet" if signal.trend_delta is None else f"{signal.trend} ({signal.trend_delta:+.1f} points)"
    coverage_note = (f"{_pct(signal.coverage)} of expected telemetry"
                     + (" - LOW: data incomplete, held values shown" if signal.low_coverage else ""))
    link = report_link(book, signal.customer_id)
    renewal = account.renewal_date.isoformat() if account else ""
    to_renewal = str((account.renewal_date - date.fromisoformat(signal.day)).days) if account else ""
    csm = (account.csm_owner if account else None) or "unassigned"
    name = account.name if account else signal.customer_id
    variables = {
        "customer_id": signal.customer_id,
        "account_name": name,
        "segment": signal.segment,
        "engagement_model": account.engagement_model if account else "unknown",
        "stage": signal.stage,
        "csm_owner": csm,
        "contact_email": (account.contact_email if account else None) or "",
        "renewal_date": renewal,
        "days_to_renewal": to_renewal,
        "playbook": playbook.name,
        "playbook_title": playbook.title,
        "severity": playbook.severity,
        "step": playbook.step.strip(),
        "event": event,
        "event_text": event_text,
        "day": signal.day,
        "opened_day": opened_day,
        "days_open": str(days_open),
        "episode_id": episode_id,
        "what_changed": what,
        "health": f"{signal.health:.0f}",
        "band": signal.band,
        "trend": trend,
        "trend_delta": "" if signal.trend_delta is None else f"{signal.trend_delta:+.1f}",
        "driver": signal.driver,
        "components": components_text(signal),
        "coverage": _pct(signal.coverage),
        "coverage_note": coverage_note,
        "adoption": _pct(signal.adoption),
        "active_devices": str(signal.active_devices),
        "entitled_devices": str(signal.entitled_devices),
        "report_link": link,
    }
    variables["explanation"] = "\n".join([
        f"{event_text}: {playbook.title} - {name} ({signal.customer_id}), {signal.segment}, stage {signal.stage}, "
        f"CSM {csm}. Episode opened {opened_day}, as of {signal.day}.",
        f"What changed: {what}",
        f"Health {signal.health:.0f} ({signal.band}), trend {trend}, driver {signal.driver}.",
        "Components:",
        variables["components"],
        f"Data coverage: {coverage_note}.",
        f"Playbook step: {variables['step']}",
        f"Report: {link}" if link else "Report: (set report_url in the playbooks file to link the HTML report)",
    ])
    payload = {
        "schema": PAYLOAD_SCHEMA,
        "event": event,
        "episode_id": episode_id,
        "opened_day": opened_day,
        "day": signal.day,
        "playbook": {"name": playbook.name, "title": playbook.title, "severity": playbook.severity,
                     "step": variables["step"]},
        "account": {"customer_id": signal.customer_id, "name": name, "segment": signal.segment,
                    "stage": signal.stage, "csm_owner": account.csm_owner if account else None,
                    "renewal_date": renewal or None},
        "what_changed": what,
        "health": {"score": signal.health, "band": signal.band, "trend": signal.trend,
                   "trend_delta": signal.trend_delta, "driver": signal.driver},
        "components": [{"name": c.name, "value": c.value, "score": c.score, "weight": c.weight,
                        "contribution": c.contribution, "detail": c.detail} for c in signal.components],
        "coverage": {"share": signal.coverage, "low": signal.low_coverage, "record_share": signal.record_coverage},
        "adoption": {"share": signal.adoption, "active_devices": signal.active_devices,
                     "entitled_devices": signal.entitled_devices},
        "report_link": link or None,
    }
    return AlertContent(variables, payload)
