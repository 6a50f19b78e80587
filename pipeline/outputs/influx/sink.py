"""The InfluxDB sink: checked points -> batched, retried writes through a transport.

:class:`InfluxSink` encodes points (:class:`~.encoder.PointEncoder`), cuts
them into batches of ``batch_size`` lines and sends each through the
transport its config asks for (:func:`~.transport.make_transport`).

Retries: a ``transient`` failure (connection, timeout, 408/429/5xx) is
retried with capped, jittered exponential backoff (:func:`fleetpulse.backoff.delay_ms`)
that honours ``Retry-After``, for at most ``max_retry_s``; then
:class:`~.results.InfluxUnavailable` (a ``TransientError``) names the URL. A
``terminal`` one (401/403/404, redirects, other 4xx) raises
:class:`~.results.InfluxRefused` (a ``TerminalError``) saying what to check.

400/422 mean the server refused some of the data: the batch is split in
halves, recursively, until the refused lines are isolated; the good lines are
written and each refused line comes back as a dead letter (reason
``server_rejected``, the server's text as detail) and in
``WriteResult.failed``. One bad line in 5,000 costs about 26 extra requests of
shrinking size. InfluxDB 1.x already keeps the good points of a refused batch
("partial write"); sending them again while bisecting overwrites them with the
same values, which is harmless because a point is keyed by series and window
start. The splitting is bounded (``max_split_requests`` per batch): past it,
a still-refused part is dead-lettered whole. 413 (payload too large) splits
the batch in halves the same way and the sink remembers the size that fitted
for its later batches.

While the server is down a call blocks, retrying one batch for at most
``max_retry_s``: the caller (one Beam DoFn instance) holds at most two encoded
batches (the one being sent, the next one encoded), so memory stays bounded and
the back-pressure reaches the pipeline; past the budget
:class:`~.results.InfluxUnavailable` tells the runner to retry the bundle,
nothing of the batch having been acknowledged. When a call has more than one
batch, a sender thread writes batch *k* while the caller encodes batch *k+1*
(figures: docs/BENCHMARKS.md).

A sink is not thread-safe: use one per thread (a Beam DoFn instance).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from fleetpulse import backoff
from fleetpulse.schemas.influx import InfluxDesign, load_influx_design

from .config import InfluxConfig
from .encoder import PointEncoder
from .results import (
    FailedBatch,
    InfluxRefused,
    InfluxUnavailable,
    RejectedPoint,
    SinkCounters,
    WriteResult,
)
from .transport import SendFailure, Transport, make_transport

log = logging.getLogger(__name__)

#: Requests a sink may spend per batch isolating refused lines (1 bad line in 5,000: ~26).
DEFAULT_MAX_SPLIT_REQUESTS = 256


class InfluxSink:
    """Writes points to InfluxDB in batches with bounded retries; see the module docstring.

    ``transport``, ``clock``, ``sleep`` and ``rng`` can be injected (tests
    pass a fake transport or a fake clock); by default the transport is built
    from ``config`` without network I/O. ``max_split_requests`` bounds the
    extra requests spent isolating refused lines in one batch.
    """

    def __init__(
        self,
        config: InfluxConfig,
        *,
        transport: Transport | None = None,
        design: InfluxDesign | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_split_requests: int = DEFAULT_MAX_SPLIT_REQUESTS,
    ) -> None:
        # Secret references are read here, where the sink runs (the worker), not at launch.
        self.config = config.validate().with_secrets()
        self.design = design or load_influx_design(1)
        self._encoder = PointEncoder(self.design)
        self.counters = SinkCounters()
        self._transport = transport if transport is not None else make_transport(self.config)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._max_split_requests = max_split_requests
        # Lowered after a 413 to the size that fitted, so later batches do not pay for it again.
        self._lines_per_request = config.batch_size
        self._closed = False

    @property
    def target(self) -> str:
        return self._transport.target

    def __enter__(self) -> InfluxSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the client; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._transport.close()

    # ------------------------------------------------------------------ write
    def write_points(self, points: Iterable[Any]) -> WriteResult:
        """Check, encode and write points; invalid or server-refused ones come back in ``rejected``.

        Raises :class:`InfluxUnavailable` (retry later) or :class:`InfluxRefused`
        (fix the config); batches written before the raise stay written, which
        is harmless because points are keyed by series and window start.

        When there is more than one batch, batch *k+1* is encoded while batch
        *k* is being sent (by one sender thread, in order): at most two
        batches are held, and batches, retries, splits and the counters are
        the same as when encoding everything first.
        """
        points = list(points)
        self.counters.received += len(points)
        kept: list[Any] = []
        rejected: list[RejectedPoint] = []
        if self._closed:
            rejected = self._encoder.encode(points)[2]
            self._count_rejected(rejected)
            raise RuntimeError("InfluxSink is closed")
        result = WriteResult()
        batches = self._encoded_batches(points, kept, rejected)
        counted = 0  # rejected points already counted as dropped
        # One batch (the common DoFn bundle) needs no thread: it is sent where it was encoded.
        sender = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="influx-sink-send")
            if len(points) > self.config.batch_size
            else None
        )
        in_flight: Future[None] | None = None
        try:
            for index, start, lines in batches:
                try:
                    if in_flight is not None:
                        in_flight.result()
                        in_flight = None
                    # Counted here, with no send in flight: only one thread updates the counters.
                    counted = self._count_rejected(rejected, counted)
                    if sender is None:
                        self._send_lines(lines, start, index, result)
                    else:
                        in_flight = sender.submit(self._send_lines, lines, start, index, result)
                except Exception:
                    # As when everything was encoded before sending: every point is counted.
                    for _ in batches:
                        pass
                    self._count_rejected(rejected, counted)
                    raise
            if in_flight is not None:
                in_flight.result()
        finally:
            if sender is not None:
                sender.shutdown(wait=True)
        self._count_rejected(rejected, counted)
        result.received = len(points)
        for batch in result.failed:
            for offset in range(batch.first_line, batch.first_line + batch.line_count):
                rejected.append(RejectedPoint(kept[offset], "server_rejected", batch.message))
        result.rejected = rejected
        result.dropped = len(rejected)
        return result

    def _encoded_batches(
        self, points: list[Any], kept: list[Any], rejected: list[RejectedPoint]
    ) -> Iterator[tuple[int, int, list[str]]]:
        """(batch index, offset of its first line, lines): ``batch_size`` lines, the last fewer.

        The same batches as slicing all encoded lines: points are encoded just
        far enough to fill the next batch. Appends to ``kept`` and ``rejected``.
        """
        size = self.config.batch_size
        lines: list[str] = []
        index = start = position = 0
        while position < len(points):
            chunk = points[position : position + size - len(lines)]
            position += len(chunk)
            encoded, chunk_kept, chunk_rejected = self._encoder.encode(chunk)
            lines += encoded
            kept += chunk_kept
            rejected += chunk_rejected
            if len(lines) == size:
                yield index, start, lines
                index, start, lines = index + 1, start + size, []
        if lines:
            yield index, start, lines

    def _count_rejected(self, rejected: list[RejectedPoint], counted: int = 0) -> int:
        """Count ``rejected[counted:]`` as dropped; returns how many are counted now."""
        for item in rejected[counted:]:
            self._count_dropped(item.reason, 1)
        return len(rejected)

    def write_lines(self, lines: Sequence[str]) -> WriteResult:
        """Write already-encoded lines (one point each) in batches of ``batch_size``."""
        self.counters.received += len(lines)
        result = self._write(lines)
        result.received = len(lines)
        return result

    def _write(self, lines: Sequence[str]) -> WriteResult:
        if self._closed:
            raise RuntimeError("InfluxSink is closed")
        result = WriteResult()
        size = self.config.batch_size
        for index, start in enumerate(range(0, len(lines), size)):
            self._send_lines(lines[start : start + size], start, index, result)
        return result

    def _send_lines(
        self, batch: Sequence[str], start: int, index: int, result: WriteResult
    ) -> None:
        """Join one batch into a request body, refusing line breaks, and write it."""
        body = "\n".join(batch)
        if body.count("\n") != len(batch) - 1 or "\r" in body:
            bad = next(i for i, line in enumerate(batch) if "\n" in line or "\r" in line)
            raise ValueError(
                f"line {start + bad} contains a line break; encode points with to_line()"
            )
        self._write_batch(batch, start, index, body, result)

    def _write_batch(
        self, batch: Sequence[str], start: int, index: int, body: str, result: WriteResult
    ) -> None:
        """One batch: send it (in parts after a 413); split refused parts until isolated."""
        step = self._lines_per_request
        # (offset within the call, lines), first part on top of the stack.
        pending: list[tuple[int, Sequence[str]]] = [
            (start + i, batch[i : i + step]) for i in reversed(range(0, len(batch), step))
        ]
        budget = self._max_split_requests
        while pending:
            offset, part = pending.pop()
            failure = self._send(
                body if len(part) == len(batch) else "\n".join(part), index, result
            )
            if failure is None:
                result.sent += len(part)
                result.batches += 1
                self.counters.sent += len(part)
                self.counters.batches += 1
                continue
            if len(part) > 1 and budget >= 2:
                budget -= 2
                half = len(part) // 2
                if failure.status == 413 and half < self._lines_per_request:
                    log.warning(
                        "InfluxDB at %s: %d lines are too large a request (HTTP 413); "
                        "sending at most %d per request from now on",
                        self.target,
                        len(part),
                        half,
                    )
                    self._lines_per_request = half
                pending.append((offset + half, part[half:]))
                pending.append((offset, part[:half]))
                result.splits += 1
                self.counters.splits += 1
                continue
            message = failure.message + (f"; {failure.fix}" if failure.fix else "")
            if len(part) > 1:
                message += (
                    f" (not isolated further: the split budget of {self._max_split_requests} "
                    f"requests for this batch is used up)"
                )
            log.warning(
                "InfluxDB at %s refused %d line(s) of batch %d: %s",
                self.target,
                len(part),
                index,
                message[:200],
            )
            result.failed.append(
                FailedBatch(index, offset, len(part), failure.status, message, part)
            )
            result.dropped += len(part)
            self._count_dropped("server_rejected", len(part))

    def _send(self, body: str, index: int, result: WriteResult) -> SendFailure | None:
        """One batch with retries: None when written, the failure when the data was refused."""
        started = self._clock()
        attempt = 0
        while True:
            try:
                self._transport.send(body)
                return None
            except SendFailure as failure:
                result.errors += 1
                self.counters.errors += 1
                by_type = self.counters.errors_by_type
                by_type[failure.error_type] = by_type.get(failure.error_type, 0) + 1
                if failure.kind == "rejected":
                    return failure
                if failure.kind == "terminal":
                    raise InfluxRefused(
                        f"InfluxDB at {self.target} refused the write ({failure.message}); "
                        f"{failure.fix}",
                        target=self.target,
                        batch_index=index,
                        sent=result.sent,
                        status=failure.status,
                        error_type=failure.error_type,
                    ) from None
                delay = backoff.delay_ms(attempt, initial_ms=self.config.backoff_initial_ms,
                                         max_ms=self.config.backoff_max_ms, rng=self._rng) / 1000
                if failure.retry_after_s is not None:
                    delay = failure.retry_after_s
                elapsed = self._clock() - started
                if elapsed + delay > self.config.max_retry_s:
                    waited = (
                        f"; the server asked to wait {delay:g}s"
                        if failure.retry_after_s is not None
                        else ""
                    )
                    message = (
                        f"InfluxDB at {self.target} did not take batch {index} within "
                        f"max_retry_s={self.config.max_retry_s:g} ({attempt + 1} attempts over "
                        f"{elapsed:.1f}s, last: {failure.message}{waited}); nothing of this batch "
                        f"was written and it is safe to write it again"
                    )
                    log.warning("%s", message)
                    raise InfluxUnavailable(
                        message,
                        target=self.target,
                        batch_index=index,
                        sent=result.sent,
                        error_type=failure.error_type,
                    ) from None
                log.info(
                    "InfluxDB at %s: %s; retry %d of batch %d in %.2fs",
                    self.target,
                    failure.message[:200],
                    attempt + 1,
                    index,
                    delay,
                )
                self._sleep(delay)
                attempt += 1
                result.retries += 1
                self.counters.retries += 1

    def _count_dropped(self, reason: str, count: int) -> None:
        self.counters.dropped += count
        by_reason = self.counters.dropped_by_reason
        by_reason[reason] = by_reason.get(reason, 0) + count



def open_sink(config: InfluxConfig, **kwargs: Any) -> InfluxSink:
    """Build the sink for ``config`` (no network I/O until the first write)."""
    return InfluxSink(config, **kwargs)
