"""The durable ledger and outbox: what was decided and what must still be sent, in one SQLite file.

    <state>/ledger.sqlite   (WAL; one writer at a time, guarded by <state>/run.lock)

Tables:

* ``cursors`` - per (account, playbook) the episode state after the last day judged.
  A run only judges days after it, so a replayed or backfilled day sends nothing again.
* ``episodes`` - one row per (account, playbook, episode); the id is derived from the
  opening day, so the same episode found twice is the same row (updated, not duplicated).
* ``outbox`` - one row per message, keyed by an idempotency key derived from
  (episode, action, notification, day); ``INSERT OR IGNORE`` makes enqueueing idempotent.
  Rows go ``pending`` -> ``sent``, or ``failed`` (attempts exhausted or refused for good),
  or ``stale`` (older than ``max_event_age_days`` when first seen); none is ever deleted.
* ``snoozes`` - per (account, playbook or ``*``): no notifications up to a day.

The cursor, the episode rows and the outbox rows of one (account, playbook)
are written in one transaction: a crash leaves either all of the decision or
none of it, and the next run redoes it identically.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetpulse.errors import TerminalError

from .episodes import EpisodeState

LEDGER_FILE = "ledger.sqlite"
LOCK_FILE = "run.lock"
SCHEMA_VERSION = 1
PENDING, SENT, FAILED, STALE = "pending", "sent", "failed", "stale"
ALL_PLAYBOOKS = "*"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cursors (
    customer_id TEXT NOT NULL, playbook TEXT NOT NULL, last_day TEXT, state TEXT NOT NULL,
    updated_ms INTEGER NOT NULL, PRIMARY KEY (customer_id, playbook));
CREATE TABLE IF NOT EXISTS episodes (
    episode_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, playbook TEXT NOT NULL, title TEXT NOT NULL,
    severity TEXT NOT NULL, opened_day TEXT NOT NULL, status TEXT NOT NULL, last_day TEXT NOT NULL,
    resolved_day TEXT, notifications INTEGER NOT NULL DEFAULT 0, suppressed INTEGER NOT NULL DEFAULT 0,
    what_changed TEXT NOT NULL, health REAL, band TEXT, report_link TEXT, updated_ms INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS episodes_by_account ON episodes (customer_id, playbook);
CREATE TABLE IF NOT EXISTS outbox (
    key TEXT PRIMARY KEY, episode_id TEXT NOT NULL, customer_id TEXT NOT NULL, playbook TEXT NOT NULL,
    action TEXT NOT NULL, kind TEXT NOT NULL, notification TEXT NOT NULL, day TEXT NOT NULL,
    channel TEXT NOT NULL, recipient TEXT, message TEXT NOT NULL, status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, next_attempt_ms INTEGER NOT NULL, last_error TEXT,
    created_ms INTEGER NOT NULL, sent_ms INTEGER);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (status, next_attempt_ms);
CREATE TABLE IF NOT EXISTS snoozes (
    customer_id TEXT NOT NULL, playbook TEXT NOT NULL, until_day TEXT NOT NULL, reason TEXT NOT NULL,
    created_ms INTEGER NOT NULL, PRIMARY KEY (customer_id, playbook));
"""


@dataclass(frozen=True)
class EpisodeRow:
    episode_id: str
    customer_id: str
    playbook: str
    title: str
    severity: str
    opened_day: str
    status: str  # open / resolved
    last_day: str
    resolved_day: str | None
    notifications: int
    suppressed: int
    what_changed: str
    health: float | None
    band: str | None
    report_link: str | None


@dataclass(frozen=True)
class OutboxRow:
    key: str  # the idempotency key: sent as a header / Message-ID so receivers can drop repeats
    episode_id: str
    customer_id: str
    playbook: str
    action: str
    kind: str  # notify_csm / touch_customer / csql
    notification: str  # open / renotify / resolve
    day: str
    channel: str
    recipient: str | None
    message: dict[str, Any]  # {"subject", "text", "payload"}
    status: str = PENDING
    attempts: int = 0
    next_attempt_ms: int = 0
    last_error: str | None = None
    created_ms: int = 0
    sent_ms: int | None = None


