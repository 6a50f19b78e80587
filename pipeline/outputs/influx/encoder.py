"""Points -> line protocol, checked against the measurement design: :class:`PointEncoder`.

A point is a dict ``{"measurement", "tags", "fields", "ts_s"}``; the design
it must follow is :mod:`fleetpulse.schemas.influx`, and one line is written
by :func:`~.line_protocol.to_line`. A point the design or line protocol
refuses comes back as a :class:`~.results.RejectedPoint` with its reason.

Throughput: :class:`PointEncoder` checks and escapes names once per point
shape, so encoding costs about a third of checking and encoding each point
from scratch (figures: docs/BENCHMARKS.md), and gives exactly the lines the
checked path gives. :func:`points_to_lines` is the one-call form.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable, Mapping
from typing import Any

from fleetpulse.schemas.influx import (
    DesignViolation,
    InfluxDesign,
    InfluxFieldSpec,
    MeasurementSpec,
    load_influx_design,
)

from .line_protocol import (
    INT64_MAX,
    INT64_MIN,
    TS_S_MAX,
    TS_S_MIN,
    InvalidPoint,
    field_key_text,
    field_value_text,
    measurement_text,
    tags_text,
    to_line,
)
from .results import RejectedPoint

#: Point shapes an encoder keeps a plan for; points of further shapes take the checked path.
MAX_SHAPES = 1024
#: Checked series keys (measurement and tags as text) an encoder keeps over all shapes;
#: past it they are all forgotten and rebuilt, so a huge fleet costs time, not memory.
MAX_SERIES = 65_536
#: Checked values kept per string field (firmware versions, bands: few distinct values).
MAX_STRINGS_PER_FIELD = 1024

_FLOAT_MAX = sys.float_info.max
_NONE = type(None)


class _Shape:
    """What one point shape needs per point, worked out once from the design and the names.

    A shape is (measurement, tag keys, field keys, exact field value types). The
    design specs of the names and their escaping depend only on the shape; what
    depends on values is checked per point: numbers against ``bounds`` (the
    design range narrowed to what line protocol carries: int64, finite), strings
    against the design and escaping (remembered per distinct value), tag values
    by series (remembered per distinct tuple of tag values), and the timestamp.
    """

    __slots__ = ("spec", "window_s", "head", "template", "bounds", "strings", "order", "series")

    def __init__(
        self,
        spec: MeasurementSpec,
        head: str,
        template: str,
        bounds: tuple[tuple[int, float, float], ...],
        strings: tuple[tuple[int, Any, InfluxFieldSpec, set[str]], ...],
        order: tuple[tuple[int, tuple[float, float] | None], ...] | None,
    ) -> None:
        self.spec = spec
        self.window_s = spec.window_s
        self.head = head  # the escaped measurement
        # " k=%d,k=%r,k=\"%s\" %d": %-formatting is the fastest way to write the values.
        self.template = template
        self.bounds = bounds  # (index, low, high) of int and float values written as given
        self.strings = strings  # (index, key, spec, values known to need no escaping)
        # None: every value is written as given, in order. Otherwise (some None values
        # left out, bools, ints in float fields): (index, None to write as given, "bool",
        # or the (low, high) of an int written as a float) per value written.
        self.order = order
        self.series: dict[tuple[Any, ...], str] = {}  # tag values -> head + ",k=v..."


def _inclusive_bounds(spec: InfluxFieldSpec, low: float, high: float) -> tuple[float, float] | None:
    """The design range narrowed to [low, high]; None if a design bound is not a finite number."""
    for bound in (spec.min, spec.max):
        if bound is not None and (type(bound) not in (int, float) or not math.isfinite(bound)):
            return None
    return (
        low if spec.min is None else max(spec.min, low),
        high if spec.max is None else min(spec.max, high),
    )


_BOOL = (0.0, 0.0)  # marks a bool in _Shape.order (compared by identity)


class PointEncoder:
    """Checks points against the design and encodes them, doing per point only what values need.

    Points of one measurement nearly always share tag keys, field keys and
    value types, so the design lookups, name checks and escaping are done once
    per shape (:class:`_Shape`) and each point only has its values checked.
    The result is exactly what ``design.check`` followed by :func:`to_line`
    gives, because a point the fast path is not sure about (anything out of
    range, to escape or to refuse) is given to that checked path, which writes
    the same line or refuses with its reason and detail.

    Its caches are bounded (defaults :data:`MAX_SHAPES`, :data:`MAX_SERIES`,
    :data:`MAX_STRINGS_PER_FIELD`); not thread-safe (one per sink).
    """

    def __init__(
        self,
        design: InfluxDesign,
        *,
        max_shapes: int = MAX_SHAPES,
        max_series: int = MAX_SERIES,
        max_strings_per_field: int = MAX_STRINGS_PER_FIELD,
    ) -> None:
        self.design = design
        self._max_shapes = max_shapes
        self._max_series = max_series
        self._max_strings = max_strings_per_field
        self._shapes: dict[tuple[Any, ...], _Shape | None] = {}
        self._series_count = 0

    def cached(self) -> dict[str, int]:
        """How much the caches hold: shapes, series, string values."""
        plans = [shape for shape in self._shapes.values() if shape is not None]
        return {
            "shapes": len(self._shapes),
            "series": sum(len(shape.series) for shape in plans),
            "strings": sum(len(known) for shape in plans for *_, known in shape.strings),
        }

    def encode(self, points: Iterable[Any]) -> tuple[list[str], list[Any], list[RejectedPoint]]:
        """(lines, the points they encode, rejected points) for ``points``, in order."""
        lines: list[str] = []
        kept: list[Any] = []
        rejected: list[RejectedPoint] = []
        shapes = self._shapes
        for point in points:
            try:
                measurement = point["measurement"]
                tags = point.get("tags") or {}
                fields = point["fields"]
                ts_s = point["ts_s"]
            except (KeyError, TypeError, AttributeError):
                rejected.append(
                    RejectedPoint(
                        point, "not_a_point", "expected a dict with measurement, tags, fields, ts_s"
                    )
                )
                continue
            line = None
            if type(tags) is dict and type(fields) is dict:
                # The fast path: inline, as it runs per point. Any doubt leaves line None.
                tag_values = tuple(tags.values())
                values = tuple(fields.values())
                # The exact types are part of the shape: equal is not enough, as a str
                # subclass or a bool is written differently (or refused).
                types = map(type, (measurement, *tags, *tag_values, *fields, *values))
                key = (measurement, tuple(tags), *fields, *types)
                try:
                    shape = shapes[key]
                except KeyError:
                    shape = self._add_shape(key, len(tags), len(values))
                except TypeError:  # an unhashable measurement: the checked path names it
                    shape = None
                if shape is not None:
                    line = self._line(shape, tags, tag_values, values, ts_s)
            elif not isinstance(tags, Mapping) or not isinstance(fields, Mapping):
                rejected.append(
                    RejectedPoint(point, "not_a_point", "tags and fields must be mappings")
                )
                continue
            if line is None:
                try:
                    tags, fields, ts_s = self.design.check(measurement, tags, fields, ts_s)
                    line = to_line(measurement, tags, fields, ts_s)
                except (DesignViolation, InvalidPoint) as exc:
                    rejected.append(RejectedPoint(point, exc.reason, exc.detail))
                    continue
            lines.append(line)
            kept.append(point)
        return lines, kept, rejected

    def _line(
        self,
        shape: _Shape,
        tags: dict[Any, Any],
        tag_values: tuple[str | None, ...],
        values: tuple[Any, ...],
        ts_s: Any,
    ) -> str | None:
        """The line of a point of ``shape``, or None when the checked path must decide."""
        series = shape.series.get(tag_values)  # str or None values, by shape
        if series is None:
            series = self._add_series(shape, tags, tag_values)
            if series is None:
                return None
        for index, low, high in shape.bounds:
            if not low <= values[index] <= high:  # NaN compares false
                return None
        for index, key, spec, known in shape.strings:
            if values[index] not in known and not self._plain_string(
                key, spec, values[index], known
            ):
                return None
        if type(ts_s) is not int or not TS_S_MIN <= ts_s <= TS_S_MAX or ts_s % shape.window_s:
            return None
        if shape.order is None:
            return series + shape.template % (*values, ts_s)
        args: list[Any] = []
        for index, convert in shape.order:
            value = values[index]
            if convert is _BOOL:
                value = "true" if value else "false"
            elif convert is not None:  # an int in a float field: written as that float
                if not INT64_MIN <= value <= INT64_MAX:
                    return None
                value = float(value)
                if not convert[0] <= value <= convert[1]:
                    return None
            args.append(value)
        args.append(ts_s)
        return series + shape.template % tuple(args)

    def _plain_string(self, key: Any, spec: InfluxFieldSpec, value: str, known: set[str]) -> bool:
        """Whether a string field value fits the design and needs no escaping; remembered if so."""
        if spec.values and value not in spec.values:
            return False
        if spec.max_length is not None and len(value) > spec.max_length:
            return False
        try:
            if field_value_text(key, value) != f'"{value}"':
                return False
        except InvalidPoint:
            return False
        if len(known) < self._max_strings:
            known.add(value)
        return True

    def _add_series(
        self, shape: _Shape, tags: dict[Any, Any], tag_values: tuple[str | None, ...]
    ) -> str | None:
        """Check and encode a new series key and remember it; None when the checked path must decide."""
        try:
            series = shape.head + tags_text(shape.spec.check_tags(tags))
        except (DesignViolation, InvalidPoint):
            return None
        if self._series_count >= self._max_series:
            for known in self._shapes.values():
                if known is not None:
                    known.series.clear()
            self._series_count = 0
        shape.series[tag_values] = series
        self._series_count += 1
        return series

    def _add_shape(self, key: tuple[Any, ...], tag_count: int, count: int) -> _Shape | None:
        """Plan the shape of ``key`` (see :meth:`encode`) and remember it, while there is room."""
        if len(self._shapes) >= self._max_shapes:
            return None  # planning every point of a new shape would cost more than checking it
        measurement, tag_keys = key[0], key[1]
        field_keys = key[2 : 2 + count]
        names_type, *types = key[2 + count :]
        # The measurement and every key must be exact str; tag values str or None.
        names_types = (
            names_type,
            *types[:tag_count],
            *types[2 * tag_count : 2 * tag_count + count],
        )
        tag_value_types = types[tag_count : 2 * tag_count]
        shape = None
        if all(kind is str for kind in names_types) and all(
            kind in (str, _NONE) for kind in tag_value_types
        ):
            shape = self._plan(
                measurement, tag_keys, field_keys, tuple(types[-count:] if count else ())
            )
        self._shapes[key] = shape
        return shape

    def _plan(
        self,
        measurement: Any,
        tag_keys: tuple[Any, ...],
        field_keys: tuple[Any, ...],
        types: tuple[type, ...],
    ) -> _Shape | None:
        """The plan for one shape; None when its points all take the checked path.

        None for what refuses every point of the shape (unknown measurement,
        tag or field, a type the design does not take, a missing required
        field, a name line protocol cannot carry), which the checked path
        explains, and for a design bound that is not a finite number.
        """
        if not isinstance(measurement, str):
            return None
        spec = self.design.measurements.get(measurement)
        if spec is None or any(key not in spec.tags for key in tag_keys):
            return None
        if type(spec.window_s) is not int or spec.window_s <= 0:
            return None
        try:
            head = measurement_text(measurement)
        except InvalidPoint:
            return None
        parts: list[str] = []
        bounds: list[tuple[int, float, float]] = []
        strings: list[tuple[int, Any, InfluxFieldSpec, set[str]]] = []
        order: list[tuple[int, tuple[float, float] | None]] = []
        present = set()
        as_given = True  # every value present and written as given
        for index, (key, kind) in enumerate(zip(field_keys, types, strict=True)):
            if kind is _NONE:  # None values are left out
                as_given = False
                continue
            field_spec = spec.fields.get(key)
            if field_spec is None and isinstance(key, str):
                field_spec = spec.field_spec(key)
            if field_spec is None:
                return None
            try:
                text = field_key_text(key).replace("%", "%%")
            except InvalidPoint:
                return None
            present.add(key)
            wanted = field_spec.type
            convert: tuple[float, float] | None = None
            if wanted == "int" and kind is int:
                limits = _inclusive_bounds(field_spec, INT64_MIN, INT64_MAX)
                if limits is None:
                    return None
                bounds.append((index, *limits))
                parts.append(f"{text}=%di")
            elif wanted == "float" and kind is float:
                limits = _inclusive_bounds(field_spec, -_FLOAT_MAX, _FLOAT_MAX)
                if limits is None:
                    return None
                bounds.append((index, *limits))
                parts.append(f"{text}=%r")
            elif wanted == "float" and kind is int:  # the design converts it to a float
                convert = _inclusive_bounds(field_spec, -_FLOAT_MAX, _FLOAT_MAX)
                if convert is None:
                    return None
                as_given = False
                parts.append(f"{text}=%r")
            elif wanted == "bool" and kind is bool:
                convert, as_given = _BOOL, False
                parts.append(f"{text}=%s")
            elif wanted == "string" and kind is str:
                strings.append((index, key, field_spec, set()))
                parts.append(f'{text}="%s"')
            else:
                return None
            order.append((index, convert))
        if not parts or not spec.required_fields <= present:
            return None
        return _Shape(
            spec,
            head,
            " " + ",".join(parts) + " %d",
            tuple(bounds),
            tuple(strings),
            None if as_given else tuple(order),
        )


def points_to_lines(
    points: Iterable[Any], design: InfluxDesign | None = None
) -> tuple[list[str], list[RejectedPoint]]:
    """Check points against the design and encode them: (lines, rejected); never raises.

    A point is a dict ``{"measurement", "tags", "fields", "ts_s"}``. Rejected
    points come back as ``(point, reason, detail)`` to be kept as dead letters.
    """
    lines, _, rejected = PointEncoder(design or load_influx_design(1)).encode(points)
    return lines, rejected
