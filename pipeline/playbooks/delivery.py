"""The outbox worker: send what the ledger queued, retry with capped exponential backoff, never lose a message.

    worker = OutboxWorker(ledger, channels, book.delivery)
    report = worker.drain(max_wait_ms=60_000)   # send, wait out short backoffs, stop

A transient failure schedules the next attempt ``backoff_initial_ms * 2^(n-1)``
later, capped at ``backoff_max_ms``, with jitter (half to all of that delay,
so many failing messages do not retry in lockstep) and never sooner than an
HTTP Retry-After. After ``max_attempts`` attempts, or at once on a terminal
failure, the message is marked ``failed`` with its last error and stays in the
outbox: ``fleetpulse alerts --failed`` shows it and ``--retry-failed`` queues it again.
The clock, the sleep and the random source are injectable for tests.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fleetpulse import backoff
from fleetpulse.clock import wall_clock_ms
from fleetpulse.errors import TerminalError, TransientError

from .channels import Channel, RetryLater
from .config import DeliveryPolicy
from .ledger import Ledger, OutboxRow

log = logging.getLogger(__name__)


@dataclass
class DeliveryReport:
    """Counters under the names every FleetPulse component uses, plus the outbox's own."""

    received: int = 0  # messages taken from the outbox (attempts)
    sent: int = 0
    dropped: int = 0  # always 0: a message that cannot be sent is kept as failed, not dropped
    errors: int = 0  # failed attempts (transient or terminal)
    failed: int = 0  # messages given up on this run (kept in the outbox as failed)
    pending: int = 0  # still queued for a later attempt when the run stopped
    error_types: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, int]:
        return {"received": self.received, "sent": self.sent, "dropped": self.dropped, "errors": self.errors,
                "failed": self.failed, "pending": self.pending}


class OutboxWorker:
    def __init__(self, ledger: Ledger, channels: Mapping[str, Channel], policy: DeliveryPolicy, *,
                 clock_ms: Callable[[], int] = wall_clock_ms, sleep: Callable[[float], None] = time.sleep,
                 rng: random.Random | None = None) -> None:
        self.ledger, self.channels, self.policy = ledger, channels, policy
        self.clock_ms, self.sleep = clock_ms, sleep
        self.rng = rng or random.Random()
        self.report = DeliveryReport()

    def backoff_ms(self, attempts: int) -> int:
        """Delay before attempt ``attempts + 1``: capped exponential with equal jitter (:mod:`fleetpulse.backoff`)."""
        return int(backoff.delay_ms(attempts - 1, initial_ms=self.policy.backoff_initial_ms,
                                    max_ms=self.policy.backoff_max_ms, rng=self.rng))

    def attempt(self, row: OutboxRow) -> None:
        self.report.received += 1
        attempts = row.attempts + 1
        channel = self.channels.get(row.channel)
        try:
            if channel is None:
                raise TerminalError(f"channel {row.channel!r} is not defined in the playbooks file any more")
            channel.send(row)
        except TransientError as exc:
            self._error(exc)
            if attempts >= self.policy.max_attempts:
                self.ledger.mark_failed(row.key, attempts, f"gave up after {attempts} attempts: {exc}")
                self.report.failed += 1
                log.warning("outbox %s to %s failed for good after %d attempts: %s", row.key, row.channel,
                            attempts, exc)
                return
            delay = self.backoff_ms(attempts)
            if isinstance(exc, RetryLater):
                delay = max(delay, int(exc.retry_after_s * 1000))
            self.ledger.mark_retry(row.key, attempts, self.clock_ms() + delay, str(exc))
            log.info("outbox %s to %s: attempt %d failed (%s); next in %d ms", row.key, row.channel, attempts,
                     exc, delay)
        except TerminalError as exc:
            self._error(exc)
            self.ledger.mark_failed(row.key, attempts, str(exc))
            self.report.failed += 1
            log.warning("outbox %s to %s refused for good: %s", row.key, row.channel, exc)
        else:
            self.ledger.mark_sent(row.key, attempts, self.clock_ms())
            self.report.sent += 1

    def _error(self, exc: Exception) -> None:
        self.report.errors += 1
        kind = "terminal" if isinstance(exc, TerminalError) else "transient"
        self.report.error_types[kind] = self.report.error_types.get(kind, 0) + 1

    def deliver_due(self) -> int:
        """One pass over every message due now; returns how many were attempted."""
        done = 0
        while True:
            batch = self.ledger.due(self.clock_ms())
            if not batch:
                return done
            for row in batch:
                self.attempt(row)
                done += 1

    def drain(self, max_wait_ms: int = 0) -> DeliveryReport:
        """Deliver until nothing is pending, waiting for retries due within ``max_wait_ms`` of now."""
        deadline = self.clock_ms() + max_wait_ms
        while True:
            self.deliver_due()
            upcoming = self.ledger.next_attempt_ms()
            if upcoming is None or upcoming > deadline:
                break
            self.sleep(max(0.0, (upcoming - self.clock_ms()) / 1000))
        self.report.pending = len(self.ledger.outbox(status="pending"))
        return self.report
