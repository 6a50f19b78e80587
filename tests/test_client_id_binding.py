"""Client ids bound to credentials on the central broker, on real Mosquitto.

The central broker runs ``deploy/central/mosquitto.conf`` as shipped (see
``central_broker`` in test_gateway_security.py: paths in a temp dir, a free
port, TLS with test certificates) with the ACL ``fleetpulse gateway acl``
generates for two gateways and the pipeline's readers. A gateway with its own
valid credentials tries to be someone else: it connects as
``fleetpulse-lander`` with a clean start (MQTT 5 and 3.1.1), or with another
gateway's client id. The victim keeps its session and the messages queued in
it and stays connected; the broker gives the impostor its own session instead
(``use_username_as_clientid``: the id is the username, or the certificate's
CN). Every real client still connects and its data flows: two collectors, the
lander, the status lander and two streaming-ingest readers sharing one
subscription, each reader with its own user.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from fleetpulse.devices.collector.collector import Collector
from fleetpulse.devices.collector.config import load_config
from fleetpulse.pipeline.lake.lander import Lander, LanderConfig
from fleetpulse.pipeline.lake.landing import iter_landing_rows, landing_files
from fleetpulse.pipeline.sources.mqtt import MqttSourceConfig, ReaderSession

from .servers import Server, wait_until
from .test_gateway_security import (
    CONTRACT,
    GW1,
    GW2,
    INGEST_READERS,
    LANDER,
    PASSWORDS,
    STATUS_LANDER,
    Certs,
    Devices,
    TlsClient,
    batches,
    central_broker,
    certs,  # noqa: F401 (a fixture)
    generated_acl,
    write_collector_config,
)

pytestmark = pytest.mark.integration

READERS = (LANDER, STATUS_LANDER, *INGEST_READERS)
QUEUED = 50  # batches queued for the lander while it is away


@pytest.fixture
def broker(tmp_path: Path, certs: Certs, capsys: pytest.CaptureFixture[str]) -> Iterator[Server]:  # noqa: F811
    acl = generated_acl(tmp_path / "gateways", capsys, readers=READERS)
    server = central_broker(tmp_path / "central", certs, acl, mtls=False).start()
    yield server
    server.stop()


@pytest.fixture
def mtls_broker(tmp_path: Path, certs: Certs, capsys: pytest.CaptureFixture[str]) -> Iterator[Server]:  # noqa: F811
    acl = generated_acl(tmp_path / "gateways", capsys, readers=READERS)
    server = central_broker(tmp_path / "central", certs, acl, mtls=True).start()
    yield server
    server.stop()


def lander_config(tmp_path: Path, broker: Server, certs: Certs, **overrides: Any) -> LanderConfig:  # noqa: F811
    settings: dict[str, Any] = {"lake": tmp_path / "lake", "host": "127.0.0.1", "port": broker.port,
                                "tls": True, "ca_file": str(certs.ca), "username": LANDER,
                                "password": PASSWORDS[LANDER], "commit_interval_ms": 50}
    return LanderConfig(**{**settings, **overrides})


def landed(lake: Path, zone: str = "landing") -> list[tuple[str, bytes]]:
    return [(str(row["topic"]), bytes(row["payload"]))
            for path in landing_files(lake, zone) for row in iter_landing_rows(path)]


def landed_records(lake: Path, topics: tuple[str, ...] = (batches(GW1), batches(GW2))) -> set[tuple[str, int]]:
    """The (device_id, seq) of the records in the landed batches of ``topics``."""
    return {(r["device_id"], r["seq"]) for topic, payload in landed(lake) if topic in topics
            for r in json.loads(payload)["records"]}


def session_of_the_lander(tmp_path: Path, broker: Server, certs: Certs) -> LanderConfig:  # noqa: F811
    """The lander subscribes once (its persistent session) and goes away; 50 batches queue for it."""
    config = lander_config(tmp_path, broker, certs)
    lander = Lander(config)
    lander.start()
    gw1 = TlsClient(broker.port, "fleetpulse-gw-c-0001-gw1", certs.ca, username="c-0001-gw1")
    try:
        wait_until(gw1.connected, 10, "gateway 1 accepted")
        # Its first batch proves the subscription: one publisher's messages keep their order.
        gw1.puback(gw1.publish(batches(GW1), b'{"n": -1}'))
        wait_until(lambda: lander.snapshot()["committed_messages"] >= 1, 10, "the lander's subscription")
        lander.stop()
        for n in range(QUEUED):  # "Success", not "No matching subscribers": queued for the lander
            assert gw1.puback(gw1.publish(batches(GW1), json.dumps({"n": n}).encode())).value == 0
    finally:
        gw1.close()
    return config


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["mqtt5", "mqtt3.1.1"])
def test_a_gateway_connecting_as_the_lander_cannot_wipe_its_queued_batches(
        tmp_path: Path, certs: Certs, broker: Server, protocol: mqtt.MQTTProtocolVersion) -> None:  # noqa: F811
    config = session_of_the_lander(tmp_path, broker, certs)
    # Another customer's gateway, its own valid password, the lander's id, a clean start.
    impostor = TlsClient(broker.port, LANDER, certs.ca, username="c-0002-gw1", protocol=protocol, clean=True)
    try:
        wait_until(impostor.connected, 10, "the impostor's connection answered")
        impostor.subscribe(CONTRACT.subscription("gateway_batches"))
        # A round trip after the CONNACK: gateway 2's own batch is accepted, so its session is its own.
        assert impostor.puback(impostor.publish(batches(GW2), b"{}")).value == 0
    finally:
        impostor.close()
    assert impostor.topics() == []  # it reads nothing, either (the ACL)

    lander = Lander(config)
    lander.start()
    try:
        wanted = {json.dumps({"n": n}).encode() for n in range(QUEUED)}
        wait_until(lambda: wanted <= {p for _, p in landed(config.lake)}, 30,
                   f"the {QUEUED} queued batches landed")
    finally:
        lander.stop()
    assert lander.counters["reconnects"] == 0


def test_a_gateway_with_another_gateways_id_does_not_kick_it_off(
        tmp_path: Path, certs: Certs, mosquitto: Server, broker: Server) -> None:  # noqa: F811
    lander = Lander(lander_config(tmp_path, broker, certs))
    lander.start()
    password_file = tmp_path / "gw" / "upstream.password"
    password_file.parent.mkdir(parents=True)
    password_file.write_text(PASSWORDS["c-0001-gw1"] + "\n")
    password_file.chmod(0o600)
    upstream = (f'tls = true\nca_file = "{certs.ca}"\nusername = "c-0001-gw1"\n'
                f'password_file = "{password_file}"\n')
    collector = Collector(load_config(write_collector_config(tmp_path / "gw", mosquitto, broker, upstream),
                                      environ={}))
    collector.start()
    devices = Devices(mosquitto.port)
    try:
        # The id gateway 1 asks for, and the one the broker gives it (its username).
        for victim_id in ("fleetpulse-gw-c-0001-gw1", "c-0001-gw1"):
            impostor = TlsClient(broker.port, victim_id, certs.ca, username="c-0002-gw1")
            try:
                wait_until(impostor.connected, 10, f"the impostor as {victim_id} answered")
                assert impostor.puback(impostor.publish(batches(GW2), b"{}")).value == 0
            finally:
                impostor.close()
        # After the impostors' CONNACKs: a takeover would have closed gateway 1's connection by now,
        # and these records would come through a reconnect.
        expected = devices.publish(20)
        wait_until(lambda: expected <= landed_records(lander.config.lake, (batches(GW1),)), 30,
                   "gateway 1's records landed")
        assert collector.counters["reconnects"] == 0 and collector.counters["errors"] == 0
    finally:
        devices.close()
        assert collector.stop(timeout_s=10)
        lander.stop()


def test_with_mutual_tls_the_certificates_cn_is_the_id(
        tmp_path: Path, certs: Certs, mtls_broker: Server) -> None:  # noqa: F811
    port = mtls_broker.port
    lander = TlsClient(port, LANDER, certs.ca, cert=certs.client[LANDER], clean=False)
    try:
        wait_until(lander.connected, 10, "the lander's certificate accepted")
        lander.subscribe(batches(GW1))
        # Gateway 1's certificate, the lander's id, a clean start.
        impostor = TlsClient(port, LANDER, certs.ca, cert=certs.client["c-0001-gw1"], clean=True)
        try:
            wait_until(impostor.connected, 10, "the impostor's connection answered")
            assert impostor.puback(impostor.publish(batches(GW1), b"after")).value == 0
            wait_until(lambda: lander.topics() == [batches(GW1)], 10, "the batch at the lander")
        finally:
            impostor.close()
        assert lander.disconnects == []
    finally:
        lander.close()


def test_every_real_client_connects_and_its_data_flows(
        tmp_path: Path, certs: Certs, mosquitto_pair: tuple[Server, Server], broker: Server) -> None:  # noqa: F811
    port = broker.port
    lake = tmp_path / "lake"
    lander = Lander(lander_config(tmp_path, broker, certs, lake=lake))
    status_lander = Lander(lander_config(tmp_path, broker, certs, lake=tmp_path / "status-lake",
                                         username=STATUS_LANDER, client_id=STATUS_LANDER,
                                         password=PASSWORDS[STATUS_LANDER], topics=("gateway_status",)))
    source = MqttSourceConfig(host="127.0.0.1", port=port, tls=True, ca_file=str(certs.ca),
                              username="fleetpulse-ingest-{reader}", readers=2)
    readers = [ReaderSession(source, n, password=PASSWORDS[INGEST_READERS[n]]) for n in range(2)]
    collectors: list[Collector] = []
    device_sides: list[Devices] = []
    started: list[Any] = []
    try:
        for part in (lander, status_lander, *readers):
            part.start()
            started.append(part)
        for ids, local in zip((GW1, GW2), mosquitto_pair, strict=True):
            gateway = ids["gateway_id"]
            password_file = tmp_path / gateway / "upstream.password"
            password_file.parent.mkdir(parents=True)
            password_file.write_text(PASSWORDS[gateway] + "\n")
            password_file.chmod(0o600)
            upstream = (f'tls = true\nca_file = "{certs.ca}"\nusername = "{gateway}"\n'
                        f'password_file = "{password_file}"\n')
            path = write_collector_config(tmp_path / gateway, local, broker, upstream, ids)
            collector = Collector(load_config(path, environ={}))
            collector.start()
            collectors.append(collector)
            device_sides.append(Devices(local.port))
        expected = set().union(*(d.publish(20) for d in device_sides))  # the same device ids at both

        read: list[tuple[int, str, bytes]] = []

        def drain_readers() -> bool:
            for n, reader in enumerate(readers):
                while (delivery := reader.poll(0)) is not None:
                    read.append((n, delivery.topic, delivery.payload))
                    reader.ack((delivery,))
            batch_reads = [(t, p) for _, t, p in read if t.endswith("/batches")]
            # The readers take the gateways' status too (live scoring marks an offline gateway).
            return {t for t, _ in batch_reads} == {batches(GW1), batches(GW2)} and \
                sum(len(json.loads(p)["records"]) for _, p in batch_reads) >= 40 and \
                {t for _, t, _ in read if t.endswith("/status")} == statuses

        statuses = {CONTRACT.topic("gateway_status", **ids) for ids in (GW1, GW2)}
        wait_until(drain_readers, 30, "both gateways' batches and status at the ingest readers")
        wait_until(lambda: {t for t, _ in landed(lake)} == {batches(GW1), batches(GW2)}
                   and len([r for _, p in landed(lake) for r in json.loads(p)["records"]]) >= 40, 30,
                   "both gateways' batches landed")
        wait_until(lambda: {t for t, _ in landed(tmp_path / "status-lake", "status")}
                   == {CONTRACT.topic("gateway_status", **ids) for ids in (GW1, GW2)}, 30,
                   "both gateways' status landed by the status lander")
        assert landed_records(lake) == expected
        assert {(r["device_id"], r["seq"]) for _, t, p in read if t.endswith("/batches")
                for r in json.loads(p)["records"]} == expected
        payloads = [p for _, _, p in read]
        assert len(payloads) == len(set(payloads))  # the shared subscription split, never doubled
        assert not any(r.taken_over for r in readers)
        assert all(r.counters["reconnects"] == 0 for r in readers)
        assert all(c.counters["reconnects"] == 0 and c.counters["errors"] == 0 for c in collectors)
        assert lander.counters["reconnects"] == 0 and status_lander.counters["reconnects"] == 0
    finally:
        for d in device_sides:
            d.close()
        for c in collectors:
            assert c.stop(timeout_s=10)
        for part in reversed(started):
            part.stop()
