"""What the collector's threads hand each other: the worker's events, and the count of what is outstanding.

paho's network threads (one per broker) never touch collector state and
never call paho: their callbacks put one of these events on a queue that the
worker thread (:mod:`.worker`) consumes. :class:`Outstanding` is the one
piece of state they share with the worker and with callers of
``Collector.wait_idle``: device messages not yet settled and spool records
not yet acknowledged upstream, under one condition variable.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(eq=False)
class MessageToken:
    """One device message from the local broker, until its records are durable."""

    mid: int
    qos: int
    generation: int  # local connection it arrived on: packet ids mean nothing on another
    topic: str = ""


@dataclass(frozen=True)
class Received:
    """A device message from the local broker."""

    topic: str
    payload: bytes
    token: MessageToken


@dataclass(frozen=True)
class Acked:
    """The central broker's PUBACK for one of our messages."""

    mid: int
    failure: str | None  # the PUBACK's reason when the broker refused the message


class StatusNow:
    """Publish the status message now (the uplink connected: the Will may have said offline)."""


class Stop:
    """Drain: send what is spooled, then end."""


class Wake:
    """Look at the timers now; ``done`` is set once the worker has (``Collector.tick``)."""

    def __init__(self) -> None:
        self.done = threading.Event()


class Outstanding:
    """Device messages received and not yet settled (spooled or dead-lettered), and the upstream backlog.

    The local reader blocks in :meth:`admit` while ``max_messages`` wait for
    the worker: QoS 0 device messages need no acknowledgement and so escape
    the local broker's receive window, and this is their backstop.
    """

    def __init__(self, max_messages: int) -> None:
        self.max_messages = max_messages
        self._cond = threading.Condition()
        self._messages = 0
        self._backlog = 0  # spool records not yet acknowledged upstream

    @property
    def messages(self) -> int:
        with self._cond:
            return self._messages

    @property
    def backlog(self) -> int:
        with self._cond:
            return self._backlog

    def admit(self, stopping: threading.Event) -> bool:
        """Count one more message, waiting while ``max_messages`` are outstanding; False once stopping."""
        with self._cond:
            if self._messages >= self.max_messages:
                log.warning("back-pressure: %d device messages waiting for the spool; pausing the "
                            "local reader", self._messages)
                while self._messages >= self.max_messages and not stopping.is_set():
                    self._cond.wait(1.0)
                if stopping.is_set():
                    return False
            self._messages += 1
        return True

    def settled(self) -> None:
        """One message's records are spooled or dead-lettered (and it is acknowledged)."""
        with self._cond:
            self._messages -= 1
            self._cond.notify_all()

    def set_backlog(self, records: int) -> None:
        with self._cond:
            if self._backlog != records:
                self._backlog = records
                self._cond.notify_all()

    def wake(self) -> None:
        """Release a reader blocked in :meth:`admit` (stopping has begun)."""
        with self._cond:
            self._cond.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._messages == 0 and self._backlog == 0, timeout_s)
