"""The gateway status message's vocabulary: its states and the counters it carries.

A collector publishes a retained status message on the contract's
``gateway_status`` topic (``{"v": 1, customer/site/gateway ids, "at_ms",
"state", "counters": {...}}``); its Last Will says ``offline`` with no
counters. The collector (devices/, no Beam) counts under these names and
the pipeline's status decoder keeps a column per name, so both read them
from here and cannot drift apart.

Pure data: importable on the gateway.
"""

from __future__ import annotations

#: What the ``state`` field says.
STATES = ("online", "offline")

#: Every counter a collector keeps, in the order its status message lists them.
GATEWAY_COUNTERS = (
    "received_messages",
    "received_records",
    "spooled_records",
    "sent_records",
    "sent_batches",
    "dead_letters",
    "dead_letters_dropped",
    "spool_quarantined_files",
    "errors",
    "reconnects",
)
#: Reported by the collector but not carried downstream: each restates another
#: (messages beside records, records made durable beside records sent).
RESTATED = ("received_messages", "spooled_records")
#: The counters the pipeline keeps, one column each (a new collector counter is carried
#: unless it is added to RESTATED).
COUNTERS = tuple(name for name in GATEWAY_COUNTERS if name not in RESTATED)
#: Gauges (values now, not counts since start) in the collector's counters.
GATEWAY_GAUGES = ("spool_backlog_records", "spool_bytes")
#: The counters' map of dropped records by reason (the pipeline keeps their sum).
DROPPED_RECORDS = "dropped_records"
