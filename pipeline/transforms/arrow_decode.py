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

**The rules** are the Validator's own table (:attr:`Validator.rules
<fleetpulse.schemas.Validator>`, from :mod:`fleetpulse.schemas.rules`): the
envelope, every record field, each kind's body, the quantities' items and the
checks across fields are checked by :meth:`ArrowDecoder._field_ok`, which
applies each entry as an Arrow kernel (:meth:`ArrowDecoder._vector`, one per
operation of the table). So a rule added or changed in the table reaches this
path and the Validator at once, and a table with an operation this decoder
has no kernel for is refused when it is built. A kernel may refuse more than
the Validator (the record then goes to tier 3), never less.

Rows the Validator accepts but the lake cannot store (an integer beyond int64,
a string that is not valid Unicode) are dead letters here (``out_of_range`` /
``not_utf8``): the per-element path would pass them on and the raw archive
would then fail to write them.

No Beam here (pyarrow, numpy and the standard library), so it can be tested
and benchmarked on its own; :mod:`.columnar` wraps it in a DoFn.

Longer than ~600 lines: the three tiers hand each other the same chunk state
(messages, their parsed records, the partial tables) and read best together;
the interpreter of the rule table (``_field_ok``, ``_vector``, ``_quantities``)
is the part that would move out first, to a module of its own.
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
from fleetpulse.schemas import Contract, InvalidTelemetry, Rejection, Validator
from fleetpulse.schemas.rules import Check, FieldRule
from fleetpulse.schemas.validate import GZIP_MAGIC, INT64_MAX, INT64_MIN, nesting_exceeds

from .decode import TOPIC, Dead, LandingDecoder
from .rows import lake_row

#: What a list of values of a JSON type can hold when it is converted without a doubt (bool is not int).
_PY_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "array": (list,),
    "object": (dict,),
}
#: A quantity's fields as Arrow types (the lake's)
_ITEM_TYPES: dict[str, pa.DataType] = {f.name: f.type for f in QUANTITY}
#: What a refused (null) item field is filled with so a list<QUANTITY> stays well-formed
_FILL: dict[pa.DataType, Any] = {pa.string(): "", pa.float64(): 0.0, pa.int64(): 0}
_NONE = type(None)
#: pyarrow.json block: larger than any payload the contract allows
_JSON_BLOCK_BYTES = 1 << 22
#: The operations of the rule table (schemas/rules.py OPS) that ArrowDecoder._vector applies.
_COLUMN_OPS = frozenset(
    {"type", "utf8", "one_of", "chars_at_most", "pattern", "between", "items_between", "finite", "equals",
     "not_after"}
)
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


def _as_quantity_list(lists: pa.Array | pa.ChunkedArray) -> pa.Array:
    """A list of loosely typed quantity structs (as read from JSON, or built by
    :meth:`ArrowDecoder._quantities`) as list<QUANTITY>."""
    lists = _array(lists)
    lengths = np.asarray(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False), dtype=np.int64)
    flat = pc.list_flatten(lists)
    offsets = np.concatenate(([0], np.cumsum(lengths)))
    mask = _to_numpy(pc.is_null(lists))
    return _quantity_list(offsets, [flat.field(f.name) for f in QUANTITY], mask)


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
        self._limits = self.contract.limits
        # The Validator's own rule table: every column check below applies one of its entries.
        self.rules = self.validator.rules
        self._value_sets: dict[tuple[str, ...], pa.Array] = {}
        for _, _, check in self.rules.checks():
            if check.op not in _COLUMN_OPS:
                raise ValueError(f"check of {check.field}: the ArrowDecoder has no {check.op!r} operation")
            if check.op == "one_of":
                self._value_sets[check.arg] = pa.array(check.arg, pa.string())
        self._lists = tuple(sorted({rule.key for _, rule in self.rules.fields() if rule.items is not None}))
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
        if payload[:2] == GZIP_MAGIC:
            text = _inflate(payload, self._limits.max_payload_bytes)
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
        for rule in self.rules.envelope:
            ok &= self._field_ok(rule, table[rule.key])
        lists = _array(table["records"])
        topics = pa.array([m.topic for m in messages], pa.string())
        expected = pc.binary_join_element_wise(
            *(table[part] if is_field else part for part, is_field in self._topic_parts), ""
        )
        ok &= _to_numpy(pc.equal(topics, expected))
        received = np.fromiter((m.received_ms for m in messages), dtype=np.int64, count=n_messages)

        records = pc.list_flatten(lists)
        parent = np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False), dtype=np.int64)
        columns = {f.name: records.field(f.name) for f in records.type}
        kind = columns[self.rules.discriminator]
        # Every record at once: the common rules, then each kind's fields where the kind owns them.
        valid = self._common_ok(columns, received[parent])
        owners: dict[str, np.ndarray] = {}
        for name, rules in self.rules.kinds.items():
            owned = _to_numpy(pc.equal(kind, name))
            for rule in rules:
                owners[rule.key] = owners[rule.key] | owned if rule.key in owners else owned
                valid &= ~owned | self._field_ok(rule, columns[rule.key])
        ok[np.unique(parent[~valid])] = False
        for name in self._lists:  # read loosely typed from JSON; checked above
            columns[name] = _as_quantity_list(columns[name])
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
        kinds, _ = _typed([r.get(self.rules.discriminator) for r in records], (str,))
        kind_array = pa.array(kinds, pa.string())
        headers = {
            name: pa.array([m.header[name] for m in messages], pa.string()) for name in self._stamps
        }

        tables = []
        of_a_kind = np.zeros(n, dtype=bool)
        for kind, rules in self.rules.kinds.items():
            rows = np.flatnonzero(_to_numpy(pc.equal(kind_array, kind)) & ok)
            if len(rows) == 0:
                continue
            of_a_kind[rows] = True
            subset = [records[i] for i in rows.tolist()]
            now = received[msg_of[rows]]
            columns, valid = self._kind_columns(subset, kind, rules, now)
            ok[rows] = valid
            where = pa.array(msg_of[rows])
            stamps = {name: values.take(where) for name, values in headers.items()}
            table = self._assemble(stamps, columns, pa.array(now, pa.int64()), len(rows))
            tables.append(table.filter(pa.array(valid)))
        # Not an object, or no known kind: the Validator says which.
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
        self, records: list[dict[str, Any]], kind: str, rules: Iterable[FieldRule], now_ms: np.ndarray
    ) -> tuple[dict[str, pa.Array], np.ndarray]:
        """The columns of records of one ``kind``, and which records pass every rule of the table."""
        valid = np.ones(len(records), dtype=bool)
        # The records were picked by their kind: its column is known (and still checked below).
        columns: dict[str, pa.Array] = {self.rules.discriminator: pa.array([kind] * len(records), pa.string())}
        for rule in (*self.rules.record, *rules):
            if rule.key in columns:
                continue
            columns[rule.key], refused = self._column(rule, records)
            if refused is not None:
                valid &= ~refused
        for rule in rules:
            if rule.items is None:  # an array's items were checked as it was built
                valid &= self._field_ok(rule, columns[rule.key])
        valid &= self._common_ok(columns, now_ms)
        return columns, valid

    def _column(self, rule: FieldRule, records: list[dict[str, Any]]) -> tuple[pa.Array, np.ndarray | None]:
        """The column of one field, and the records it refuses on the way (None: none): a value
        of another type, an optional field given as null, an array whose items break the rules."""
        n, name = len(records), rule.key
        values, refused = _typed([r.get(name) for r in records],
                                 _PY_TYPES[rule.json_type] + (() if rule.required else (_NONE,)))
        nones = 0 if rule.required else values.count(None)
        if nones:
            # An optional field given as JSON null is refused (wrong_type), an absent one
            # is fine; both are None here, so count the keys when any None is present.
            present = sum(name in r for r in records)
            if present != n - nones:
                null = np.fromiter(
                    (v is None and name in r for v, r in zip(values, records, strict=True)), dtype=bool, count=n
                )
                refused = null if refused is None else refused | null
        if rule.items is None:
            return pa.array(values, ARROW_TYPES[rule.type]), refused
        lists, item_bad = self._quantities(values, rule)
        broken = ~self._field_ok(rule, lists, item_bad)
        return _as_quantity_list(lists), broken if refused is None else refused | broken

    def _common_ok(self, columns: dict[str, pa.Array], now_ms: np.ndarray) -> np.ndarray:
        """Which records, given as columns, pass the table's common field rules and the checks across them."""
        valid = np.ones(len(now_ms), dtype=bool)
        for rule in self.rules.record:
            valid &= self._field_ok(rule, columns[rule.key])
        for check in self.rules.across:
            passed = self._vector(check, columns[check.field], now_ms)
            if passed is not None:
                valid &= _to_numpy(passed)
        return valid

    def _field_ok(
        self, rule: FieldRule, array: pa.Array | pa.ChunkedArray, item_bad: np.ndarray | None = None
    ) -> np.ndarray:
        """Where ``array`` passes every check of ``rule`` (null: fine when optional, refused when
        required). An array of items: ``item_bad`` marks items of another type than the rule's."""
        ok: pa.Array | None = None
        for check in rule.checks:
            passed = self._vector(check, array)
            if passed is not None:
                ok = passed if ok is None else pc.and_(ok, passed)
        if ok is None:
            ok = pc.is_valid(array)
        if not rule.required:
            ok = pc.or_kleene(pc.is_null(array), ok)
        valid = _to_numpy(ok)
        if rule.items is not None:
            lists = _array(array)
            flat = pc.list_flatten(lists)
            if len(flat):
                item_ok = np.ones(len(flat), dtype=bool) if item_bad is None else ~item_bad
                for check in rule.items.checks:
                    passed = self._vector(check, flat)
                    if passed is not None:
                        item_ok &= _to_numpy(passed)
                for item_field in rule.items.fields:
                    item_ok &= self._field_ok(item_field, flat.field(item_field.key))
                owner = np.asarray(pc.list_parent_indices(lists).to_numpy(zero_copy_only=False), dtype=np.int64)
                valid[np.unique(owner[~item_ok])] = False
        return valid

    def _vector(
        self, check: Check, array: pa.Array | pa.ChunkedArray, now_ms: np.ndarray | None = None
    ) -> pa.Array | pa.ChunkedArray | None:
        """Where ``array`` passes ``check``, as an Arrow boolean array (null where it is null); None
        when the array's Arrow type already guarantees it. Never more lenient than the Validator.
        """
        op, arg = check.op, check.arg
        if op == "type":
            # Columns are built only of values of their JSON type (_typed; pyarrow.json's explicit schema).
            return None
        if op == "utf8":
            # An Arrow string is valid UTF-8: a string that is not fails the conversion, and the
            # message goes to the Validator (see _CONVERSION_ERRORS).
            return None
        if op == "one_of":
            return pc.is_in(array, value_set=self._value_sets[arg])
        if op == "chars_at_most":
            return pc.less_equal(pc.utf8_length(array), arg)
        if op == "pattern":  # anchored: the Validator's re.fullmatch, in RE2
            return _matches(array, f"^(?:{arg})$")
        if op in ("between", "items_between"):
            values = array if op == "between" else pc.list_value_length(array)
            low, high = arg
            if pa.types.is_int64(values.type):  # the bounds an int64 column holds anyway
                low = None if low is not None and low <= INT64_MIN else low
                high = None if high is not None and high >= INT64_MAX else high
            bounds = [
                *(() if low is None else (pc.greater_equal(values, low),)),
                *(() if high is None else (pc.less_equal(values, high),)),
            ]
            if not bounds:
                return None
            return bounds[0] if len(bounds) == 1 else pc.and_(*bounds)
        if op == "finite":
            return pc.is_finite(array)
        if op == "equals":
            return pc.equal(array, arg)
        if op == "not_after":
            if now_ms is None:  # pragma: no cover - the table allows not_after across fields only
                raise AssertionError(f"{check.field}: not_after without the receiver's clock")
            return pc.less_equal(array, pa.array(now_ms + arg))
        raise AssertionError(f"check of {check.field}: no column operation {op!r}")  # refused in __init__

    def _quantities(self, lists: list[Any], rule: FieldRule) -> tuple[pa.Array, np.ndarray | None]:
        """``lists`` (None stays null) as a loosely typed list<struct> array, each item field null
        where absent or of another type; and which items are not objects (None: all are)."""
        assert rule.items is not None
        n = len(lists)
        lengths = np.fromiter((0 if q is None else len(q) for q in lists), dtype=np.int64, count=n)
        items, bad = _typed(list(chain.from_iterable(q for q in lists if q is not None)), (dict,))
        if bad is not None:
            items = [q if q is not None else {} for q in items]
        children = []
        for item_field in rule.items.fields:
            values, _ = _typed([q.get(item_field.key) for q in items], _PY_TYPES[item_field.json_type])
            children.append(pa.array(values, _ITEM_TYPES[item_field.key]))
        offsets = np.concatenate(([0], np.cumsum(lengths)))
        structs = pa.StructArray.from_arrays(children, names=[f.key for f in rule.items.fields])
        mask = np.fromiter((q is None for q in lists), dtype=bool, count=n)
        loose = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), structs, mask=pa.array(mask))
        return loose, bad


def _quantity_list(offsets: np.ndarray, children: list[pa.Array], mask: np.ndarray) -> pa.Array:
    """A list<QUANTITY> array of ``children`` (one array per QUANTITY field, in its order); nulls
    inside (refused items) are filled so the struct stays well-formed: the rows holding them are
    refused by the checks and never kept."""
    structs = pa.StructArray.from_arrays(
        [pc.fill_null(child, _FILL[f.type]) for child, f in zip(children, QUANTITY, strict=True)],
        fields=list(QUANTITY),
    )
    return pa.ListArray.from_arrays(
        pa.array(offsets.astype(np.int32)), structs, type=pa.list_(QUANTITY), mask=pa.array(mask)
    )
