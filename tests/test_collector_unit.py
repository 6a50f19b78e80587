"""Collector lifecycle on fake MQTT clients and an injected clock: batching, acks, dead letters, back-pressure."""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from fleetpulse.devices.collector.collector import BrokerRefused, BrokerUnreachable, Collector
from fleetpulse.devices.collector.config import CollectorConfig, load_config
from fleetpulse.errors import ConfigError
from fleetpulse.schemas import Validator

from .servers import wait_until
from .test_collector_support import NOW_MS, FakeClock, FakeFactory, record, write_config

TOPIC = "fleetpulse/v1/devices/{}/telemetry"
BATCHES = "/batches"
STATUS = "/status"


def make_config(tmp_path: Path, *, max_records: int = 500, max_interval_ms: int = 1000,
                max_inflight_batches: int = 64, **kwargs) -> CollectorConfig:
    batch = (f"max_records = {max_records}\nmax_interval_ms = {max_interval_ms}\n"
             f"max_inflight_batches = {max_inflight_batches}\n")
    return load_config(write_config(tmp_path, batch=batch, **kwargs), environ={})


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def running(tmp_path: Path, clock: FakeClock, request: pytest.FixtureRequest) -> Iterator[tuple[Collector, FakeFactory]]:
    """A started collector on fakes; options via ``@with_collector(**config, fake=...)``."""
    options = dict(getattr(request, "param", {}))
    factory = FakeFactory(**options.pop("fake", {}))
    collector = Collector(make_config(tmp_path, **options), client_factory=factory, clock=clock)
    collector.start()
    yield collector, factory
    collector.stop(timeout_s=0.1)


def with_collector(**options):
    """Configure the ``running`` fixture for one test (config keys, ``fake=`` per-role options)."""
    return pytest.mark.parametrize("running", [options], indirect=True, ids=[""])


def batches(factory: FakeFactory) -> list[dict]:
    return [json.loads(p.payload) for p in factory.upstream.topics(BATCHES)]


def payload(*records: dict) -> bytes:
    return json.dumps(records[0] if len(records) == 1 else list(records)).encode()


# ------------------------------------------------------------------ start-up
def test_start_connects_both_with_persistent_sessions_and_announces_online(
        running: tuple[Collector, FakeFactory]) -> None:
    collector, factory = running
    assert factory.local.subscriptions == [("fleetpulse/v1/devices/+/telemetry", 1)]
    assert factory.local.spec.client_id == "fleetpulse-gw-c-0001-gw1-local" and factory.local.spec.manual_ack
    assert factory.upstream.spec.client_id == "fleetpulse-gw-c-0001-gw1"
    for client in (factory.local, factory.upstream):
        assert client.connect_kwargs["clean_start"] is False
        assert client.connect_kwargs["properties"].SessionExpiryInterval == 86400
    assert factory.local.connect_kwargs["properties"].ReceiveMaximum == 1000

    topic, will, qos, retain = factory.upstream.will
    assert topic == "fleetpulse/v1/customers/c-0001/sites/c-0001-s1/gateways/c-0001-gw1/status"
    assert json.loads(will)["state"] == "offline" and qos == 1 and retain

    assert collector.tick()
    (status,) = factory.upstream.topics(STATUS)
    body = json.loads(status.payload)
    assert status.retain and status.qos == 1
    assert body["state"] == "online" and body["gateway_id"] == "c-0001-gw1"
    assert body["customer_id"] == "c-0001" and body["site_id"] == "c-0001-s1" and body["at_ms"] == NOW_MS
    assert set(body["counters"]) >= {"received_messages", "received_records", "sent_records",
                                     "sent_batches", "dropped_records", "dead_letters", "errors",
                                     "reconnects"}


def test_topic_prefix_is_prepended_to_the_subscription(tmp_path: Path, clock: FakeClock) -> None:
    factory = FakeFactory()
    collector = Collector(make_config(tmp_path, topic_prefix="sim/c-0001-gw1/"),
                          client_factory=factory, clock=clock)
    collector.start()
    assert factory.local.subscriptions == [("sim/c-0001-gw1/fleetpulse/v1/devices/+/telemetry", 1)]
    assert collector.stop(timeout_s=1)


