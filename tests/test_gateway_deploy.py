"""The gateway deploy files work as shipped: the local broker config runs on real
Mosquitto (devices authenticated and confined to their own topic, the collector
on loopback), and the systemd unit passes `systemd-analyze verify`."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from . import servers
from .servers import wait_until

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[1] / "deploy" / "gateway"


@pytest.fixture
def gateway_broker(tmp_path):
    """deploy/gateway/mosquitto.conf with its paths moved into tmp_path and free ports."""
    device_port, collector_port = servers.free_port(), servers.free_port()
    passwd = tmp_path / "fleetpulse.passwd"
    passwd.touch()
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "dev-1", "s3cret"], check=True)
    acl = tmp_path / "fleetpulse.acl"
    shutil.copy(DEPLOY / "mosquitto.acl", acl)
    conf = (DEPLOY / "mosquitto.conf").read_text()
    conf = (conf.replace("/var/lib/mosquitto/", f"{tmp_path}/")
            .replace("/etc/mosquitto/fleetpulse.passwd", str(passwd))
            .replace("/etc/mosquitto/fleetpulse.acl", str(acl))
            .replace("listener 1883\n", f"listener {device_port} 127.0.0.1\n")
            .replace("listener 1884 127.0.0.1", f"listener {collector_port} 127.0.0.1")
            .replace("log_dest syslog", "log_dest stdout"))
    (tmp_path / "mosquitto.conf").write_text(conf + "user root\n")
    server = servers.Server("mosquitto", [servers.require_binary("mosquitto"), "-c", str(tmp_path / "mosquitto.conf")],
                            device_port, tmp_path, ready=lambda: servers._port_open(collector_port)).start()
    yield device_port, collector_port
    server.stop()


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
