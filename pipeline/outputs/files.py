"""Whole-file sinks of the batch job: Parquet folders and JSON-lines files.

Both go through Beam's file systems, so they run the same on the DirectRunner
and on Dataflow. The streaming job's per-bundle files are in :mod:`.bundles`.
"""

from __future__ import annotations

from collections.abc import Iterator

import apache_beam as beam
import pyarrow as pa
from apache_beam.transforms.window import GlobalWindows
from apache_beam.utils.windowed_value import WindowedValue

#: rows of a Parquet row group, about (Beam's WriteToParquet buffers 64 MB per bundle)
ROW_GROUP_BYTES = 64 * 1024 * 1024


class WriteParquet(beam.PTransform):
    """Rows (dicts matching ``schema``) → ``<folder>/part-SSSSS-of-NNNNN.parquet``."""

    def __init__(self, folder: str, schema: pa.Schema) -> None:
        super().__init__()
        self.folder, self.schema = folder.rstrip("/"), schema

    def expand(self, rows: beam.PCollection) -> beam.pvalue.PDone:
        return rows | "WriteToParquet" >> beam.io.WriteToParquet(
            f"{self.folder}/part", self.schema, file_name_suffix=".parquet", codec="zstd"
        )


class _ConcatTables(beam.DoFn):
    """Small tables of a bundle → tables of about ``ROW_GROUP_BYTES`` (each becomes one row group)."""

    def __init__(self, schema: pa.Schema, limit: int = ROW_GROUP_BYTES) -> None:
        self._schema, self._limit = schema, limit

    def start_bundle(self) -> None:
        self._tables: list[pa.Table] = []
        self._bytes = 0

    def process(self, table: pa.Table) -> Iterator[pa.Table]:
        if table.num_rows == 0:
            return
        self._tables.append(table.cast(self._schema) if table.schema != self._schema else table)
        self._bytes += table.nbytes
        if self._bytes >= self._limit:
            yield self._take()

    def finish_bundle(self) -> Iterator[WindowedValue]:
        if self._tables:
            yield GlobalWindows.windowed_value_at_end_of_window(self._take())

    def _take(self) -> pa.Table:
        table = pa.concat_tables(self._tables).combine_chunks()
        self._tables, self._bytes = [], 0
        return table


class WriteParquetTables(beam.PTransform):
    """Arrow tables of ``schema`` (bounded, global window) → ``<folder>/part-SSSSS-of-NNNNN.parquet``.

    :class:`WriteParquet` for a step that already holds its rows as tables:
    no row dicts in between. A bundle's tables are concatenated into row
    groups of about 64 MB, as Beam's WriteToParquet buffers rows.
    """

    def __init__(self, folder: str, schema: pa.Schema) -> None:
        super().__init__()
        self.folder, self.schema = folder.rstrip("/"), schema

    def expand(self, tables: beam.PCollection) -> beam.pvalue.PDone:
        return (
            tables
            | "RowGroups" >> beam.ParDo(_ConcatTables(self.schema)).with_output_types(pa.Table)
            | "WriteToParquet" >> beam.io.WriteToParquetBatched(
                f"{self.folder}/part", self.schema, file_name_suffix=".parquet", codec="zstd"
            )
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
