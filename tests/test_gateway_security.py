"""Gateway ↔ central broker security, against real Mosquitto with real certificates.

The central broker runs ``deploy/central/mosquitto.conf`` as shipped (paths
moved into a temp dir, a free port), with the ACL that ``fleetpulse gateway
acl`` generates and a password file made by ``mosquitto_passwd``; for mutual
TLS the two settings its comments name are switched on. Certificates (a CA, an
unrelated CA, a server certificate for 127.0.0.1/localhost, client
certificates) are made once per session with the ``openssl`` CLI.

Covered: mTLS accepted end to end and refused without a certificate or with
one from another CA; a wrong CA refused at start (never silently connected,
never retried forever); username/password over TLS accepted and a wrong
password refused; a gateway denied another customer's topics (PUBACK "Not
authorized", nothing delivered) while its own work and the lander reads all;
and the ACL generator's exact output.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import ssl
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from fleetpulse.cli import main
from fleetpulse.devices.collector.collector import BrokerRefused, Collector
from fleetpulse.devices.collector.config import load_config
from fleetpulse.schemas import load_contract

from . import servers
from .servers import Server, wait_until
from .test_collector_support import config_text, record

integration = pytest.mark.integration  # (the generator tests at the end need no server)

CENTRAL = Path(__file__).resolve().parents[1] / "deploy" / "central"
CONTRACT = load_contract()
GW1 = {"customer_id": "c-0001", "site_id": "c-0001-s1", "gateway_id": "c-0001-gw1"}
GW2 = {"customer_id": "c-0002", "site_id": "c-0002-s1", "gateway_id": "c-0002-gw1"}
LANDER = "fleetpulse-lander"
STATUS_LANDER = "fleetpulse-status"
INGEST_READERS = ("fleetpulse-ingest-0", "fleetpulse-ingest-1")  # one user per reader: the id binding
PASSWORDS = {"c-0001-gw1": "gw1-secret", "c-0002-gw1": "gw2-secret", LANDER: "lander-secret",
             STATUS_LANDER: "status-secret", **dict.fromkeys(INGEST_READERS, "ingest-secret")}


def batches(ids: dict[str, str]) -> str:
    return CONTRACT.topic("gateway_batches", **ids)


def status(ids: dict[str, str]) -> str:
    return CONTRACT.topic("gateway_status", **ids)


# ------------------------------------------------------------------ certificates
@dataclass(frozen=True)
class Certs:
    ca: Path
    other_ca: Path  # an unrelated CA: trusts nothing the broker presents
    server_cert: Path  # for 127.0.0.1 and localhost, signed by ca
    server_key: Path
    client: dict[str, tuple[Path, Path]]  # CN -> (cert, key), signed by ca
    stranger: tuple[Path, Path]  # CN c-0001-gw1, signed by other_ca


def _openssl(folder: Path, *args: str) -> None:
    result = subprocess.run(["openssl", *args], cwd=folder, capture_output=True, text=True)
    assert result.returncode == 0, f"openssl {' '.join(args)}:\n{result.stderr}"


def _make_ca(folder: Path, name: str, cn: str) -> None:
    _openssl(folder, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2", "-subj", f"/CN={cn}",
             "-addext", "basicConstraints=critical,CA:TRUE",
             "-addext", "keyUsage=critical,keyCertSign,cRLSign")


def _make_leaf(folder: Path, name: str, cn: str, ca: str, extensions: str) -> tuple[Path, Path]:
    _openssl(folder, "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={cn}")
    (folder / f"{name}.ext").write_text(extensions)
    _openssl(folder, "x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
             "-CAcreateserial", "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext")
    os.chmod(folder / f"{name}.key", 0o600)  # the collector refuses keys every user can read
    return folder / f"{name}.pem", folder / f"{name}.key"


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    if shutil.which("openssl") is None:
        pytest.fail("openssl is not installed: apt-get install openssl")
    folder = tmp_path_factory.mktemp("certs")
    _make_ca(folder, "ca", "FleetPulse test CA")
    _make_ca(folder, "other-ca", "Unrelated CA")
    server = _make_leaf(folder, "server", "localhost", "ca",
                        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n")
    client_ext = "extendedKeyUsage=clientAuth\n"
    clients = {cn: _make_leaf(folder, cn, cn, "ca", client_ext) for cn in ("c-0001-gw1", LANDER)}
    stranger = _make_leaf(folder, "stranger", "c-0001-gw1", "other-ca", client_ext)
    return Certs(folder / "ca.pem", folder / "other-ca.pem", server[0], server[1], clients, stranger)


# ------------------------------------------------------------------ brokers
def gateway_config_text(ids: dict[str, str], *, local_port: int = 1883, upstream_port: int = 1883,
                        upstream: str = "") -> str:
    """A collector config for ``ids``; ``upstream`` replaces the plain, anonymous upstream settings."""
    gateway = "".join(f'{k} = "{v}"\n' for k, v in ids.items())
    text = config_text(local_port=local_port, upstream_port=upstream_port, gateway=gateway,
                       batch="max_records = 50\nmax_interval_ms = 50\nmax_inflight_batches = 8\n")
    text = text.replace("fleetpulse-gw-c-0001-gw1", f"fleetpulse-gw-{ids['gateway_id']}")
    return text.replace('tls = false\nusername = ""\n', upstream) if upstream else text


def generated_acl(folder: Path, capsys: pytest.CaptureFixture[str], readers: tuple[str, ...] = ()) -> str:
    """``fleetpulse gateway acl`` over configs of gateways c-0001-gw1 and c-0002-gw1 (and ``readers``)."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for ids in (GW1, GW2):
        path = folder / f"{ids['gateway_id']}.toml"
        path.write_text(gateway_config_text(ids, upstream=f'tls = true\nusername = "{ids["gateway_id"]}"\n'))
        paths.append(str(path))
    capsys.readouterr()
    assert main(["gateway", "acl", *paths, *(f"--reader={r}" for r in readers)]) == 0
    return capsys.readouterr().out


