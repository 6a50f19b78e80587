"""An in-process MQTT broker for the demo (amqtt), so `make demo` needs no server.

Tests use Debian's Mosquitto instead; this exists only so that a fresh clone
with nothing but Python can run the whole path.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class InProcessBroker:
    """amqtt on a loopback port in a background thread; ``start()`` / ``stop()``."""

    def __init__(self, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="demo-broker", daemon=True)
        self._broker: Any = None

    def start(self) -> InProcessBroker:
        from amqtt.broker import Broker

        # amqtt logs every connection at INFO, and warns about PUBACKs that
        # arrive after its fixed 5 s wait (the collectors acknowledge device
        # messages only once the central broker has the batch). Neither is news
        # to a demo user; the counts the demo prints are the check.
        for name in ("amqtt", "transitions"):
            logging.getLogger(name).setLevel(logging.ERROR)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{self.host}:{self.port}"}},
            "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
        }
        self._thread.start()

        async def boot() -> Any:
            broker = Broker(config, loop=self._loop)
            await broker.start()
            return broker

        self._broker = asyncio.run_coroutine_threadsafe(boot(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        if self._broker is not None:
            asyncio.run_coroutine_threadsafe(self._broker.shutdown(), self._loop).result(timeout=30)
            self._broker = None
            # amqtt leaves client-session tasks behind: end them so their
            # connections close here rather than when the loop is collected.
            asyncio.run_coroutine_threadsafe(_cancel_others(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()


async def _cancel_others() -> None:
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
