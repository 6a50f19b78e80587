"""ReadFromMqtt: an MQTT source for Beam Python that loses nothing.

    p | ReadFromMqtt(host="broker", port=8883, tls=True, readers=4,
                     share_group="fleetpulse-ingest", client_id_prefix="ingest-eu1")
      → landing rows {topic, payload, received_ms}, timestamped with device event time

What it does differently from Beam's Java MqttIO (see docs/STREAMING.md):

* **Shared subscription, fixed client ids, persistent sessions.** Reader ``n``
  of ``readers`` connects as ``<client_id_prefix>-<n>`` (MQTT v5,
  ``clean_start=False``, a session expiry) and subscribes to
  ``$share/<share_group>/<topic>``, so the broker splits the load across
  readers and keeps each reader's unacknowledged messages while it is away.
* **QoS 1 with manual acknowledgements sent in the bundle finalizer.** A
  message is acknowledged (PUBACK) only after the runner committed the bundle
  that emitted it; a bundle that fails is never finalized, so the broker
  redelivers its messages. Packet ids of an older connection are never
  acknowledged on a newer one (they mean nothing there; the broker redelivers).
* **Device event time.** Each element is one broker message (a gateway batch
  of many records) stamped with its *earliest* valid record time, so when the
  decoder re-stamps every record with its own ``ts_ms`` the timestamps only
  move forward. The watermark is ``min(event time of the bundle, event time of
  every emitted-but-unacknowledged message) - watermark_lag_ms`` and never
  goes back: a gateway flushing a backlog holds it while the backlog is in
  flight; a backlog older than the watermark is late data for the rollups'
  allowed lateness and is never dropped from the archive. With no message for
  ``idle_watermark_ms``, ``idle_watermark="wall_clock"`` advances the
  watermark to ``now - watermark_lag_ms`` (live fleets); ``"hold"`` (the
  default) keeps it (replays of old data, tests).
* **Stops when told** (bounded runs, tests): after ``max_messages`` per
  reader, after ``idle_stop_ms`` without a message, or when ``stop_file``
  exists. Unemitted messages stay unacknowledged and are redelivered.

The source is a splittable DoFn with an unbounded restriction: the position is
the count of messages the reader has emitted; the runner checkpoints it
(``defer_remainder``) after every bundle of at most ``max_messages_per_bundle``
messages or ``max_bundle_ms``. Keep ``max_messages_per_bundle`` at or below the
broker's in-flight window for one client (``receive_maximum`` is sent to the
broker as the MQTT v5 Receive Maximum): the broker sends no more until
earlier messages are acknowledged, and they are only acknowledged once their
bundle is finalized.

Counters (namespace :data:`METRICS_NAMESPACE`): ``received`` messages taken
from the broker, ``sent`` elements emitted, ``acked``, ``errors``
(connection failures), ``reconnects``, ``dropped`` (received but not emitted
because the connection changed or the reader stopped; the broker redelivers
them, so nothing is lost). A message whose topic does not match the
subscription (a broker bug: amqtt delivers retained messages of other topics)
is acknowledged, not emitted, and counted in the reader's ``unmatched``.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

import apache_beam as beam
import paho.mqtt.client as mqtt
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleetpulse import mqtt_tls
from fleetpulse.errors import TransientError
from fleetpulse.pipeline.lake.landing import message_topic
from fleetpulse.pipeline.secrets import SecretRef, read_secret
from fleetpulse.schemas import load_contract

log = logging.getLogger(__name__)

#: the command-line settings a TLS refusal names (see fleetpulse.mqtt_tls)
TLS_SETTINGS = mqtt_tls.TlsSettings(ca_key="--ca-file", host_key="--broker")

METRICS_NAMESPACE = "fleetpulse.pipeline.mqtt"
#: how the watermark moves while no message arrives (see the module docstring)
IDLE_WATERMARK_MODES = ("hold", "wall_clock")
#: the position no reader ever reaches: claiming it ends the restriction
_END = 2**63 - 1

EventTimeFn = Callable[[str, bytes, int], int | None]


def _default_topic() -> str:
    return load_contract().subscription("gateway_batches")


def _default_status_topic() -> str:
    return load_contract().subscription("gateway_status")


@dataclass(frozen=True)
class MqttSourceConfig:
    """Everything a reader needs; validated at construction (ValueError names the key)."""

    host: str = "127.0.0.1"
    port: int = 1883
    topic: str = field(default_factory=_default_topic)
    #: the gateways' status topics, read in the same session so that live scoring
    #: learns that a gateway said "offline" (None: batches only)
    status_topic: str | None = field(default_factory=_default_status_topic)
    share_group: str | None = "fleetpulse-ingest"
    client_id_prefix: str = "fleetpulse-ingest"
    readers: int = 1
    qos: int = 1
    tls: bool = False
    ca_file: str | None = None
    username: str | None = None
    #: name of the environment variable holding the password, read on the worker
    #: when connecting, so the secret never travels inside the pipeline graph
    password_env: str | None = None
    #: a reference to the password (a ``SecretRef`` such as Beam's ``GcpSecret(version)``,
    #: which reads Secret Manager), resolved in the reader's ``setup`` on the worker;
    #: only the reference is in the graph. Takes precedence over ``password_env``.
    password_secret: SecretRef | None = field(default=None, repr=False, hash=False)
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 86400
    connect_timeout_s: float = 10.0
    receive_maximum: int = 100
    max_messages_per_bundle: int = 100
    max_bundle_ms: int = 500
    watermark_lag_ms: int = 300_000
    idle_watermark: str = "hold"
    idle_watermark_ms: int = 60_000
    max_messages: int | None = None
    idle_stop_ms: int | None = None
    stop_file: str | None = None
    #: "5" (default), or "3.1.1" for brokers without MQTT v5 (one reader, no
    #: shared subscription, no Receive Maximum: the broker's own in-flight
    #: window must be at least max_messages_per_bundle)
    protocol: str = "5"

    def __post_init__(self) -> None:
        if self.protocol not in ("5", "3.1.1"):
            raise ValueError(f"protocol={self.protocol!r}: \"5\" or \"3.1.1\"")
        if self.protocol == "3.1.1" and (self.share_group or self.readers > 1):
            raise ValueError(
                "share_group: MQTT 3.1.1 has no shared subscriptions; use one reader and "
                "share_group=None, or MQTT 5"
            )
        if self.readers < 1:
            raise ValueError(f"readers={self.readers}: at least 1")
        if self.readers > 1 and not self.share_group:
            raise ValueError(
                "share_group: several readers need a shared subscription, "
                "or each would receive every message"
            )
        if self.qos not in (1, 2):
            raise ValueError(f"qos={self.qos}: 1 or 2 (QoS 0 cannot be acknowledged, so it can lose data)")
        if self.idle_watermark not in IDLE_WATERMARK_MODES:
            raise ValueError(f"idle_watermark={self.idle_watermark!r}: one of {IDLE_WATERMARK_MODES}")
        if not 1 <= self.max_messages_per_bundle <= self.receive_maximum:
            raise ValueError(
                f"max_messages_per_bundle={self.max_messages_per_bundle}: between 1 and "
                f"receive_maximum={self.receive_maximum} (the broker sends no more until "
                "a bundle is finalized)"
            )
        for name in ("max_bundle_ms", "keepalive_s", "session_expiry_s", "watermark_lag_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must not be negative")

    @property
    def topics(self) -> tuple[str, ...]:
        """The topic filters read: the batches, and the status topics unless turned off."""
        return (self.topic,) if self.status_topic is None else (self.topic, self.status_topic)

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The filters subscribed to: shared when ``share_group`` is set."""
        return tuple(f"$share/{self.share_group}/{t}" if self.share_group else t for t in self.topics)

    def client_id(self, reader: int) -> str:
        """The fixed client id of reader ``reader``: the same on every restart."""
        return f"{self.client_id_prefix}-{reader}"


