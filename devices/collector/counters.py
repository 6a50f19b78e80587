"""The collector's counters, under the names of the gateway status message (:mod:`fleetpulse.schemas.status`).

received_messages, received_records, spooled_records (made durable),
sent_records / sent_batches (acknowledged upstream), dropped_records by
reason (validation reasons and internal_error; spool_quota, spool_ttl,
spool_corrupt), dead_letters (rows written), dead_letters_dropped (rows
lost: deleted for the quota, or refused by a failing disk),
spool_quarantined_files, errors, reconnects; and the gauges
spool_backlog_records, spool_bytes. Each received record is either offered
to the spool or a dead-letter row under its reason in dropped_records; what
the spool then refuses or loses is counted under spool_*.
"""

from __future__ import annotations

import threading
from typing import Any

from fleetpulse.schemas.status import DROPPED_RECORDS, GATEWAY_COUNTERS, GATEWAY_GAUGES


class Counters:
    """Thread-safe counters with the shared FleetPulse names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(GATEWAY_COUNTERS + GATEWAY_GAUGES, 0)
        self._dropped: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def set(self, name: str, value: int) -> None:
        with self._lock:
            self._values[name] = value

    def drop(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snap: dict[str, Any] = dict(self._values)
            snap[DROPPED_RECORDS] = dict(sorted(self._dropped.items()))
        return snap
