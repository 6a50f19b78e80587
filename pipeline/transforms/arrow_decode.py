"""Landing messages → one Arrow table of lake rows, validated a column at a time.

The columnar twin of :class:`~.decode.LandingDecoder`, for the batch job:
the same rows, dead letters, reasons and details, but JSON is parsed by
Arrow's reader and the rules of the telemetry contract run as Arrow kernels
over a whole chunk of messages instead of one record at a time.

Every message takes the first of three tiers that can decide it; each tier
only ever *accepts* what the shared :class:`~fleetpulse.schemas.Validator`
accepts, with the same normalised values, and hands anything doubtful on:

1. **Arrow's JSON reader** (``pyarrow.json``, C++): the chunk's plain
   payloads — one JSON object on one line, ASCII, no backslash escapes, no
   ``null`` (see :meth:`ArrowDecoder._plain_json`; gzip inflated first when
   the Validator accepts gzip) — are read in one go against an explicit
   schema. Arrow refuses everything Python's ``json`` refuses and more (a
   float where an int belongs, a bool for a number, a duplicate key); a block
   it refuses is split until the refused message is found. Envelope, topic
   and every record are then checked column-wise; a message with any doubt
   goes to tier 2 whole.
2. **Python's JSON, checked by column**: the Validator parses and checks the
   envelope (size, gzip, UTF-8, JSON, header, record count) through
   :class:`_EnvelopeOnly`, which hands back the records unvalidated; the
   records are split by ``kind``, every contract field becomes one Python
   list whose element types are checked as a set, then an Arrow array that
   the same column checks as tier 1 run on. A record that fails any check
   goes to tier 3; a chunk whose lists cannot become Arrow arrays (an integer
   beyond int64, a lone surrogate) is split and retried per message, and a
   message that still fails is decoded by ``LandingDecoder``.
3. **Exactly**: ``Validator.record`` decides the record and gives its dead
   letter with the reason and detail.

Rows the Validator accepts but the lake cannot store (an integer beyond int64,
a string that is not valid Unicode) are dead letters here (``out_of_range`` /
``not_utf8``): the per-element path would pass them on and the raw archive
would then fail to write them.

No Beam here (pyarrow, numpy and the standard library), so it can be tested
and benchmarked on its own; :mod:`.columnar` wraps it in a DoFn.
"""

from __future__ import annotations

import io
import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import chain
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from fleetpulse.pipeline.lake.schema import ARROW_TYPES, QUANTITY, lake_schema
from fleetpulse.schemas import Contract, FieldSpec, InvalidTelemetry, Rejection, Validator
from fleetpulse.schemas import validate as _validate
from fleetpulse.schemas.validate import INT64_MAX, INT64_MIN, nesting_exceeds

from .decode import TOPIC, Dead, LandingDecoder
from .rows import lake_row

#: What a list of values can hold when it is converted without a doubt (bool is not int here).
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "identifier": (str,),
    "string": (str,),
    "enum": (str,),
    "int": (int,),
    "quantities": (list,),
}
_NONE = type(None)
#: gzip: the Validator's magic, when it accepts gzip batches (see _plain_json)
_GZIP_MAGIC: bytes = getattr(_validate, "GZIP_MAGIC", b"\x1f\x8b")
_GZIP_ACCEPTED = hasattr(_validate, "GZIP_MAGIC")
#: pyarrow.json block: larger than any payload the contract allows
_JSON_BLOCK_BYTES = 1 << 22
#: Conversions that mean "these values do not fit an Arrow array": retry smaller, then exactly.
_CONVERSION_ERRORS = (TypeError, ValueError, OverflowError)


class _EnvelopeOnly(Validator):
    """The shared Validator's envelope checks, with the records handed back unvalidated.

    ``Validator.envelope`` parses the payload (gzip, size, UTF-8, JSON) and
    checks the header, then validates the records through ``self.records``;
    overriding that one step reuses every envelope rule as it is, including
    later changes to it, while the records are checked column-wise.
    """

    def records(
        self, items: list[Any], *, now_ms: int | None = None, device_id: str | None = None
    ) -> tuple[list[dict[str, Any]], list[Rejection]]:
        return list(items), []


