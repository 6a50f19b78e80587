"""Where simulated device messages go: an MQTT broker or JSONL files.

Both sinks share one lifecycle — ``open()``, ``send(message)`` per message,
``drain()`` (everything delivered), ``close()`` — and count ``sent`` and
``errors``. :class:`MqttSink` publishes each message with QoS 1 to
``sim/<gateway_id>/fleetpulse/v1/devices/<device_id>/telemetry`` with a bounded
number of unacknowledged messages; :class:`FileSink` writes the same messages
to ``telemetry/<gateway_id>.jsonl``, one ``{"topic", "payload"}`` object per
line, the payload as the exact text the broker would have carried.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

from paho.mqtt.enums import MQTTErrorCode

from fleetpulse import mqtt_client
from fleetpulse.errors import TerminalError, TransientError

from .generate import DeviceMessage

log = logging.getLogger(__name__)


class Sink(Protocol):
    sent: int
    errors: int

    def open(self) -> None: ...

    def send(self, message: DeviceMessage) -> None: ...

    def drain(self) -> None: ...

    def close(self) -> None: ...

    @property
    def paths(self) -> tuple[Path, ...]: ...


class MqttSink:
    """Publishes device messages to one broker with QoS 1, ``max_inflight`` at a time.

    ``send`` blocks while ``max_inflight`` messages wait for their PUBACK, so
    memory stays bounded however large the fleet; ``drain`` returns once the
    broker acknowledged every message. A broker that cannot be reached, or
    that stops acknowledging for ``ack_timeout_s``, raises
    :class:`~fleetpulse.errors.TransientError` naming ``host:port``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 1883,
        *,
        client_id: str = "fleetpulse-simulator",
        max_inflight: int = 100,
        connect_timeout_s: float = 10.0,
        ack_timeout_s: float = 30.0,
        client_factory: Callable[[str], Any] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_inflight < 1:
            raise ValueError(f"max_inflight must be >= 1, got {max_inflight}")
        self.host, self.port = host, port
        self.client_id = client_id
        self.max_inflight = max_inflight
        self.connect_timeout_s = connect_timeout_s
        self.ack_timeout_s = ack_timeout_s
        self._client_factory = client_factory or _paho_client
        self._clock = clock
        self._client: Any = None
        self._cond = threading.Condition()
        self._outstanding: set[int] = set()
        self._early_acks: set[int] = set()  # PUBACKs that beat publish() returning the mid
        self._connack: Any = None
        self._connected = False
        self.sent = 0  # acknowledged by the broker
        self.published = 0  # handed to the client
        self.errors = 0

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def paths(self) -> tuple[Path, ...]:
        return ()

    # ---------------------------------------------------------- callbacks
    # They run on paho's network thread, some while paho holds its own locks:
    # they only touch self._cond, which is never held while calling paho.
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._cond:
            self._connack = reason_code
            self._connected = not reason_code.is_failure
            self._cond.notify_all()

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        with self._cond:
            self._connected = False
            self._cond.notify_all()
        if reason_code.is_failure:
            log.warning("lost the MQTT broker at %s (%s); paho reconnects", self.address, reason_code)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason_code: Any, properties: Any) -> None:
        with self._cond:
            if mid in self._outstanding:
                self._outstanding.discard(mid)
            else:
                self._early_acks.add(mid)
            self.sent += 1
            self._cond.notify_all()

    # ---------------------------------------------------------- lifecycle
    def open(self) -> None:
        client = self._client_factory(self.client_id)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.max_inflight_messages_set(self.max_inflight)
        try:
            client.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise TransientError(
                f"cannot connect to the MQTT broker at {self.address}: {exc}; "
                "is it running? (--broker HOST:PORT)"
            ) from exc
        self._client = client
        client.loop_start()
        deadline = self._clock() + self.connect_timeout_s
        with self._cond:
            while self._connack is None:
                left = deadline - self._clock()
                if left <= 0:
                    break
                self._cond.wait(min(left, 0.5))
            connack = self._connack
        if connack is None:
            self.close()
            raise TransientError(
                f"the MQTT broker at {self.address} did not answer CONNECT within {self.connect_timeout_s}s"
            )
        if connack.is_failure:
            self.close()
            raise TerminalError(f"the MQTT broker at {self.address} refused the connection: {connack}")

    def send(self, message: DeviceMessage) -> None:
        if self._client is None:
            raise RuntimeError("MqttSink.send() before open()")
        self._wait_below(self.max_inflight)
        info = self._client.publish(message.prefixed_topic, message.payload, qos=1)
        # NO_CONN is fine: paho keeps QoS 1 messages and sends them on reconnect.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            self.errors += 1
            raise TransientError(
                f"publishing to the MQTT broker at {self.address} failed (paho rc={info.rc})"
            )
        with self._cond:
            self.published += 1
            if info.mid in self._early_acks:
                self._early_acks.discard(info.mid)
            else:
                self._outstanding.add(info.mid)

    def drain(self) -> None:
        self._wait_below(1)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        client.disconnect()
        client.loop_stop()

    def _wait_below(self, limit: int) -> None:
        """Block until fewer than ``limit`` messages await a PUBACK."""
        with self._cond:
            deadline = self._clock() + self.ack_timeout_s
            progress = len(self._outstanding)
            while len(self._outstanding) >= limit:
                if len(self._outstanding) < progress:
                    # Acks still flow: the timeout is for a broker that went quiet.
                    progress = len(self._outstanding)
                    deadline = self._clock() + self.ack_timeout_s
                left = deadline - self._clock()
                if left <= 0:
                    self.errors += 1
                    raise TransientError(
                        f"the MQTT broker at {self.address} acknowledged nothing for "
                        f"{self.ack_timeout_s}s ({len(self._outstanding)} messages unacknowledged)"
                    )
                self._cond.wait(min(left, 0.5))


