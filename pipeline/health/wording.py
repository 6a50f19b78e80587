"""How the health model words numbers, shares and lists in the texts a CSM reads.

Component details (:mod:`.components`), alert explanations (:mod:`.alerts`) and
both reports (:mod:`fleetpulse.pipeline.report.text`, ``.html``) write a value
through these helpers, so one number reads the same everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable

MAX_NAMED = 5  # features / firmware versions / gateways named in one detail line


def pct(share: float | None) -> str:
    """A share as a whole percentage: ``0.42`` → ``42%``; ``n/a`` when unknown."""
    return "n/a" if share is None else f"{share * 100:.0f}%"


def num(value: float) -> str:
    """A quantity: grouped thousands from 100 up, else three significant digits."""
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}"


def named(items: Iterable[str]) -> str:
    """Names in order, at most :data:`MAX_NAMED` of them, then how many more."""
    ordered = sorted(items)
    text = ", ".join(ordered[:MAX_NAMED])
    return text + (f" (+{len(ordered) - MAX_NAMED} more)" if len(ordered) > MAX_NAMED else "")


def format_value(name: str, value: float | None) -> str:
    """A component's raw value as a CSM reads it (shared with the reports)."""
    if value is None:
        return "n/a"
    if name == "reliability":
        return f"{value:.2f} err/dev-day"
    if name == "nps":
        return f"{value:+.0f}"
    if name == "engagement":
        return f"{pct(value)} of baseline"
    return pct(value)
