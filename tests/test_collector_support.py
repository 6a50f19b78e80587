"""Helpers for the gateway collector tests: literal records, config text, a fake MQTT client.

The fake speaks the slice of paho-mqtt 2.x the collector uses and calls the
callbacks synchronously, so unit tests are deterministic; integration tests
use the real paho client against real Mosquitto brokers instead.
"""

from __future__ import annotations

import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from fleetpulse.devices.collector.collector import ClientSpec

NOW_MS = 1_700_000_000_000


def record(device: str = "dev-001", seq: int = 0, *, boot: int = 1, kind: str = "heartbeat",
           ts_ms: int = NOW_MS - 60_000, **extra: Any) -> dict[str, Any]:
    """A valid contract-v1 record of ``kind``."""
    body: dict[str, Any] = {
        "heartbeat": {"interval_s": 60, "uptime_s": 3600},
        "usage": {"period_s": 60, "quantities": [{"name": "pages", "value": 12, "unit": "pages"}]},
        "feature": {"feature": "scan_to_email", "count": 2},
        "error": {"code": "E042", "severity": "warning", "message": "paper jam"},
    }[kind]
    return {"device_id": device, "ts_ms": ts_ms, "boot": boot, "seq": seq, "kind": kind,
            "fw": "2.4.1", **body, **extra}


def config_text(
    *,
    local_port: int = 1883,
    upstream_port: int = 1883,
    dead_letters: str = "dead-letters/gw.jsonl",
    gateway: str = 'customer_id = "c-0001"\nsite_id = "c-0001-s1"\ngateway_id = "c-0001-gw1"\n',
    batch: str = "max_records = 500\nmax_interval_ms = 1000\nmax_inflight_batches = 64\n",
    extra_upstream: str = "",
    topic_prefix: str = "",
    status_interval_s: int = 60,
    spool: str = "",
) -> str:
    """A complete collector TOML file in the documented layout."""
    return (
        f"[gateway]\n{gateway}"
        f'[local]\nhost = "127.0.0.1"\nport = {local_port}\ntopic_prefix = "{topic_prefix}"\n'
        'client_id = "fleetpulse-gw-c-0001-gw1-local"\n'
        f'[upstream]\nhost = "127.0.0.1"\nport = {upstream_port}\nclient_id = "fleetpulse-gw-c-0001-gw1"\n'
        f'tls = false\nusername = ""\nkeepalive_s = 30\n{extra_upstream}'
        f"[batch]\n{batch}"
        f"[spool]\n{spool}"
        f"[status]\ninterval_s = {status_interval_s}\n"
        f'[dead_letters]\npath = "{dead_letters}"\n'
    )


def write_config(folder: Path, **kwargs: Any) -> Path:
    path = folder / "gateway.toml"
    path.write_text(config_text(**kwargs))
    return path


class FakeClock:
    """Wall-clock milliseconds that only move when a test says so."""

    def __init__(self, now_ms: int = NOW_MS) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


class FakeInfo:
    def __init__(self, mid: int, rc: int = 0) -> None:
        self.mid, self.rc = mid, rc
        self._published = threading.Event()

    def wait_for_publish(self, timeout: float | None = None) -> None:
        self._published.wait(timeout)

    def is_published(self) -> bool:
        return self._published.is_set()


