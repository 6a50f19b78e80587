"""Store-and-forward on real Mosquitto: kill -9, central outages, and a full spool.

Every scenario counts what the devices published against what a persistent
subscriber on the central broker received; the collector runs as its real
CLI process where crashes matter.
"""

from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from fleetpulse.devices.collector.collector import Collector
from fleetpulse.devices.collector.config import load_config
from fleetpulse.devices.collector.spool import MIN_QUOTA_BYTES, Spool

from . import servers
from .servers import Server, free_port, wait_until
from .test_collector_integration import Central, Devices, key, now_ms
from .test_collector_support import record, write_config

pytestmark = pytest.mark.integration


def device_messages(devices: int, per_device: int, records_per_message: int) -> list[tuple[str, bytes]]:
    """Interleaved device messages; each device's seq numbers rise message by message."""
    base = now_ms() - 3_600_000
    out = []
    for m in range(per_device // records_per_message):
        for d in range(devices):
            device = f"dev-{d:03d}"
            recs = [record(device, m * records_per_message + i, ts_ms=base + m * 1000 + i)
                    for i in range(records_per_message)]
            out.append((device, json.dumps(recs).encode()))
    return out


def config_path(tmp_path: Path, local: int, upstream: int, *, batch: str, spool: str = "",
                receive_maximum: int = 1000, drain_timeout_s: int = 10) -> Path:
    path = write_config(tmp_path, local_port=local, upstream_port=upstream, batch=batch, spool=spool,
                        extra_upstream=f"drain_timeout_s = {drain_timeout_s}\nreconnect_min_ms = 100\n"
                                       "reconnect_max_ms = 1000\n")
    path.write_text(path.read_text().replace("topic_prefix", f"receive_maximum = {receive_maximum}\ntopic_prefix"))
    return path


def first_seen_order_is_per_device_ascending(records: list[dict[str, Any]]) -> bool:
    seen: set = set()
    last: dict[str, int] = defaultdict(lambda: -1)
    for r in records:
        if key(r) in seen:
            continue  # a resent duplicate
        seen.add(key(r))
        if r["seq"] < last[r["device_id"]]:
            return False
        last[r["device_id"]] = r["seq"]
    return True


def spool_backlog(config: Path) -> int:
    spool = Spool(load_config(config, environ={}).spool.path, quota_bytes=1 << 30)
    report = spool.open()
    spool.close()
    return report.backlog_records


def _persistent_central(port: int) -> Central:
    return Central(port, client_id="test-central-durable", persistent=True)


def test_kill_9_at_random_points_loses_no_accepted_record(
        tmp_path: Path, mosquitto_pair: tuple[Server, Server]) -> None:
    local, central_broker = mosquitto_pair
    central = _persistent_central(central_broker.port)
    devices = Devices(local.port)
    path = config_path(tmp_path, local.port, central_broker.port, receive_maximum=200,
                       batch="max_records = 100\nmax_interval_ms = 20\nmax_inflight_batches = 20\n")
    messages = device_messages(devices=50, per_device=400, records_per_message=10)  # 20,000 records
    expected = {(f"dev-{d:03d}", 1, s) for d in range(50) for s in range(400)}
    assert len(expected) == 20_000

    done = threading.Event()

    def publish() -> None:  # paced: the kills land while devices are still publishing
        for start in range(0, len(messages), 50):  # ~ 10 s in all
            devices.publish_all(messages[start:start + 50])
            if done.wait(0.25):
                return
        done.set()

    publisher = threading.Thread(target=publish, daemon=True)
    rng = random.Random(20261122)
    kill_points = sorted(rng.sample(range(200, 19_000), 12))

    def unique() -> int:
        return len({key(r) for r in central.records()})

    procs: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        log = open(tmp_path / f"collector-{len(procs)}.log", "wb")  # noqa: SIM115 (closed below)
        proc = subprocess.Popen([sys.executable, "-m", "fleetpulse", "gateway", "run", "--config", str(path)],
                                stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        procs.append(proc)
        return proc

    try:
        proc = start()
        wait_until(lambda: (central.last_status() or {}).get("state") == "online", 30, "first collector online")
        publisher.start()
        kills = during_publish = 0
        for point in kill_points:
            wait_until(lambda p=point: unique() >= p or done.is_set(), 60, f"{point} records upstream")
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
            during_publish += not done.is_set()
            proc = start()
        assert kills >= 10 and during_publish >= 5
        wait_until(done.is_set, 120, "the devices to finish publishing")
        wait_until(lambda: unique() == 20_000, 120, "every record at the central broker")
        last_log = tmp_path / f"collector-{len(procs) - 1}.log"
        wait_until(lambda: "started" in last_log.read_text(), 30, "the last collector started")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        done.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        devices.close()
        central.close()

    records = central.records()
    assert {key(r) for r in records} == expected
    # Duplicates only from what was in flight at a kill: at most the upstream window
    # (20 batches × 100) plus the local window (200 messages × 10) per kill, and
    # identical to the first copy, so dedupe by (device_id, boot, seq) removes them.
    copies: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        copies[key(r)].append(r)
    duplicates = len(records) - len(copies)
    assert duplicates <= len(kill_points) * (20 * 100 + 200 * 10)
    assert all(all(c == same[0] for c in same) for same in copies.values())
    assert spool_backlog(path) == 0


def test_central_outage_everything_arrives_in_order_and_the_spool_empties(
        tmp_path: Path, mosquitto_pair: tuple[Server, Server]) -> None:
    local, central_broker = mosquitto_pair
    central = _persistent_central(central_broker.port)
    devices = Devices(local.port)
    path = config_path(tmp_path, local.port, central_broker.port,
                       batch="max_records = 50\nmax_interval_ms = 20\nmax_inflight_batches = 20\n")
    collector = Collector(load_config(path, environ={}))
    collector.start()
    messages = device_messages(devices=10, per_device=300, records_per_message=5)  # 3,000 records
    try:
        devices.publish_all(messages[:200])
        wait_until(lambda: len(central.records()) >= 500, 20, "records before the outage")
        central.close()
        central_broker.stop()
        devices.publish_all(messages[200:])  # the devices never notice
        wait_until(lambda: collector.counters["spooled_records"] == 3000, 30, "all spooled meanwhile")
        assert collector.backlog_records > 0
        before = central.records()
        central_broker.start()
        central = _persistent_central(central_broker.port)
        assert collector.wait_idle(timeout_s=60)
        wait_until(lambda: len({key(r) for r in before + central.records()}) == 3000, 30, "all 3,000 upstream")
        received = before + central.records()
        assert first_seen_order_is_per_device_ascending(received)
        assert collector.counters["reconnects"] >= 1
        assert collector.backlog_records == 0 and collector.counters["spool_backlog_records"] == 0
        assert collector.counters["dropped_records"] == {}
    finally:
        assert collector.stop(timeout_s=10)
        central.close()
        devices.close()
    assert spool_backlog(path) == 0


@pytest.mark.parametrize("policy", ["drop_oldest", "reject_new"])
def test_a_full_spool_drops_by_its_policy_counts_exactly_and_recovers(
        tmp_path: Path, mosquitto: Server, policy: str) -> None:
    central_port = free_port()
    central_broker = servers.mosquitto(tmp_path / "central", port=central_port).start()
    central = _persistent_central(central_port)  # the session outlives the outage
    central.close()
    central_broker.stop()
    devices = Devices(mosquitto.port)
    path = config_path(tmp_path, mosquitto.port, central_port, spool=f'quota_bytes = {MIN_QUOTA_BYTES}\n'
                       f'on_full = "{policy}"\n', batch="max_records = 20\nmax_interval_ms = 20\n"
                       "max_inflight_batches = 2\n")
    collector = Collector(load_config(path, environ={}))
    collector.start()  # the central broker is down: it starts anyway and spools
    total = 2000
    messages = device_messages(devices=1, per_device=total, records_per_message=10)
    try:
        devices.publish_all(messages)
        wait_until(lambda: collector.counters["received_records"] == total and collector.pending_messages == 0,
                   30, "every device message handled")
        dropped = collector.counters["dropped_records"].get("spool_quota", 0)
        assert dropped > 0
        assert collector.counters["dropped_records"] == {"spool_quota": dropped}
        assert collector.spool.disk_bytes <= MIN_QUOTA_BYTES
        if policy == "reject_new":
            assert collector.counters["spooled_records"] + dropped == total
        central_broker.start()
        central = _persistent_central(central_port)
        assert collector.wait_idle(timeout_s=60)
        spooled = collector.counters["spooled_records"]
        # The broker's PUBACK comes before its delivery to the subscriber: wait for that too.
        wait_until(lambda: len({r["seq"] for r in central.records()}) >= min(spooled, total - dropped), 20,
                   "the spooled records at the subscriber")
        got = {r["seq"] for r in central.records()}
        assert len(got) + dropped == total  # exact: each record delivered or counted, never both
        if policy == "drop_oldest":
            assert total - 1 in got  # the newest data is kept
        else:
            assert 0 in got and total - 1 not in got  # the oldest is kept, new ones refused
        # Progress after the outage, not deadlock: fresh records flow straight through.
        fresh = [("dev-000", json.dumps(record("dev-000", total + i, ts_ms=now_ms() - 1000)).encode())
                 for i in range(50)]
        devices.publish_all(fresh)
        wait_until(lambda: {total + i for i in range(50)} <= {r["seq"] for r in central.records()}, 20,
                   "fresh records after the outage")
        assert collector.counters["dropped_records"]["spool_quota"] == dropped
    finally:
        assert collector.stop(timeout_s=10)
        central.close()
        devices.close()
        central_broker.stop()
