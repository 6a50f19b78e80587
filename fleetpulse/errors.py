"""The small exception hierarchy every FleetPulse part raises.

Terminal errors (bad configuration, refused credentials) stop a part at start
with one line; transient ones (a broker or database not reachable yet) are
retried where that makes sense.
"""

from __future__ import annotations

from typing import Any, ClassVar


class FleetPulseError(Exception):
    """Base of all FleetPulse errors."""


class ConfigError(FleetPulseError):
    """A missing or wrong configuration value; always names file, key and fix."""

    def __init__(self, source: str, key: str, problem: str, fix: str) -> None:
        self.source, self.key, self.problem, self.fix = source, key, problem, fix
        super().__init__(f"{source}: {key}: {problem}; fix: {fix}")


class TransientError(FleetPulseError):
    """Worth retrying: the peer may come back (connection refused, 5xx, timeout)."""


class TerminalError(FleetPulseError):
    """Not worth retrying: the peer refused for good (401/403/404, bad request)."""


class RejectedInput(ValueError):
    """Input refused for a reason from a bounded set (for counters and dead
    letters) with a detail that quotes the offending value.

    Subclasses name their set in ``REASONS``.
    """

    REASONS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, reason: str, detail: str) -> None:
        assert reason in self.REASONS, f"{type(self).__name__}: unknown reason {reason!r}"
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def quote(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: safe to put in a message or a log line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
