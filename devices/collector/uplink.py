"""The collector's central side: batches to the central broker with QoS 1, released from the spool on PUBACK.

The uplink connects with a fixed client id and a persistent session
(``clean_start`` False and a session expiry; ``clean_session`` False in
3.1.1), over TLS that verifies the broker (``upstream.ca_file``, or the
system's trust store) and, where the broker wants one, with a client
certificate. Batches are published with QoS 1 and released from the spool
when the central broker acknowledges them, in spool order (:meth:`Uplink.acked`):
whatever was in flight when the collector died is sent again at the next
start, and downstream removes the duplicates by ``(device_id, boot, seq)``.
A batch the broker refuses (PUBACK reason >= 0x80) is counted in errors and
sent again 5 s later.

The central broker may be down for days: the collector starts without it
(the spool holds the data) and reconnects with capped exponential back-off
and jitter. A refusal retrying won't fix (credentials, ACL, a certificate
that does not verify, a client certificate the broker wants and did not get)
raises :class:`~.connection.BrokerRefused` at start.

Status. A retained status message (:mod:`fleetpulse.schemas.status`) says
"online" with the counters every ``status.interval_s`` and at each
(re)connect; the Last Will and the last message at stop say "offline".

paho's network thread runs the ``_on_*`` callbacks, which only enqueue and
log; the worker thread (:mod:`.worker`) calls everything else.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetpulse import mqtt_client, mqtt_tls
from fleetpulse.backoff import Backoff
from fleetpulse.errors import ConfigError, TransientError

from .config import CollectorConfig
from .connection import BrokerRefused, ClientSpec, Connection
from .counters import Counters
from .events import Acked, Outstanding, StatusNow
from .spool import Position, Spool

log = logging.getLogger(__name__)

#: Wait after the central broker refused a batch (PUBACK reason >= 0x80) before resending it.
REFUSED_RETRY_MS = 5000
#: The settings a TLS refusal by the central broker names (see fleetpulse.mqtt_tls).
_UPSTREAM_TLS = mqtt_tls.TlsSettings(
    ca_key="upstream.ca_file", host_key="upstream.host", cert_key="upstream.cert_file"
)


@dataclass(eq=False)
class Batch:
    """A batch handed to the upstream client (or a stretch of skipped records), in spool order."""

    end: Position  # releasing this releases every record before it
    records: int
    payload: bytes = b""
    first_index: int = 0
    acked: bool = False
    mid: int | None = None


class Uplink(Connection):
    """The central broker's connection, the batches awaiting its PUBACK, and the status message."""

    role = "upstream"

    def __init__(
        self,
        config: CollectorConfig,
        client_factory: Callable[[ClientSpec], Any],
        backoff: Backoff,
        *,
        batch_topic: str,
        status_topic: str,
        spool: Spool,
        counters: Counters,
        outstanding: Outstanding,
        events: queue.SimpleQueue[object],
        stopping: threading.Event,
        clock: Callable[[], int],
    ) -> None:
        super().__init__(config, client_factory, backoff)
        self.batch_topic = batch_topic
        self.status_topic = status_topic
        self.spool = spool
        self._counters = counters
        self._outstanding = outstanding
        self._events = events
        self._stopping = stopping
        self._clock = clock
        self._window = 65535  # the central broker's Receive Maximum (CONNACK)
        # With TLS 1.3 a broker refuses a client certificate only after the handshake:
        # paho's connect() has returned and the alert reaches only its log.
        self._last_error: str | None = None
        self._tls_refusal: str | None = None
        # Worker-thread state.
        self._sent: deque[Batch] = deque()  # in spool order
        self._inflight: dict[int, Batch] = {}
        self._retry: deque[Batch] = deque()  # refused by the broker, to resend
        self.retry_at_ms: int | None = None
        self._status_mid: int | None = None
        self.next_status_ms = 0
        self._last_status_ms = 0

    # ------------------------------------------------------------------ state
    @property
    def in_flight(self) -> int:
        """Batches awaiting the central broker's PUBACK."""
        return len(self._inflight)

    @property
    def unreleased(self) -> bool:
        """Batches (or skipped stretches) not yet released from the spool."""
        return bool(self._sent)

    @property
    def last_end(self) -> Position | None:
        """Where the last batch handed over ends in the spool."""
        return self._sent[-1].end if self._sent else None

    def window(self, max_inflight_batches: int) -> int:
        """How many batches may await a PUBACK: the configured bound within the broker's Receive Maximum.

        Brokers may enforce the Receive Maximum they announce, and paho does not
        honour it: one place stays free for a status message.
        """
        return max(1, min(max_inflight_batches, self._window - 1))

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        """Callbacks, the Will, credentials and TLS (ConfigError for TLS files that do not load)."""
        cfg = self.config.upstream
        client = self.client
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_connect_fail = lambda c, u: self.jitter_next_reconnect(c)
        client.on_log = self._on_log
        # Room for the batches plus a status message, so paho never queues a batch itself.
        client.max_inflight_messages_set(self.config.batch.max_inflight_batches + 2)
        client.will_set(self.status_topic, self.status_payload("offline", counters={}), qos=1, retain=True)
        tls = mqtt_client.Tls(_UPSTREAM_TLS, cfg.ca_file, cfg.cert_file, cfg.key_file) if cfg.tls else None
        try:
            mqtt_client.configure(client, tls=tls, username=cfg.username, password=cfg.password,
                                  reconnect=self._backoff)
        except mqtt_client.TlsFilesUnusable as exc:
            raise ConfigError(
                source=self.config.source,
                key=exc.key,
                problem=f"TLS files cannot be loaded: {exc.cause}",
                fix="point ca_file (and cert_file/key_file) at readable PEM files",
            ) from None

    def _tls_settings(self) -> mqtt_tls.TlsSettings | None:
        return _UPSTREAM_TLS if self.config.upstream.tls else None

    # The central broker may be down at start: the spool holds the data meanwhile.
    def _unreachable(self, exc: TransientError, kwargs: dict[str, Any]) -> None:
        cfg = self.config.upstream
        log.warning("upstream broker %s:%d unreachable (%s): spooling to %s and retrying with backoff",
                    cfg.host, cfg.port, exc.__cause__, self.config.spool.path)
        self.jitter_next_reconnect(self.client)
        self.client.connect_async(cfg.host, cfg.port, **kwargs)
        self.client.loop_start()

    def _no_connack(self, timeout_s: int) -> None:
        cfg = self.config.upstream
        log.warning("upstream broker %s:%d sent no CONNACK within %ds: spooling meanwhile",
                    cfg.host, cfg.port, timeout_s)

    def _refused_for_now(self, text: str) -> None:
        log.warning("%s; spooling and retrying", text)

    def _after_connack_wait(self) -> None:
        if self._tls_refusal is not None:
            raise BrokerRefused(
                f"TLS with upstream broker {self.endpoint} refused by the broker: "
                f"{self._tls_refusal}; it wants a client certificate signed by its CA: check "
                "upstream.cert_file and upstream.key_file"
            )

    # ---------------------------------------------------------- paho callbacks
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connack_reason = reason
        if getattr(reason, "is_failure", False):
            log.error("upstream broker %s refused the connection: %s", self.endpoint, reason)
            self.jitter_next_reconnect(client)
            self._connack.set()
            return
        self._backoff.reset()
        # Brokers may enforce the Receive Maximum they announce, and paho does not
        # honour it (nor may its own limit change once connected): the worker keeps
        # batches plus one status message within it.
        server_max = getattr(props, "ReceiveMaximum", None) or 65535
        self._window = server_max
        if server_max <= self.config.batch.max_inflight_batches:
            log.info("upstream broker %s allows %d messages in flight: keeping at most %d batches "
                     "unacknowledged", self.endpoint, server_max, max(1, server_max - 1))
        if self._ever_connected:
            self._counters.add("reconnects")
            log.warning("reconnected to upstream broker %s (session present: %s)",
                        self.endpoint, getattr(flags, "session_present", None))
        self._ever_connected = True
        self._events.put(StatusNow())  # the Will may have said "offline" meanwhile
        self._connack.set()

    def _on_log(self, client: Any, userdata: Any, level: int, buf: str) -> None:
        import paho.mqtt.client as mqtt

        if level == mqtt.MQTT_LOG_ERR:
            self._last_error = buf

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.jitter_next_reconnect(client)
        error, self._last_error = self._last_error, None
        if (error and "alert" in error and self.config.upstream.tls
                and not self._ever_connected and not self._connack.is_set()):
            self._tls_refusal = error  # start() reports it: no retry fixes a missing certificate
            self._connack_reason = reason
            self._connack.set()
            return
        if not self._stopping.is_set():
            log.warning("lost upstream broker %s (%s%s); spooling, reconnecting with backoff and then "
                        "resending un-acknowledged batches", self.endpoint, reason,
                        f": {error}" if error else "")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._events.put(Acked(mid, str(reason) if getattr(reason, "is_failure", False) else None))

    # ------------------------------------------------------------------ batches
    def resend(self, now: int, cap: int) -> bool:
        """Publish refused batches again once their wait is over; False while it is not (send nothing new)."""
        if self._retry and self.retry_at_ms is not None:
            # (a clock stepped backwards by more than the delay ends the wait too)
            if 0 < self.retry_at_ms - now <= REFUSED_RETRY_MS:
                return False
            self.retry_at_ms = None
        while self._retry and len(self._inflight) < cap:
            self.publish(self._retry.popleft())
        return True

    def add(self, batch: Batch) -> None:
        """Take a batch (or a skipped stretch) in spool order; it is released once it and all before it are."""
        self._sent.append(batch)

    def skipped(self, batch: Batch) -> None:
        """A stretch with nothing to send (expired or corrupt records): release it in turn."""
        batch.acked = True
        self._release()

    def publish(self, batch: Batch) -> None:
        info = self.client.publish(self.batch_topic, batch.payload, qos=1)
        batch.mid = info.mid
        self._inflight[info.mid] = batch

    def acked(self, event: Acked) -> None:
        """A PUBACK: release what it completes from the spool, or resend a refused batch later."""
        if event.mid == self._status_mid:
            self._status_mid = None
            if event.failure:
                self._counters.add("errors")
                log.error("upstream broker refused the status message: %s", event.failure)
            return
        batch = self._inflight.pop(event.mid, None)
        if batch is None:
            return
        if event.failure:
            self._counters.add("errors")
            log.error("upstream broker refused batch %d (%d records): %s; resending in %ds",
                      batch.first_index, batch.records, event.failure, REFUSED_RETRY_MS // 1000)
            self._retry.append(batch)
            self.retry_at_ms = self._clock() + REFUSED_RETRY_MS
            return
        batch.acked = True
        self._counters.add("sent_batches")
        self._counters.add("sent_records", batch.records)
        self._release()

    def _release(self) -> None:
        """Release the longest acknowledged prefix of what was sent, in spool order."""
        released = None
        while self._sent and self._sent[0].acked:
            released = self._sent.popleft().end
        if released is not None:
            self.spool.acknowledge(released)
            self._outstanding.set_backlog(self.spool.backlog_records)

    # ------------------------------------------------------------------ status
    def status_due(self, now: int) -> bool:
        """The periodic status message is due (or the clock stepped back past the last one)."""
        return now >= self.next_status_ms or now < self._last_status_ms

    def status_payload(self, state: str, counters: dict[str, Any] | None = None) -> bytes:
        ids = self.config.gateway
        status = {
            "v": 1,
            "gateway_id": ids.gateway_id,
            "customer_id": ids.customer_id,
            "site_id": ids.site_id,
            "at_ms": self._clock(),
            "state": state,
            "counters": self._counters.snapshot() if counters is None else counters,
        }
        return json.dumps(status, separators=(",", ":")).encode("utf-8")

    def publish_status(self) -> None:
        now = self._clock()
        self.next_status_ms = now + self.config.status.interval_s * 1000
        self._last_status_ms = now
        if self._status_mid is not None:
            return  # the previous one is still unacknowledged; don't pile them up offline
        info = self.client.publish(self.status_topic, self.status_payload("online"), qos=1, retain=True)
        self._status_mid = info.mid

    def publish_final_status(self, timeout_s: float) -> None:
        """The retained "offline" status, waited for up to ``timeout_s`` (else the Will says it)."""
        info = self.client.publish(self.status_topic, self.status_payload("offline"), qos=1, retain=True)
        if info.rc != 0:
            log.warning("upstream broker %s not connected: the offline status is left to the Will",
                        self.endpoint)
            return
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            log.warning("offline status not delivered: %s", exc)
            return
        if not info.is_published():
            log.warning("offline status not acknowledged within %.1fs", timeout_s)
