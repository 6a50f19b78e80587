"""The lake row: one telemetry record with its gateway stamp, as a flat dict.

The column list is derived here, once, from the telemetry contract, so the
decoder that builds rows and the lake's Arrow schema cannot drift apart:

    stamp fields   contract.lake["stamp_fields"]      (customer_id, site_id, gateway_id)
    common fields  contract.common without ``v``     (device_id, ts_ms, boot, seq, kind, fw)
    body fields    contract.body_fields              (every kind's body, flattened)
    extra          contract.lake["extra"]            (received_ms)

:func:`lake_fields` returns the :class:`~fleetpulse.schemas.FieldSpec` of every
column in that order, with ``required`` meaning *not null in the lake* (body
fields are nullable: a heartbeat row has no ``quantities``). Standard library
only, so the lake code can import it without Beam.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from fleetpulse.schemas import Contract, FieldSpec, load_contract


def lake_fields(contract: Contract | None = None) -> tuple[FieldSpec, ...]:
    """Every lake column as a FieldSpec, in column order; ``required`` = not nullable."""
    contract = contract or load_contract(1)
    envelope = {spec.name: spec for spec in contract.envelope}
    stamps = tuple(replace(envelope[name], required=True) for name in contract.lake["stamp_fields"])
    common = tuple(spec for spec in contract.common if spec.name != "v")
    body = tuple(replace(spec, required=False) for spec in contract.body_fields)
    extra = tuple(
        FieldSpec(
            name=name,
            type=spec["type"],
            required=bool(spec.get("required", False)),
            doc=spec.get("doc", ""),
        )
        for name, spec in contract.lake["extra"].items()
    )
    fields = stamps + common + body + extra
    names = [spec.name for spec in fields]
    # A body field named like a common field would silently overwrite it in a row.
    if len(set(names)) != len(names):
        raise ValueError(f"contract v{contract.version} gives the lake duplicate columns: {names}")
    return fields


def lake_columns(contract: Contract | None = None) -> tuple[str, ...]:
    """The lake's column names, in order (see the module docstring for the derivation)."""
    return tuple(spec.name for spec in lake_fields(contract))


def lake_row(
    columns: tuple[str, ...],
    stamp: dict[str, Any],
    record: dict[str, Any],
    received_ms: int,
) -> dict[str, Any]:
    """One lake row: exactly ``columns``; None where the record's kind lacks a field.

    ``stamp`` is the validated envelope header (extra keys such as batch_seq
    are not lake columns and are left out); ``record`` a validated record.
    """
    row: dict[str, Any] = dict.fromkeys(columns)
    row.update((name, value) for name, value in record.items() if name in row)
    # The gateway's stamp is the authority on whose record this is.
    row.update((name, value) for name, value in stamp.items() if name in row)
    row["received_ms"] = received_ms
    return row