def check_broker(config: MqttSourceConfig, stop: threading.Event, *, wait: bool = True) -> bool:
    """Before a job starts: wait until the broker answers, and verify its TLS certificate.

    The readers connect later, on the workers, where a certificate that does
    not verify would only fail bundles; checked here, the job stops at start
    with one line naming the setting (TlsRefused). A bare TCP/TLS handshake:
    no MQTT session is opened or taken over. Returns False when ``stop`` was
    set while waiting for an unreachable broker. ``wait=False`` (the workers
    run elsewhere and may reach what this machine cannot) tries once and
    only warns when the broker cannot be reached from here.
    """
    def attempt() -> None:
        if config.tls:
            mqtt_tls.check_tls(config.host, config.port, config.ca_file, TLS_SETTINGS,
                               timeout_s=config.connect_timeout_s)
        else:
            try:
                socket.create_connection((config.host, config.port), config.connect_timeout_s).close()
            except OSError as exc:
                raise TransientError(f"cannot reach MQTT broker {config.host}:{config.port}: {exc}") from None

    if wait:
        return mqtt_tls.until_reachable(attempt, stop)
    try:
        attempt()
    except TransientError as exc:
        log.warning("%s from this machine; the workers will try from theirs", exc)
    return True


def broker_password(config: MqttSourceConfig) -> str | None:
    """The broker password, read where the readers run (the worker): from ``password_secret``,
    else from the variable ``password_env``; None without a ``username``.
    """
    if not config.username:
        return None
    if config.password_secret is not None:
        return read_secret(config.password_secret, f"the broker password of {config.username!r}")
    return os.environ.get(config.password_env) if config.password_env else None


