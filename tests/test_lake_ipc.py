"""Arrow tables between Beam stages carry only their own rows (issue 16: a one-row slice was 400 KB).

The columnar engine's split of decoded tables by event hour (which feeds the
dedupe, the rollups and the raw archive) sends parts of big tables as IPC
streams (``lake.storage.table_to_ipc``).
A slice that starts at a null list (a heartbeat before a usage record) used
to carry the whole child array of ``quantities``.
"""

from __future__ import annotations

import pyarrow as pa

from fleetpulse.pipeline.lake.storage import compacted, table_from_ipc, table_to_ipc
from fleetpulse.pipeline.transforms.columnar import group_keys, split_table

QUANTITY = pa.struct([("name", pa.string()), ("value", pa.float64()), ("unit", pa.string())])
ROWS = 50_000
HOUR = 3_600_000


def records() -> pa.Table:
    """One record a minute: in even hours every third is a usage record with three quantities, odd hours
    hold heartbeats only (no quantities: null lists), as a quiet device's hours do."""
    usage = [{"name": "runtime", "value": 1.0, "unit": "s"}] * 3
    quantities = [usage if i % 3 == 1 and (i // 60) % 2 == 0 else None for i in range(ROWS)]
    return pa.table({"ts_ms": pa.array([1_767_225_600_000 + i * 60_000 for i in range(ROWS)], pa.int64()),
                     "quantities": pa.array(quantities, pa.list_(QUANTITY))})


def test_a_slice_is_serialised_with_its_rows_only() -> None:
    table = records()
    whole = len(table_to_ipc(table))
    for start in (60, 61, 60 * 101):  # in hours of heartbeats only
        part = table.slice(start, 1)
        encoded = table_to_ipc(part)
        assert table_from_ipc(encoded).equals(part)
        assert len(encoded) < whole / 100, f"a one-row slice took {len(encoded)} of the table's {whole} bytes"


def test_the_hour_split_shuffles_about_the_table_not_a_copy_per_hour() -> None:
    table = records().append_column("device_id", pa.array(["d1"] * ROWS))
    parts = [table_to_ipc(part) for _, part in split_table(table, group_keys(table, 1))]
    assert len(parts) == ROWS // 60 + (ROWS % 60 > 0)  # one per event hour
    assert sum(table_from_ipc(p).num_rows for p in parts) == ROWS
    assert sum(len(p) for p in parts) < 3 * len(table_to_ipc(table))


def test_a_table_that_is_not_a_slice_is_not_copied() -> None:
    table = records()
    assert compacted(table) is table
