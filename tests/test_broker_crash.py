"""A crash of the gateway's local broker, on real Mosquitto as installed: what it acknowledged survives.

The local broker runs ``deploy/gateway/mosquitto.conf`` included from Debian's
``mosquitto.conf`` (``tests/gateway_broker.py``). Devices publish one record
per message at QoS 1 on its device listener with their own credentials; the
real collector forwards to a central Mosquitto, where a persistent subscriber
keeps what arrives. The broker is SIGKILLed while the devices are publishing,
with the collector stopped (the broker queues for it) and with it running,
then restarted from its snapshot.

What must hold once the collector's subscription is in the snapshot:

* after the restart, devices' PUBACKs come from the collector's queued
  session, never "no matching subscribers" (which drops the message);
* every message the broker acknowledged arrives upstream, except what
  Mosquitto 2.0.11 acknowledged in the event-loop pass the kill interrupted:
  it sends a PUBACK while handling the PUBLISH and saves at the end of the
  pass, reading one packet per connection per pass, so at most the last
  message each device saw acknowledged.

With the previous ``autosave_interval 30`` both fail: the snapshot had no
session yet, so every acknowledged message was lost and the devices' next
messages were dropped with "no matching subscribers".
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from fleetpulse.devices.collector.collector import Collector
from fleetpulse.devices.collector.config import load_config
from fleetpulse.schemas import load_contract

from . import servers
from .gateway_broker import GatewayBroker, gateway_broker
from .servers import Server, wait_until
from .test_collector_integration import Central, now_ms
from .test_collector_support import record, write_config

pytestmark = pytest.mark.integration

DEVICES = {"dev-001": "secret-1", "dev-002": "secret-2"}
SUBSCRIPTION = load_contract().subscription("device_telemetry")
ACKED_BEFORE_KILL = 200  # per device: the kill lands in a stream of publishes, not before it
WINDOW = 10  # each device's messages in flight (QoS 1 without a PUBACK yet)


class Device:
    """One device's connection to the device listener; records the broker's PUBACK reason per seq."""

    def __init__(self, port: int, device_id: str, first_seq: int = 0) -> None:
        self.device_id = device_id
        self.next_seq = first_seq
        self.cond = threading.Condition()
        self.seq_of_mid: dict[int, int] = {}  # fewer than 65,536 messages per connection: mids are unique
        self.acks: list[tuple[int, Any]] = []  # (mid, reason) in the order the PUBACKs arrived
        connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-{device_id}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(device_id, DEVICES[device_id])
        self.client.on_connect = lambda c, u, f, reason, p: connected.set() if not reason.is_failure else None
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        wait_until(connected.is_set, 10, f"{device_id} accepted by the device listener")

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        # No lock of ours around paho's publish(): paho calls this holding its own.
        with self.cond:
            self.acks.append((mid, reason))
            self.cond.notify_all()

    def publish_one(self) -> None:
        payload = json.dumps(record(self.device_id, self.next_seq, ts_ms=now_ms() - 1000))
        info = self.client.publish(f"fleetpulse/v1/devices/{self.device_id}/telemetry", payload, qos=1)
        with self.cond:
            self.seq_of_mid[info.mid] = self.next_seq
        self.next_seq += 1

    def publish_until(self, stop: threading.Event) -> None:
        """Publish with ``WINDOW`` messages in flight until ``stop``."""
        while not stop.is_set():
            with self.cond:
                if len(self.seq_of_mid) - len(self.acks) >= WINDOW:
                    self.cond.wait(0.1)
                    continue
            self.publish_one()

    def publish(self, n: int) -> None:
        """Publish ``n`` more and wait for their PUBACKs."""
        want = self.acked() + n
        for _ in range(n):
            self.publish_one()
        wait_until(lambda: self.acked() >= want, 30, f"PUBACKs for {self.device_id}'s messages")

    def acked(self) -> int:
        with self.cond:
            return len(self.acks)

    def acknowledged(self) -> set[tuple[str, int]]:
        with self.cond:
            return {(self.device_id, self.seq_of_mid[mid]) for mid, reason in self.acks if reason.value == 0}

    def refusals(self) -> list[str]:
        with self.cond:
            return [str(reason) for _, reason in self.acks if reason.value != 0]

    def last_acknowledged(self) -> set[tuple[str, int]]:
        with self.cond:
            return {(self.device_id, self.seq_of_mid[self.acks[-1][0]])} if self.acks else set()

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def brokers(tmp_path: Path) -> Iterator[tuple[GatewayBroker, Server, Central]]:
    local = gateway_broker(tmp_path / "local", devices=DEVICES).start()
    central_broker = servers.mosquitto(tmp_path / "central").start()
    central = Central(central_broker.port, client_id="test-central-durable", persistent=True)
    yield local, central_broker, central
    central.close()
    central_broker.stop()
    if local.server.proc is not None:
        local.stop()


def collector_config(tmp_path: Path, local: GatewayBroker, central: Server) -> Path:
    return write_config(tmp_path, local_port=local.collector_port, upstream_port=central.port,
                        batch="max_records = 100\nmax_interval_ms = 20\nmax_inflight_batches = 20\n",
                        extra_upstream="reconnect_min_ms = 50\nreconnect_max_ms = 200\n")


def subscription_saved(local: GatewayBroker, config: Path) -> None:
    """Wait until the collector's session and subscription are in the broker's snapshot on disk."""
    client_id = load_config(config, environ={}).local.client_id
    wait_until(lambda: local.saved(client_id, SUBSCRIPTION), 30,
               "the collector's session and subscription in mosquitto.db")


@contextmanager
def collector_process(config: Path, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``fleetpulse gateway run`` as on a gateway (its own process); SIGTERM at the end must drain."""
    with open(log, "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "fleetpulse", "gateway", "run", "--config", str(config)],
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_until(lambda: "started" in log.read_text() or proc.poll() is not None, 30, "the collector started")
        assert proc.poll() is None, log.read_text()
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def kill_while_publishing(local: GatewayBroker) -> list[Device]:
    """SIGKILL the broker while every device streams QoS 1 messages; the devices' view of it."""
    devices = [Device(local.device_port, d) for d in DEVICES]
    stop = threading.Event()
    threads = [threading.Thread(target=d.publish_until, args=(stop,), daemon=True) for d in devices]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: all(d.acked() >= ACKED_BEFORE_KILL for d in devices), 120,
                   f"{ACKED_BEFORE_KILL} PUBACKs per device")
        local.kill()
    finally:
        stop.set()
        for t in threads:
            t.join()
        for d in devices:
            d.close()
    return devices


