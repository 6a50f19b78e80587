"""`fleetpulse playbooks run` end to end: restarts, replays, a killed process, and the CLIs around it."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fleetpulse.cli import main
from fleetpulse.pipeline.model import DailySignal
from fleetpulse.pipeline.outputs.tables import SIGNAL_SCHEMA, signal_row
from fleetpulse.pipeline.playbooks.engine import run_playbooks
from fleetpulse.pipeline.playbooks.ledger import SENT, Ledger
from fleetpulse.schemas.accounts import COLUMNS, load_accounts

from .servers import LocalHTTPServer, wait_until
from .test_playbooks_support import iso, sig

ROOT = Path(__file__).resolve().parents[1]

PLAYBOOKS = """
version: 1
channels:
  csm: {type: slack, url_env: T_CSM_URL}
  pool: {type: webhook, url_env: T_POOL_URL}
  customer: {type: webhook, url_env: T_CUSTOMER_URL}
routing: {csm_channel: csm, fallback_channel: pool}
delivery: {max_attempts: 5, backoff_initial_ms: 10, backoff_max_ms: 50}
playbooks:
  - name: health-red
    step: Call the sponsor.
    trigger: {type: band, bands: [red], for_days: 2}
    episode: {renotify_after_days: 3, resolve_after_days: 2, cap: {max: 2, per_days: 10}}
    actions:
      - {kind: notify_csm, send_on: [open, renotify, resolve]}
      - {kind: touch_customer, channel: customer}
