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


class _Literal(str):
    """Punctuation :func:`quote` writes as it is (not a value to repr)."""


_BRACKETS: dict[type, tuple[str, str]] = {list: ("[", "]"), tuple: ("(", ")"), dict: ("{", "}")}


def _scalar_repr(value: Any) -> str:
    try:
        return repr(value)
    except ValueError:  # an int past Python's str-conversion limit (4300 digits)
        return f"<int of {value.bit_length()} bits>" if isinstance(value, int) else f"<{type(value).__name__}>"


def quote(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters: safe to put in a message or a log line.

    Never raises on what ``json.loads`` returns, and reads only what it shows:
    lists, tuples and dicts are written piece by piece without recursion (valid
    JSON may nest deeper than ``repr`` can recurse), and an integer too long
    for Python's str conversion is shown by its size.
    """
    pieces: list[str] = []
    size = 0
    todo: list[Any] = [value]  # a stack: the next piece is at the end
    while todo and size <= limit:
        item = todo.pop()
        kind = type(item)
        if kind is _Literal:
            text = str(item)
        elif kind is list or kind is tuple or kind is dict:
            opening, closing = _BRACKETS[kind]
            if kind is tuple and len(item) == 1:
                closing = ",)"
            parts: list[Any] = []
            for i, element in enumerate(item.items() if kind is dict else item):
                if i:
                    parts.append(_Literal(", "))
                if kind is dict:
                    parts += [element[0], _Literal(": "), element[1]]
                else:
                    parts.append(element)
                if len(parts) > limit:  # the rest would be cut anyway
                    break
            todo += [_Literal(closing), *reversed(parts)]
            text = opening
        else:
            text = _scalar_repr(item)
        pieces.append(text)
        size += len(text)
    text = "".join(pieces)
    return text if len(text) <= limit and not todo else text[: limit - 3] + "..."