def central_broker(workdir: Path, certs: Certs, acl_text: str, *, mtls: bool) -> Server:
    """deploy/central/mosquitto.conf on a free loopback port, files moved into ``workdir``."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = servers.free_port()
    passwd = workdir / "passwd"
    for i, (user, password) in enumerate(PASSWORDS.items()):
        create = ["-c"] if i == 0 else []
        subprocess.run(["mosquitto_passwd", *create, "-b", str(passwd), user, password], check=True)
    (workdir / "acl").write_text(acl_text)
    conf = (CENTRAL / "mosquitto.conf").read_text()
    replacements = {
        "/mosquitto/data/": f"{workdir}/",
        "listener 8883\n": f"listener {port} 127.0.0.1\n",
        "/mosquitto/config/certs/ca.pem": str(certs.ca),
        "/mosquitto/config/certs/server.pem": str(certs.server_cert),
        "/mosquitto/config/certs/server.key": str(certs.server_key),
        "/mosquitto/config/passwd": str(passwd),
        "/mosquitto/config/acl": str(workdir / "acl"),
        "log_dest stdout": f"log_dest file {workdir}/broker.log",
    }
    if mtls:
        replacements["require_certificate false\n"] = "require_certificate true\nuse_identity_as_username true\n"
    for old, new in replacements.items():
        assert old in conf, f"deploy/central/mosquitto.conf no longer contains {old!r}"
        conf = conf.replace(old, new)
    return servers.mosquitto_with(workdir, conf, port)


@pytest.fixture
def password_broker(tmp_path: Path, certs: Certs, capsys: pytest.CaptureFixture[str]) -> Iterator[Server]:
    server = central_broker(tmp_path / "central", certs, generated_acl(tmp_path / "gateways", capsys),
                            mtls=False).start()
    yield server
    server.stop()


@pytest.fixture
def mtls_broker(tmp_path: Path, certs: Certs, capsys: pytest.CaptureFixture[str]) -> Iterator[Server]:
    acl = generated_acl(tmp_path / "gateways", capsys)
    server = central_broker(tmp_path / "central", certs, acl, mtls=True).start()
    yield server
    server.stop()


# ------------------------------------------------------------------ MQTT clients
class TlsClient:
    """A paho client over TLS that records CONNACKs, disconnects, PUBACK/SUBACK reasons and messages."""

    def __init__(self, port: int, client_id: str, ca: Path, *, username: str | None = None,
                 cert: tuple[Path, Path] | None = None,
                 protocol: mqtt.MQTTProtocolVersion = mqtt.MQTTv5,
                 clean: bool = True) -> None:
        """``clean``: a clean start (MQTT 5) or clean session (3.1.1), else resume the session."""
        self.lock = threading.Lock()
        self.connacks: list[Any] = []
        self.disconnects: list[Any] = []
        self.pubacks: dict[int, Any] = {}
        self.subacks: list[list[Any]] = []
        self.messages: list[tuple[str, bytes]] = []
        v5 = protocol == mqtt.MQTTv5
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                                  protocol=protocol, clean_session=None if v5 else clean)
        self.client.tls_set(ca_certs=str(ca), certfile=str(cert[0]) if cert else None,
                            keyfile=str(cert[1]) if cert else None, cert_reqs=ssl.CERT_REQUIRED)
        if username:
            self.client.username_pw_set(username, PASSWORDS[username])
        self.client.reconnect_delay_set(min_delay=0.05, max_delay=0.2)  # type: ignore[arg-type]
        self.client.on_connect = lambda c, u, f, reason, p: self._add(self.connacks, reason)
        self.client.on_disconnect = lambda c, u, f, reason, p: self._add(self.disconnects, reason)
        self.client.on_publish = self._on_publish
        self.client.on_subscribe = lambda c, u, mid, reasons, p: self._add(self.subacks, list(reasons))
        self.client.on_message = lambda c, u, m: self._add(self.messages, (m.topic, bytes(m.payload)))
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 0 if clean else 3600
            self.client.connect("127.0.0.1", port, clean_start=clean, properties=props)
        else:
            self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _add(self, items: list[Any], item: Any) -> None:
        with self.lock:
            items.append(item)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        with self.lock:
            self.pubacks[mid] = reason

    def connected(self) -> bool:
        with self.lock:
            return bool(self.connacks) and not self.connacks[0].is_failure

    def publish(self, topic: str, payload: bytes) -> int:
        return self.client.publish(topic, payload, qos=1).mid

    def puback(self, mid: int) -> Any:
        wait_until(lambda: mid in self.pubacks, 10, f"PUBACK for message {mid}")
        return self.pubacks[mid]

    def subscribe(self, *topics: str) -> list[Any]:
        self.client.subscribe([(t, 1) for t in topics])
        wait_until(lambda: bool(self.subacks), 10, "SUBACK")
        return self.subacks.pop(0)

    def topics(self) -> list[str]:
        with self.lock:
            return [t for t, _ in self.messages]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Devices:
    """Device messages to the gateway's local (plain) broker, QoS 1."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-devices")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def publish(self, n: int) -> set[tuple[str, int]]:
        now = time.time_ns() // 1_000_000
        records = [record("dev-001", seq, ts_ms=now - 1000) for seq in range(n)]
        info = self.client.publish("fleetpulse/v1/devices/dev-001/telemetry", json.dumps(records), qos=1)
        info.wait_for_publish(10)
        assert info.is_published()
        return {("dev-001", seq) for seq in range(n)}

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def delivered(lander: TlsClient) -> set[tuple[str, int]]:
    with lander.lock:
        payloads = [p for t, p in lander.messages if t == batches(GW1)]
    return {(r["device_id"], r["seq"]) for p in payloads for r in json.loads(p)["records"]}


