"""The telemetry contract: topic layout, record and envelope definition, limits.

Pure data plus a small loader and validator (standard library only), shared by
the gateway collector and the pipeline. See ``TELEMETRY_V1.md``.
"""

from .contract import Contract, FieldSpec, Limits, load_contract
from .validate import REASONS, InvalidTelemetry, Rejection, Validator, dead_letter

__all__ = [
    "REASONS",
    "Contract",
    "FieldSpec",
    "InvalidTelemetry",
    "Limits",
    "Rejection",
    "Validator",
    "dead_letter",
    "load_contract",
]