_TS_MS = re.compile(rb'"ts_ms"\s*:\s*(\d{1,16})\b')


def earliest_event_ms(topic: str, payload: bytes, received_ms: int) -> int | None:
    """The earliest plausible record event time in a batch payload; None when it has none.

    A scan for ``"ts_ms": <int>`` instead of a JSON parse: the decoder parses
    and validates once, downstream; here only a timestamp is needed, and a
    malformed payload must not fail the source (it becomes a dead letter).
    Times the validator would refuse (before 2000, beyond the future skew of
    ``received_ms``) are ignored, so one bad record cannot drag a batch's
    timestamp to 1970. A message with no plausible time can only become a
    dead letter; the source stamps it with its current watermark, never with
    the arrival time (see ``_ReadMqttFn._stamp``).
    """
    limits = load_contract().limits
    low, high = limits.min_event_time_ms, received_ms + limits.max_future_skew_ms
    times = [t for t in map(int, _TS_MS.findall(payload)) if low <= t <= high]
    return min(times) if times else None


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
        client_factory: Callable[..., Any] = mqtt.Client,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
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
        if config.protocol == "3.1.1":
            self._client = client_factory(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=mqtt.MQTTv311,
                clean_session=False,  # the 3.1.1 persistent session
                manual_ack=True,
            )
        else:
            self._client = client_factory(
                mqtt.CallbackAPIVersion.VERSION2,
                client_id=self.client_id,
                protocol=mqtt.MQTTv5,
                manual_ack=True,
            )
        if config.tls:
            self._client.tls_set_context(mqtt_tls.client_context(config.ca_file, TLS_SETTINGS))
        if config.username:
            # "{reader}" in it: one user per reader, as a broker binding client ids to users needs.
            self._client.username_pw_set(
                config.username.replace("{reader}", str(reader)),
                password if password is not None else broker_password(config),
            )
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # ------------------------------------------------------------ lifecycle
    def start(self) -> ReaderSession:
        cfg = self.config
        kwargs: dict[str, Any] = {"keepalive": cfg.keepalive_s}
        if cfg.protocol != "3.1.1":
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = cfg.session_expiry_s
            properties.ReceiveMaximum = cfg.receive_maximum
            kwargs.update(clean_start=False, properties=properties)
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