def test_unreachable_local_broker_raises_transient_error_naming_it(tmp_path: Path) -> None:
    factory = FakeFactory(local={"connect_error": ConnectionRefusedError(111, "Connection refused")})
    collector = Collector(make_config(tmp_path), client_factory=factory)
    with pytest.raises(BrokerUnreachable, match=r"cannot reach local broker 127\.0\.0\.1:1883: .*refused"):
        collector.start()
    assert collector.stop(timeout_s=30) is True  # returns at once: there is nothing to drain
    Collector(make_config(tmp_path), client_factory=FakeFactory()).start()  # the spool was unlocked


def test_unreachable_upstream_does_not_stop_the_gateway_it_spools_and_drains_later(
        tmp_path: Path, clock: FakeClock) -> None:
    factory = FakeFactory(upstream={"connect_error": ConnectionRefusedError(111, "Connection refused")})
    collector = Collector(make_config(tmp_path, max_records=2), client_factory=factory, clock=clock)
    collector.start()
    assert factory.upstream.connected_async  # paho keeps trying in the background
    factory.local.deliver(TOPIC.format("dev-001"), payload(record(seq=0), record(seq=1)), mid=1)
    assert collector.tick()
    assert factory.local.acks == [(1, 1)]  # on disk: acknowledged to the device side
    assert collector.backlog_records == 2
    factory.upstream.connected()  # the central broker is back
    assert collector.wait_idle(5)
    assert [r["seq"] for b in batches(factory) for r in b["records"]] == [0, 1]
    assert collector.stop(timeout_s=1)


def test_reconnect_delays_are_jittered_capped_and_reset_after_a_connect(tmp_path: Path) -> None:
    import random

    from fleetpulse.devices.collector.collector import Backoff

    backoff = Backoff(500, 8000, random.Random(7))
    delays = [backoff.next_s() for _ in range(8)]
    for n, delay in enumerate(delays):
        ceiling = min(8.0, 0.5 * 2**n)
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(delays[4:])) == 4  # capped, but not in lockstep
    backoff.reset()
    assert backoff.next_s() <= 0.5
    # The collector hands paho one jittered delay per disconnect.
    factory = FakeFactory()
    collector = Collector(make_config(tmp_path), client_factory=factory)
    collector.start()
    before = len(factory.upstream.reconnect_delays)
    for _ in range(3):
        factory.upstream.lost()
    lows = [low for low, high in factory.upstream.reconnect_delays[before:]]
    assert len(lows) == 3 and lows[0] <= 0.5 < lows[2] <= 2.0
    collector.stop(timeout_s=0.1)


def test_refused_credentials_are_terminal(tmp_path: Path) -> None:
    factory = FakeFactory(upstream={"connack": "Not authorized"})
    with pytest.raises(BrokerRefused, match="refused the connection: Not authorized"):
        Collector(make_config(tmp_path), client_factory=factory).start()


def test_tls_verifies_the_broker_and_credentials_come_from_the_environment(tmp_path: Path) -> None:
    path = write_config(tmp_path, extra_upstream='ca_file = "ca.pem"\npassword_env = "GW_PW"\n')
    path.write_text(path.read_text().replace("tls = false", "tls = true")
                    .replace('username = ""', 'username = "gw1"'))
    factory = FakeFactory()
    collector = Collector(load_config(path, environ={"GW_PW": "s3cret"}), client_factory=factory)
    collector.start()
    assert factory.upstream.tls["ca_certs"] == "ca.pem"
    assert factory.upstream.tls["cert_reqs"] == ssl.CERT_REQUIRED
    assert factory.upstream.credentials == ("gw1", "s3cret")
    assert collector.stop(timeout_s=1)


