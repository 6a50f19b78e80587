"""What a write did and how it failed: results, running counters, the two exceptions.

:class:`WriteResult` is one call's account (its ``rejected`` points are the
dead letters, reasons from :data:`SINK_REASONS`); :class:`SinkCounters` are
the sink's running totals under the names every FleetPulse component uses.
:class:`InfluxUnavailable` (transient: retry the call later) and
:class:`InfluxRefused` (terminal: fix the config) are what a write raises.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from fleetpulse.errors import TerminalError, TransientError
from fleetpulse.schemas.influx import DESIGN_REASONS

from .line_protocol import LINE_REASONS

#: Every reason a point can become a dead letter here (bounded; counter labels).
SINK_REASONS = tuple(dict.fromkeys((*DESIGN_REASONS, *LINE_REASONS, "server_rejected")))


class RejectedPoint(NamedTuple):
    """A point that was not written, why (a reason from SINK_REASONS) and the detail."""

    point: Any
    reason: str
    detail: str


@dataclass(frozen=True)
class FailedBatch:
    """Lines the server refused as data (400/413/422), isolated by bisection.

    Usually one line; more only when the split budget ran out. These lines
    were not written; the other lines of their batch were.
    """

    index: int  # batch number within the write_lines/write_points call
    first_line: int  # offset of its first line in the lines given
    line_count: int
    status: int | None
    message: str  # the server's error text
    lines: Sequence[str] = field(repr=False, default=())


@dataclass
class WriteResult:
    """What one write_points/write_lines call did; counts use the sink's counter names."""

    received: int = 0  # points (write_points) or lines (write_lines) given
    sent: int = 0  # points the server acknowledged
    batches: int = 0  # requests the server acknowledged (a split batch counts each part)
    retries: int = 0
    splits: int = 0  # refused batches split in two to isolate bad lines (400/422) or fit (413)
    errors: int = 0  # failed attempts, retried or not
    dropped: int = 0  # points not written: rejected before sending + in failed batches
    rejected: list[RejectedPoint] = field(default_factory=list)
    failed: list[FailedBatch] = field(default_factory=list)


@dataclass
class SinkCounters:
    """Running totals of a sink (the same names as every FleetPulse component)."""

    received: int = 0
    sent: int = 0
    dropped: int = 0
    errors: int = 0
    batches: int = 0
    retries: int = 0
    splits: int = 0
    errors_by_type: dict[str, int] = field(default_factory=dict)
    dropped_by_reason: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "sent": self.sent,
            "dropped": self.dropped,
            "errors": self.errors,
            "batches": self.batches,
            "retries": self.retries,
            "splits": self.splits,
            "errors_by_type": dict(self.errors_by_type),
            "dropped_by_reason": dict(self.dropped_by_reason),
        }


class InfluxUnavailable(TransientError):
    """InfluxDB did not take a batch within max_retry_s; the call may be retried as a whole."""

    def __init__(
        self, message: str, *, target: str, batch_index: int, sent: int, error_type: str
    ) -> None:
        super().__init__(message)
        self.target, self.batch_index, self.sent, self.error_type = (
            target,
            batch_index,
            sent,
            error_type,
        )


class InfluxRefused(TerminalError):
    """InfluxDB refused for good (credentials, missing database/bucket, TLS, wrong URL)."""

    def __init__(
        self,
        message: str,
        *,
        target: str,
        batch_index: int,
        sent: int,
        status: int | None,
        error_type: str,
    ) -> None:
        super().__init__(message)
        self.target, self.batch_index, self.sent = target, batch_index, sent
        self.status, self.error_type = status, error_type
