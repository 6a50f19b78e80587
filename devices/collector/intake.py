"""The collector's local side: device messages from the gateway's broker → validated → spool or dead letters → acked.

Device messages are read from the gateway's local broker with QoS 1 on a
persistent MQTT v5 session (or 3.1.1). Their valid records are appended to
the on-disk spool (:mod:`.spool`) and the device message is acknowledged
there (manual PUBACK) only once the spool has fsynced them (group commit: one
fsync for every record that arrived meanwhile). A crash before that means the
local broker redelivers; after it, the record is on disk.

What is refused is a dead letter (:mod:`.deadletters`: rotated files within
``dead_letters.quota_bytes``, each row keeping ``dead_letters.sample_bytes``
of its payload), and its message is acknowledged with the same group commit:
whatever a message holds, it is acknowledged once its records are spooled or
dead-lettered, so no message can occupy the local broker's window and come
back after every restart. A record must name the device of its topic (else
``device_mismatch``: one device cannot speak for another), and a topic that
names no valid device is refused whole (``topic_mismatch``). A fault of the
collector's own on some message is refused whole too (``internal_error``,
counted in errors). A dead-letter disk that fails drops the rows (counted in
``dead_letters_dropped``) and never holds intake up; only a spool that cannot
be written stops acknowledging (the local broker redelivers after a restart).

paho's network thread runs the ``_on_*`` callbacks, which only enqueue, count
and log; the worker thread (:mod:`.worker`) calls :meth:`Intake.receive` and
:meth:`Intake.commit`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from fleetpulse import mqtt_client
from fleetpulse.backoff import Backoff
from fleetpulse.errors import ConfigError, TransientError, quote
from fleetpulse.schemas import Contract, Rejection, Validator, dead_letter

from .batching import Envelope, encode_record
from .config import CollectorConfig
from .connection import BrokerUnreachable, ClientSpec, Connection
from .counters import Counters
from .deadletters import DeadLetterFiles
from .events import MessageToken, Outstanding, Received
from .spool import Spool

log = logging.getLogger(__name__)

#: A dead letter keeps this much of a topic beyond the configured prefix (a valid device
#: topic is far shorter; MQTT allows 64 KiB, which would crowd out the payload sample).
_TOPIC_KEEP_CHARS = 256
#: The reason for input the collector could not process because of its own fault (a bug):
#: kept and acknowledged like any rejection, so it cannot come back after every restart.
INTERNAL_ERROR = "internal_error"


class Intake(Connection):
    """The local broker's subscription, validation, spooling, dead letters and acknowledgements."""

    role = "local"

    def __init__(
        self,
        config: CollectorConfig,
        client_factory: Callable[[ClientSpec], Any],
        backoff: Backoff,
        *,
        contract: Contract,
        validator: Validator,
        envelope: Envelope,
        spool: Spool,
        dead_letters: DeadLetterFiles,
        counters: Counters,
        outstanding: Outstanding,
        events: queue.SimpleQueue[object],
        stopping: threading.Event,
        abort: threading.Event,
        clock: Callable[[], int],
    ) -> None:
        super().__init__(config, client_factory, backoff)
        self._contract = contract
        self._validator = validator
        self._envelope = envelope
        self.spool = spool
        self.dead_letters = dead_letters
        self._counters = counters
        self._outstanding = outstanding
        self._events = events
        self._stopping = stopping
        self._abort = abort
        self._clock = clock
        ids = config.gateway
        self._source = f"gateway:{ids.gateway_id}"
        self._topic_prefix = config.local.topic_prefix
        self.subscription = self._topic_prefix + contract.subscription("device_telemetry")
        identifier = contract.identifier_re.fullmatch
        longest = contract.limits.identifier_max_length
        self._is_identifier: Callable[[str], bool] = lambda v: len(v) <= longest and bool(identifier(v))
        self._logged_internal: set[str] = set()
        self._seen_dead_letter_drops = 0
        self._seen_dead_letter_errors = 0
        # Worker-thread state: messages whose records wait for the next group commit.
        self._uncommitted: list[MessageToken] = []
        self._uncommitted_since_ms = 0
        self._failure: str | None = None
        # Local connection epoch: a PUBACK for a packet id of an older connection
        # would acknowledge some other message on the new one.
        self._ack_lock = threading.Lock()
        self._generation = 0

    # ------------------------------------------------------------------ state
    @property
    def failure(self) -> str | None:
        """Why intake gave up (the spool could not be written), or None."""
        return self._failure

    @property
    def uncommitted(self) -> bool:
        """Messages wait for a group commit."""
        return bool(self._uncommitted)

    @property
    def uncommitted_since_ms(self) -> int:
        """When the oldest message waiting for a commit arrived."""
        return self._uncommitted_since_ms

    # ------------------------------------------------------------------ set-up
    def open_dead_letters(self) -> None:
        """Open the dead-letter files (ConfigError naming ``dead_letters.path`` if they cannot be)."""
        path = self.config.dead_letters.path
        try:
            self.dead_letters.open()  # closed in Collector.stop()
        except OSError as exc:
            raise ConfigError(
                source=self.config.source,
                key="dead_letters.path",
                problem=f"cannot open {path} for appending: {exc.strerror or exc}",
                fix="point it at a writable location",
            ) from None
        self._sync_dead_letter_counters()  # files over a (lowered) quota were trimmed

    def setup(self) -> None:
        client = self.client
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        client.on_connect_fail = lambda c, u: self.jitter_next_reconnect(c)
        mqtt_client.configure(client, reconnect=self._backoff)

    def _connect_kwargs(self) -> dict[str, Any]:
        cfg = self.config.local
        return mqtt_client.connect_kwargs(self.spec.options, keepalive_s=cfg.keepalive_s,
                                          session_expiry_s=cfg.session_expiry_s,
                                          receive_maximum=cfg.receive_maximum)

    # The local broker must answer at start: every failure is BrokerUnreachable (transient).
    def _unreachable(self, exc: TransientError, kwargs: dict[str, Any]) -> None:
        raise BrokerUnreachable(f"cannot reach local broker {self.endpoint}: {exc.__cause__}") from exc

    def _no_connack(self, timeout_s: int) -> None:
        raise BrokerUnreachable(f"cannot reach local broker {self.endpoint}: no CONNACK within {timeout_s}s")

    def _refused_for_now(self, text: str) -> None:
        raise BrokerUnreachable(f"cannot reach {text}")

    # ---------------------------------------------------------- paho callbacks
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connack_reason = reason
        if getattr(reason, "is_failure", False):
            log.error("local broker %s refused the connection: %s", self.endpoint, reason)
            self.jitter_next_reconnect(client)
            self._connack.set()
            return
        self._backoff.reset()
        with self._ack_lock:
            self._generation += 1
        client.subscribe(self.subscription, qos=1)
        if self._ever_connected:
            self._counters.add("reconnects")
            log.warning("reconnected to local broker %s (session present: %s); re-subscribed",
                        self.endpoint, getattr(flags, "session_present", None))
        self._ever_connected = True
        self._connack.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        for reason in reasons or ():
            if getattr(reason, "is_failure", False):
                self._counters.add("errors")
                log.error("local broker %s refused the subscription %s: %s",
                          self.endpoint, self.subscription, reason)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._ack_lock:
            self._generation += 1
        self.jitter_next_reconnect(client)
        if not self._stopping.is_set():
            log.warning("lost local broker %s (%s); reconnecting", self.endpoint, reason)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        if self._stopping.is_set():
            return  # not acknowledged: the local broker redelivers it at the next start
        if not self._outstanding.admit(self._stopping):  # (blocks under back-pressure)
            return
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = "<topic is not UTF-8>"
        token = MessageToken(message.mid, message.qos, self._generation, topic)
        self._events.put(Received(topic, bytes(message.payload), token))

    # ------------------------------------------------------------------ worker
    def receive(self, event: Received) -> None:
        """Spool a device message's valid records and dead-letter the rest; then it is acknowledged.

        The acknowledgement (at the next group commit) does not depend on the
        content: a topic that names no device, a payload that trips the
        validator, a record that cannot be encoded and a dead-letter disk that
        fails all end as a counted dead letter (or a counted dropped one), so
        no message can hold a slot of the local broker's window and come back
        after every restart. Only a spool that cannot be written stops
        acknowledging (see :meth:`_fail`).
        """
        now = self._clock()
        self._counters.add("received_messages")
        counted = False
        try:
            valid, rejected = self._validate(event, now)
            self._counters.add("received_records", len(valid) + len(rejected))
            counted = True
            if not self._spool_records(valid, rejected, now):
                return  # the spool failed: nothing more is acknowledged
        # Our fault, not the input's (the validator and encoder never raise by contract):
        # keep the whole message as a dead letter and settle it all the same (records
        # spooled before the fault stay spooled).
        except Exception as exc:  # noqa: BLE001 (logged by _internal_error, once per kind)
            if not counted:
                self._counters.add("received_records")  # the message, as one unreadable record
            rejected = [self._internal_error(exc)]
        self._dead_letter(rejected, event, now)
        if not self._uncommitted:
            self._uncommitted_since_ms = now
        self._uncommitted.append(event.token)
        if self.spool.uncommitted_records >= self.config.spool.commit_max_records:
            self.commit()

    def _spool_records(self, valid: list[dict[str, Any]], rejected: list[Rejection], now: int) -> bool:
        """Append valid records to the spool (one too large for a batch joins ``rejected``); False if the spool failed."""
        for record in valid:
            data = encode_record(record)
            if not self._envelope.fits(data):
                rejected.append(Rejection(
                    "payload_too_large",
                    f"record of {len(data)} bytes cannot fit a batch of "
                    f"{self._envelope.max_payload_bytes} bytes",
                    None,
                ))
                continue
            try:
                self.spool.append(data, now)  # (False: refused by the quota, counted by the spool)
            except OSError as exc:
                self._fail(exc)
                return False
        return True

    def _validate(self, event: Received, now: int) -> tuple[list[dict[str, Any]], list[Rejection]]:
        """The message's valid records and its rejections."""
        ids = self._contract.topic_ids("device_telemetry", event.topic, prefix=self._topic_prefix)
        device_id = ids.get("device_id") if ids else None
        if device_id is None or not self._is_identifier(device_id):
            # Without the topic's device the records cannot be checked against it (spoofing).
            return [], [Rejection(
                "topic_mismatch",
                f"topic {quote(event.topic)} is not {self._topic_prefix}"
                f"{self._contract.topics['device_telemetry']['pattern']} with a valid device_id",
            )]
        # A gateway without a real-time clock boots in the past until NTP sets it;
        # then "too far in the future" would refuse every record, so skip that check.
        now_ms = now if now >= self._contract.limits.min_event_time_ms else None
        return self._validator.device_payload(event.payload, now_ms=now_ms, device_id=device_id)

    def _internal_error(self, exc: Exception) -> Rejection:
        """A whole-message rejection for a fault of the collector's own (counted in errors)."""
        self._counters.add("errors")
        kind = type(exc).__name__
        # A hostile stream may hit the same bug thousands of times: one traceback per kind.
        if kind not in self._logged_internal:
            self._logged_internal.add(kind)
            log.error("collector fault on a device message (kept as a dead letter, reason %s; counted "
                      "in errors; later ones of this kind are not logged)", INTERNAL_ERROR, exc_info=exc)
        return Rejection(INTERNAL_ERROR, f"{kind}: {quote(str(exc), 160)}")

    def commit(self) -> None:
        """Group commit: one fsync makes every appended record durable, then acknowledge their messages."""
        try:
            durable = self.spool.commit()
        except OSError as exc:
            self._fail(exc)
            return
        self._counters.add("spooled_records", durable)
        # Dead letters too are on disk before their messages are acknowledged; a
        # failing dead-letter disk is counted and must not hold intake up.
        self.dead_letters.sync()
        self._sync_dead_letter_counters()
        tokens, self._uncommitted = self._uncommitted, []
        self._outstanding.set_backlog(self.spool.backlog_records)
        for token in tokens:
            self._settle(token)

    def _fail(self, exc: OSError) -> None:
        """The spool cannot be written: acknowledge nothing more, and say so once."""
        self._counters.add("errors")
        if self._failure is None:
            self._failure = f"cannot write the spool {self.config.spool.path}: {exc.strerror or exc}"
            log.critical("%s; acknowledging nothing more to the local broker (it redelivers "
                         "what was not acknowledged after a restart)", self._failure)
        self._uncommitted = []
        self._abort.set()

    def _dead_letter(self, rejections: list[Rejection], event: Received, now: int) -> None:
        """Count each rejection by reason and keep it as a dead-letter row; never raises."""
        if not rejections:
            return
        sample = self.config.dead_letters.sample_bytes
        keep = len(self._topic_prefix) + _TOPIC_KEEP_CHARS
        topic = event.topic if len(event.topic) <= keep else event.topic[:keep] + "..."
        rows = []
        for rejection in rejections:
            self._counters.drop(rejection.reason)
            try:
                row = dead_letter(rejection, source=self._source, topic=topic, at_ms=now,
                                  payload=event.payload, sample_bytes=sample)
            except Exception as exc:  # dead_letter() is content-proof; if not, keep the reason and a sample
                self._counters.add("errors")
                log.error("dead letter for %s not built (%s); kept with a payload sample only",
                          rejection.reason, type(exc).__name__, exc_info=exc)
                row = dead_letter(Rejection(rejection.reason, f"not built: {type(exc).__name__}"),
                                  source=self._source, topic=None, at_ms=now, payload=event.payload,
                                  sample_bytes=sample)
            rows.append(row)
        self._counters.add("dead_letters", self.dead_letters.write(rows))
        self._sync_dead_letter_counters()

    def _sync_dead_letter_counters(self) -> None:
        """Carry the dead-letter files' drops and failures into the counters."""
        files = self.dead_letters
        if files.dropped_rows != self._seen_dead_letter_drops:
            self._counters.add("dead_letters_dropped", files.dropped_rows - self._seen_dead_letter_drops)
            self._seen_dead_letter_drops = files.dropped_rows
        if files.errors != self._seen_dead_letter_errors:
            self._counters.add("errors", files.errors - self._seen_dead_letter_errors)
            self._seen_dead_letter_errors = files.errors

    def _settle(self, token: MessageToken) -> None:
        if token.qos > 0:
            with self._ack_lock:
                if token.generation == self._generation:
                    self.client.ack(token.mid, token.qos)
        self._outstanding.settled()
