"""StatefulDedupe: drop repeated (device_id, boot, seq) as records stream in, with bounded state.

The batch job removes copies with a grouping over the whole input
(:class:`~.dedupe.DedupeRecords`); a stream has no "whole input", so this
transform remembers, per device, the ``(boot, seq)`` pairs it let through and
drops a record whose pair it has seen. Copies come from at-least-once delivery:
a gateway resending a batch it never saw acknowledged, the broker redelivering
a message whose acknowledgement was lost, a replay after a crash.

State is bounded two ways:

* **expiry on the device's own event time**: a pair is forgotten once the
  device has sent a record more than ``ttl_s`` newer (at the latest half a TTL
  after that: the state is swept in steps, so the cost per record stays
  constant);
* **a cap per device**: beyond ``max_pairs_per_device`` the pairs of the
  oldest records are forgotten first.

Why not an event-time timer on the watermark: Beam's FnApiRunner (the local
runner for the streaming job, docs/STREAMING.md) fires event-time timers
after every round of an unbounded source as if the input had ended, which
would wipe the state between rounds. The device's own clock works the same
on every runner; the price is that a device that falls silent keeps its last
TTL of pairs (within the cap) until it sends again.

A record older than what its device's state still covers (its ``ts_ms`` is
before the device's forget horizon) cannot be checked; it is let through and
counted as ``unchecked`` — at-least-once, never a silent drop. The lake
backfill's grouping dedupe removes such late copies for good.

The input must be in the global window (state lives per key and window; the
streaming job dedupes before it windows for the rollups). Elements keep their
timestamps. Output order within a device is the input order.

Counters (namespace :data:`METRICS_NAMESPACE`): ``received``, ``sent``,
``duplicates`` (received = sent + duplicates), ``unchecked`` (sent without a
check), ``expired`` (pairs forgotten by the timer or the cap).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

METRICS_NAMESPACE = "fleetpulse.pipeline.stateful_dedupe"

#: per device: {(boot, seq): ts_ms} of the records let through, the newest ts_ms,
#: and the horizon (records before it are not checked any more)
DeviceState = tuple[dict[tuple[int, int], int], int, int]

_SEEN = ReadModifyWriteStateSpec("seen", PickleCoder())
# A DoFn parameter marker (an immutable descriptor Beam reads from the signature).
_SEEN_PARAM = beam.DoFn.StateParam(_SEEN)


class _StatefulDedupeFn(beam.DoFn):
    def __init__(self, ttl_ms: int, max_pairs: int) -> None:
        self._ttl_ms = ttl_ms
        self._max_pairs = max_pairs
        self._received = Metrics.counter(METRICS_NAMESPACE, "received")
        self._sent = Metrics.counter(METRICS_NAMESPACE, "sent")
        self._duplicates = Metrics.counter(METRICS_NAMESPACE, "duplicates")
        self._unchecked = Metrics.counter(METRICS_NAMESPACE, "unchecked")
        self._expired = Metrics.counter(METRICS_NAMESPACE, "expired")

    def process(
        self, keyed: tuple[str, dict[str, Any]], seen_state: Any = _SEEN_PARAM
    ) -> Iterator[dict[str, Any]]:
        _, row = keyed
        self._received.inc()
        pair = (row["boot"], row["seq"])
        ts_ms = row["ts_ms"]
        stored: DeviceState | None = seen_state.read()
        seen: dict[tuple[int, int], int]
        if stored is None:
            seen, newest_ms, horizon_ms = {}, ts_ms, ts_ms - self._ttl_ms
        else:
            seen, newest_ms, horizon_ms = stored
        if pair in seen:
            self._duplicates.inc()
            return
        self._sent.inc()
        if ts_ms < horizon_ms:
            # Older than what this device's state still covers: let it through, counted.
            self._unchecked.inc()
            yield row
            return
        seen[pair] = ts_ms
        newest_ms = max(newest_ms, ts_ms)
        if newest_ms - self._ttl_ms - horizon_ms > self._ttl_ms // 2:
            horizon_ms = newest_ms - self._ttl_ms
            kept = {p: t for p, t in seen.items() if t >= horizon_ms}
            self._expired.inc(len(seen) - len(kept))
            seen = kept
        if len(seen) > self._max_pairs:
            horizon_ms = max(horizon_ms, self._evict_oldest(seen))
        seen_state.write((seen, newest_ms, horizon_ms))
        yield row

    def _evict_oldest(self, seen: dict[tuple[int, int], int]) -> int:
        """Forget the oldest tenth of the pairs; returns the new horizon (ms)."""
        ordered = sorted(seen.items(), key=lambda item: item[1])
        cut = ordered[: max(1, len(ordered) // 10)]
        for pair, _ in cut:
            del seen[pair]
        self._expired.inc(len(cut))
        return cut[-1][1] + 1


class StatefulDedupe(beam.PTransform):
    """Lake rows (global window) → the same rows without repeated (device_id, boot, seq)."""

    def __init__(
        self, *, ttl_s: int = 86400, max_pairs_per_device: int = 200_000, label: str | None = None
    ) -> None:
        super().__init__(label)
        if ttl_s <= 0 or max_pairs_per_device <= 0:
            raise ValueError("ttl_s and max_pairs_per_device must be positive")
        self.ttl_s = ttl_s
        self.max_pairs_per_device = max_pairs_per_device

    def expand(self, rows: beam.PCollection) -> beam.PCollection:
        return (
            rows
            | "KeyByDevice" >> beam.Map(lambda row: (row["device_id"], row)).with_output_types(
                beam.typehints.KV[str, Any]
            )
            | "DropSeen" >> beam.ParDo(_StatefulDedupeFn(self.ttl_s * 1000, self.max_pairs_per_device))
        )