def test_unreadable_tls_files_are_a_config_error_at_start(tmp_path: Path) -> None:
    path = write_config(tmp_path, extra_upstream=f'ca_file = "{tmp_path / "missing-ca.pem"}"\n')
    path.write_text(path.read_text().replace("tls = false", "tls = true"))
    with pytest.raises(ConfigError) as info:
        Collector(load_config(path, environ={})).start()  # the real paho client
    assert info.value.key == "upstream.ca_file" and info.value.source == str(path)


# ------------------------------------------------------------------ batching
@with_collector(max_records=3, max_interval_ms=10_000)
def test_batches_by_count_and_acks_the_device_message_once_its_records_are_on_disk(
        running: tuple[Collector, FakeFactory], clock: FakeClock) -> None:
    collector, factory = running
    factory.local.deliver(TOPIC.format("dev-001"), payload(*[record(seq=i) for i in range(7)]), mid=41)
    assert collector.tick()
    assert factory.local.acks == [(41, 1)]  # durable in the spool
    got = batches(factory)
    assert [len(b["records"]) for b in got] == [3, 3]
    assert [b["batch_seq"] for b in got] == [0, 3]  # the spool index of each batch's first record
    assert all(b["customer_id"] == "c-0001" and b["site_id"] == "c-0001-s1"
               and b["gateway_id"] == "c-0001-gw1" and b["sent_ms"] == NOW_MS for b in got)
    assert collector.tick()  # the fake's PUBACKs were queued while the first tick ran
    assert collector.backlog_records == 1  # the 7th waits for max_interval_ms

    clock.advance(10_000)
    assert collector.tick()
    assert [len(b["records"]) for b in batches(factory)] == [3, 3, 1]
    assert collector.wait_idle(timeout_s=1)
    counters = collector.counters
    assert counters["received_messages"] == 1 and counters["received_records"] == 7
    assert counters["spooled_records"] == 7
    assert counters["sent_records"] == 7 and counters["sent_batches"] == 3
    assert counters["spool_backlog_records"] == 0


@with_collector(max_records=500, max_interval_ms=1000)
def test_batches_by_time_since_first_record(running: tuple[Collector, FakeFactory],
                                            clock: FakeClock) -> None:
    collector, factory = running
    factory.local.deliver(TOPIC.format("dev-001"), payload(record(seq=0)), mid=1)
    assert collector.tick()  # the worker reads the clock when it takes the message
    clock.advance(600)
    factory.local.deliver(TOPIC.format("dev-002"), payload(record("dev-002", seq=0)), mid=2)
    assert collector.tick()
    clock.advance(399)
    assert collector.tick()
    assert batches(factory) == []
    clock.advance(1)
    assert collector.tick()
    (batch,) = batches(factory)
    assert [r["device_id"] for r in batch["records"]] == ["dev-001", "dev-002"]
    assert sorted(factory.local.acks) == [(1, 1), (2, 1)]


@with_collector(max_records=5000, max_interval_ms=60_000)
def test_batches_never_exceed_the_contract_payload_limit(running: tuple[Collector, FakeFactory],
                                                         clock: FakeClock) -> None:
    collector, factory = running
    sent = 0
    for m in range(4):  # 4 × ~110 kB of records: more than one 256 KiB envelope
        records = [record(f"dev-{m}", seq=i, kind="error", message="z" * 200) for i in range(300)]
        factory.local.deliver(TOPIC.format(f"dev-{m}"), payload(*records), mid=m + 1)
        sent += len(records)
    assert collector.tick()
    clock.advance(60_000)
    assert collector.tick()
    sizes = [len(p.payload) for p in factory.upstream.topics(BATCHES)]
    assert len(sizes) >= 2 and max(sizes) <= 262144
    got = [(r["device_id"], r["seq"]) for b in batches(factory) for r in b["records"]]
    assert len(got) == sent == len(set(got))
    assert collector.wait_idle(timeout_s=1)


