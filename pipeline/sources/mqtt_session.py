"""One reader's MQTT connection (:class:`ReaderSession`), under the Beam source in :mod:`.mqtt`.

It receives into a queue the source polls, and acknowledges (PUBACK) only the
deliveries the source hands back after the runner committed their bundle.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from fleetpulse import mqtt_client, mqtt_tls
from fleetpulse.clock import wall_clock_ms
from fleetpulse.errors import TransientError
from fleetpulse.pipeline.lake.landing import message_topic

from .mqtt_config import TLS_SETTINGS, MqttSourceConfig, broker_password

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Delivery:
    """One message taken from the broker, not yet acknowledged."""

    generation: int  # which connection delivered it (packet ids are per connection)
    mid: int
    qos: int
    topic: str
    payload: bytes
    received_ms: int


class ReaderSession:
    """One reader's MQTT connection: receives into a queue, acknowledges on request.

    Lifecycle: ``start()`` connects (raises TransientError when the broker
    cannot be reached), ``poll()`` / ``ack()`` while running, ``stop()``
    disconnects without ending the broker-side session.
    """

    def __init__(
        self,
        config: MqttSourceConfig,
        reader: int,
        *,
        client_factory: Callable[[mqtt_client.ClientOptions], Any] = mqtt_client.new_client,
        clock_ms: Callable[[], int] = wall_clock_ms,
        password: str | None = None,
    ) -> None:
        """``password``: the resolved broker password (default: :func:`broker_password`)."""
        self.config = config
        self.client_id = config.client_id(reader)
        self._clock_ms = clock_ms
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._queue: collections.deque[Delivery] = collections.deque()
        self._generation = 0
        self._outstanding: dict[tuple[int, int], int | None] = {}  # (generation, mid) -> event ms
        self._connected = threading.Event()
        self._stopping = False
        self.taken_over = False
        # Last time the broker had a reason to send: a message arrived or we acknowledged.
        self.last_activity_monotonic = time.monotonic()
        self.counters: dict[str, int] = dict.fromkeys(
            ("received", "sent", "acked", "dropped", "errors", "reconnects", "unmatched"), 0
        )
        self._options = mqtt_client.ClientOptions(
            self.client_id, protocol=config.protocol, persistent=True, manual_ack=True)
        self._client = client_factory(self._options)
        mqtt_client.configure(
            self._client,
            tls=mqtt_client.Tls(TLS_SETTINGS, ca_file=config.ca_file) if config.tls else None,
            # "{reader}" in it: one user per reader, as a broker binding client ids to users needs.
            username=config.username.replace("{reader}", str(reader)) if config.username else None,
            password=(password if password is not None else broker_password(config)) if config.username else None,
        )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # ------------------------------------------------------------ lifecycle
    def start(self) -> ReaderSession:
        cfg = self.config
        kwargs = mqtt_client.connect_kwargs(self._options, keepalive_s=cfg.keepalive_s,
                                            session_expiry_s=cfg.session_expiry_s,
                                            receive_maximum=cfg.receive_maximum)
        try:
            # TransientError when unreachable; TlsRefused (terminal) when the certificate fails.
            mqtt_tls.connect(self._client, cfg.host, cfg.port, TLS_SETTINGS if cfg.tls else None, **kwargs)
        except (TransientError, mqtt_tls.TlsRefused):
            self.counters["errors"] += 1
            raise
        self._client.loop_start()
        if not self._connected.wait(cfg.connect_timeout_s):
            self._client.loop_stop()
            self.counters["errors"] += 1
            raise TransientError(
                f"MQTT broker {cfg.host}:{cfg.port} did not accept {self.client_id} "
                f"within {cfg.connect_timeout_s}s"
            )
        return self

    def stop(self) -> None:
        """Disconnect; the broker keeps the session and redelivers what was not acknowledged."""
        with self._lock:
            self._stopping = True
            self.counters["dropped"] += len(self._queue)
            self._queue.clear()
        self._client.disconnect()
        self._client.loop_stop()

    # ------------------------------------------------------------ callbacks
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            self.counters["errors"] += 1
            log.error("MQTT broker refused %s: %s", self.client_id, reason)
            return
        with self._lock:
            if self._generation:
                self.counters["reconnects"] += 1
                # Messages of the old connection cannot be acknowledged any more:
                # the broker redelivers them, so emitting them now would only
                # make duplicates.
                self.counters["dropped"] += len(self._queue)
                self._queue.clear()
                self._outstanding.clear()
            self._generation += 1
        client.subscribe([(sub, self.config.qos) for sub in self.config.subscriptions])
        log.info("%s connected (session present: %s), subscribed to %s",
                 self.client_id, flags.session_present, ", ".join(self.config.subscriptions))
        self._connected.set()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if self._stopping:
            return
        if getattr(reason, "value", None) == 0x8E:  # Session taken over
            # Another worker now reads as this client id (the runner moved the
            # reader). Reconnecting would take it back and the two would fight.
            log.warning("%s: session taken over by another reader; this one stops", self.client_id)
            self.taken_over = True
            self._stopping = True
            client.disconnect()
            return
        log.warning("%s lost the broker (%s); paho reconnects", self.client_id, reason)

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        topic = message_topic(message)  # message.topic raises on a topic that is not UTF-8
        if not any(mqtt.topic_matches_sub(sub, topic) for sub in self.config.topics):
            # Outside the subscription: some brokers (amqtt) deliver retained
            # messages of other topics on subscribe. Not ours to land: counted,
            # logged and acknowledged so the broker does not send it again.
            with self._lock:
                self.counters["unmatched"] += 1
            log.warning("%s: broker delivered %s outside the subscriptions %s; ignored",
                        self.client_id, topic, ", ".join(self.config.topics))
            if message.qos:
                client.ack(message.mid, message.qos)
            return
        with self._arrived:
            self.counters["received"] += 1
            self._queue.append(
                Delivery(self._generation, message.mid, message.qos, topic,
                         bytes(message.payload), self._clock_ms())
            )
            self.last_activity_monotonic = time.monotonic()
            self._arrived.notify()

    # -------------------------------------------------------------- reading
    def poll(self, timeout_s: float) -> Delivery | None:
        """The next message, waiting at most ``timeout_s``; None when none came."""
        with self._arrived:
            if not self._queue:
                self._arrived.wait(max(0.0, timeout_s))
            return self._queue.popleft() if self._queue else None

    def unpoll(self, delivery: Delivery) -> None:
        """Put back a message the runner did not let the reader claim."""
        with self._lock:
            self._queue.appendleft(delivery)

    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def emitted(self, delivery: Delivery, event_ms: int | None) -> None:
        """``delivery`` was emitted; ``event_ms`` (None: no event time) holds the watermark until acked."""
        with self._lock:
            self.counters["sent"] += 1
            self._outstanding[(delivery.generation, delivery.mid)] = event_ms

    def oldest_outstanding_ms(self) -> int | None:
        """The earliest event time among emitted messages not yet acknowledged."""
        with self._lock:
            return min((ms for ms in self._outstanding.values() if ms is not None), default=None)

    def ack(self, deliveries: tuple[Delivery, ...]) -> int:
        """Acknowledge messages of a finalized bundle; returns how many were sent a PUBACK."""
        acked = 0
        with self._lock:
            generation = self._generation
            for d in deliveries:
                self._outstanding.pop((d.generation, d.mid), None)
            current = [d for d in deliveries if d.generation == generation]
        for d in current:
            self._client.ack(d.mid, d.qos)
            acked += 1
        with self._lock:
            self.counters["acked"] += acked
            self.last_activity_monotonic = time.monotonic()
        return acked

    def idle_ms(self) -> float | None:
        """How long the reader has waited with nothing to do; None while it is not idle.

        Not idle while messages are queued or emitted-but-unacknowledged: the
        broker sends no more until the in-flight ones are acknowledged, so a
        quiet broker then says nothing about the stream.
        """
        with self._lock:
            if self._queue or self._outstanding:
                return None
            return (time.monotonic() - self.last_activity_monotonic) * 1000


# ---------------------------------------------------------------- the SDF


