"""What a finished run counted: every Beam counter, as ``namespace.name`` → total."""

from __future__ import annotations

from typing import Any


def counters(result: Any) -> dict[str, int]:
    """Every Beam counter of a finished run (a ``PipelineResult``), as ``namespace.name`` → total."""
    from apache_beam.metrics.metric import MetricsFilter

    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter())["counters"]:
        key = f"{counter.key.metric.namespace}.{counter.key.metric.name}"
        totals[key] = totals.get(key, 0) + int(counter.committed or counter.attempted or 0)
    return dict(sorted(totals.items()))