def test_records_with_clock_before_2000_skip_the_future_check(tmp_path: Path) -> None:
    # A Raspberry Pi without RTC boots in 1970 until NTP: records must still flow.
    clock = FakeClock(now_ms=5_000)
    factory = FakeFactory()
    collector = Collector(make_config(tmp_path, max_records=1), client_factory=factory, clock=clock)
    collector.start()
    factory.local.deliver(TOPIC.format("dev-001"), payload(record(seq=0)), mid=1)
    assert collector.tick()
    assert len(batches(factory)) == 1 and collector.counters["dropped_records"] == {}
    assert collector.stop(timeout_s=1)


# --------------------------------------------------------------- dead letters
@with_collector(max_records=1)
def test_invalid_input_is_dead_lettered_with_reason_counted_and_acked(
        running: tuple[Collector, FakeFactory], tmp_path: Path) -> None:
    collector, factory = running
    bad_record = record(seq=1)
    del bad_record["fw"]
    future = record(seq=2, ts_ms=NOW_MS + 3_600_000)
    factory.local.deliver(TOPIC.format("dev-001"), b"{not json", mid=1)
    factory.local.deliver(TOPIC.format("dev-001"), b"\xff\xfe", mid=2)
    factory.local.deliver(TOPIC.format("dev-001"), payload(record(seq=0), bad_record, future), mid=3)
    factory.local.deliver(TOPIC.format("dev-001"), b"[1, 2]", mid=4, qos=0)
    assert collector.tick()
    assert collector.wait_idle(timeout_s=1)

    rows = [json.loads(line) for line in (tmp_path / "dead-letters" / "gw.jsonl").read_text().splitlines()]
    assert [r["reason"] for r in rows] == ["not_json", "not_utf8", "missing_field",
                                          "event_time_in_future", "not_object", "not_object"]
    assert all(r["source"] == "gateway:c-0001-gw1" for r in rows)
    assert rows[0]["topic"] == TOPIC.format("dev-001") and rows[0]["payload"] == "{not json"
    assert rows[1]["payload_encoding"] == "base64"
    assert rows[2]["index"] == 1 and rows[2]["record"] == bad_record and "fw" in rows[2]["detail"]

    counters = collector.counters
    assert counters["dropped_records"] == {"event_time_in_future": 1, "missing_field": 1,
                                           "not_json": 1, "not_object": 2, "not_utf8": 1}
    assert counters["dead_letters"] == 6 and counters["errors"] == 0
    assert counters["received_messages"] == 4
    assert counters["received_records"] == counters["sent_records"] + 6 == 7
    # every QoS 1 message is acknowledged locally, the valid one once spooled
    assert sorted(factory.local.acks) == [(1, 1), (2, 1), (3, 1)]


# --------------------------------------------------------------- back-pressure
@with_collector(max_records=1, max_inflight_batches=2, fake={"upstream": {"auto_puback": False}})
def test_inflight_cap_keeps_the_rest_on_disk_until_pubacks_free_space(
        running: tuple[Collector, FakeFactory]) -> None:
    collector, factory = running
    for seq in range(5):
        factory.local.deliver(TOPIC.format("dev-001"), payload(record(seq=seq)), mid=100 + seq)
    assert collector.tick()
    assert len(factory.upstream.topics(BATCHES)) == 2  # the cap; 3 records wait on disk
    assert sorted(factory.local.acks) == [(100 + s, 1) for s in range(5)]
    assert collector.backlog_records == 5 and collector.spool.unread_records == 3

    first = factory.upstream.topics(BATCHES)[0]
    factory.upstream.puback(first.mid)
    assert collector.tick()
    assert len(factory.upstream.topics(BATCHES)) == 3
    assert collector.backlog_records == 4

    for p in factory.upstream.topics(BATCHES)[1:]:
        factory.upstream.puback(p.mid)
    assert collector.tick()
    for p in factory.upstream.topics(BATCHES)[3:]:
        factory.upstream.puback(p.mid)
    assert collector.tick()
    assert [json.loads(p.payload)["records"][0]["seq"] for p in factory.upstream.topics(BATCHES)] == [
        0, 1, 2, 3, 4]
    assert collector.wait_idle(timeout_s=1)


