"""The demo's MQTT brokers: Debian's Mosquitto when installed, else amqtt in process.

With Mosquitto the demo runs the streaming path (MQTT 5, late acknowledgements);
amqtt exists so that a fresh clone with nothing but Python can still run the
whole path, with the lander instead of the streaming ingest.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class InProcessBroker:
    """amqtt on a loopback port in a background thread; ``start()`` / ``stop()``."""

    protocol = "3.1.1"  # amqtt speaks MQTT 3.1.1 only

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


def mosquitto_binary() -> str | None:
    """Debian's Mosquitto, if installed (``apt-get install mosquitto``)."""
    return shutil.which("mosquitto") or next(
        (p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto") if os.access(p, os.X_OK)), None)


class MosquittoBroker:
    """A private Mosquitto on a loopback port with its data in ``workdir``; ``start()`` / ``stop()``.

    The demo prefers it to amqtt: it speaks MQTT 5 (the collectors' flow
    control, the streaming reader's shared subscription) and keeps QoS 1
    messages until they are acknowledged, however late (amqtt gives up after
    5 s, which a reader that acknowledges after its bundle is committed can exceed).
    """

    protocol = "5"

    def __init__(self, binary: str, workdir: Path, port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self._binary = binary
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> MosquittoBroker:
        self._workdir.mkdir(parents=True, exist_ok=True)
        conf = self._workdir / "mosquitto.conf"
        lines = [
            f"listener {self.port} {self.host}",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {self._workdir}/",
            "max_queued_messages 0",  # a demo burst must not be dropped (see deploy/ for sizing)
            "max_inflight_messages 100",
            "log_dest stderr",
            "log_type error",
        ]
        if os.geteuid() == 0:
            lines.append("user root")  # mosquitto refuses to run as root otherwise
        conf.write_text("\n".join(lines) + "\n")
        with open(self._workdir / "mosquitto.log", "ab") as log_file:
            self._proc = subprocess.Popen([self._binary, "-c", str(conf)],
                                          stdout=subprocess.DEVNULL, stderr=log_file)
        deadline = time.monotonic() + timeout_s
        while True:
            with socket.socket() as s:
                if s.connect_ex((self.host, self.port)) == 0:
                    return self
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mosquitto did not start on {self.host}:{self.port}; "
                                   f"see {self._workdir / 'mosquitto.log'}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc = None
