"""Sinks: where the pipeline's rollups and signals leave it.

``influx`` writes points to InfluxDB (1.x ``/write`` or the v2 write API of
2.x/3.x/Cloud); ``line_protocol`` encodes one point as one line. The
measurement design the points must follow is ``fleetpulse.schemas.influx``.
"""

from .influx import (
    SINK_REASONS,
    FailedBatch,
    InfluxConfig,
    InfluxRefused,
    InfluxSink,
    InfluxUnavailable,
    RejectedPoint,
    SinkCounters,
    WriteResult,
    open_sink,
    points_to_lines,
)
from .line_protocol import LINE_REASONS, InvalidPoint, to_line

__all__ = [
    "LINE_REASONS",
    "SINK_REASONS",
    "FailedBatch",
    "InfluxConfig",
    "InfluxRefused",
    "InfluxSink",
    "InfluxUnavailable",
    "InvalidPoint",
    "RejectedPoint",
    "SinkCounters",
    "WriteResult",
    "open_sink",
    "points_to_lines",
    "to_line",
]