def _paho_client(client_id: str) -> Any:
    # A clean 3.1.1 session: the simulator keeps nothing between runs.
    return mqtt_client.new_client(mqtt_client.ClientOptions(client_id, "3.1.1"))


class FileSink:
    """Writes device messages to ``<out_dir>/telemetry/<gateway_id>.jsonl``.

    Each line is ``{"topic": <prefixed topic>, "payload": <payload text>}``;
    ``payload`` is the message's bytes decoded as UTF-8, so a reader feeds
    ``line["payload"].encode()`` to the same validator the collector uses.
    Existing ``*.jsonl`` files in that folder are replaced at ``open()``.
    """

    def __init__(self, out_dir: Path | str, *, max_open_files: int = 64) -> None:
        self.directory = Path(out_dir) / "telemetry"
        self.max_open_files = max_open_files
        self._files: dict[str, IO[str]] = {}  # insertion order = least recently opened first
        self._written: dict[str, Path] = {}
        self.sent = 0
        self.errors = 0

    @property
    def paths(self) -> tuple[Path, ...]:
        return tuple(self._written[g] for g in sorted(self._written))

    def open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for old in self.directory.glob("*.jsonl"):
            old.unlink()

    def _file(self, gateway_id: str) -> IO[str]:
        handle = self._files.get(gateway_id)
        if handle is not None:
            return handle
        if len(self._files) >= self.max_open_files:
            # Large fleets have more gateways than a process may hold files open.
            oldest = next(iter(self._files))
            self._files.pop(oldest).close()
        path = self.directory / f"{gateway_id}.jsonl"
        handle = path.open("a", encoding="utf-8", newline="\n")
        self._files[gateway_id] = handle
        self._written[gateway_id] = path
        return handle

    def send(self, message: DeviceMessage) -> None:
        line = json.dumps(
            {"topic": message.prefixed_topic, "payload": message.payload.decode("utf-8")},
            separators=(",", ":"),
        )
        self._file(message.gateway_id).write(line + "\n")
        self.sent += 1

    def drain(self) -> None:
        for handle in self._files.values():
            handle.flush()

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