def write_collector_config(folder: Path, local: Server, central: Server, upstream: str,
                           ids: dict[str, str] = GW1) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gateway.toml"
    path.write_text(gateway_config_text(ids, local_port=local.port, upstream_port=central.port,
                                        upstream=upstream)
                    .replace("keepalive_s = 30\n[batch]", "keepalive_s = 30\nconnect_timeout_s = 2\n"
                             "reconnect_min_ms = 50\nreconnect_max_ms = 200\n[batch]"))
    return path


def run_end_to_end(config_path: Path, local: Server, lander: TlsClient) -> None:
    """Start a collector, send device records, see them arrive at the lander, stop cleanly."""
    collector = Collector(load_config(config_path, environ={}))
    collector.start()
    devices = Devices(local.port)
    try:
        expected = devices.publish(20)
        wait_until(lambda: delivered(lander) == expected, 15, "the records at the lander")
        wait_until(lambda: status(GW1) in lander.topics(), 15, "the gateway's status at the lander")
    finally:
        devices.close()
        assert collector.stop(timeout_s=10)
    assert collector.counters["errors"] == 0  # no batch or status was refused by the ACL
    assert collector.counters["sent_records"] == 20


def tls_upstream(certs: Certs, *, ca: Path | None = None, client_cert: bool = True) -> str:
    lines = ["tls = true", f'ca_file = "{ca or certs.ca}"', 'username = ""']
    if client_cert:
        cert, key = certs.client["c-0001-gw1"]
        lines += [f'cert_file = "{cert}"', f'key_file = "{key}"']
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ mutual TLS
@integration
def test_mtls_with_the_right_ca_and_client_certificate_delivers_end_to_end(
        tmp_path: Path, certs: Certs, mosquitto: Server, mtls_broker: Server) -> None:
    lander = TlsClient(mtls_broker.port, "test-lander", certs.ca, cert=certs.client[LANDER])
    try:
        wait_until(lander.connected, 10, "the lander's certificate to be accepted")
        assert all(r.value < 0x80 for r in lander.subscribe(batches(GW1), status(GW1)))
        run_end_to_end(write_collector_config(tmp_path / "gw", mosquitto, mtls_broker, tls_upstream(certs)),
                       mosquitto, lander)
    finally:
        lander.close()