class _QueueTracker(OffsetRestrictionTracker):
    """Offsets count the messages a reader emitted; only checkpoints split it.

    A queue has no positions to hand to another worker, so a split at a
    fraction of the remainder is refused; a checkpoint (fraction 0) splits at
    the current position and the residual continues reading.
    """

    def try_split(self, fraction_of_remainder: float) -> Any:
        if fraction_of_remainder > 0:
            return None
        return super().try_split(0)

    def is_bounded(self) -> bool:
        return self.current_restriction().stop != _END


class _QueueRestrictionProvider(RestrictionProvider):
    def initial_restriction(self, element: int) -> OffsetRange:
        return OffsetRange(0, _END)

    def create_tracker(self, restriction: OffsetRange) -> _QueueTracker:
        return _QueueTracker(restriction)

    def split(self, element: int, restriction: OffsetRange) -> Iterator[OffsetRange]:
        yield restriction  # parallelism comes from the reader elements, not from splits

    def restriction_size(self, element: int, restriction: OffsetRange) -> int:
        return 1

    def truncate(self, element: int, restriction: OffsetRange) -> None:
        # Draining: stop reading; what was not acknowledged is redelivered later.
        return None


# DoFn parameter markers (immutable descriptors Beam reads from the signature).
_RESTRICTION = beam.DoFn.RestrictionParam(_QueueRestrictionProvider())
_WATERMARK = beam.DoFn.WatermarkEstimatorParam(ManualWatermarkEstimator.default_provider())


