"""Run playbooks over daily signals: judge new days, record decisions in the ledger, deliver the outbox.

    from fleetpulse.pipeline.playbooks.engine import run_playbooks
    run = run_playbooks("signals-out/", "deploy/playbooks/lifecycle.yaml", accounts, "state/")

The batch job's output folder is the input (``fleetpulse backfill --out``).
Each (account, playbook) continues from the last day the ledger judged, so a
rerun, a restart after a crash or a backfill over days already judged sends
nothing twice; an episode's messages are keyed by (episode, action,
notification, day) and queued once. :func:`dry_run` judges a history
without a ledger, for ``fleetpulse playbooks check``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from string import Template

from fleetpulse.clock import wall_clock_ms
from fleetpulse.errors import ConfigError
from fleetpulse.pipeline.model import DailySignal
from fleetpulse.schemas.accounts import EMAIL, Account

from .channels import Channel, open_channels
from .config import Action, Playbook, PlaybookSet, load_playbooks
from .delivery import DeliveryReport, OutboxWorker
from .episodes import (
    NOTIFY,
    OPENED,
    RESOLVED,
    SUPPRESSED,
    Decision,
    EpisodeState,
    OpenEpisode,
    step,
)
from .history import AccountHistory, load_histories
from .ledger import FAILED, PENDING, STALE, EpisodeRow, Ledger, OutboxRow
from .render import alert_content, report_link
from .triggers import HELD, evaluate

log = logging.getLogger(__name__)


@dataclass
class PlaybookStats:
    days: int = 0  # account-days judged
    held: int = 0
    opened: int = 0
    resolved: int = 0
    notified: int = 0  # notifications (open / renotify / resolve) decided
    suppressed: int = 0  # snoozed or over the cap
    messages: int = 0  # outbox rows queued (one per action and notification)
    accounts: set[str] = field(default_factory=set)  # accounts with an episode opened


@dataclass
class PlaybookRun:
    """What a run did. ``received``/``sent``/``dropped``/``errors`` as every component counts them."""

    per_playbook: dict[str, PlaybookStats]
    delivery: DeliveryReport | None = None
    stale: int = 0
    unroutable: int = 0  # messages queued as failed: no recipient or channel for this account

    @property
    def received(self) -> int:
        return sum(s.days for s in self.per_playbook.values())

    def counters(self) -> dict[str, int]:
        d = self.delivery or DeliveryReport()
        return {"received": self.received, "sent": d.sent, "dropped": d.dropped, "errors": d.errors,
                "queued": sum(s.messages for s in self.per_playbook.values()), "stale": self.stale,
                "unroutable": self.unroutable, "failed": d.failed, "pending": d.pending}


def message_key(episode: str, action: str, notification: str, day: str) -> str:
    return "fp-" + hashlib.sha256(f"{episode}\x1f{action}\x1f{notification}\x1f{day}".encode()).hexdigest()[:32]


def check_routing(book: PlaybookSet, accounts: Mapping[str, Account]) -> None:
    """Accounts that name a csm_channel must name a channel of this playbooks file."""
    for account in accounts.values():
        if account.csm_channel and account.csm_channel not in book.channels:
            raise ConfigError("accounts registry", f"{account.customer_id}.csm_channel",
                              f"{account.csm_channel!r} is not a channel of {book.source}",
                              f"define it under channels: or use one of {', '.join(book.channels)}")


def route(book: PlaybookSet, action: Action, account: Account | None) -> tuple[str, str | None, str | None]:
    """(channel, recipient, problem): where one action's message goes for this account.

    notify_csm: the action's channel, else the account's csm_channel, else
    routing.csm_channel, addressed to the CSM; an account without a CSM goes
    to routing.fallback_channel (its own ``to``). touch_customer: the action's
    channel, addressed to the account's contact_email. notify_team and csql:
    the action's channel and its own ``to``. ``problem`` says why a message
    cannot be addressed.
    """
    if action.kind == "notify_csm":
        if account is None or not account.csm_owner:
            channel, recipient = book.routing.fallback_channel, None
        else:
            channel = action.channel or account.csm_channel or book.routing.csm_channel
            recipient = account.csm_owner
    elif action.kind == "touch_customer":
        channel, recipient = action.channel or "", account.contact_email if account else None
    else:
        channel, recipient = action.channel or "", None
    config = book.channels[channel]
    problem = None
    if config.type == "smtp" and not config.to:
        if recipient is None:
            problem = (f"no recipient: the account has no {'contact_email' if action.kind == 'touch_customer' else 'CSM'} "
                       f"and channel {channel} has no `to`")
        elif not EMAIL.fullmatch(recipient):
            problem = f"no recipient: {recipient!r} is not an e-mail address and channel {channel} has no `to`"
    return channel, recipient, problem


def _topic(template: str, variables: dict[str, str]) -> str:
    return Template(template).substitute(variables)


class Recorder:
    """Judges new days for every (account, playbook) and writes the decisions to the ledger."""

    def __init__(self, book: PlaybookSet, ledger: Ledger, now_ms: int) -> None:
        self.book, self.ledger, self.now_ms = book, ledger, now_ms
        self.run = PlaybookRun({p.name: PlaybookStats() for p in book.playbooks})
        self.signals: dict[str, DailySignal] = {}  # the current account's signals by day

    def record(self, histories: Iterable[AccountHistory]) -> PlaybookRun:
        histories = list(histories)
        latest = max((h.last_day for h in histories if h.last_day), default=None)
        for history in histories:
            for playbook in self.book.playbooks:
                if playbook.enabled:
                    self.record_one(playbook, history, latest)
        return self.run

    def record_one(self, playbook: Playbook, history: AccountHistory, latest: str | None) -> None:
        cid = history.customer_id
        stats = self.run.per_playbook[playbook.name]
        state = self.ledger.state(cid, playbook.name)
        verdicts = evaluate(playbook, history, after_day=state.last_day)
        if not verdicts:
            return
        until = self.ledger.snoozed_until(cid, playbook.name)
        signals = self.signals = {s.day: s for s in history.signals}
        # One transaction per (account, playbook): the cursor, the episodes and the outbox rows
        # commit together, or not at all (and the next run redoes the same decisions).
        with self.ledger.transaction():
            for verdict in verdicts:
                before = state.episode
                state, decisions = step(state, verdict, playbook.episode, playbook.trigger.for_days, cid,
                                        playbook.name, snoozed=until is not None and verdict.day <= until)
                stats.days += 1
                stats.held += verdict.state == HELD
                signal = signals[verdict.day]
                for decision in decisions:
                    if decision.kind == OPENED:
                        stats.opened += 1
                        stats.accounts.add(cid)
                    elif decision.kind == RESOLVED:
                        stats.resolved += 1
                    elif decision.kind == SUPPRESSED:
                        stats.suppressed += 1
                    elif decision.kind == NOTIFY:
                        stats.notified += 1
                        self.enqueue(playbook, history, decision, latest, stats)
                self.save_episode(playbook, history, state, before, decisions, signal)
            self.ledger.save_state(cid, playbook.name, state, self.now_ms)

    def save_episode(self, playbook: Playbook, history: AccountHistory, state: EpisodeState,
                     before: OpenEpisode | None, decisions: list[Decision], signal: DailySignal) -> None:
        resolved = next((d for d in decisions if d.kind == RESOLVED), None)
        ep = state.episode if resolved is None else before
        if ep is None or not decisions:
            return
        self.ledger.upsert_episode(EpisodeRow(
            episode_id=ep.episode_id, customer_id=history.customer_id, playbook=playbook.name,
            title=playbook.title, severity=playbook.severity, opened_day=ep.opened_day,
            status="resolved" if resolved else "open", last_day=resolved.day if resolved else ep.last_met_day,
            resolved_day=resolved.day if resolved else None,
            notifications=ep.notifications,
            suppressed=ep.suppressed, what_changed=f"Resolved: {resolved.what}" if resolved else ep.what,
            health=signal.health, band=signal.band, report_link=report_link(self.book, history.customer_id) or None,
        ), self.now_ms)

    def enqueue(self, playbook: Playbook, history: AccountHistory, decision: Decision, latest: str | None,
                stats: PlaybookStats) -> None:
        assert decision.episode_id is not None and decision.notification is not None
        signal = self.signals[decision.day]
        content = alert_content(self.book, playbook, history, signal, event=decision.notification,
                                episode_id=decision.episode_id, opened_day=decision.opened_day or decision.day,
                                what=decision.what)
        stale = (self.book.delivery.max_event_age_days is not None and latest is not None
                 and (date.fromisoformat(latest) - date.fromisoformat(decision.day)).days
                 > self.book.delivery.max_event_age_days)
        for action in playbook.actions:
            if decision.notification not in action.on:
                continue
            channel, recipient, problem = route(self.book, action, history.account)
            config = self.book.channels[channel]
            if config.type == "mqtt" and config.topic:
                recipient, problem = _topic(config.topic, content.variables), None
            subject, text = content.render(action.template)
            status, error = PENDING, None
            if stale:
                status, error = STALE, (f"not sent: the event is more than {self.book.delivery.max_event_age_days} "
                                        f"days older than the newest signal ({latest})")
            elif problem:
                status, error = FAILED, problem
            added = self.ledger.enqueue(OutboxRow(
                key=message_key(decision.episode_id, action.name, decision.notification, decision.day),
                episode_id=decision.episode_id, customer_id=history.customer_id, playbook=playbook.name,
                action=action.name, kind=action.kind, notification=decision.notification, day=decision.day,
                channel=channel, recipient=recipient,
                message={"subject": subject, "text": text, "payload": content.payload},
                status=status, next_attempt_ms=self.now_ms, last_error=error, created_ms=self.now_ms,
            ))
            if added:
                stats.messages += 1
                self.run.stale += status == STALE
                self.run.unroutable += status == FAILED


def run_playbooks(out_dir: str | Path, playbooks_file: str | Path | PlaybookSet, accounts: Mapping[str, Account],
                  state_dir: str | Path, now_ms: int | None = None, deliver: bool = True, *,
                  environ: Mapping[str, str] | None = None, channels: Mapping[str, Channel] | None = None,
                  max_wait_ms: int = 60_000, clock_ms: Callable[[], int] = wall_clock_ms,
                  sleep: Callable[[float], None] | None = None) -> PlaybookRun:
    """Judge the signals in ``out_dir``, record decisions in ``state_dir``, then (``deliver``) drain the outbox.

    ``channels`` replaces the channels the file defines (tests, the demo's capture);
    otherwise they are opened from the file with secrets from ``environ``.
    """
    book = playbooks_file if isinstance(playbooks_file, PlaybookSet) else load_playbooks(playbooks_file)
    check_routing(book, accounts)
    # Open channels before judging anything: a missing secret stops the run at start.
    opened = dict(channels) if channels is not None else (open_channels(book, environ) if deliver else {})
    histories = load_histories(out_dir, accounts)
    with Ledger.open(state_dir) as ledger:
        run = Recorder(book, ledger, clock_ms() if now_ms is None else now_ms).record(histories)
        if deliver:
            worker = OutboxWorker(ledger, opened, book.delivery, clock_ms=clock_ms, sleep=sleep or time.sleep)
            run.delivery = worker.drain(max_wait_ms)
    return run


def dry_run(book: PlaybookSet, histories: Iterable[AccountHistory]) -> PlaybookRun:
    """What the playbooks would have done over a history, with a throwaway in-memory ledger."""
    ledger = Ledger(":memory:")
    try:
        return Recorder(book, ledger, 0).record(histories)
    finally:
        ledger.close()
