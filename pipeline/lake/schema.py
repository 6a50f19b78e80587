"""The lake's Arrow schema, derived from the telemetry contract.

The columns come from :func:`fleetpulse.pipeline.transforms.rows.lake_fields`
(the same derivation the decoder uses to build rows); this module only maps
each contract type to an Arrow type, so a new contract field becomes a new lake
column without touching this file.
"""

from __future__ import annotations

from functools import cache

import pyarrow as pa

from fleetpulse.pipeline.transforms.rows import lake_fields
from fleetpulse.schemas import Contract, load_contract

QUANTITY = pa.struct(
    [
        pa.field("name", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
        pa.field("unit", pa.string(), nullable=False),
    ]
)

#: contract field type -> Arrow type
ARROW_TYPES: dict[str, pa.DataType] = {
    "identifier": pa.string(),
    "string": pa.string(),
    "enum": pa.string(),
    "int": pa.int64(),
    "quantities": pa.list_(QUANTITY),
}


@cache
def lake_schema(version: int = 1) -> pa.Schema:
    """The Arrow schema of a lake record row for contract ``version``."""
    contract: Contract = load_contract(version)
    return pa.schema(
        [
            pa.field(spec.name, ARROW_TYPES[spec.type], nullable=not spec.required)
            for spec in lake_fields(contract)
        ],
        metadata={"fleetpulse.telemetry_contract": str(contract.version)},
    )
