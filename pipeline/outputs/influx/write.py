"""``WriteToInflux``: the Beam composite that writes points to InfluxDB and returns dead letters.

Points are grouped with ``BatchElements`` into lists of at most the config's
``batch_size`` (``INFLUX_BATCH_SIZE``, the one batch setting: the sink sends
at most that many lines per request, so a longer list would only be cut up
again), and one :class:`~.sink.InfluxSink` per DoFn instance writes each
list. The DoFn opens the sink in ``setup``, on the worker, where the config's
secret references are read.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics

from .config import InfluxConfig
from .sink import InfluxSink


class _WriteInfluxFn(beam.DoFn):
    def __init__(self, config: InfluxConfig) -> None:
        self.config = config
        self.sink: InfluxSink | None = None
        self.written = Metrics.counter("influx", "sent")
        self.rejected = Metrics.counter("influx", "dropped")

    def setup(self) -> None:
        # On the worker: the sink reads the config's secret references (token_secret,
        # password_secret) here, so only the references were pickled into the graph.
        self.sink = InfluxSink(self.config)

    def process(self, batch: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        assert self.sink is not None
        result = self.sink.write_points(batch)
        self.written.inc(result.sent)
        for point, reason, detail in result.rejected:
            self.rejected.inc()
            yield {"source": "influx", "reason": reason, "detail": detail, "record": point}

    def teardown(self) -> None:
        if self.sink is not None:
            self.sink.close()


class WriteToInflux(beam.PTransform):
    """Points → InfluxDB in batches of up to ``config.batch_size``; emits dead letters for refused points."""

    def __init__(self, config: InfluxConfig) -> None:
        super().__init__()
        self.config = config

    def expand(self, points: beam.PCollection) -> beam.PCollection:
        size = self.config.batch_size
        return (
            points
            | "Batch" >> beam.BatchElements(min_batch_size=min(500, size), max_batch_size=size)
            | "Write" >> beam.ParDo(_WriteInfluxFn(self.config))
        )
