"""How the lake's files are committed and how tables cross a shuffle: one place for both.

Every file the lake holds appears whole or not at all: :func:`commit_bytes`
writes a hidden temporary name in the same folder and renames it into place.
Locally that is fsync, ``os.replace`` and an fsync of the folder (the file
survives a power cut once the rename is done); on a Beam file system
(``gs://…``) it is ``FileSystems.create`` then ``rename`` (copy + delete on an
object store: the copy appears whole). Readers match ``part-*`` and never see
a temporary. Used by the lander (landing files), the batch archive and the
streaming job's sinks.

Arrow tables cross a Beam shuffle as LZ4-compressed IPC streams
(:func:`table_to_ipc`): a third of the bytes, and the stream of a slice holds
only the slice's rows (a pickled slice would carry its parent's buffers).

Beam is imported only for remote paths, so the lander starts without it.
"""

from __future__ import annotations

import os
import uuid
import zlib
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

#: IPC streams of tables between stages, LZ4: a third of the bytes; with worker processes
#: they cross gRPC twice per shuffle, which costs more than compressing them
_IPC_OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")


def is_remote(path: str | Path) -> bool:
    """True for a Beam file system URL (``gs://…``), False for a local path."""
    return "://" in str(path)


def join(root: str | Path, *parts: str) -> str:
    """``root/part/…`` as a string, for a local folder or an object-store URL.

    (``Path`` would fold ``gs://b`` into ``gs:/b``.)
    """
    root = str(root)
    if is_remote(root):
        from apache_beam.io.filesystems import FileSystems

        return FileSystems.join(root.rstrip("/"), *parts)
    return os.path.join(root, *parts)


def fsync_dir(path: Path) -> None:
    """Make a rename inside ``path`` durable (a file's fsync does not cover its directory entry)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit_bytes(final: str, data: bytes) -> None:
    """Make ``data`` appear at ``final`` whole or not at all, replacing what is there.

    Written first to ``.<name>.<uuid>.tmp`` in the same folder (a unique name,
    so a zombie attempt of the same bundle cannot rename another attempt's
    half-written object); see the module docstring for the commit itself.
    """
    if not is_remote(final):
        folder, name = os.path.split(final)
        os.makedirs(folder or ".", exist_ok=True)
        tmp = os.path.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
        fsync_dir(Path(folder or "."))
        return
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    folder, name = FileSystems.split(final)
    tmp = FileSystems.join(folder, f".{name}.{uuid.uuid4().hex}.tmp")
    try:
        with FileSystems.create(tmp, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
            handle.write(data)
        FileSystems.rename([tmp], [final])
    except Exception:
        # An upload that failed half-way may still have been closed into an object.
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])
        raise


def parquet_bytes(table: pa.Table, compression: str = "zstd") -> bytes:
    """``table`` as the bytes of a Parquet file."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression=compression)
    return bytes(sink.getvalue().to_pybytes())


def compacted(table: pa.Table) -> pa.Table:
    """``table`` with arrays that hold only its own rows: a slice is copied out of its parent.

    Arrow's IPC writer truncates a sliced array's buffers, but not the child
    arrays of a list column whose slice starts at a null list: a one-row
    slice of a 50,000-record table then carried the whole ``quantities``
    struct array (hundreds of KB; a landing file split into its event hours
    became 100× its size in shuffled bytes). ``take`` copies just the rows.
    """
    if not any(chunk.offset for column in table.columns for chunk in column.chunks):
        return table
    return table.take(pa.array(range(table.num_rows), type=pa.int64()))


def device_shard(device_id: str, shards: int) -> int:
    """A device's shard among ``shards``, the same in every process (CRC-32; ``hash()`` is salted)."""
    return zlib.crc32(device_id.encode("utf-8")) % shards


def table_to_ipc(table: pa.Table) -> bytes:
    """``table`` as an Arrow IPC stream, LZ4-compressed (of a slice, only its rows: :func:`compacted`)."""
    sink = pa.BufferOutputStream()
    table = compacted(table)
    with pa.ipc.new_stream(sink, table.schema, options=_IPC_OPTIONS) as writer:
        writer.write_table(table)
    return bytes(sink.getvalue().to_pybytes())


def table_from_ipc(encoded: bytes) -> pa.Table:
    """The table of :func:`table_to_ipc`."""
    return pa.ipc.open_stream(encoded).read_all()
