"""The gateway collector: local broker → validate → durable spool → batches → central broker.

Run it with ``fleetpulse gateway run --config gateway.toml``; embed it as::

    collector = Collector(load_config("gateway.toml"))
    collector.start()          # TransientError if the local broker cannot be reached
    ...
    collector.stop()           # commit, drain what the uplink takes in time, disconnect

:class:`Collector` composes three parts that meet only in the spool
(:mod:`.spool`) and the worker's event queue (:mod:`.events`):

* :mod:`.intake` — the local broker's side: the subscription to device
  topics, validation, spooling and dead letters, and the acknowledgement of
  each device message once its records are spooled (fsynced) or
  dead-lettered;
* :mod:`.uplink` — the central broker's side: a persistent session over TLS,
  batches published with QoS 1 and released from the spool on PUBACK, the
  status message and its Last Will;
* :mod:`.worker` — the one thread that drives both: batching, compression,
  group commits, back-pressure and timers.

At-least-once end to end: a device message is acknowledged only once its
records are on disk, and a spooled record is released only once the central
broker acknowledged its batch, so what was in flight when the collector died
is sent again at the next start (downstream removes the duplicates by
``(device_id, boot, seq)``). The uplink may be down for days: the collector
starts without it, spools within ``spool.quota_bytes`` (``on_full`` says what
gives when it is full, every drop counted by reason) and reconnects with
capped exponential back-off and jitter.

Counters (the names every FleetPulse component uses, :mod:`.counters`) are
in :attr:`Collector.counters` and in the status message.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
from collections.abc import Callable
from typing import Any

from fleetpulse.backoff import Backoff
from fleetpulse.clock import Deadline, wall_clock_ms
from fleetpulse.errors import ConfigError, TerminalError
from fleetpulse.schemas import Validator, load_contract

from .batching import Envelope
from .config import CollectorConfig
from .connection import BrokerRefused, BrokerUnreachable, ClientSpec, paho_client
from .counters import Counters
from .deadletters import DeadLetterFiles
from .events import Outstanding, Stop, Wake
from .intake import INTERNAL_ERROR, Intake
from .spool import Spool, SpoolLocked
from .uplink import Uplink
from .worker import Worker

__all__ = [
    "INTERNAL_ERROR",
    "Backoff",
    "BrokerRefused",
    "BrokerUnreachable",
    "ClientSpec",
    "Collector",
    "paho_client",
    "wall_clock_ms",
]

log = logging.getLogger(__name__)


class Collector:
    """One gateway's collector. Lifecycle: construct (no I/O) → ``start()`` → ``stop()``.

    ``client_factory`` builds the two MQTT clients (paho's by default; tests
    pass fakes), ``clock`` returns wall-clock epoch milliseconds (event-time
    checks, ``sent_ms``, batch deadlines, spool TTL, status timing), ``rng``
    draws the reconnect jitter. A collector is started once; after a failed
    ``start()`` build a new one.
    """

    def __init__(
        self,
        config: CollectorConfig,
        *,
        client_factory: Callable[[ClientSpec], Any] = paho_client,
        clock: Callable[[], int] = wall_clock_ms,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        contract = load_contract()
        self._validator = Validator(contract)
        ids = config.gateway
        id_args = {"customer_id": ids.customer_id, "site_id": ids.site_id, "gateway_id": ids.gateway_id}
        self.batch_topic = contract.topic("gateway_batches", **id_args)
        self.status_topic = contract.topic("gateway_status", **id_args)
        envelope = Envelope(
            **id_args,
            max_payload_bytes=contract.limits.max_payload_bytes,
            compression=config.batch.compression,
        )
        self.spool = Spool(
            config.spool.path,
            quota_bytes=config.spool.quota_bytes,
            on_full=config.spool.on_full,
            ttl_s=config.spool.ttl_s,
            clock=clock,
        )
        dead = config.dead_letters
        self.dead_letters = DeadLetterFiles(dead.path, quota_bytes=dead.quota_bytes,
                                            max_file_bytes=dead.max_file_bytes)
        self._counters = Counters()
        self._outstanding = Outstanding(2 * config.local.receive_maximum)
        events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._events = events
        self._stopping = threading.Event()
        self._abort = threading.Event()
        up = config.upstream

        def backoff() -> Backoff:  # (both connections back off within the upstream settings)
            return Backoff(up.reconnect_min_ms, up.reconnect_max_ms, rng)

        counters, outstanding = self._counters, self._outstanding
        self._intake = Intake(config, client_factory, backoff(), contract=contract, validator=self._validator,
                              envelope=envelope, spool=self.spool, dead_letters=self.dead_letters,
                              counters=counters, outstanding=outstanding, events=events,
                              stopping=self._stopping, abort=self._abort, clock=clock)
        self._uplink = Uplink(config, client_factory, backoff(), batch_topic=self.batch_topic,
                              status_topic=self.status_topic, spool=self.spool, counters=counters,
                              outstanding=outstanding, events=events, stopping=self._stopping, clock=clock)
        self._worker = Worker(config, intake=self._intake, uplink=self._uplink, spool=self.spool,
                              envelope=envelope, counters=counters, outstanding=outstanding, events=events,
                              abort=self._abort, clock=clock)
        self.subscription = self._intake.subscription
        self._started = False
        self._running = False  # the worker runs (start() succeeded)
        self._stopped = False

    # ------------------------------------------------------------------ public
    @property
    def counters(self) -> dict[str, Any]:
        """A snapshot of the counters (see :mod:`.counters` for their meaning)."""
        return self._counters.snapshot()

    @property
    def failure(self) -> str | None:
        """Why the collector gave up (the spool could not be written), or None while it is healthy.

        Once set, nothing more is acknowledged to the local broker; whoever runs
        the collector should stop it and exit non-zero, so a restart recovers
        the spool and the local broker redelivers what was not acknowledged.
        """
        return self._intake.failure

    @property
    def pending_messages(self) -> int:
        """Device messages received but not yet spooled (durably) or dead-lettered."""
        return self._outstanding.messages

    @property
    def backlog_records(self) -> int:
        """Spooled records the central broker has not acknowledged yet."""
        return self._outstanding.backlog

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait until every device message received so far is settled and the spool is empty.

        Settled means: its valid records reached the central broker (acknowledged)
        and its invalid ones are in the dead-letter file. Returns False on timeout.
        """
        return self._outstanding.wait_idle(timeout_s)

    def tick(self, timeout_s: float = 10.0) -> bool:
        """Make the worker look at its timers now and wait until it has.

        For tests that advance an injected clock: everything queued before the
        tick, and every timer due at the clock's current time, has been
        handled when this returns True.
        """
        wake = Wake()
        self._events.put(wake)
        return wake.done.wait(timeout_s)

    def start(self) -> None:
        """Open the dead-letter file and the spool, connect both brokers, start the worker.

        The local broker must answer: :class:`BrokerUnreachable` (transient)
        if it does not. The central broker may be down (the spool holds the
        data until it returns), but a refusal retrying won't fix (credentials,
        ACL, a TLS certificate that does not verify) raises
        :class:`BrokerRefused` (terminal). ConfigError for unusable TLS files,
        dead-letter path or spool directory.
        """
        if self._started:
            raise RuntimeError("a Collector is started once; build a new one")
        self._started = True
        self._intake.open_dead_letters()
        self._open_spool()
        try:
            self._intake.setup()
            self._uplink.setup()
            # Local first: if the central broker is down nothing was announced
            # upstream, and device data goes to the spool meanwhile.
            self._intake.connect()
            self._uplink.connect()
        except BaseException:
            self._abort_start()
            raise
        self._worker.start()
        self._running = True
        log.info(
            "collector %s started: local %s %s → spool %s → upstream %s %s",
            self.config.gateway.gateway_id,
            self._intake.endpoint,
            self.subscription,
            self.config.spool.path,
            self._uplink.endpoint,
            self.batch_topic,
        )

    def stop(self, timeout_s: float | None = None) -> bool:
        """Commit, drain and disconnect; True if the spool was emptied in time.

        Commits the spool and acknowledges the device messages it holds, then
        waits up to ``timeout_s`` (default ``upstream.drain_timeout_s``) for the
        central broker to acknowledge everything spooled, publishes the
        retained "offline" status and disconnects. What is not acknowledged by
        then stays in the spool for the next start. Messages that arrive once
        stopping began are left un-acknowledged for the local broker to
        redeliver at the next start.
        """
        if not self._running or self._stopped:
            return True  # never started (or start failed: it cleaned up itself)
        self._stopped = True
        timeout = self.config.upstream.drain_timeout_s if timeout_s is None else timeout_s
        deadline = Deadline(timeout)
        self._stopping.set()
        self._outstanding.wake()  # release an on_message blocked on back-pressure
        self._events.put(Stop())
        drained = self._worker.drained.wait(timeout)
        self._abort.set()
        self._events.put(Wake())
        self._worker.join(10)
        if not drained:
            log.warning(
                "drain timed out after %.1fs: %d records stay in the spool %s for the next start "
                "(%d batches awaiting the upstream broker %s)",
                timeout,
                self.spool.backlog_records,
                self.config.spool.path,
                self._uplink.in_flight,
                self._uplink.endpoint,
            )
        # The PUBACKs for spooled messages were queued before this DISCONNECT.
        self._intake.disconnect()
        self._uplink.publish_final_status(min(max(deadline.remaining_s(), 0.2), 5.0))
        self._uplink.disconnect()
        try:
            self.spool.close()
        except OSError as exc:
            log.error("spool %s not closed cleanly: %s (recovered at the next start)",
                      self.config.spool.path, exc)
        self.dead_letters.close()
        log.info("collector %s stopped; counters: %s", self.config.gateway.gateway_id,
                 json.dumps(self.counters, sort_keys=True))
        return drained

    # ------------------------------------------------------------------ set-up
    def _open_spool(self) -> None:
        try:
            report = self.spool.open()
        except SpoolLocked as exc:
            self.dead_letters.close()
            raise TerminalError(f"{exc}; give each collector its own spool.path") from None
        except OSError as exc:
            self.dead_letters.close()
            raise ConfigError(
                source=self.config.source,
                key="spool.path",
                problem=f"cannot use {self.config.spool.path}: {exc.strerror or exc}",
                fix="point it at a directory the collector's user can write (on persistent storage)",
            ) from None
        self._outstanding.set_backlog(report.backlog_records)
        self._worker.update_spool_gauges()
        if report.backlog_records or report.torn_bytes or report.deleted_segments:
            log.info("spool %s: %d records (%d bytes) waiting from before the restart; "
                     "cut a torn tail of %d bytes", self.config.spool.path, report.backlog_records,
                     report.backlog_bytes, report.torn_bytes)

    def _abort_start(self) -> None:
        self._stopping.set()
        self._outstanding.wake()
        for connection in (self._intake, self._uplink):
            connection.disconnect()
        self.spool.close()
        self.dead_letters.close()