@integration
def test_wrong_ca_is_refused_at_start_naming_ca_file(
        tmp_path: Path, certs: Certs, mosquitto: Server, mtls_broker: Server) -> None:
    path = write_collector_config(tmp_path / "gw", mosquitto, mtls_broker,
                                  tls_upstream(certs, ca=certs.other_ca))
    collector = Collector(load_config(path, environ={}))
    with pytest.raises(BrokerRefused) as info:  # from connect() itself: no CONNACK wait, no retry
        collector.start()
    message = str(info.value)
    # paho 2.2 does not close the socket of a failed TLS handshake (Client._ssl_wrap_socket);
    # the exception's traceback keeps it. Free it here, where its ResourceWarning is expected.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        del info
        gc.collect()
    assert "upstream.ca_file" in message and "certificate verify failed" in message
    assert collector.stop() is True  # nothing left running


@integration
@pytest.mark.parametrize("client_cert", ["none", "from another CA"])
def test_broker_refuses_a_client_without_a_certificate_it_trusts(
        certs: Certs, mtls_broker: Server, client_cert: str) -> None:
    lander = TlsClient(mtls_broker.port, "test-lander", certs.ca, cert=certs.client[LANDER])
    intruder = TlsClient(mtls_broker.port, "fleetpulse-gw-c-0001-gw1", certs.ca,
                         cert=None if client_cert == "none" else certs.stranger)
    try:
        wait_until(lander.connected, 10, "the lander's certificate to be accepted")
        lander.subscribe(batches(GW1))
        intruder.publish(batches(GW1), b"{}")
        # With TLS 1.3 the broker's refusal arrives after the handshake, as an alert that
        # closes the connection; paho then keeps reconnecting. Two refusals: it never got in.
        wait_until(lambda: len(intruder.disconnects) >= 2, 10, "the broker to close the connection twice")
        assert intruder.connacks == [] and lander.topics() == []
    finally:
        intruder.close()
        lander.close()