class Ledger:
    """The SQLite ledger; use :meth:`open` for a state folder (takes the run lock when ``exclusive``)."""

    def __init__(self, path: str | Path, lock_fd: int | None = None) -> None:
        self.path = Path(path)
        self._lock_fd = lock_fd
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE ... COMMIT), never implicit.
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed decision survives power loss, which is the point of the ledger.
        self.db.execute("PRAGMA synchronous=FULL")
        with self.transaction():
            # executescript would COMMIT our transaction; one statement at a time stays inside it.
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            row = self.db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            elif int(row["value"]) != SCHEMA_VERSION:
                raise TerminalError(f"{self.path} has ledger schema {row['value']}, this FleetPulse reads "
                                    f"{SCHEMA_VERSION}: use a matching version")

    @classmethod
    def open(cls, state_dir: str | Path, exclusive: bool = True) -> Ledger:
        folder = Path(state_dir)
        folder.mkdir(parents=True, exist_ok=True)
        fd = None
        if exclusive:
            fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise TerminalError(f"another `fleetpulse playbooks run` is using {folder}; "
                                    "wait for it to finish (one runner per state folder)") from None
        return cls(folder / LEDGER_FILE, fd)

    def close(self) -> None:
        self.db.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing releases the flock
            self._lock_fd = None

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    # ---- decisions -------------------------------------------------------------------

    def state(self, customer_id: str, playbook: str) -> EpisodeState:
        row = self.db.execute("SELECT state FROM cursors WHERE customer_id=? AND playbook=?",
                              (customer_id, playbook)).fetchone()
        return EpisodeState.from_json(json.loads(row["state"])) if row else EpisodeState()

    def save_state(self, customer_id: str, playbook: str, state: EpisodeState, now_ms: int) -> None:
        self.db.execute(
            "INSERT INTO cursors VALUES (?, ?, ?, ?, ?) ON CONFLICT (customer_id, playbook) DO UPDATE SET "
            "last_day=excluded.last_day, state=excluded.state, updated_ms=excluded.updated_ms",
            (customer_id, playbook, state.last_day, json.dumps(state.as_json(), sort_keys=True), now_ms))

    def upsert_episode(self, row: EpisodeRow, now_ms: int) -> None:
        self.db.execute(
            "INSERT INTO episodes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (episode_id) DO UPDATE SET status=excluded.status, last_day=excluded.last_day, "
            "resolved_day=excluded.resolved_day, notifications=excluded.notifications, "
            "suppressed=excluded.suppressed, what_changed=excluded.what_changed, health=excluded.health, "
            "band=excluded.band, report_link=excluded.report_link, updated_ms=excluded.updated_ms",
            (row.episode_id, row.customer_id, row.playbook, row.title, row.severity, row.opened_day, row.status,
             row.last_day, row.resolved_day, row.notifications, row.suppressed, row.what_changed, row.health,
             row.band, row.report_link, now_ms))

    def enqueue(self, row: OutboxRow) -> bool:
        """Add a message unless its key is already there; True when added."""
        cur = self.db.execute(
            "INSERT OR IGNORE INTO outbox VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (row.key, row.episode_id, row.customer_id, row.playbook, row.action, row.kind, row.notification,
             row.day, row.channel, row.recipient, json.dumps(row.message, sort_keys=True), row.status,
             row.attempts, row.next_attempt_ms, row.last_error, row.created_ms, row.sent_ms))
        return cur.rowcount == 1

    # ---- snoozes -----------------------------------------------------------------------

    def snooze(self, customer_id: str, playbook: str, until_day: str, reason: str, now_ms: int) -> None:
        with self.transaction():
            self.db.execute(
                "INSERT INTO snoozes VALUES (?, ?, ?, ?, ?) ON CONFLICT (customer_id, playbook) DO UPDATE SET "
                "until_day=excluded.until_day, reason=excluded.reason, created_ms=excluded.created_ms",
                (customer_id, playbook, until_day, reason, now_ms))

    def unsnooze(self, customer_id: str, playbook: str) -> bool:
        with self.transaction():
            cur = self.db.execute("DELETE FROM snoozes WHERE customer_id=? AND playbook=?", (customer_id, playbook))
        return cur.rowcount > 0

    def snoozed_until(self, customer_id: str, playbook: str) -> str | None:
        """The latest snooze day covering this account and playbook (a per-playbook or an all-playbooks one)."""
        row = self.db.execute(
            "SELECT MAX(until_day) AS until_day FROM snoozes WHERE customer_id=? AND playbook IN (?, ?)",
            (customer_id, playbook, ALL_PLAYBOOKS)).fetchone()
        return row["until_day"] if row else None

    def snoozes(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.db.execute("SELECT * FROM snoozes ORDER BY customer_id, playbook")]

    # ---- delivery ----------------------------------------------------------------------

    def due(self, now_ms: int, limit: int = 100) -> list[OutboxRow]:
        rows = self.db.execute(
            "SELECT * FROM outbox WHERE status=? AND next_attempt_ms<=? ORDER BY next_attempt_ms, day, created_ms, key "
            "LIMIT ?", (PENDING, now_ms, limit))
        return [_outbox(r) for r in rows]

    def next_attempt_ms(self) -> int | None:
        row = self.db.execute("SELECT MIN(next_attempt_ms) AS t FROM outbox WHERE status=?", (PENDING,)).fetchone()
        return row["t"] if row and row["t"] is not None else None

    def mark_sent(self, key: str, attempts: int, now_ms: int) -> None:
        with self.transaction():
            self.db.execute("UPDATE outbox SET status=?, attempts=?, sent_ms=?, last_error=NULL WHERE key=?",
                            (SENT, attempts, now_ms, key))

    def mark_retry(self, key: str, attempts: int, next_ms: int, error: str) -> None:
        with self.transaction():
            self.db.execute("UPDATE outbox SET attempts=?, next_attempt_ms=?, last_error=? WHERE key=?",
                            (attempts, next_ms, error, key))

    def mark_failed(self, key: str, attempts: int, error: str) -> None:
        with self.transaction():
            self.db.execute("UPDATE outbox SET status=?, attempts=?, last_error=? WHERE key=?",
                            (FAILED, attempts, error, key))

    def retry_failed(self, now_ms: int, customer_id: str | None = None) -> int:
        """Put failed messages back in the queue (after fixing a channel); returns how many."""
        with self.transaction():
            cur = self.db.execute(
                "UPDATE outbox SET status=?, attempts=0, next_attempt_ms=? WHERE status=? AND (? IS NULL OR customer_id=?)",
                (PENDING, now_ms, FAILED, customer_id, customer_id))
        return cur.rowcount

    # ---- reading -----------------------------------------------------------------------

    def episodes(self, status: str | None = None, customer_id: str | None = None) -> list[EpisodeRow]:
        rows = self.db.execute(
            "SELECT * FROM episodes WHERE (? IS NULL OR status=?) AND (? IS NULL OR customer_id=?) "
            "ORDER BY opened_day, customer_id, playbook", (status, status, customer_id, customer_id))
        return [EpisodeRow(**{k: r[k] for k in EpisodeRow.__dataclass_fields__}) for r in rows]

    def outbox(self, status: str | None = None, customer_id: str | None = None,
               episode_id: str | None = None) -> list[OutboxRow]:
        rows = self.db.execute(
            "SELECT * FROM outbox WHERE (? IS NULL OR status=?) AND (? IS NULL OR customer_id=?) "
            "AND (? IS NULL OR episode_id=?) ORDER BY day, customer_id, playbook, action, notification",
            (status, status, customer_id, customer_id, episode_id, episode_id))
        return [_outbox(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Outbox rows per status and episodes per status, for summaries and dashboards."""
        out = {f"outbox_{r['status']}": r["n"] for r in
               self.db.execute("SELECT status, COUNT(*) AS n FROM outbox GROUP BY status")}
        out.update({f"episodes_{r['status']}": r["n"] for r in
                    self.db.execute("SELECT status, COUNT(*) AS n FROM episodes GROUP BY status")})
        return out


def _outbox(r: sqlite3.Row) -> OutboxRow:
    values = {k: r[k] for k in OutboxRow.__dataclass_fields__}
    values["message"] = json.loads(values["message"])
    return OutboxRow(**values)