@with_collector(max_records=2, fake={"upstream": {"auto_puback": False}})
def test_out_of_order_pubacks_release_only_the_acknowledged_prefix(
        running: tuple[Collector, FakeFactory]) -> None:
    collector, factory = running
    factory.local.deliver(TOPIC.format("dev-001"), payload(*[record(seq=i) for i in range(6)]), mid=1)
    assert collector.tick()
    first, second, third = factory.upstream.topics(BATCHES)
    factory.upstream.puback(third.mid)
    factory.upstream.puback(second.mid)
    assert collector.tick()
    assert collector.backlog_records == 6  # the first batch still holds the spool's head
    factory.upstream.puback(first.mid)
    assert collector.tick()
    assert collector.backlog_records == 0


@with_collector(max_records=1, max_inflight_batches=64, fake={"upstream": {"auto_puback": False}})
def test_inflight_batches_stay_within_the_brokers_receive_maximum(
        running: tuple[Collector, FakeFactory]) -> None:
    collector, factory = running
    factory.upstream.connected(props=SimpleNamespace(ReceiveMaximum=4))  # e.g. after a reconnect
    for seq in range(10):
        factory.local.deliver(TOPIC.format("dev-001"), payload(record(seq=seq)), mid=seq + 1)
    assert collector.tick()
    assert len(factory.upstream.topics(BATCHES)) == 3  # 4 minus one for the status message


@with_collector(max_records=1)
def test_refused_batch_is_counted_and_resent(running: tuple[Collector, FakeFactory],
                                             clock: FakeClock) -> None:
    collector, factory = running
    factory.upstream.auto_puback = False
    factory.local.deliver(TOPIC.format("dev-001"), payload(record(seq=0)), mid=7)
    assert collector.tick()
    (first,) = factory.upstream.topics(BATCHES)
    factory.upstream.puback(first.mid, reason="Quota exceeded")
    assert collector.tick()
    assert collector.counters["errors"] == 1 and factory.local.acks == [(7, 1)]
    assert collector.backlog_records == 1
    assert len(factory.upstream.topics(BATCHES)) == 1  # waits before resending
    clock.advance(5000)
    assert collector.tick()
    resent = factory.upstream.topics(BATCHES)[1]
    assert json.loads(resent.payload)["records"] == json.loads(first.payload)["records"]
    assert resent.payload == first.payload  # the same batch, as paho would resend it
    factory.upstream.puback(resent.mid)
    assert collector.wait_idle(timeout_s=1)
    assert collector.counters["sent_records"] == 1


# ----------------------------------------------------------------- reconnects
@with_collector(max_records=1)
def test_local_reconnect_resubscribes_counts_and_never_acks_stale_packet_ids(
        running: tuple[Collector, FakeFactory]) -> None:
    collector, factory = running
    gate = threading.Event()
    commit = collector.spool.commit
    collector.spool.commit = lambda: (gate.wait(5), commit())[1]  # type: ignore[method-assign]
    factory.local.deliver(TOPIC.format("dev-001"), payload(record(seq=0)), mid=5)
    factory.local.lost()  # before the record was durable
    factory.local.connected()
    gate.set()
    assert collector.tick()
    assert factory.local.subscriptions == [("fleetpulse/v1/devices/+/telemetry", 1)] * 2
    assert factory.local.acks == []  # packet id 5 of the old connection means nothing now
    # the broker redelivers mid 5 on the new connection; it is spooled (again) and acknowledged
    factory.local.deliver(TOPIC.format("dev-001"), payload(record(seq=0)), mid=5)
    assert collector.wait_idle(timeout_s=1)
    assert factory.local.acks == [(5, 1)]
    assert collector.counters["reconnects"] == 1
    assert collector.counters["sent_records"] == 2  # a duplicate, same (device, boot, seq)

    factory.upstream.lost()
    factory.upstream.connected()
    assert collector.tick()
    assert collector.counters["reconnects"] == 2
    assert len(factory.upstream.topics(STATUS)) == 2  # "online" again after the Will may have fired


