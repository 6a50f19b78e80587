"""Whole-file sinks of the batch job: Parquet folders and JSON-lines files.

Both go through Beam's file systems, so they run the same on the DirectRunner
and on Dataflow. The streaming job's per-bundle files are in :mod:`.bundles`.
"""

from __future__ import annotations

import apache_beam as beam
import pyarrow as pa


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
