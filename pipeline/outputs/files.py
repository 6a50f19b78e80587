"""The job's sinks as composites: Parquet folders, JSON-lines files, InfluxDB.

All go through Beam's file systems or a DoFn with a setup/teardown lifecycle,
so they run the same on the DirectRunner and on Dataflow.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import apache_beam as beam
import pyarrow as pa
from apache_beam.metrics import Metrics

from fleetpulse.pipeline.sinks.influx import InfluxConfig, InfluxSink


class WriteParquet(beam.PTransform):
    """Rows (dicts matching ``schema``) → ``<folder>/part-SSSSS-of-NNNNN.parquet``."""

    def __init__(self, folder: str, schema: pa.Schema) -> None:
        super().__init__()
        self.folder, self.schema = folder.rstrip("/"), schema

    def expand(self, rows: beam.PCollection) -> beam.pvalue.PDone:
        return rows | "WriteToParquet" >> beam.io.WriteToParquet(
            f"{self.folder}/part", self.schema, file_name_suffix=".parquet", codec="zstd"
        )


class WriteJsonLines(beam.PTransform):
    """Strings → exactly the file ``path`` (one line each; an empty file when none)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def expand(self, lines: beam.PCollection) -> beam.pvalue.PDone:
        return lines | "WriteToText" >> beam.io.WriteToText(
            self.path, shard_name_template="", num_shards=1
        )


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
    """Points → InfluxDB in batches of up to ``batch_size``; emits dead letters for refused points."""

    def __init__(self, config: InfluxConfig, batch_size: int = 5000) -> None:
        super().__init__()
        self.config, self.batch_size = config, batch_size

    def expand(self, points: beam.PCollection) -> beam.PCollection:
        return (
            points
            | "Batch" >> beam.BatchElements(min_batch_size=min(500, self.batch_size), max_batch_size=self.batch_size)
            | "Write" >> beam.ParDo(_WriteInfluxFn(self.config))
        )