class _ReadMqttFn(beam.DoFn):
    """Reader ``element`` of the shared subscription; see the module docstring."""

    def __init__(
        self,
        config: MqttSourceConfig,
        event_time_fn: EventTimeFn,
        client_factory: Callable[..., Any],
    ) -> None:
        self._config = config
        self._event_time_fn = event_time_fn
        self._client_factory = client_factory
        self._received = Metrics.counter(METRICS_NAMESPACE, "received")
        self._sent = Metrics.counter(METRICS_NAMESPACE, "sent")
        self._acked = Metrics.counter(METRICS_NAMESPACE, "acked")

    def setup(self) -> None:
        self._sessions: dict[int, ReaderSession] = {}
        # Read here, on the worker, once per DoFn instance: the graph holds only the reference.
        self._password = broker_password(self._config)

    def teardown(self) -> None:
        for session in self._sessions.values():
            session.stop()
            log.info("%s stopped: %s", session.client_id, session.counters)
        self._sessions.clear()

    def _session(self, reader: int) -> ReaderSession:
        session = self._sessions.get(reader)
        if session is None:
            session = ReaderSession(
                self._config, reader, client_factory=self._client_factory, password=self._password
            ).start()
            self._sessions[reader] = session
        return session

    def _should_stop(self, session: ReaderSession, position: int) -> bool:
        cfg = self._config
        if session.taken_over:
            return True
        if cfg.max_messages is not None and position >= cfg.max_messages:
            return True
        if cfg.stop_file is not None and os.path.exists(cfg.stop_file):
            return True
        idle_ms = session.idle_ms()
        return cfg.idle_stop_ms is not None and idle_ms is not None and idle_ms >= cfg.idle_stop_ms

    def _advance_watermark(
        self, session: ReaderSession, estimator: ManualWatermarkEstimator, bundle_min_ms: int | None
    ) -> None:
        cfg = self._config
        candidate: int | None = None
        if bundle_min_ms is not None:
            candidate = bundle_min_ms
        elif cfg.idle_watermark == "wall_clock":
            idle_ms = session.idle_ms()
            if idle_ms is not None and idle_ms >= cfg.idle_watermark_ms:
                candidate = time.time_ns() // 1_000_000
        oldest = session.oldest_outstanding_ms()
        if oldest is not None:
            # A message not yet acknowledged may come again after a failure:
            # it must not arrive behind the watermark.
            candidate = oldest if candidate is None else min(candidate, oldest)
        if candidate is None:
            return
        mark = Timestamp(micros=(candidate - cfg.watermark_lag_ms) * 1000)
        current = estimator.current_watermark()
        if current is None or mark > current:
            estimator.set_watermark(mark)

    @staticmethod
    def _stamp(event_ms: int | None, estimator: ManualWatermarkEstimator) -> Timestamp:
        """The element timestamp: the event time, or for a message without one, the watermark.

        Not the arrival time: an element stamped *now* would let a runner that
        tracks progress by element timestamps (the FnApiRunner does) move the
        watermark to wall-clock time and make a whole backlog late.
        """
        if event_ms is not None:
            return Timestamp(micros=event_ms * 1000)
        current = estimator.current_watermark()
        return current if current is not None else MIN_TIMESTAMP

    # BundleFinalizerParam must come before RestrictionParam: in Beam 2.77 the
    # other order makes the invoker pass the tracker twice (TypeError).
    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        reader: int,
        finalizer: Any = beam.DoFn.BundleFinalizerParam,
        tracker: Any = _RESTRICTION,
        estimator: Any = _WATERMARK,
    ) -> Iterator[TimestampedValue]:
        cfg = self._config
        session = self._session(reader)
        position = tracker.current_restriction().start
        deadline = time.monotonic() + cfg.max_bundle_ms / 1000
        taken: list[Delivery] = []
        bundle_min_ms: int | None = None
        while len(taken) < cfg.max_messages_per_bundle and not (
            cfg.max_messages is not None and position >= cfg.max_messages
        ):
            delivery = session.poll(deadline - time.monotonic())
            if delivery is None:
                break
            if not tracker.try_claim(position):
                session.unpoll(delivery)  # the runner checkpointed us: the residual reads it
                break
            self._received.inc()
            event_ms = self._event_time_fn(delivery.topic, delivery.payload, delivery.received_ms)
            row = {"topic": delivery.topic, "payload": delivery.payload, "received_ms": delivery.received_ms}
            session.emitted(delivery, event_ms)
            taken.append(delivery)
            if event_ms is not None:
                bundle_min_ms = event_ms if bundle_min_ms is None else min(bundle_min_ms, event_ms)
            position += 1
            self._sent.inc()
            yield TimestampedValue(row, self._stamp(event_ms, estimator))
        if taken:
            batch = tuple(taken)
            acked_counter = self._acked
            # Runs only after the runner committed this bundle's output.
            finalizer.register(lambda: acked_counter.inc(session.ack(batch)))
        self._advance_watermark(session, estimator, bundle_min_ms)
        if self._should_stop(session, position):
            tracker.try_claim(_END)  # the restriction is done: this reader stops
            return
        tracker.defer_remainder(Duration(seconds=0))


class ReadFromMqtt(beam.PTransform):
    """PBegin → landing rows ``{topic, payload, received_ms}`` at device event time.

    Pass a :class:`MqttSourceConfig`, or its fields as keywords::

        ReadFromMqtt(host="broker", port=1883, readers=2, max_messages=1000)

    ``event_time_fn(topic, payload, received_ms) -> epoch ms`` stamps each
    message (default :func:`earliest_event_ms`); ``client_factory`` builds the
    paho client (tests inject a wrapper; default ``paho.mqtt.client.Client``).
    """

    def __init__(
        self,
        config: MqttSourceConfig | None = None,
        *,
        event_time_fn: EventTimeFn = earliest_event_ms,
        client_factory: Callable[..., Any] = mqtt.Client,
        label: str | None = None,
        **settings: Any,
    ) -> None:
        super().__init__(label)
        base = config or MqttSourceConfig()
        self.config = replace(base, **settings) if settings else base
        self._event_time_fn = event_time_fn
        self._client_factory = client_factory

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Readers" >> beam.Create(list(range(self.config.readers)))
            | "Read" >> beam.ParDo(_ReadMqttFn(self.config, self._event_time_fn, self._client_factory))
        )