@integration
def test_collector_without_client_certificate_is_refused_at_start(
        tmp_path: Path, certs: Certs, mosquitto: Server, mtls_broker: Server) -> None:
    path = write_collector_config(tmp_path / "gw", mosquitto, mtls_broker,
                                  tls_upstream(certs, client_cert=False))
    collector = Collector(load_config(path, environ={}))
    try:
        with pytest.raises(BrokerRefused, match="cert_file") as info:
            collector.start()
        assert "certificate required" in str(info.value)
    finally:
        collector.stop(timeout_s=0)


# ------------------------------------------------------------------ username / password
@integration
def test_username_and_password_over_tls(
        tmp_path: Path, certs: Certs, mosquitto: Server, password_broker: Server) -> None:
    lander = TlsClient(password_broker.port, "test-lander", certs.ca, username=LANDER)
    try:
        wait_until(lander.connected, 10, "the lander to be accepted")
        lander.subscribe(batches(GW1), status(GW1))
        password_file = tmp_path / "gw" / "upstream.password"
        password_file.parent.mkdir(parents=True)
        password_file.write_text(PASSWORDS["c-0001-gw1"] + "\n")
        password_file.chmod(0o600)
        upstream = (f'tls = true\nca_file = "{certs.ca}"\nusername = "c-0001-gw1"\n'
                    f'password_file = "{password_file}"\n')
        path = write_collector_config(tmp_path / "gw", mosquitto, password_broker, upstream)
        run_end_to_end(path, mosquitto, lander)

        password_file.write_text("not-the-password\n")
        collector = Collector(load_config(path, environ={}))
        with pytest.raises(BrokerRefused, match="username and password"):
            collector.start()
    finally:
        lander.close()


# ------------------------------------------------------------------ ACL
@integration
def test_gateway_may_write_only_its_own_customers_topics(certs: Certs, password_broker: Server) -> None:
    port = password_broker.port
    lander = TlsClient(port, "test-lander", certs.ca, username=LANDER)
    gw1 = TlsClient(port, "fleetpulse-gw-c-0001-gw1", certs.ca, username="c-0001-gw1")
    gw2 = TlsClient(port, "fleetpulse-gw-c-0002-gw1", certs.ca, username="c-0002-gw1")
    try:
        for c in (lander, gw1, gw2):
            wait_until(c.connected, 10, "the clients to be accepted")
        assert all(r.value < 0x80 for r in lander.subscribe(
            CONTRACT.subscription("gateway_batches"), CONTRACT.subscription("gateway_status")))
        # A gateway may not read other gateways' data either: Mosquitto 2.0 grants the
        # subscription but filters every message by the read rules (checked at the end).
        gw1.subscribe(CONTRACT.subscription("gateway_batches"), CONTRACT.subscription("gateway_status"))

        spoofed = {**GW2, "gateway_id": GW1["gateway_id"]}  # what the old %u pattern let through
        # The forbidden ones first: were one delivered, it would reach the lander before
        # gw1's own message (one publisher's messages keep their order).
        denied = [gw1.publish(t, b"{}") for t in (batches(GW2), status(GW2), batches(spoofed))]
        own = gw1.publish(batches(GW1), b"{}")
        other = gw2.publish(batches(GW2), b"{}")
        assert [str(gw1.puback(mid)) for mid in denied] == ["Not authorized"] * 3
        assert gw1.puback(own).value == 0 and gw2.puback(other).value == 0
        wait_until(lambda: sorted(lander.topics()) == sorted([batches(GW1), batches(GW2)]), 10,
                   "the lander to read both gateways' own batches")
        gw1.publish(status(GW1), b"{}")
        wait_until(lambda: status(GW1) in lander.topics(), 10, "gw1's status at the lander")
        assert batches(spoofed) not in lander.topics() and status(GW2) not in lander.topics()
        assert gw1.topics() == []  # Mosquitto delivered the same messages to it first, if at all
    finally:
        for c in (gw2, gw1, lander):
            c.close()


