"""InfluxDB: where the pipeline's rollups and signals leave it as points.

One sink, two wire protocols, chosen by :class:`InfluxConfig`: the v2 write
API of InfluxDB 2.x/3.x/Cloud (through influxdb-client) or 1.x ``/write``.
Points are checked against the measurement design
(:mod:`fleetpulse.schemas.influx`), encoded as line protocol, and written in
batches of ``batch_size`` lines with bounded retries; a point the design or
the server refuses comes back as a dead letter with its reason. Only rollups
and signals are written here; raw telemetry goes to the lake.

The modules, in the order a point goes through them:

* ``config``: :class:`InfluxConfig`, from code or the ``INFLUX_*`` environment,
  validated without I/O; secrets kept out of reprs and of the pipeline graph.
* ``encoder`` and ``line_protocol``: point -> checked, escaped line.
* ``transport``: one request per batch, v1 (urllib) or v2 (influxdb-client);
  every failure classified as transient, terminal or refused data.
* ``sink``: :class:`InfluxSink`, batching, retries with backoff, bisection of
  refused batches, counters.
* ``results``: what a write returns and raises.
* ``write``: :class:`WriteToInflux`, the Beam composite around the sink.

Use::

    config = InfluxConfig.from_env(os.environ)   # None: InfluxDB not configured
    if config is not None:
        with open_sink(config) as sink:
            result = sink.write_points(points)   # dicts: measurement, tags, fields, ts_s
            dead_letters = result.rejected       # (point, reason, detail)

or, in a pipeline, ``points | WriteToInflux(config)`` (a PCollection of dead
letters). ``WriteToInflux`` is imported on first use, so the sink and its
config do not import Apache Beam.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .config import InfluxConfig
from .encoder import points_to_lines
from .line_protocol import LINE_REASONS, InvalidPoint, to_line
from .results import (
    SINK_REASONS,
    FailedBatch,
    InfluxRefused,
    InfluxUnavailable,
    RejectedPoint,
    SinkCounters,
    WriteResult,
)
from .sink import InfluxSink, open_sink

if TYPE_CHECKING:
    from .write import WriteToInflux

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
    "WriteToInflux",
    "open_sink",
    "points_to_lines",
    "to_line",
]


def __getattr__(name: str) -> Any:
    # Beam costs ~0.7 s to import, and the sink, its config, their tests and the
    # benches do not need it.
    if name == "WriteToInflux":
        from .write import WriteToInflux

        return WriteToInflux
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
