"""Ledger, routing, alert content and the outbox worker, on literal signals with a fake channel and clock."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

import pytest

from fleetpulse.errors import ConfigError, TerminalError, TransientError
from fleetpulse.pipeline.playbooks.channels import RetryLater
from fleetpulse.pipeline.playbooks.config import DeliveryPolicy
from fleetpulse.pipeline.playbooks.delivery import OutboxWorker
from fleetpulse.pipeline.playbooks.engine import Recorder, check_routing, dry_run
from fleetpulse.pipeline.playbooks.ledger import FAILED, PENDING, SENT, STALE, Ledger, OutboxRow
from fleetpulse.pipeline.report.html import anchor_id

from .test_playbooks_support import HEADER, account, book, history, iso, one, sig

RED_THEN_GREEN = [sig(i, health=30 if 2 <= i <= 8 else 85) for i in range(12)]


@pytest.fixture
def ledger(tmp_path: Path):
    with Ledger.open(tmp_path / "state") as opened:
        yield opened


def record(b, hists, ledger: Ledger, now_ms: int = 1_000):
    return Recorder(b, ledger, now_ms).record(hists)


def test_alert_carries_its_own_explanation(ledger: Ledger) -> None:
    b = one("{type: band}", episode="{renotify_after_days: null}")
    record(b, [history(RED_THEN_GREEN)], ledger)
    (row,) = ledger.outbox(status=PENDING)
    text = row.message["text"]
    for part in ("Acme Dental (acme)", "mid_market", "CSM jane@vendor.example", f"What changed: Health 30 is red (since "
                 f"{iso(2)}; was green (85) on {iso(1)}).", "- adoption: value 0.9, score 90 x weight 40% = 36.0 points (9 of 10 "
                 "entitled devices active)", "trend flat (+0.0 points)", "Data coverage: 100% of expected telemetry",
                 "Playbook step: Call the customer.", f"https://cs.example/report/index.html#{anchor_id('acme')}"):
        assert part in text, part
    payload = row.message["payload"]
    assert payload["schema"] == "fleetpulse.alert.v1" and payload["episode_id"] == row.episode_id
    assert payload["components"][0]["contribution"] == 36.0 and payload["coverage"]["share"] == 1.0
    assert row.message["subject"] == "[FleetPulse] Opened: Test playbook - Acme Dental (acme)"
    (episode,) = ledger.episodes()
    assert (episode.status, episode.opened_day, episode.resolved_day) == ("resolved", iso(2), iso(9))


def test_a_replayed_or_repeated_run_queues_nothing_twice(ledger: Ledger) -> None:
    b = one("{type: band}", episode="{renotify_after_days: 3, resolve_after_days: 1}",
            actions="[{kind: notify_csm, send_on: [open, renotify, resolve]}]")
    first = record(b, [history(RED_THEN_GREEN[:6])], ledger)
    assert first.per_playbook["pb"].messages == 2  # open d2, renotify d5
    again = record(b, [history(RED_THEN_GREEN[:6])], ledger)
    assert again.per_playbook["pb"].days == 0 and again.per_playbook["pb"].messages == 0
    # a backfill over the same days and a few more: only the new days are judged
    more = record(b, [history(RED_THEN_GREEN)], ledger)
    assert more.per_playbook["pb"].days == 6
    assert [(r.day, r.notification) for r in ledger.outbox()] == [
        (iso(2), "open"), (iso(5), "renotify"), (iso(8), "renotify"), (iso(9), "resolve")]
    assert len(ledger.episodes()) == 1


def test_a_crash_inside_a_decision_rolls_it_back_and_the_rerun_redoes_it(ledger: Ledger, monkeypatch) -> None:
    b = one("{type: band}")
    hists = [history([sig(i, customer=c, health=30) for i in range(3)], account(customer_id=c)) for c in ("a1", "a2")]
    calls = {"n": 0}
    real = ledger.enqueue

    def crash_on_second(row: OutboxRow) -> bool:
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt  # the process dies between two decisions' writes
        return real(row)

    monkeypatch.setattr(ledger, "enqueue", crash_on_second)
    with pytest.raises(KeyboardInterrupt):
        record(b, hists, ledger)
    assert [r.customer_id for r in ledger.outbox()] == ["a1"]
    assert ledger.state("a2", "pb").last_day is None  # a2's whole decision rolled back
    monkeypatch.setattr(ledger, "enqueue", real)
    record(b, hists, ledger)
    assert sorted(r.customer_id for r in ledger.outbox()) == ["a1", "a2"]


def test_routing_csm_channel_fallback_and_customer_contact(ledger: Ledger) -> None:
    header = HEADER.replace("channels:\n", "channels:\n  chat: {type: file, path: chat.jsonl}\n"
                                          "  cust-mail: {type: smtp, host: h, from: cs@v.example}\n")
    b = book("""
    - name: pb
      step: s
      trigger: {type: band}
      actions: [{kind: notify_csm}, {kind: touch_customer, channel: cust-mail}, {kind: csql, channel: sales}]
    """, header=header)
    accounts = {
        "owned": account(customer_id="owned"),
        "chat": account(customer_id="chat", csm_channel="chat"),
        "nocsm": account(customer_id="nocsm", csm_owner=None, contact_email=None),
    }
    check_routing(b, accounts)
    record(b, [history([sig(0, customer=c, health=30)], a) for c, a in accounts.items()], ledger)
    got = {(r.customer_id, r.kind): (r.channel, r.recipient, r.status) for r in ledger.outbox()}
    assert got[("owned", "notify_csm")] == ("csm-mail", "jane@vendor.example", PENDING)
    assert got[("chat", "notify_csm")] == ("chat", "jane@vendor.example", PENDING)
    assert got[("nocsm", "notify_csm")] == ("pool", None, PENDING)  # no CSM: the fallback channel
    assert got[("owned", "touch_customer")] == ("cust-mail", "admin@acme.example", PENDING)
    assert got[("owned", "csql")] == ("sales", None, PENDING)
    # no contact address: kept as failed with the reason, never silently skipped
    row = next(r for r in ledger.outbox(customer_id="nocsm") if r.kind == "touch_customer")
    assert row.status == FAILED and "no contact_email" in (row.last_error or "")
    with pytest.raises(ConfigError) as caught:
        check_routing(b, {"x": account(customer_id="x", csm_channel="nowhere")})
    assert caught.value.key == "x.csm_channel"


def test_snoozed_accounts_get_nothing_until_the_snooze_ends(ledger: Ledger) -> None:
    b = one("{type: band}", episode="{renotify_after_days: null}")
    ledger.snooze("acme", "pb", iso(3), "customer on holiday", now_ms=1)
    record(b, [history([sig(i, health=30) for i in range(6)])], ledger)
    assert [(r.day, r.notification) for r in ledger.outbox()] == [(iso(4), "open")]
    (episode,) = ledger.episodes()
    assert episode.suppressed == 4 and episode.opened_day == iso(0)


def test_events_older_than_max_event_age_are_kept_as_stale(ledger: Ledger) -> None:
    b = book("""
    - name: pb
      step: s
      trigger: {type: band}
      episode: {resolve_after_days: 1, renotify_after_days: null}
      actions: [{kind: notify_csm}]
    """, header=HEADER + "delivery: {max_event_age_days: 2}\n")
    record(b, [history([sig(i, health=30 if i in (0, 7) else 85) for i in range(9)])], ledger)
    assert [(r.day, r.status) for r in ledger.outbox()] == [(iso(0), STALE), (iso(7), PENDING)]


def test_dry_run_counts_without_a_ledger() -> None:
    b = one("{type: band}")
    run = dry_run(b, [history(RED_THEN_GREEN), history([sig(0, customer="b", health=30)], account(customer_id="b"))])
    stats = run.per_playbook["pb"]
    assert (stats.opened, stats.resolved, stats.accounts) == (2, 1, {"acme", "b"})


# ---- the outbox worker ---------------------------------------------------------------


@dataclass
class FakeChannel:
    """Fails with the given errors in order, then accepts; records what it accepted."""

    name: str = "csm-mail"
    errors: list[Exception] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    attempts: int = 0

    def send(self, row: OutboxRow) -> None:
        self.attempts += 1
        if self.errors:
            raise self.errors.pop(0)
        self.accepted.append(row.key)


class FakeTime:
    def __init__(self) -> None:
        self.now_ms = 1_000_000
        self.sleeps: list[float] = []

    def clock(self) -> int:
        return self.now_ms

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_ms += int(seconds * 1000)


def queued_one(ledger: Ledger) -> OutboxRow:
    record(one("{type: band}", episode="{renotify_after_days: null}"), [history([sig(0, health=30)])], ledger, 1_000_000)
    (row,) = ledger.outbox()
    return row


def test_transient_failures_are_retried_with_backoff_and_delivered_once(ledger: Ledger) -> None:
    row = queued_one(ledger)
    channel = FakeChannel(errors=[TransientError("503"), TransientError("503"), RetryLater("429", 30)])
    t = FakeTime()
    policy = DeliveryPolicy(max_attempts=5, backoff_initial_ms=1000, backoff_max_ms=4000)
    worker = OutboxWorker(ledger, {"csm-mail": channel}, policy, clock_ms=t.clock, sleep=t.sleep,
                          rng=random.Random(1))
    report = worker.drain(max_wait_ms=120_000)
    assert channel.accepted == [row.key] and channel.attempts == 4
    (done,) = ledger.outbox()
    assert (done.status, done.attempts, done.last_error) == (SENT, 4, None)
    # equal jitter: each wait is within [half, all] of the capped exponential delay; Retry-After wins
    assert 0.5 <= t.sleeps[0] <= 1.0 and 1.0 <= t.sleeps[1] <= 2.0 and t.sleeps[2] == 30.0
    assert report.as_dict() == {"received": 4, "sent": 1, "dropped": 0, "errors": 3, "failed": 0, "pending": 0}


def test_exhausted_or_refused_messages_stay_failed_and_can_be_retried(ledger: Ledger) -> None:
    queued_one(ledger)
    t = FakeTime()
    channel = FakeChannel(errors=[TransientError("down")] * 3)
    worker = OutboxWorker(ledger, {"csm-mail": channel}, DeliveryPolicy(3, 10, 10), clock_ms=t.clock, sleep=t.sleep)
    assert worker.drain(60_000).failed == 1
    (row,) = ledger.outbox(status=FAILED)
    assert row.attempts == 3 and "gave up after 3 attempts: down" in (row.last_error or "")
    assert ledger.retry_failed(t.clock()) == 1
    OutboxWorker(ledger, {"csm-mail": channel}, DeliveryPolicy(3, 10, 10), clock_ms=t.clock, sleep=t.sleep).drain()
    assert ledger.outbox()[0].status == SENT and len(channel.accepted) == 1
    # a terminal refusal is not retried
    ledger2_row = queued_one_more(ledger)
    refusing = FakeChannel(errors=[TerminalError("HTTP 404")])
    OutboxWorker(ledger, {"csm-mail": refusing}, DeliveryPolicy(), clock_ms=t.clock, sleep=t.sleep).drain(60_000)
    assert refusing.attempts == 1
    assert next(r for r in ledger.outbox() if r.key == ledger2_row.key).status == FAILED


def queued_one_more(ledger: Ledger) -> OutboxRow:
    other = account(customer_id="beta")
    record(one("{type: band}"), [history([sig(0, customer="beta", health=30)], other)], ledger, 1_000_000)
    return next(r for r in ledger.outbox() if r.customer_id == "beta")


def test_retries_due_later_than_the_wait_stay_pending(ledger: Ledger) -> None:
    queued_one(ledger)
    t = FakeTime()
    channel = FakeChannel(errors=[TransientError("down")])
    report = OutboxWorker(ledger, {"csm-mail": channel}, DeliveryPolicy(8, 60_000, 60_000), clock_ms=t.clock,
                          sleep=t.sleep).drain(max_wait_ms=1_000)
    assert report.pending == 1 and t.sleeps == [] and ledger.outbox()[0].status == PENDING


def test_one_runner_per_state_folder(tmp_path: Path) -> None:
    with Ledger.open(tmp_path):
        with pytest.raises(TerminalError, match="another"):
            Ledger.open(tmp_path)
    Ledger.open(tmp_path).close()  # released when the first closed


def test_episode_rows_for_alerts_listing(ledger: Ledger) -> None:
    b = one("{type: band}")
    record(b, [history(RED_THEN_GREEN), history([sig(0, customer="z", health=30)], account(customer_id="z"))], ledger)
    assert [e.customer_id for e in ledger.episodes(status="open")] == ["z"]
    assert [e.customer_id for e in ledger.episodes(status="resolved")] == ["acme"]
    assert ledger.counts()["episodes_open"] == 1
    assert date.fromisoformat(ledger.episodes(customer_id="acme")[0].opened_day) == date.fromisoformat(iso(2))