def upstream(central: Central) -> set[tuple[str, int]]:
    return {(r["device_id"], r["seq"]) for r in central.records()}


def assert_only_the_last_pass_may_be_lost(devices: list[Device], probes: list[Device], central: Central) -> None:
    acknowledged = set().union(*(d.acknowledged() for d in devices + probes))
    # Mosquitto's PUBACK precedes the snapshot of the pass that handled the message.
    last_pass = set().union(*(d.last_acknowledged() for d in devices))
    wait_until(lambda: acknowledged - last_pass <= upstream(central), 120,
               "every acknowledged record at the central broker")
    assert acknowledged - upstream(central) <= last_pass


def probe_after_restart(local: GatewayBroker, devices: list[Device]) -> list[Device]:
    """Each device publishes 20 more; the broker must queue them for the collector's session."""
    probes = [Device(local.device_port, d.device_id, first_seq=d.next_seq) for d in devices]
    for p in probes:
        p.publish(20)
        p.close()
    return probes


def test_a_crash_with_the_collector_stopped_keeps_its_session_and_loses_at_most_the_last_pass(
        tmp_path: Path, brokers: tuple[GatewayBroker, Server, Central]) -> None:
    local, central_broker, central = brokers
    config = collector_config(tmp_path, local, central_broker)
    collector = Collector(load_config(config, environ={}))
    collector.start()
    subscription_saved(local, config)
    assert collector.stop(timeout_s=10)

    devices = kill_while_publishing(local)  # everything acknowledged is queued in the broker
    assert [d.refusals() for d in devices] == [[], []]
    local.start()
    probes = probe_after_restart(local, devices)
    assert [p.refusals() for p in probes] == [[], []]  # not "No matching subscribers"

    collector = Collector(load_config(config, environ={}))
    collector.start()
    try:
        assert_only_the_last_pass_may_be_lost(devices, probes, central)
    finally:
        assert collector.stop(timeout_s=10)


def test_a_crash_with_the_collector_running_loses_at_most_the_last_pass(
        tmp_path: Path, brokers: tuple[GatewayBroker, Server, Central]) -> None:
    local, central_broker, central = brokers
    config = collector_config(tmp_path, local, central_broker)
    log = tmp_path / "collector.log"
    with collector_process(config, log):
        subscription_saved(local, config)
        devices = kill_while_publishing(local)
        assert [d.refusals() for d in devices] == [[], []]
        local.start()  # as systemd would; the collector reconnects by itself
        probes = probe_after_restart(local, devices)
        assert [p.refusals() for p in probes] == [[], []]
        assert_only_the_last_pass_may_be_lost(devices, probes, central)
        assert "reconnected to local broker" in log.read_text()
