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

The settings are :class:`~.mqtt_config.MqttSourceConfig`; each reader's
connection is a :class:`~.mqtt_session.ReaderSession`. The source is a
splittable DoFn with an unbounded restriction: the position is
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

import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import MIN_TIMESTAMP, Duration, Timestamp

from fleetpulse.clock import wall_clock_ms
from fleetpulse.mqtt_client import ClientOptions, new_client
from fleetpulse.schemas import load_contract

from .mqtt_config import MqttSourceConfig, broker_password
from .mqtt_session import Delivery, ReaderSession

log = logging.getLogger(__name__)

METRICS_NAMESPACE = "fleetpulse.pipeline.mqtt"
#: the position no reader ever reaches: claiming it ends the restriction
_END = 2**63 - 1

EventTimeFn = Callable[[str, bytes, int], int | None]

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
        client_factory: Callable[[ClientOptions], Any],
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
                candidate = wall_clock_ms()
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
    paho client from its :class:`~fleetpulse.mqtt_client.ClientOptions` (tests inject a wrapper;
    default :func:`fleetpulse.mqtt_client.new_client`).
    """

    def __init__(
        self,
        config: MqttSourceConfig | None = None,
        *,
        event_time_fn: EventTimeFn = earliest_event_ms,
        client_factory: Callable[[ClientOptions], Any] = new_client,
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