@dataclass
class Decoded:
    """What one chunk of landing messages decoded to."""

    table: pa.Table  # lake rows (lake schema)
    dead: list[Dead] = field(default_factory=list)
    messages: int = 0
    plain_messages: int = 0  # parsed by Arrow's JSON reader, every record accepted
    fast_records: int = 0  # accepted by the column checks
    exact_records: int = 0  # records that went through Validator.record (accepted or not)
    exact_messages: int = 0  # messages decoded whole by LandingDecoder


#: A row the Validator decided, with where it came from: (row, topic, payload, index in the message)
_Exact = tuple[dict[str, Any], str | None, bytes | None, int | None]


@dataclass
class _Plain:
    topic: str
    payload: bytes
    received_ms: int
    text: bytes  # the JSON text (inflated when the payload was gzip)


@dataclass
class _Message:
    topic: str
    payload: bytes
    received_ms: int
    header: dict[str, Any]
    items: list[Any]


def _array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values


def _to_numpy(mask: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A boolean Arrow result as a numpy bool array, null counted as False."""
    if mask.null_count:
        mask = pc.fill_null(mask, False)
    return np.asarray(_array(mask).to_numpy(zero_copy_only=False), dtype=bool)


def _json_schema(contract: Contract) -> pa.Schema:
    """The Arrow schema of a batch envelope for ``pyarrow.json`` (every field nullable)."""
    loose_quantity = pa.struct([pa.field(f.name, f.type) for f in QUANTITY])
    types = {**ARROW_TYPES, "quantities": pa.list_(loose_quantity)}
    record_fields = [
        pa.field(spec.name, types[spec.type])
        for spec in (*contract.common, *contract.body_fields)
    ]
    envelope = [
        pa.field(spec.name, pa.list_(pa.struct(record_fields)) if spec.name == "records" else types[spec.type])
        for spec in contract.envelope
    ]
    return pa.schema(envelope)


def _topic_parts(pattern: str) -> list[tuple[str, bool]]:
    """A topic pattern as (text, is_field) parts: ``a/{x}/b`` → [("a/", False), ("x", True), ("/b", False)]."""
    pieces = re.split(r"\{(\w+)\}", pattern)
    return [(piece, i % 2 == 1) for i, piece in enumerate(pieces) if piece]


def _inflate(payload: bytes, limit: int) -> bytes | None:
    """A gzip payload inflated as the Validator inflates it, or None when it would refuse it."""
    inflater = zlib.decompressobj(wbits=31)  # 31: gzip header and trailer
    try:
        out = inflater.decompress(payload, limit + 1)
    except zlib.error:
        return None
    if len(out) > limit or not inflater.eof or inflater.unused_data:
        return None
    return out


def _as_quantity_list(lists: pa.Array) -> pa.Array:
    """A list of loosely typed quantity structs (as read from JSON) as list<QUANTITY>."""
    lengths = np.asarray(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    flat = pc.list_flatten(lists)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    mask = _to_numpy(pc.is_null(lists))
    return _quantity_list(offsets, flat.field("name"), flat.field("value"), flat.field("unit"), mask)


def _matches(array: pa.Array, pattern: str) -> pa.Array:
    """``match_substring_regex`` run once per distinct value (ids and versions repeat a lot)."""
    encoded = pc.dictionary_encode(_array(array))
    return pc.match_substring_regex(encoded.dictionary, pattern).take(encoded.indices)


def _typed(values: list[Any], allowed: tuple[type, ...]) -> tuple[list[Any], np.ndarray | None]:
    """``values`` with every element of another type replaced by None, and where that happened.

    ``None`` from the second item means all elements were of an allowed type
    (the common case, decided by one C-speed pass).
    """
    if set(map(type, values)) <= set(allowed):
        return values, None
    bad = np.fromiter((type(v) not in allowed for v in values), dtype=bool, count=len(values))
    return [None if b else v for v, b in zip(values, bad, strict=True)], bad


class ArrowDecoder:
    """Decodes chunks of landing messages into lake tables (see the module docstring)."""

    def __init__(self, contract: Contract | None = None) -> None:
        self.landing = LandingDecoder(contract)
        self.contract = self.landing.contract
        self.validator = self.landing.validator
        self.columns = self.landing.columns
        self.schema = lake_schema(self.contract.version)
        self._envelopes = _EnvelopeOnly(self.contract)
        self._stamps: tuple[str, ...] = tuple(self.contract.lake["stamp_fields"])
        self._common = tuple(spec for spec in self.contract.common if spec.name not in ("v", "kind"))
        limits = self.contract.limits
        self._limits = limits
        self._kind_values = pa.array(sorted(self.contract.kinds), pa.string())
        self._units = pa.array(sorted(self.contract.units), pa.string())
        self._identifier_re = limits.identifier_pattern
        self._firmware_re = limits.firmware_pattern
        self._json_schema = _json_schema(self.contract)
        self._topic_parts = _topic_parts(self.contract.topics[TOPIC]["pattern"])

    # --------------------------------------------------- plain JSON, in C++
    def _plain_json(self, payload: bytes) -> bytes | None:
        """The JSON text of a payload Arrow's reader may parse, or None (decode it in Python).

        Arrow's JSON reader is stricter than ``json.loads`` (it refuses what
        Python refuses, and more), except for what is excluded here: texts
        that are not one object on one line, non-ASCII bytes (invalid UTF-8, a
        BOM), backslash escapes (keys written with escapes could collide),
        ``null`` (Arrow cannot tell an explicit null from an absent field) and
        nesting past the Validator's bound (Arrow has none, and ignores the
        unknown fields that could hold it). An integer too long for Python's
        ``int`` needs no test: Arrow refuses it in an int field, reads it as
        infinity in a float one and ignores it in an unknown one, as the
        Validator does.
        """
        if len(payload) > self._limits.max_payload_bytes:
            return None
        text: bytes | None = payload
        if payload[:2] == _GZIP_MAGIC:
            text = _inflate(payload, self._limits.max_payload_bytes) if _GZIP_ACCEPTED else None
        if (
            text is None
            or not text.isascii()
            or text[:1] != b"{"
            or text[-1:] != b"}"
            or b"\n" in text
            or b"\r" in text
            or b"\\" in text
            or b"null" in text
            # Arrow's reader has no nesting bound, the Validator has (an unknown field may hide depth).
            or nesting_exceeds(text)
        ):
            return None
        return text

    def _decode_plain(
        self, messages: list[_Plain], parsed: list[tuple[str, bytes, int]], out: Decoded
    ) -> list[pa.Table]:
        """Tables of the messages Arrow parses and every record passes; the rest go to ``parsed``."""
        if not messages:
            return []
        try:
            table = pj.read_json(
                io.BytesIO(b"\n".join(m.text for m in messages)),
                read_options=pj.ReadOptions(use_threads=True, block_size=_JSON_BLOCK_BYTES),
                parse_options=pj.ParseOptions(
                    explicit_schema=self._json_schema, unexpected_field_behavior="ignore"
                ),
            )
            if table.num_rows != len(messages):
                raise ValueError(f"{table.num_rows} JSON objects in {len(messages)} messages")
        except (pa.ArrowException, ValueError):
            # Something Arrow refuses: Python decides, one message at a time if need be.
            if len(messages) == 1:
                m = messages[0]
                parsed.append((m.topic, m.payload, m.received_ms))
                return []
            half = len(messages) // 2
            return self._decode_plain(messages[:half], parsed, out) + self._decode_plain(
                messages[half:], parsed, out
            )
        # One JSON block at a time: combining the blocks first would copy every column.
        tables: list[pa.Table] = []
        oks: list[np.ndarray] = []
        offset = 0
        for batch in table.to_batches():
            block = pa.Table.from_batches([batch])
            block_tables, block_ok = self._plain_records(messages[offset : offset + batch.num_rows], block)
            tables += block_tables
            oks.append(block_ok)
            offset += batch.num_rows
        ok = np.concatenate(oks) if oks else np.ones(0, dtype=bool)
        for m, good in zip(messages, ok.tolist(), strict=True):
            if not good:
                parsed.append((m.topic, m.payload, m.received_ms))
        out.fast_records += sum(t.num_rows for t in tables)
        out.plain_messages += int(ok.sum())
        return tables

    def _plain_records(self, messages: list[_Plain], table: pa.Table) -> tuple[list[pa.Table], np.ndarray]:
        """The lake rows of the messages whose envelope and records all pass; and which did."""
        n_messages = len(messages)
        ok = np.ones(n_messages, dtype=bool)
        # The envelope, as Validator.envelope and the topic check see it.
        ok &= _to_numpy(pc.equal(table["v"], self.contract.version))
        for spec in self.contract.envelope:
            if spec.name != "records":
                ok &= self._check(spec, table[spec.name])
        lists = _array(table["records"])
        ok &= _to_numpy(pc.less_equal(pc.list_value_length(lists), self._limits.max_records_per_message))
        topics = pa.array([m.topic for m in messages], pa.string())
        expected = pc.binary_join_element_wise(
            *(table[part] if is_field else part for part, is_field in self._topic_parts), ""
        )
        ok &= _to_numpy(pc.equal(topics, expected))
        received = np.fromiter((m.received_ms for m in messages), dtype=np.int64, count=n_messages)

        records = pc.list_flatten(lists)
        parent = np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False), dtype=np.int64)
        columns = {f.name: records.field(f.name) for f in records.type}
        if "quantities" in columns:
            columns["quantities"] = _as_quantity_list(columns["quantities"])
        kind = columns["kind"]
        # Every record at once: the common rules, then each kind's fields where the kind owns them.
        valid = _to_numpy(pc.or_kleene(pc.is_null(columns["v"]), pc.equal(columns["v"], self.contract.version)))
        valid &= _to_numpy(pc.is_in(kind, value_set=self._kind_values))
        valid &= self._kind_valid(columns, (), received[parent])
        owners: dict[str, np.ndarray] = {}
        for name, specs in self.contract.kinds.items():
            owned = _to_numpy(pc.equal(kind, name))
            for spec in specs:
                owners[spec.name] = owners[spec.name] | owned if spec.name in owners else owned
                if spec.type == "quantities":
                    checked = self._quantities_valid(columns[spec.name], spec.required)
                else:
                    checked = self._check(spec, columns[spec.name])
                valid &= ~owned | checked
        ok[np.unique(parent[~valid])] = False
        # A field of another kind is dropped by the Validator, so it is null here
        # (rewritten only when some record carries one: gateways rarely send them).
        for name, mine in owners.items():
            column = columns[name]
            if column.null_count == len(column):
                continue
            if (_to_numpy(pc.is_valid(column)) & ~mine).any():
                columns[name] = pc.if_else(pa.array(mine), column, pa.nulls(len(column), column.type))
        at = pa.array(parent)
        stamps = {name: table[name].take(at) for name in self._stamps}
        assembled = self._assemble(stamps, columns, pa.array(received[parent]), len(records))
        kept = ok[parent]
        return [assembled if kept.all() else assembled.filter(pa.array(kept))], ok

    # ------------------------------------------------------------ messages
    def decode(
        self, topics: Sequence[Any], payloads: Sequence[Any], received: Sequence[Any]
    ) -> Decoded:
        """Lake rows and dead letters of the messages ``(topics[i], payloads[i], received[i])``."""
        out = Decoded(table=self.schema.empty_table(), messages=len(topics))
        plain: list[_Plain] = []
        parsed: list[tuple[str, bytes, int]] = []
        exact_rows: list[_Exact] = []
        for topic, payload, received_ms in zip(topics, payloads, received, strict=True):
            if (
                type(topic) is not str
                or type(payload) is not bytes
                or type(received_ms) is not int
                or not INT64_MIN <= received_ms <= INT64_MAX
            ):
                self._decode_exactly(topic, payload, received_ms, exact_rows, out)
                continue
            # Every contract topic is ASCII; another one (a lone surrogate even) is refused in Python.
            text = self._plain_json(payload) if topic.isascii() else None
            if text is None:
                parsed.append((topic, payload, received_ms))
            else:
                plain.append(_Plain(topic, payload, received_ms, text))
        tables = self._decode_plain(plain, parsed, out)
        good: list[_Message] = []
        for topic, payload, received_ms in parsed:
            header, items, rejections = self._envelopes.envelope(payload, now_ms=received_ms)
            if header is None:
                out.dead.extend((r, topic, received_ms, payload) for r in rejections)
                continue
            mismatch = self.landing.topic_mismatch(topic, header)
            if mismatch is not None:
                out.dead.append((mismatch, topic, received_ms, payload))
                continue
            good.append(_Message(topic, payload, received_ms, header, items))
        tables += self._decode_messages(good, exact_rows, out)
        tables.append(self._exact_table(exact_rows, out))
        # Chunks as they come (one per JSON block): combining them would copy every column.
        tables = [t for t in tables if t.num_rows] or [self.schema.empty_table()]
        out.table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
        return out

    def _decode_exactly(
        self, topic: Any, payload: Any, received_ms: Any, rows: list[_Exact], out: Decoded
    ) -> None:
        got, dead = self.landing.decode(
            {"topic": topic, "payload": payload, "received_ms": received_ms}
        )
        out.dead.extend(dead)
        out.exact_messages += 1
        # The Validator keeps records in order, so the valid ones sit at the indices not refused.
        refused = {d[0].index for d in dead if d[0].index is not None}
        indices = (i for i in range(len(got) + len(refused)) if i not in refused)
        raw = payload if isinstance(payload, bytes) else None
        rows.extend((row, topic, raw, i) for row, i in zip(got, indices, strict=False))

    def _decode_messages(
        self, messages: list[_Message], exact_rows: list[_Exact], out: Decoded
    ) -> list[pa.Table]:
        if not messages:
            return []
        try:
            table, failed = self._records(messages)
        except _CONVERSION_ERRORS:
            # Some value does not fit an Arrow array; find the message(s) it is in.
            if len(messages) == 1:
                m = messages[0]
                self._decode_exactly(m.topic, m.payload, m.received_ms, exact_rows, out)
                return []
            half = len(messages) // 2
            return self._decode_messages(messages[:half], exact_rows, out) + self._decode_messages(
                messages[half:], exact_rows, out
            )
        out.fast_records += table.num_rows
        for message, index in failed:
            out.exact_records += 1
            item = message.items[index]
            try:
                record = self.validator.record(item, now_ms=message.received_ms)
            except InvalidTelemetry as exc:
                rejection = Rejection(exc.reason, exc.detail, index, item)
                out.dead.append((rejection, message.topic, message.received_ms, message.payload))
                continue
            row = lake_row(self.columns, message.header, record, message.received_ms)
            exact_rows.append((row, message.topic, message.payload, index))
        return [table]

    def _exact_table(self, rows: list[_Exact], out: Decoded) -> pa.Table:
        """Rows decided by the Validator, as a table; a row the lake cannot store is a dead letter."""
        try:
            return pa.Table.from_pylist([r[0] for r in rows], schema=self.schema)
        except _CONVERSION_ERRORS:
            pass
        kept = []
        for row, topic, payload, index in rows:
            try:
                pa.Table.from_pylist([row], schema=self.schema)
            except UnicodeEncodeError:
                reason, detail = "not_utf8", "a string is not valid Unicode; the lake cannot store it"
            except OverflowError:
                reason, detail = "out_of_range", "an integer does not fit the lake's int64"
            except _CONVERSION_ERRORS as exc:
                reason, detail = "out_of_range", f"the lake cannot store it: {exc}"
            else:
                kept.append(row)
                continue
            record = {k: v for k, v in row.items() if v is not None and k not in self._stamps}
            del record["received_ms"]
            rejection = Rejection(reason, detail, index, record)
            out.dead.append((rejection, topic, row["received_ms"], payload))
        return pa.Table.from_pylist(kept, schema=self.schema)

    # ------------------------------------------------------------- records
    def _records(self, messages: list[_Message]) -> tuple[pa.Table, list[tuple[_Message, int]]]:
        """The records of good envelopes: accepted rows as a table, the rest as (message, index)."""
        counts = np.fromiter((len(m.items) for m in messages), dtype=np.int64, count=len(messages))
        items: list[Any] = list(chain.from_iterable(m.items for m in messages))
        n = len(items)
        msg_of = np.repeat(np.arange(len(messages)), counts)
        received = np.fromiter((m.received_ms for m in messages), dtype=np.int64, count=len(messages))
        ok = np.ones(n, dtype=bool)

        records, bad = _typed(items, (dict,))
        if bad is not None:
            ok &= ~bad
            records = [r if r is not None else {} for r in records]
        # The version: absent means 1; present, it must be the int 1 (True == 1 and 1.0 == 1 are not).
        version = self.contract.version
        versions = [r.get("v", version) for r in records]
        if not all(type(v) is int and v == version for v in versions):
            ok &= np.fromiter((type(v) is int and v == version for v in versions), dtype=bool, count=n)
        kinds, _ = _typed([r.get("kind") for r in records], (str,))
        kind_array = pa.array(kinds, pa.string())
        headers = {
            name: pa.array([m.header[name] for m in messages], pa.string()) for name in self._stamps
        }

        tables = []
        of_a_kind = np.zeros(n, dtype=bool)
        for kind, specs in self.contract.kinds.items():
            rows = np.flatnonzero(_to_numpy(pc.equal(kind_array, kind)) & ok)
            if len(rows) == 0:
                continue
            of_a_kind[rows] = True
            subset = [records[i] for i in rows.tolist()]
            now = received[msg_of[rows]]
            columns, valid = self._kind_columns(subset, specs, now)
            columns["kind"] = pa.array([kind] * len(rows), pa.string())
            ok[rows] = valid
            where = pa.array(msg_of[rows])
            stamps = {name: values.take(where) for name, values in headers.items()}
            table = self._assemble(stamps, columns, pa.array(now, pa.int64()), len(rows))
            tables.append(table.filter(pa.array(valid)))
        # Not an object, another version, or no known kind: the Validator says which.
        ok &= of_a_kind
        failed_at = np.flatnonzero(~ok)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        failed = [
            (messages[m], int(i - starts[m]))
            for i, m in zip(failed_at.tolist(), msg_of[failed_at].tolist(), strict=True)
        ]
        table = pa.concat_tables(tables) if tables else self.schema.empty_table()
        return table, failed

    def _assemble(
        self, stamps: dict[str, pa.Array], columns: dict[str, pa.Array], received: pa.Array, n: int
    ) -> pa.Table:
        arrays = []
        for f in self.schema:
            if f.name in stamps:
                arrays.append(stamps[f.name])
            elif f.name == "received_ms":
                arrays.append(received)
            elif f.name in columns:
                arrays.append(columns[f.name])
            else:  # a field of another kind
                arrays.append(pa.nulls(n, f.type))
        return pa.Table.from_arrays(arrays, schema=self.schema)

    def _kind_columns(
        self, records: list[dict[str, Any]], specs: Iterable[FieldSpec], now_ms: np.ndarray
    ) -> tuple[dict[str, pa.Array], np.ndarray]:
        """The columns of records of one kind, and which records pass every check."""
        n = len(records)
        valid = np.ones(n, dtype=bool)
        columns: dict[str, pa.Array] = {}
        for spec in (*self._common, *specs):
            name = spec.name
            values = [r.get(name) for r in records]
            values, bad = _typed(values, _PY_TYPES[spec.type] + (() if spec.required else (_NONE,)))
            if bad is not None:
                valid &= ~bad
            nones = 0 if spec.required else values.count(None)
            if nones:
                # An optional field given as JSON null is refused (wrong_type), an absent one
                # is fine; both are None here, so count the keys when any None is present.
                present = sum(name in r for r in records)
                if present != n - nones:
                    valid &= np.fromiter(
                        (v is not None or spec.name not in r for v, r in zip(values, records, strict=True)),
                        dtype=bool, count=n,
                    )
            if spec.type == "quantities":
                array = self._quantities(values)
            else:
                array = pa.array(values, ARROW_TYPES[spec.type])
            columns[spec.name] = array
        valid &= self._kind_valid(columns, specs, now_ms)
        return columns, valid

    def _kind_valid(
        self, columns: dict[str, pa.Array], specs: Iterable[FieldSpec], now_ms: np.ndarray
    ) -> np.ndarray:
        """Which records of one kind, given as columns, pass every rule of Validator.record."""
        valid = np.ones(len(now_ms), dtype=bool)
        for spec in (*self._common, *specs):
            array = columns[spec.name]
            if spec.type == "quantities":
                valid &= self._quantities_valid(array, spec.required)
            else:
                valid &= self._check(spec, array)
        # The record rules beyond single fields.
        limits = self._limits
        valid &= _to_numpy(pc.less_equal(columns["seq"], limits.max_seq))
        valid &= _to_numpy(pc.less_equal(columns["boot"], limits.max_boot))
        valid &= _to_numpy(_matches(columns["fw"], self._firmware_re))
        ts = columns["ts_ms"]
        valid &= _to_numpy(pc.greater_equal(ts, limits.min_event_time_ms))
        valid &= _to_numpy(pc.less_equal(ts, pa.array(now_ms + limits.max_future_skew_ms)))
        return valid

    def _check(self, spec: FieldSpec, array: pa.Array) -> np.ndarray:
        """Where ``array`` satisfies ``spec`` (null: fine when optional, refused when required)."""
        limits = self._limits
        if spec.type == "identifier":
            ok = pc.and_(
                pc.less_equal(pc.utf8_length(array), limits.identifier_max_length),
                _matches(array, self._identifier_re),
            )
        elif spec.type == "string":
            ok = pc.less_equal(pc.utf8_length(array), limits.max_string_length)
        elif spec.type == "enum":
            ok = pc.is_in(array, value_set=pa.array(spec.values, pa.string()))
        elif spec.type == "int":
            ok = pc.is_valid(array)
            if spec.min is not None:
                ok = pc.and_(ok, pc.greater_equal(array, spec.min))
            if spec.max is not None:
                ok = pc.and_(ok, pc.less_equal(array, spec.max))
        else:  # pragma: no cover - every contract type is handled above
            raise AssertionError(f"contract field type {spec.type!r} has no column check")
        if not spec.required:
            ok = pc.or_kleene(pc.is_null(array), ok)
        return _to_numpy(ok)

    def _quantities(self, lists: list[Any]) -> pa.Array:
        """A list<quantity> array of ``lists`` (None stays null); a value of the wrong type becomes
        an empty name, which :meth:`_quantities_valid` refuses."""
        n = len(lists)
        lengths = np.fromiter((0 if q is None else len(q) for q in lists), dtype=np.int64, count=n)
        items, bad = _typed(list(chain.from_iterable(q for q in lists if q is not None)), (dict,))
        if bad is not None:
            items = [q if q is not None else {} for q in items]
        names, bad_names = _typed([q.get("name") for q in items], (str,))
        values, bad_values = _typed([q.get("value") for q in items], (int, float))
        units, bad_units = _typed([q.get("unit") for q in items], (str,))
        for b in (bad, bad_values, bad_units):
            if b is not None:
                names = [None if wrong else name for name, wrong in zip(names, b, strict=True)]
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        mask = np.fromiter((q is None for q in lists), dtype=bool, count=n)
        return _quantity_list(
            offsets, pa.array(names, pa.string()), pa.array(values, pa.float64()),
            pa.array(units, pa.string()), mask,
        )

    def _quantities_valid(self, lists: pa.Array, required: bool) -> np.ndarray:
        """Where a list<quantity> array holds what the Validator accepts (null: absent)."""
        limits = self._limits
        lengths = pc.list_value_length(lists)
        ok = _to_numpy(pc.and_(pc.greater_equal(lengths, 1), pc.less_equal(lengths, limits.max_quantities_per_usage)))
        if not required:
            ok |= _to_numpy(pc.is_null(lists))
        flat = pc.list_flatten(lists)
        if len(flat) == 0:
            return ok
        owner = np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False), dtype=np.int64)
        names, values, units = flat.field("name"), flat.field("value"), flat.field("unit")
        item_ok = _to_numpy(pc.and_(
            pc.less_equal(pc.utf8_length(names), limits.identifier_max_length),
            _matches(names, self._identifier_re),
        ))
        item_ok &= _to_numpy(pc.and_(pc.is_finite(values), pc.greater_equal(values, 0.0)))
        item_ok &= _to_numpy(pc.is_in(units, value_set=self._units))
        ok[np.unique(owner[~item_ok])] = False
        return ok


def _quantity_list(
    offsets: np.ndarray, names: pa.Array, values: pa.Array, units: pa.Array, mask: np.ndarray
) -> pa.Array:
    """A list<quantity> array; nulls inside (refused items) are filled so the struct stays
    well-formed: the rows holding them are refused by the checks and never kept."""
    structs = pa.StructArray.from_arrays(
        [pc.fill_null(names, ""), pc.fill_null(values, 0.0), pc.fill_null(units, "")],
        fields=list(QUANTITY),
    )
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), structs, type=pa.list_(QUANTITY), mask=pa.array(mask)
    )