# ------------------------------------------------------------------ stop/drain
@with_collector(max_records=500, max_interval_ms=60_000)
def test_stop_flushes_open_batch_waits_for_pubacks_and_says_offline(
        running: tuple[Collector, FakeFactory], caplog: pytest.LogCaptureFixture) -> None:
    collector, factory = running
    factory.local.deliver(TOPIC.format("dev-001"), payload(*[record(seq=i) for i in range(10)]), mid=9)
    assert collector.tick()
    assert batches(factory) == [] and factory.local.acks == [(9, 1)]
    with caplog.at_level(logging.INFO, logger="fleetpulse.devices.collector"):
        assert collector.stop(timeout_s=5) is True
    (batch,) = batches(factory)
    assert len(batch["records"]) == 10
    last = json.loads(factory.upstream.topics(STATUS)[-1].payload)
    assert last["state"] == "offline" and last["counters"]["sent_records"] == 10
    assert factory.local.disconnected and factory.upstream.disconnected
    assert any("stopped; counters" in r.message and '"sent_records": 10' in r.message
               for r in caplog.records)


def test_drain_timeout_keeps_the_records_in_the_spool_for_the_next_start(
        tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    config = make_config(tmp_path, max_records=1)
    factory = FakeFactory(upstream={"auto_puback": False})
    collector = Collector(config, client_factory=factory, clock=clock)
    collector.start()
    factory.local.deliver(TOPIC.format("dev-001"), payload(record(seq=0)), mid=3)
    assert collector.tick()
    with caplog.at_level(logging.WARNING, logger="fleetpulse.devices.collector"):
        assert collector.stop(timeout_s=0.2) is False
    assert factory.local.acks == [(3, 1)]  # it is on disk
    assert any("drain timed out" in r.message and "1 records stay in the spool" in r.message
               for r in caplog.records)
    again = FakeFactory()
    restarted = Collector(config, client_factory=again, clock=clock)
    restarted.start()
    assert restarted.wait_idle(timeout_s=2)
    assert [r["seq"] for b in batches(again) for r in b["records"]] == [0]
    assert restarted.stop(timeout_s=1)


def test_batches_pass_the_shared_envelope_validator(tmp_path: Path, clock: FakeClock) -> None:
    factory = FakeFactory()
    collector = Collector(make_config(tmp_path, max_records=4), client_factory=factory, clock=clock)
    collector.start()
    kinds = ["heartbeat", "usage", "feature", "error"]
    factory.local.deliver(TOPIC.format("dev-001"),
                          payload(*[record(seq=i, kind=kinds[i]) for i in range(4)]), mid=1)
    assert collector.tick()
    (p,) = factory.upstream.topics(BATCHES)
    header, valid, rejected = Validator().envelope(p.payload, now_ms=NOW_MS)
    assert rejected == [] and header is not None and len(valid) == 4
    assert p.qos == 1 and not p.retain
    assert p.topic == "fleetpulse/v1/customers/c-0001/sites/c-0001-s1/gateways/c-0001-gw1/batches"
    wait_until(lambda: collector.pending_messages == 0, 5, "settled")
    assert collector.stop(timeout_s=1)


def test_a_spool_that_cannot_be_written_acknowledges_nothing_and_reports_the_failure(
        tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    import errno

    factory = FakeFactory()
    collector = Collector(make_config(tmp_path), client_factory=factory, clock=clock)
    collector.start()

    def disk_full() -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    collector.spool.commit = disk_full  # type: ignore[method-assign]
    with caplog.at_level(logging.CRITICAL, logger="fleetpulse.devices.collector"):
        factory.local.deliver(TOPIC.format("dev-001"), payload(record(seq=0)), mid=4)
        wait_until(lambda: collector.failure is not None, 5, "the failure")
    assert "No space left on device" in (collector.failure or "")
    assert factory.local.acks == []  # the local broker keeps it for the restart
    assert collector.counters["errors"] == 1
    assert any("acknowledging nothing more" in r.message for r in caplog.records)
    collector.stop(timeout_s=0.2)