# ------------------------------------------------------------------ the generator
def test_acl_command_prints_one_block_per_gateway_and_the_readers(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    # Neither the password nor the key is read, nor the environment.
    monkeypatch.delenv("GW2_PASSWORD", raising=False)
    monkeypatch.setenv("FLEETPULSE_GATEWAY__GATEWAY__CUSTOMER_ID", "c-9999")
    first = tmp_path / "b.toml"
    first.write_text(gateway_config_text(GW2, upstream='tls = true\nusername = "central-gw2"\n'
                                         'password_env = "GW2_PASSWORD"\n'
                                         'cert_file = "missing.pem"\nkey_file = "missing.key"\n'))
    second = tmp_path / "a.toml"
    second.write_text(gateway_config_text(GW1, upstream="tls = true\n"))
    assert main(["gateway", "acl", str(first), str(second), "--reader", LANDER,
                 "--reader", "fleetpulse-ingest"]) == 0
    assert capsys.readouterr().out == """\
# Mosquitto ACL for the FleetPulse central broker, generated by
#   fleetpulse gateway acl GATEWAY.toml [GATEWAY.toml ...] > acl
# from the gateways' collector configs: regenerate it (and reload Mosquitto
# with SIGHUP) whenever a gateway is added, moved or removed; don't edit it.
# A gateway may write only its own customer's, site's and gateway's topics;
# a user with no block here may do nothing. Each username is also its
# client id (use_username_as_clientid): one connection, one session per user.

# gateway c-0001-gw1 of customer c-0001, site c-0001-s1
user c-0001-gw1
topic write fleetpulse/v1/customers/c-0001/sites/c-0001-s1/gateways/c-0001-gw1/batches
topic write fleetpulse/v1/customers/c-0001/sites/c-0001-s1/gateways/c-0001-gw1/status

# gateway c-0002-gw1 of customer c-0002, site c-0002-s1
user central-gw2
topic write fleetpulse/v1/customers/c-0002/sites/c-0002-s1/gateways/c-0002-gw1/batches
topic write fleetpulse/v1/customers/c-0002/sites/c-0002-s1/gateways/c-0002-gw1/status

# reader: every gateway's batches and status (persistent session, QoS 1)
user fleetpulse-lander
topic read fleetpulse/v1/customers/+/sites/+/gateways/+/batches
topic read fleetpulse/v1/customers/+/sites/+/gateways/+/status

# reader: every gateway's batches and status (persistent session, QoS 1)
user fleetpulse-ingest
topic read fleetpulse/v1/customers/+/sites/+/gateways/+/batches
topic read fleetpulse/v1/customers/+/sites/+/gateways/+/status
"""


def test_acl_command_refuses_two_gateways_with_one_username(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = tmp_path / "a.toml", tmp_path / "b.toml"
    first.write_text(gateway_config_text(GW1, upstream='tls = true\nusername = "shared"\n'))
    second.write_text(gateway_config_text(GW2, upstream='tls = true\nusername = "shared"\n'))
    assert main(["gateway", "acl", str(first), str(second)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert str(second) in err and "upstream.username" in err and str(first) in err


def test_acl_command_refuses_a_reader_given_twice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # The broker binds a client id to its username: two readers cannot share one.
    path = tmp_path / "a.toml"
    path.write_text(gateway_config_text(GW1, upstream="tls = true\n"))
    assert main(["gateway", "acl", str(path), "--reader", "fleetpulse-ingest-0",
                 "--reader", "fleetpulse-ingest-0"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--reader" in err and "'fleetpulse-ingest-0'" in err


def test_shipped_central_acl_is_the_generated_one_for_the_sample_gateway(
        capsys: pytest.CaptureFixture[str]) -> None:
    sample = CENTRAL.parent / "gateway" / "gateway.sample.toml"
    assert main(["gateway", "acl", str(sample)]) == 0
    assert capsys.readouterr().out == (CENTRAL / "acl").read_text()