class FakeClient:
    """The paho-mqtt calls the collector makes; callbacks run synchronously."""

    def __init__(self, spec: ClientSpec, *, auto_puback: bool = True,
                 connect_error: Exception | None = None, connack: str = "Success") -> None:
        self.spec = spec
        self.auto_puback = auto_puback
        self.connect_error = connect_error
        self.connack = connack
        self.lock = threading.Lock()
        self.published: list[SimpleNamespace] = []
        self.infos: dict[int, FakeInfo] = {}
        self.acks: list[tuple[int, int]] = []
        self.subscriptions: list[tuple[str, int]] = []
        self.will: tuple[str, bytes, int, bool] | None = None
        self.connect_kwargs: dict[str, Any] = {}
        self.credentials: tuple[str, str | None] | None = None
        self.disconnected = False
        self._mid = 0
        self.on_connect: Any = None
        self.on_disconnect: Any = None
        self.on_message: Any = None
        self.on_publish: Any = None
        self.on_subscribe: Any = None
        self.on_connect_fail: Any = None
        self.reconnect_delays: list[tuple[float, float]] = []
        self.connected_async = False
        self.online = False
        self.queued: list[int] = []  # QoS 1 messages published while offline (paho resends them)

    # configuration
    def reconnect_delay_set(self, min_delay: float = 1, max_delay: float = 120) -> None:
        self.reconnect_delays.append((min_delay, max_delay))

    def max_inflight_messages_set(self, inflight: int) -> None:
        self.max_inflight = inflight

    def will_set(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.will = (topic, payload, qos, retain)

    def username_pw_set(self, username: str, password: str | None = None) -> None:
        self.credentials = (username, password)

    def tls_set(self, **kwargs: Any) -> None:
        self.tls = kwargs

    # connection
    def connect(self, host: str, port: int, keepalive: int = 60, **kwargs: Any) -> int:
        if self.connect_error is not None:
            raise self.connect_error
        self.connect_kwargs = {"host": host, "port": port, "keepalive": keepalive, **kwargs}
        return 0

    def connect_async(self, host: str, port: int, keepalive: int = 60, **kwargs: Any) -> None:
        self.connected_async = True
        self.connect_kwargs = {"host": host, "port": port, "keepalive": keepalive, **kwargs}

    def loop_start(self) -> None:
        if not self.connected_async:
            self.connected(self.connack)

    def loop_stop(self) -> None:
        pass

    def disconnect(self) -> None:
        self.disconnected = True

    def connected(self, reason: str = "Success", props: Any = None) -> None:
        """Simulate a CONNACK (also used for reconnects); then what was queued offline goes out."""
        self.online = reason == "Success"
        self.on_connect(self, None, SimpleNamespace(session_present=False),
                        ReasonCode(PacketTypes.CONNACK, reason), props)
        if self.online and self.auto_puback:
            queued, self.queued = self.queued, []
            for mid in queued:
                self.puback(mid)

    def lost(self) -> None:
        self.online = False
        self.on_disconnect(self, None, SimpleNamespace(), ReasonCode(PacketTypes.DISCONNECT,
                                                                     "Unspecified error"), None)

    # traffic
    def subscribe(self, topic: str, qos: int = 0) -> tuple[int, int]:
        self.subscriptions.append((topic, qos))
        return 0, 1

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> FakeInfo:
        with self.lock:
            self._mid += 1
            mid = self._mid
            info = self.infos[mid] = FakeInfo(mid)
            self.published.append(SimpleNamespace(topic=topic, payload=payload, qos=qos,
                                                  retain=retain, mid=mid))
        if not self.online:
            self.queued.append(mid)
        elif self.auto_puback:
            self.puback(mid)
        return info

    def puback(self, mid: int, reason: str = "Success") -> None:
        """Simulate the broker's PUBACK for ``mid``."""
        self.infos[mid]._published.set()
        self.on_publish(self, None, mid, ReasonCode(PacketTypes.PUBACK, reason), None)

    def ack(self, mid: int, qos: int) -> int:
        with self.lock:
            self.acks.append((mid, qos))
        return 0

    def deliver(self, topic: str, payload: bytes, mid: int, qos: int = 1) -> None:
        """Simulate the local broker delivering a device message."""
        self.on_message(self, None, SimpleNamespace(topic=topic, payload=payload, mid=mid, qos=qos))

    # views
    def topics(self, suffix: str) -> list[SimpleNamespace]:
        with self.lock:
            return [p for p in self.published if p.topic.endswith(suffix)]


class FakeFactory:
    """Builds one FakeClient per role; options per role."""

    def __init__(self, **options: dict[str, Any]) -> None:
        self.options = options
        self.clients: dict[str, FakeClient] = {}

    def __call__(self, spec: ClientSpec) -> FakeClient:
        client = FakeClient(spec, **self.options.get(spec.role, {}))
        self.clients[spec.role] = client
        return client

    @property
    def local(self) -> FakeClient:
        return self.clients["local"]

    @property
    def upstream(self) -> FakeClient:
        return self.clients["upstream"]
