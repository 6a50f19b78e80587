"""The gateway deploy files work as shipped: the local broker config runs on real
Mosquitto the way INSTALL.md installs it, included from Debian's mosquitto.conf
(devices authenticated and confined to their own topic, the collector on
loopback), and the systemd unit passes `systemd-analyze verify`. What a broker
crash may lose is tested in test_broker_crash.py."""

from __future__ import annotations

import shutil
import subprocess

import paho.mqtt.client as mqtt
import pytest

from .gateway_broker import DEPLOY
from .gateway_broker import gateway_broker as installed_broker
from .servers import wait_until

pytestmark = pytest.mark.integration

@pytest.fixture
def gateway_broker(tmp_path):
    """deploy/gateway/mosquitto.conf as installed (included from Debian's mosquitto.conf), free ports."""
    broker = installed_broker(tmp_path, devices={"dev-1": "s3cret"}).start()
    yield broker.device_port, broker.collector_port
    broker.stop()


def client(port: int, client_id: str, username: str | None = None, password: str | None = None) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    if username:
        c.username_pw_set(username, password)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def test_devices_authenticate_and_publish_only_their_own_topic(gateway_broker):
    device_port, collector_port = gateway_broker
    received: list[str] = []
    collector = client(collector_port, "fleetpulse-gw-test-local")
    collector.on_message = lambda c, u, m: received.append(m.topic)
    collector.subscribe("fleetpulse/v1/devices/+/telemetry", qos=1)

    device = client(device_port, "dev-1", "dev-1", "s3cret")
    # The forbidden one first: were it delivered, it would arrive before the allowed one
    # (one publisher's messages keep their order), so the wait below would fail.
    other = device.publish("fleetpulse/v1/devices/dev-2/telemetry", b"[]", qos=1)
    own = device.publish("fleetpulse/v1/devices/dev-1/telemetry", b"[]", qos=1)
    other.wait_for_publish(10)
    own.wait_for_publish(10)
    wait_until(lambda: received == ["fleetpulse/v1/devices/dev-1/telemetry"], what="the device's own message")

    refused: list[object] = []
    stranger = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stranger", protocol=mqtt.MQTTv5)
    stranger.on_connect = lambda c, u, f, reason, p: refused.append(reason)
    stranger.connect("127.0.0.1", device_port)  # no credentials on the device listener
    stranger.loop_start()
    wait_until(lambda: bool(refused), what="the anonymous device to be answered")
    assert refused[0].is_failure
    for c in (collector, device, stranger):
        c.disconnect()
        c.loop_stop()
    assert received == ["fleetpulse/v1/devices/dev-1/telemetry"]  # dev-2's topic was refused


def test_systemd_unit_verifies(tmp_path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    unit = tmp_path / "fleetpulse-gateway.service"
    text = (DEPLOY / "fleetpulse-gateway.service").read_text()
    # verify checks that ExecStart binaries exist; point them at one that does.
    unit.write_text(text.replace("/opt/fleetpulse/venv/bin/fleetpulse", shutil.which("true") or "/bin/true")
                    .replace("Requires=mosquitto.service\n", "").replace(" mosquitto.service", ""))
    result = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    # verify exits 0 even for unknown keys; its warnings name the unit file.
    problems = [line for line in result.stderr.splitlines() if str(unit) in line]
    assert result.returncode == 0 and problems == [], result.stderr
