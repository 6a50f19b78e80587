"""The pipeline's MQTT clients (``fleetpulse land``, ``fleetpulse ingest``) against a real
Mosquitto over TLS: a certificate that does not verify stops the command at start with one
line naming the setting (exit 1), as the gateway collector does; an unreachable broker
stays a retry.

Certificates (two CAs, a good server certificate, an expired one and one for another
host name) are made with the ``cryptography`` package that Apache Beam depends on.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from fleetpulse import mqtt_tls
from fleetpulse.errors import TransientError
from fleetpulse.pipeline.lake.lander import Lander, LanderConfig
from fleetpulse.pipeline.lake.landing import iter_landing_rows, landing_files
from fleetpulse.schemas import load_contract

from . import servers

integration = pytest.mark.integration
#: a guard against a command that never returns (the fault under test), not a speed bound
HANG_S = 120
SETTINGS = mqtt_tls.TlsSettings(ca_key="--ca-file", host_key="--broker")


# ------------------------------------------------------------------ certificates
def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


@dataclass(frozen=True)
class _Issuer:
    name: x509.Name
    key: ec.EllipticCurvePrivateKey


def _write(folder: Path, stem: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Path:
    (folder / f"{stem}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / f"{stem}.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return folder / f"{stem}.pem"


def _ca(folder: Path, stem: str) -> tuple[Path, _Issuer]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(stem)).issuer_name(_name(stem))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                           critical=True)
            .sign(key, hashes.SHA256()))
    return _write(folder, stem, cert, key), _Issuer(_name(stem), key)


def _server(folder: Path, stem: str, issuer: _Issuer, names: list[x509.GeneralName],
            valid: tuple[dt.timedelta, dt.timedelta]) -> Path:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(stem)).issuer_name(issuer.name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now + valid[0]).not_valid_after(now + valid[1])
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(issuer.key, hashes.SHA256()))
    return _write(folder, stem, cert, key)


@dataclass(frozen=True)
class Certs:
    ca: Path
    other_ca: Path
    good: Path  # for 127.0.0.1 and localhost
    expired: Path  # for 127.0.0.1 and localhost, expired yesterday
    other_host: Path  # valid, but for broker.invalid only


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    folder = tmp_path_factory.mktemp("tls")
    ca, issuer = _ca(folder, "ca")
    other_ca, _ = _ca(folder, "other-ca")
    local = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    day = dt.timedelta(days=1)
    return Certs(
        ca=ca,
        other_ca=other_ca,
        good=_server(folder, "good", issuer, local, (-day, 2 * day)),
        expired=_server(folder, "expired", issuer, local, (-3 * day, -day)),
        other_host=_server(folder, "other-host", issuer, [x509.DNSName("broker.invalid")], (-day, 2 * day)),
    )


def tls_broker(workdir: Path, cert: Path) -> servers.Server:
    """A real Mosquitto with one TLS listener presenting ``cert``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = servers.free_port()
    conf = (f"listener {port} 127.0.0.1\nallow_anonymous true\n"
            f"certfile {cert}\nkeyfile {cert.with_suffix('.key')}\n"
            f"persistence false\nlog_dest file {workdir}/broker.log\n")
    return servers.mosquitto_with(workdir, conf, port)


@pytest.fixture
def broker(request: pytest.FixtureRequest, tmp_path: Path, certs: Certs) -> Iterator[servers.Server]:
    server = tls_broker(tmp_path / "broker", getattr(certs, request.param)).start()
    yield server
    server.stop()


def fleetpulse(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "fleetpulse", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONWARNINGS": ""})


# The three ways a server certificate fails, each with the setting the line must name.
REFUSALS = [
    pytest.param("good", "other_ca", "127.0.0.1", "--ca-file", id="wrong-ca"),
    pytest.param("expired", "ca", "127.0.0.1", "renewed", id="expired"),
    pytest.param("other_host", "ca", "localhost", "--broker", id="wrong-host-name"),
]


# ------------------------------------------------------------------ the classification
@integration
@pytest.mark.parametrize(("broker", "ca", "host", "names"), REFUSALS, indirect=["broker"])
def test_each_certificate_fault_is_terminal_and_names_its_setting(
        broker: servers.Server, certs: Certs, ca: str, host: str, names: str) -> None:
    with pytest.raises(mqtt_tls.TlsRefused) as info:
        mqtt_tls.check_tls(host, broker.port, str(getattr(certs, ca)), SETTINGS)
    assert names in str(info.value) and "certificate verify failed" in str(info.value)
    assert "\n" not in str(info.value)


def test_an_unreachable_broker_is_transient_and_a_bad_ca_bundle_names_its_key(tmp_path: Path) -> None:
    with pytest.raises(TransientError):
        mqtt_tls.check_tls("127.0.0.1", servers.free_port(), None, SETTINGS)
    (tmp_path / "ca.pem").write_text("not a certificate")
    for bundle in (tmp_path / "ca.pem", tmp_path / "missing.pem"):
        with pytest.raises(mqtt_tls.TlsRefused, match="--ca-file"):
            mqtt_tls.client_context(str(bundle), SETTINGS)


# ------------------------------------------------------------------ fleetpulse land
@integration
@pytest.mark.parametrize(("broker", "ca", "host", "names"), REFUSALS, indirect=["broker"])
def test_land_stops_at_start_with_one_line_naming_the_setting(
        tmp_path: Path, broker: servers.Server, certs: Certs, ca: str, host: str, names: str) -> None:
    proc = fleetpulse("land", "--broker", f"{host}:{broker.port}", "--tls",
                      "--ca-file", str(getattr(certs, ca)), "--lake", str(tmp_path / "lake"))
    try:
        _, stderr = proc.communicate(timeout=HANG_S)  # before: retried forever
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("fleetpulse land:")]
    assert len(lines) == 1 and names in lines[0], stderr
    assert "Traceback" not in stderr and "retrying" not in stderr


