"""The collector's worker thread: it joins the intake and the uplink through the spool.

One thread consumes the events paho's callbacks queue (:mod:`.events`) and
alone validates, spools, commits, writes dead letters, publishes and
acknowledges, so no lock is held across a paho call (paho calls
``on_publish`` while holding its own out-message lock, and ``publish()``
takes that lock: a collector lock shared by both would deadlock).

Batching. Records are read back from the spool in batches of up to
``batch.max_records`` (within the envelope's payload limit), compressed as
``batch.compression`` says, and published as soon as a batch is full or its
oldest record is ``batch.max_interval_ms`` old (a backlog from before a
restart is due at once). The spool is one FIFO, so each device's records go
upstream in the order they arrived.

Back-pressure. At most ``batch.max_inflight_batches`` batches (fewer if the
central broker's Receive Maximum says so) wait for a PUBACK; the rest stay
on disk, so memory does not grow with the backlog. On the local side the
reader blocks while ``2 × receive_maximum`` device messages wait for the
worker (:class:`~.events.Outstanding`).

Timers (group commit, batch deadline, status interval, a refused batch's
retry) are read from the injected wall clock; the worker never sleeps longer
than a second without looking at them, since that clock may jump.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable

from .batching import Envelope
from .config import CollectorConfig
from .counters import Counters
from .events import Acked, Outstanding, Received, StatusNow, Stop, Wake
from .intake import Intake
from .spool import Spool
from .uplink import Batch, Uplink

log = logging.getLogger(__name__)

#: Longest the worker sleeps without looking at its timers (an injected clock may jump).
_MAX_WAIT_S = 1.0


class Worker:
    """The loop that drives :class:`~.intake.Intake` and :class:`~.uplink.Uplink`. Lifecycle: start → drain/abort."""

    def __init__(
        self,
        config: CollectorConfig,
        *,
        intake: Intake,
        uplink: Uplink,
        spool: Spool,
        envelope: Envelope,
        counters: Counters,
        outstanding: Outstanding,
        events: queue.SimpleQueue[object],
        abort: threading.Event,
        clock: Callable[[], int],
    ) -> None:
        self.config = config
        self._intake = intake
        self._uplink = uplink
        self.spool = spool
        self._envelope = envelope
        self._counters = counters
        self._outstanding = outstanding
        self._events = events
        self._abort = abort
        self._clock = clock
        # Records are read back from the spool within this many payload bytes: the
        # commas between max_records records always fit beside them.
        self._read_budget = envelope.max_body_bytes - config.batch.max_records
        self.drained = threading.Event()
        self._draining = False
        self._batch_due_ms: int | None = None
        self._holding = False  # logging: inside an uplink-full episode
        self._seen_drops: dict[str, int] = {}
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="collector-worker", daemon=True)
        self._thread.start()

    def join(self, timeout_s: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout=timeout_s)

    # ------------------------------------------------------------------ loop
    def _run(self) -> None:
        while not self._abort.is_set():
            try:
                event: object | None = self._events.get(timeout=self._wait_s())
            except queue.Empty:
                event = None
            try:
                if event is not None:
                    self._handle(event)
                self._housekeeping()
            except Exception:  # the worker must outlive any one bad event
                self._counters.add("errors")
                log.exception("collector worker: unexpected error (counted in errors); continuing")
            if isinstance(event, Wake):
                event.done.set()
            if (
                self._draining
                and not self._intake.uncommitted
                and not self._uplink.unreleased
                and self.spool.backlog_records == 0
                and self._events.empty()
            ):
                self.drained.set()
                return

    def _wait_s(self) -> float:
        now = self._clock()
        deadlines = [self._uplink.next_status_ms]
        if self._intake.uncommitted:
            deadlines.append(self._intake.uncommitted_since_ms + self.config.spool.commit_interval_ms)
        if self._batch_due_ms is not None:
            deadlines.append(self._batch_due_ms)
        if self._uplink.retry_at_ms is not None:
            deadlines.append(self._uplink.retry_at_ms)
        return min(max((min(deadlines) - now) / 1000, 0.0), _MAX_WAIT_S)

    def _handle(self, event: object) -> None:
        if isinstance(event, Received):
            self._intake.receive(event)
        elif isinstance(event, Acked):
            self._uplink.acked(event)
        elif isinstance(event, StatusNow):
            self._uplink.publish_status()
        elif isinstance(event, Stop):
            self._draining = True
            log.info("draining: %d records in the spool, %d batches awaiting PUBACK",
                     self.spool.backlog_records, self._uplink.in_flight)

    def _housekeeping(self) -> None:
        now = self._clock()
        intake = self._intake
        if intake.uncommitted and (
            self._events.empty()  # nothing else waiting: commit now (lowest latency)
            or now - intake.uncommitted_since_ms >= self.config.spool.commit_interval_ms
            or now < intake.uncommitted_since_ms
            or self._draining
        ):
            intake.commit()
        self._pump(now)
        self._outstanding.set_backlog(self.spool.backlog_records)  # quota and TTL drops shrink it too
        self._sync_spool_counters()
        if self._uplink.status_due(now):
            if self._uplink.next_status_ms:  # not the first: also log the counters periodically
                log.info("collector %s counters: %s", self.config.gateway.gateway_id,
                         json.dumps(self._counters.snapshot(), sort_keys=True))
            self._uplink.publish_status()

    def _sync_spool_counters(self) -> None:
        for reason, n in self.spool.dropped.items():
            seen = self._seen_drops.get(reason, 0)
            if n != seen:
                self._counters.drop(reason, n - seen)
                self._seen_drops[reason] = n
        self.update_spool_gauges()

    def update_spool_gauges(self) -> None:
        self._counters.set("spool_backlog_records", self.spool.backlog_records)
        self._counters.set("spool_bytes", self.spool.disk_bytes)
        # files the spool found in its directory and moved aside (counted since open)
        self._counters.set("spool_quarantined_files", self.spool.quarantined_files)

    # ------------------------------------------------------------------ batching
    def _pump(self, now: int) -> None:
        """Publish batches from the spool while fewer than max_inflight_batches await a PUBACK."""
        self._batch_due_ms = None
        batch_cfg = self.config.batch
        uplink, spool = self._uplink, self.spool
        cap = uplink.window(batch_cfg.max_inflight_batches)
        if not uplink.resend(now, cap):
            return
        while uplink.in_flight < cap and spool.unread_records:
            if spool.unread_records < batch_cfg.max_records and not self._draining:
                # Not a full batch yet: wait until the oldest unread record is
                # max_interval_ms old (a backlog from before a restart is due at once).
                oldest = spool.peek_at_ms()
                if oldest is not None and 0 < oldest + batch_cfg.max_interval_ms - now <= (
                    batch_cfg.max_interval_ms
                ):
                    self._batch_due_ms = oldest + batch_cfg.max_interval_ms
                    break
            records, end = spool.read(batch_cfg.max_records, self._read_budget)
            last = uplink.last_end
            if not records and (last is None or end <= last) and end <= spool.released:
                break  # nothing read and nothing skipped: never spin
            batch = Batch(end=end, records=len(records))
            uplink.add(batch)
            if not records:  # expired or corrupt stretch: nothing to send, release it in turn
                uplink.skipped(batch)
                continue
            batch.first_index = records[0].index
            batch.payload = self._envelope.encode([r.data for r in records], records[0].index, now)
            uplink.publish(batch)
        holding = uplink.in_flight >= cap and spool.unread_records > 0
        if holding and not self._holding:
            log.info("uplink window full: %d batches await upstream PUBACK (max_inflight_batches); "
                     "%d records wait in the spool", uplink.in_flight, spool.unread_records)
        self._holding = holding
