"""A seeded fleet of gateway batches for the ingest tests, and unit tests of the
source's pure parts (event time of a batch, config validation) on literal data."""

from __future__ import annotations

import json
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from fleetpulse.pipeline.sources.mqtt import MqttSourceConfig, earliest_event_ms

T0 = 1_709_510_400_000  # 2024-03-04T00:00:00Z
H = 3_600_000
NOW = 1_790_000_000_000


@dataclass
class Fleet:
    """Messages to publish, and what a correct pipeline must make of them."""

    messages: list[tuple[str, bytes]] = field(default_factory=list)
    unique: set[tuple[str, int, int]] = field(default_factory=set)
    hourly: Counter[tuple[str, int]] = field(default_factory=Counter)  # (device, hour_ms) -> records
    runtime_s: Counter[tuple[str, int]] = field(default_factory=Counter)  # (device, hour_ms) -> seconds


def topic(customer: str, site: str, gateway: str) -> str:
    return f"fleetpulse/v1/customers/{customer}/sites/{site}/gateways/{gateway}/batches"


def seeded_fleet(
    seed: int = 7,
    *,
    gateways: int = 3,
    devices_per_gateway: int = 4,
    records_per_device: int = 90,
    batch_records: int = 30,
    resend_every: int = 4,
) -> Fleet:
    """Gateways batching their devices' records; every ``resend_every``-th batch is sent twice
    (a gateway that missed the PUBACK resends), so the stream holds duplicates."""
    rng = random.Random(seed)
    fleet = Fleet()
    for g in range(gateways):
        customer, site, gateway = f"c{g % 2}", f"c{g % 2}-s1", f"c{g % 2}-gw{g}"
        records: list[dict[str, Any]] = []
        for d in range(devices_per_gateway):
            device = f"{gateway}-d{d}"
            for seq in range(records_per_device):
                ts = T0 + seq * 60_000 + rng.randrange(0, 30_000)
                if seq % 3 == 0:
                    record: dict[str, Any] = {"kind": "heartbeat", "interval_s": 60}
                else:
                    seconds = float(rng.randrange(1, 60))
                    record = {"kind": "usage", "period_s": 60,
                              "quantities": [{"name": "runtime", "value": seconds, "unit": "s"}]}
                    fleet.runtime_s[(device, ts - ts % H)] += int(seconds)
                record.update(device_id=device, ts_ms=ts, boot=1, seq=seq, fw="2.4.1")
                records.append(record)
                fleet.unique.add((device, 1, seq))
                fleet.hourly[(device, ts - ts % H)] += 1
        records.sort(key=lambda r: (r["ts_ms"], r["device_id"]))
        for n, start in enumerate(range(0, len(records), batch_records)):
            envelope = {"v": 1, "customer_id": customer, "site_id": site, "gateway_id": gateway,
                        "batch_seq": n, "sent_ms": T0 + n, "records": records[start:start + batch_records]}
            message = (topic(customer, site, gateway), json.dumps(envelope).encode())
            fleet.messages.append(message)
            if n % resend_every == resend_every - 1:
                fleet.messages.append(message)
    return fleet


def malformed_messages(count: int, seed: int = 3) -> list[tuple[str, bytes]]:
    """Bad messages of several kinds: not JSON, wrong envelope, bad records, foreign topic."""
    rng = random.Random(seed)
    good_topic = topic("c0", "c0-s1", "c0-gw0")
    out = []
    for i in range(count):
        kind = i % 5
        if kind == 0:
            payload = b"\xff\xfe not json at all %d" % i
        elif kind == 1:
            payload = json.dumps({"v": 1, "customer_id": "c0", "records": []}).encode()  # no site/gateway
        elif kind == 2:
            payload = json.dumps({"v": 1, "customer_id": "c0", "site_id": "c0-s1", "gateway_id": "c0-gw0",
                                  "batch_seq": i, "sent_ms": T0,
                                  "records": [{"device_id": "bad device!", "ts_ms": T0, "boot": 1,
                                               "seq": i, "kind": "heartbeat", "fw": "2.4.1",
                                               "interval_s": 60}]}).encode()
        elif kind == 3:
            payload = json.dumps({"v": 1, "customer_id": "c9", "site_id": "c9-s1", "gateway_id": "c9-gw0",
                                  "batch_seq": i, "sent_ms": T0, "records": []}).encode()  # topic says c0
        else:
            payload = json.dumps([rng.random() for _ in range(3)]).encode()
        out.append((good_topic, payload))
    return out


def publish(port: int, messages: list[tuple[str, bytes]], client_id: str = "test-publisher") -> None:
    """Publish with QoS 1 and wait until the broker acknowledged every message."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(200)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        infos = [client.publish(t, p, qos=1) for t, p in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


def create_session(port: int, config: MqttSourceConfig) -> None:
    """Create every reader's persistent session and shared subscription, as a deployed job has.

    Messages published afterwards wait in the broker for the readers (a session
    that does not exist yet would not get them: MQTT keeps messages only for
    subscriptions).
    """
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    for reader in range(config.readers):
        subscribed = threading.Event()
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=config.client_id(reader),
                             protocol=mqtt.MQTTv5)
        client.on_subscribe = lambda *args, done=subscribed: done.set()
        properties = Properties(PacketTypes.CONNECT)
        properties.SessionExpiryInterval = config.session_expiry_s
        client.connect("127.0.0.1", port, clean_start=False, properties=properties)
        client.loop_start()
        try:
            client.subscribe([(sub, config.qos) for sub in config.subscriptions])
            assert subscribed.wait(10), "the broker did not acknowledge the subscription"
        finally:
            client.disconnect()
            client.loop_stop()


# ------------------------------------------------------------- unit tests


def test_a_batch_is_stamped_with_its_earliest_plausible_record_time() -> None:
    payload = json.dumps({"v": 1, "sent_ms": NOW, "records": [
        {"ts_ms": T0 + 5000, "message": f'quotes "ts_ms": {T0}'},  # text, not a field
        {"ts_ms": T0 + 1000},
        {"ts_ms": 12},  # before 2000: the validator refuses it, it must not drag the time
        {"ts_ms": NOW + 3_600_000},  # far in the future: ignored too
    ]}).encode()
    assert earliest_event_ms("t", payload, NOW) == T0 + 1000


def test_a_payload_without_event_times_has_none() -> None:
    # The source stamps it when received but keeps it out of the watermark.
    assert earliest_event_ms("t", b"\xff not json", NOW) is None
    assert earliest_event_ms("t", b'{"records": [{"ts_ms": 12}]}', NOW) is None


def test_source_config_refuses_what_would_lose_or_double_data() -> None:
    with pytest.raises(ValueError, match="share_group"):
        MqttSourceConfig(readers=2, share_group=None)
    with pytest.raises(ValueError, match="qos"):
        MqttSourceConfig(qos=0)
    with pytest.raises(ValueError, match="receive_maximum"):
        MqttSourceConfig(max_messages_per_bundle=500, receive_maximum=100)
    config = MqttSourceConfig(share_group="g", client_id_prefix="ingest-a", topic="a/+/b")
    status = MqttSourceConfig().status_topic
    assert config.subscriptions == ("$share/g/a/+/b", f"$share/g/{status}")
    assert MqttSourceConfig(share_group=None, topic="a/+/b", status_topic=None).subscriptions == ("a/+/b",)
    assert config.client_id(3) == "ingest-a-3"
