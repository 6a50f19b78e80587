"""The small exception hierarchy every FleetPulse part raises.

Terminal errors (bad configuration, refused credentials) stop a part at start
with one line; transient ones (a broker or database not reachable yet) are
retried where that makes sense.
"""

from __future__ import annotations


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