"""


def write_out(folder: Path, signals: list[DailySignal]) -> Path:
    """A batch job output folder holding just these signals."""
    (folder / "signals").mkdir(parents=True, exist_ok=True)
    for old in (folder / "signals").glob("*.parquet"):
        old.unlink()
    table = pa.Table.from_pylist([signal_row(s) for s in signals], schema=SIGNAL_SCHEMA)
    pq.write_table(table, folder / "signals" / "part-00000.parquet")
    return folder


def write_accounts(path: Path) -> Path:
    rows = [
        ["acme", "Acme", "mid_market", "low_touch", "24000", "2025-01-01", "2027-01-01", "10",
         "jane@vendor.example", "", "", "admin@acme.example"],
        ["solo", "Solo", "smb", "digital", "3000", "2025-01-01", "2027-01-01", "3", "", "", "", "it@solo.example"],
    ]
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows([list(COLUMNS), *rows])
    return path


def fleet_days(first: int, last: int) -> list[DailySignal]:
    """acme: red days 2-12 then green; solo: red days 4-6 and 9-16."""
    out = []
    for i in range(first, last + 1):
        out.append(sig(i, customer="acme", health=30 if 2 <= i <= 12 else 85))
        out.append(sig(i, customer="solo", health=30 if 4 <= i <= 6 or 9 <= i <= 16 else 85))
    return out


class Hook(BaseHTTPRequestHandler):
    """Acknowledges every POST except those scripted to block; records acknowledged keys."""

    acked: ClassVar[list[tuple[str, str]]] = []  # (path, idempotency key)
    arrived: ClassVar[list[str]] = []
    block_first = False
    release = threading.Event()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers["Content-Length"]))
        key = self.headers["Idempotency-Key"]
        Hook.arrived.append(key)
        if Hook.block_first:
            Hook.block_first = False
            Hook.release.wait(30)  # the sender is killed meanwhile: this one is never acknowledged
            return
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()
        Hook.acked.append((self.path, key))

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook() -> Any:
    Hook.acked, Hook.arrived, Hook.block_first = [], [], False
    Hook.release = threading.Event()
    server = LocalHTTPServer(Hook)
    yield server
    Hook.release.set()
    server.close()


def env_for(server: LocalHTTPServer) -> dict[str, str]:
    return {"T_CSM_URL": f"{server.url}/csm", "T_POOL_URL": f"{server.url}/pool",
            "T_CUSTOMER_URL": f"{server.url}/customer"}


def sent_keys(state: Path) -> list[tuple[str, str, str, str]]:
    with Ledger.open(state, exclusive=False) as ledger:
        sent = [(r.customer_id, r.action, r.notification, r.day) for r in ledger.outbox() if r.status == SENT]
    return sorted(sent, key=lambda k: (k[0], k[3], k[1], k[2]))  # per account, by day


@pytest.mark.integration
def test_restarts_and_replays_notify_each_episode_once_with_cooldowns_and_caps(tmp_path: Path, hook: Any) -> None:
    book = tmp_path / "playbooks.yaml"
    book.write_text(PLAYBOOKS)
    accounts = load_accounts(write_accounts(tmp_path / "accounts.csv"))
    env = env_for(hook)
    state = tmp_path / "state"
    # day by day, as a daily job would, replaying the whole history every time (a backfill)
    for last in (3, 5, 5, 9, 14, 14, 20):
        out = write_out(tmp_path / "out", fleet_days(0, last))
        run_playbooks(out, book, accounts, state, deliver=True, environ=env)
    # the same history in one go, into a fresh ledger
    once = tmp_path / "once"
    run_playbooks(write_out(tmp_path / "out", fleet_days(0, 20)), book, accounts, once, environ=env)
    assert sent_keys(state) == sent_keys(once)
    got = sent_keys(state)
    # acme: opens d3 (2 red days in a row), renotify d6 (cooldown 3); the cap (2 per 10 days) holds back
    # d9-d12; resolved after 2 clear days
    assert [k for k in got if k[0] == "acme" and k[1] == "notify_csm-0"] == [
        ("acme", "notify_csm-0", "open", iso(3)), ("acme", "notify_csm-0", "renotify", iso(6)),
        ("acme", "notify_csm-0", "resolve", iso(14))]
    # solo has no CSM: its CSM notices go to the pool. Its two episodes share the cap (2 per 10 days):
    # the renotify due on d13 waits until d5's notice leaves the window (d15)
    solo = [(k[2], k[3]) for k in got if k[0] == "solo" and k[1] == "notify_csm-0"]
    assert solo == [("open", iso(5)), ("resolve", iso(8)), ("open", iso(10)), ("renotify", iso(15)),
                    ("resolve", iso(18))]
    # every message acknowledged exactly once by the receiver: two ledgers, so each key twice in total
    keys = [key for _, key in Hook.acked]
    assert all(keys.count(k) == 2 for k in keys)
    paths = {p for p, _ in Hook.acked}
    assert paths == {"/csm", "/pool", "/customer"}


@pytest.mark.integration
def test_a_run_killed_mid_delivery_delivers_everything_once_after_restart(tmp_path: Path, hook: Any) -> None:
    book = tmp_path / "playbooks.yaml"
    book.write_text(PLAYBOOKS)
    accounts_csv = write_accounts(tmp_path / "accounts.csv")
    out = write_out(tmp_path / "out", fleet_days(0, 9))
    state = tmp_path / "state"
    Hook.block_first = True
    env = {**os.environ, **env_for(hook)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetpulse", "playbooks", "run", "--config", str(book), "--signals", str(out),
         "--accounts", str(accounts_csv), "--state", str(state)],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: len(Hook.arrived) >= 1, 60, "the first delivery to arrive")
    finally:
        proc.send_signal(signal.SIGKILL)  # power cut while a message is on the wire
        proc.wait(30)
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    Hook.release.set()
    assert Hook.acked == []
    with Ledger.open(state, exclusive=False) as ledger:
        queued = {r.key for r in ledger.outbox()}
        assert queued and all(r.status == "pending" for r in ledger.outbox())  # decided, not yet delivered
    # restart: the same days again plus one more
    run_playbooks(write_out(tmp_path / "out", fleet_days(0, 10)), book, load_accounts(accounts_csv), state,
                  environ=env_for(hook))
    acked = [key for _, key in Hook.acked]
    assert sorted(acked) == sorted(set(acked))  # nothing acknowledged twice
    with Ledger.open(state, exclusive=False) as ledger:
        assert {r.key for r in ledger.outbox() if r.status == SENT} == set(acked) >= queued
    assert Hook.arrived[0] in acked  # the message cut off on the wire went out again with the same key


def test_cli_check_reports_errors_in_one_line_and_dry_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(PLAYBOOKS.replace("for_days: 2", "for_days: -1"))
    assert main(["playbooks", "check", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"fleetpulse playbooks: {bad}: playbooks[health-red].trigger.for_days: -1 is out of range; "
                   "fix: use a whole number in [1, 366]")
    good = tmp_path / "good.yaml"
    good.write_text(PLAYBOOKS)
    out = write_out(tmp_path / "out", fleet_days(0, 20))
    assert main(["playbooks", "check", str(good), "--history", str(out), "--accounts",
                 str(write_accounts(tmp_path / "a.csv"))]) == 0
    text = capsys.readouterr().out
    assert "valid - 1 playbooks" in text and "T_CSM_URL" in text  # a missing secret is pointed out
    row = next(line for line in text.splitlines() if line.startswith("health-red"))
    assert row.split()[1:4] == ["2", "3", "3"]  # 2 accounts, 3 episodes opened, 3 resolved
    assert main(["playbooks", "check", str(good), "--history", str(tmp_path)]) == 2


def test_cli_run_and_alerts_listing_snooze_and_failed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    book = tmp_path / "playbooks.yaml"
    # file channels: no network needed; the customer channel is an SMTP server that is not there
    book.write_text(PLAYBOOKS.replace("{type: slack, url_env: T_CSM_URL}", "{type: file, path: csm.jsonl}")
                    .replace("{type: webhook, url_env: T_POOL_URL}", "{type: file, path: pool.jsonl}")
                    .replace("{type: webhook, url_env: T_CUSTOMER_URL}",
                             "{type: smtp, host: 127.0.0.1, port: 9, security: none, from: cs@v.example}")
                    .replace("max_attempts: 5", "max_attempts: 2"))
    accounts = write_accounts(tmp_path / "accounts.csv")
    out = write_out(tmp_path / "out", fleet_days(0, 20))
    state = tmp_path / "state"
    cwd = os.getcwd()
    os.chdir(tmp_path)  # file channels' relative paths
    try:
        assert main(["playbooks", "run", "--config", str(book), "--signals", str(out), "--accounts", str(accounts),
                     "--state", str(state), "--max-wait-s", "5"]) == 0
    finally:
        os.chdir(cwd)
    printed = capsys.readouterr().out
    assert "counters: received=42" in printed and "--failed" in printed
    csm = [json.loads(line) for line in (tmp_path / "csm.jsonl").read_text().splitlines()]
    assert [m["notification"] for m in csm] == ["open", "renotify", "resolve"]
    assert main(["alerts", "--state", str(state)]) == 0
    listing = capsys.readouterr().out
    rows = [line.split() for line in listing.splitlines() if line.startswith("resolved")]
    assert sorted((r[1], r[3], r[4]) for r in rows) == [
        (iso(3), "acme", "health-red"), (iso(5), "solo", "health-red"), (iso(10), "solo", "health-red")]
    assert "3 episodes" in listing
    assert main(["alerts", "--state", str(state), "--failed"]) == 0
    failed = capsys.readouterr().out
    assert "touch_customer-1" in failed and "2 attempts" in failed and "3 failed messages" in failed
    assert main(["alerts", "--state", str(state), "--open", "--json"]) == 0
    assert [json.loads(line)["customer_id"] for line in capsys.readouterr().out.splitlines()] == []
    assert main(["alerts", "--state", str(state), "--snooze", "health-red", "--account", "acme",
                 "--until", "2026-12-31", "--reason", "site refit"]) == 0
    assert "snoozed health-red for acme" in capsys.readouterr().out
    with Ledger.open(state, exclusive=False) as ledger:
        assert ledger.snoozed_until("acme", "health-red") == "2026-12-31"
    assert main(["alerts", "--state", str(tmp_path / "nothing")]) == 2
    assert "no ledger" in capsys.readouterr().err