@integration
@pytest.mark.parametrize("broker", ["good"], indirect=True)
def test_land_over_verified_tls_lands_what_the_broker_delivers(
        tmp_path: Path, broker: servers.Server, certs: Certs) -> None:
    lake = tmp_path / "lake"
    lander = Lander(LanderConfig(lake=lake, port=broker.port, tls=True, ca_file=str(certs.ca),
                                 commit_interval_ms=50))
    lander.start()
    topic = load_contract().topic("gateway_batches", customer_id="c1", site_id="s1", gateway_id="g1")
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="tls-publisher")
    publisher.tls_set(ca_certs=str(certs.ca), cert_reqs=ssl.CERT_REQUIRED)
    publisher.connect("127.0.0.1", broker.port)
    publisher.loop_start()
    try:
        publisher.publish(topic, b'{"over": "tls"}', qos=1).wait_for_publish(10)
        servers.wait_until(lambda: lander.snapshot()["committed_messages"] == 1, 30,
                           "the lander to commit the message")
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        lander.stop()
    rows = [row for path in landing_files(lake) for row in iter_landing_rows(path)]
    assert [row["payload"] for row in rows] == [b'{"over": "tls"}']


@integration
def test_land_keeps_retrying_an_unreachable_broker_until_stopped(tmp_path: Path, certs: Certs) -> None:
    proc = fleetpulse("land", "--broker", f"127.0.0.1:{servers.free_port()}", "--tls",
                      "--ca-file", str(certs.ca), "--lake", str(tmp_path / "lake"))
    assert proc.stderr is not None
    retries = 0
    try:
        for line in proc.stderr:
            retries += "retrying" in line
            if retries == 2:  # waited, then tried again: a retry, not a refusal
                break
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
    assert retries == 2 and proc.returncode == 0


# ------------------------------------------------------------------ fleetpulse ingest
@integration
@pytest.mark.parametrize(("broker", "ca", "host", "names"), REFUSALS, indirect=["broker"])
def test_ingest_stops_at_start_with_one_line_naming_the_setting(
        tmp_path: Path, broker: servers.Server, certs: Certs, ca: str, host: str, names: str) -> None:
    proc = fleetpulse("ingest", "--broker", f"{host}:{broker.port}", "--tls",
                      "--ca-file", str(getattr(certs, ca)), "--lake", str(tmp_path / "lake"),
                      "--out", str(tmp_path / "out"), "--max-messages", "1")
    try:
        _, stderr = proc.communicate(timeout=HANG_S)
    finally:
        proc.kill()
    assert proc.returncode == 1, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("fleetpulse ingest:")]
    assert len(lines) == 1 and names in lines[0], stderr
    assert "Traceback" not in stderr


# ------------------------------------------------------------------ the gateway collector
@integration
@pytest.mark.parametrize(("broker", "ca", "host", "names"), [
    pytest.param("good", "other_ca", "127.0.0.1", "upstream.ca_file", id="wrong-ca"),
    pytest.param("expired", "ca", "127.0.0.1", "renewed", id="expired"),
    pytest.param("other_host", "ca", "localhost", "upstream.host", id="wrong-host-name"),
], indirect=["broker"])
def test_the_collector_names_its_own_setting_for_each_certificate_fault(
        tmp_path: Path, mosquitto: servers.Server, broker: servers.Server, certs: Certs,
        ca: str, host: str, names: str) -> None:
    from fleetpulse.devices.collector.collector import BrokerRefused, Collector
    from fleetpulse.devices.collector.config import load_config

    from .test_gateway_security import write_collector_config

    upstream = f'tls = true\nca_file = "{getattr(certs, ca)}"\nusername = ""\n'
    path = write_collector_config(tmp_path / "gw", mosquitto, broker, upstream)
    text = path.read_text()
    path.write_text(text.replace('[upstream]\nhost = "127.0.0.1"', f'[upstream]\nhost = "{host}"'))
    collector = Collector(load_config(path, environ={}))
    with pytest.raises(BrokerRefused) as info:
        collector.start()
    assert names in str(info.value) and "certificate verify failed" in str(info.value)
    assert collector.stop() is True
