"""Gateway validation cost: the contract validator against a bare ``json.loads``.

The collector runs on a Raspberry Pi; this shows what validating every record
costs relative to merely parsing it (candidate/baseline < 1 means slower).
"""

from __future__ import annotations

import json

from fleetpulse.schemas import Validator

from .harness import Comparison, compare


def payloads(messages: int = 2000, per_message: int = 12) -> list[bytes]:
    out = []
    for m in range(messages):
        records = []
        for i in range(per_message):
            base = {"device_id": f"c-0001-d{m % 50:03d}", "ts_ms": 1_785_600_000_000 + i * 1000,
                    "boot": 1, "seq": m * per_message + i, "fw": "3.2.1"}
            if i % 3 == 0:
                records.append({**base, "kind": "heartbeat", "interval_s": 14400})
            elif i % 3 == 1:
                records.append({**base, "kind": "usage", "period_s": 3600, "quantities": [
                    {"name": "runtime", "value": 1800.0, "unit": "s"}, {"name": "cycles", "value": 7, "unit": "count"}]})
            else:
                records.append({**base, "kind": "feature", "feature": "scan", "count": 2})
        out.append(json.dumps(records).encode())
    return out


def run(quick: bool = False) -> list[Comparison]:
    data = payloads(300 if quick else 2000)
    records = sum(len(json.loads(p)) for p in data)
    validator = Validator()
    now = 1_785_700_000_000
    return [
        compare(
            "gateway validation",
            items=records,
            baseline=("json.loads only", lambda: [json.loads(p) for p in data]),
            candidate=("Validator.device_payload", lambda: [validator.device_payload(p, now_ms=now) for p in data]),
            repeats=3 if quick else 5,
        )
    ]
