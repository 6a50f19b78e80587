"""Unit tests of the fleet simulator: determinism, planted patterns, contract, outputs."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import threading
from collections import Counter, defaultdict
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from fleetpulse import cli as fleetpulse_cli
from fleetpulse.devices.simulator import cli as sim_cli
from fleetpulse.devices.simulator.fleet import (
    FIRMWARE_VERSIONS,
    PATTERNS,
    SPIKE_ERROR_CODE,
    Fleet,
    build_fleet,
    derive_rng,
)
from fleetpulse.devices.simulator.generate import (
    MALFORMED_KINDS,
    DeviceMessage,
    TelemetryGenerator,
    malformed_payload,
)
from fleetpulse.devices.simulator.publish import FileSink, MqttSink
from fleetpulse.devices.simulator.registry import (
    BrokerSettings,
    accounts_csv,
    gateway_config,
    write_outputs,
)
from fleetpulse.devices.simulator.simulation import SimulationConfig, simulate
from fleetpulse.errors import TransientError
from fleetpulse.schemas import Validator, load_contract
from fleetpulse.schemas.accounts import COLUMNS

from .servers import free_port

START = date(2026, 8, 1)
DAYS = 30


class ListSink:
    """A sink that keeps what it is sent (for tests of ``simulate``)."""

    def __init__(self) -> None:
        self.messages: list[DeviceMessage] = []
        self.sent = 0
        self.errors = 0
        self.events: list[str] = []

    @property
    def paths(self) -> tuple[Path, ...]:
        return ()

    def open(self) -> None:
        self.events.append("open")

    def send(self, message: DeviceMessage) -> None:
        self.messages.append(message)
        self.sent += 1

    def drain(self) -> None:
        self.events.append("drain")

    def close(self) -> None:
        self.events.append("close")


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    return build_fleet(11, 12, START, DAYS)


@pytest.fixture(scope="module")
def messages(fleet: Fleet) -> list[DeviceMessage]:
    return list(TelemetryGenerator(fleet, malformed_per_day=2))


@pytest.fixture(scope="module")
def decoded(messages: list[DeviceMessage]) -> list[tuple[DeviceMessage, list[dict[str, Any]]]]:
    """Every valid message with its records decoded (JSON only, no validation)."""
    return [(m, json.loads(m.payload)) for m in messages if m.malformed is None]


def _by_customer(fleet: Fleet, pattern: str) -> list[str]:
    return [c.customer_id for c in fleet.customers if c.pattern == pattern]


def _usage_devices_per_day(
    decoded: list[tuple[DeviceMessage, list[dict[str, Any]]]], customer_id: str
) -> dict[int, set[str]]:
    out: dict[int, set[str]] = defaultdict(set)
    for m, records in decoded:
        if m.customer_id == customer_id and any(r["kind"] == "usage" for r in records):
            out[m.day].add(m.device_id)
    return out


# ---------------------------------------------------------------- determinism
def test_derived_rngs_do_not_depend_on_the_process_hash_seed() -> None:
    # Literal values: str hash() is salted per process, sha256 is not.
    assert derive_rng(7, "device", "c-0001-d001").random() == derive_rng(7, "device", "c-0001-d001").random()
    assert derive_rng(7, "a").getrandbits(32) == 840963834


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    outputs = []
    for run in ("a", "b"):
        config = SimulationConfig(seed=3, customers=9, days=10, malformed_per_day=2)
        fleet = config.build_fleet()
        write_outputs(fleet, tmp_path / run, BrokerSettings("127.0.0.1", 1883))
        simulate(config, FileSink(tmp_path / run), fleet=fleet)
        outputs.append(
            {p.relative_to(tmp_path / run): p.read_bytes() for p in sorted((tmp_path / run).rglob("*")) if p.is_file()}
        )
    assert outputs[0].keys() == outputs[1].keys()
    assert Path("accounts.csv") in outputs[0] and Path("truth.json") in outputs[0]
    assert any(p.parts[0] == "telemetry" for p in outputs[0])
    for path, data in outputs[0].items():
        assert data == outputs[1][path], path


_DIGEST_SCRIPT = """
import hashlib, json
from datetime import date
from fleetpulse.devices.simulator.fleet import build_fleet
from fleetpulse.devices.simulator.generate import TelemetryGenerator
from fleetpulse.devices.simulator.registry import accounts_csv
fleet = build_fleet(4, 8, date(2026, 8, 1), 3)
h = hashlib.sha256(accounts_csv(fleet.accounts).encode())
h.update(json.dumps(fleet.truth()).encode())
for m in TelemetryGenerator(fleet, malformed_per_day=2):
    h.update(m.payload)
print(h.hexdigest())
"""


def test_outputs_do_not_depend_on_the_process_hash_seed() -> None:
    digests = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run(
            [sys.executable, "-c", _DIGEST_SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        digests.add(done.stdout.strip())
    assert len(digests) == 1


def test_different_seed_gives_different_fleet_and_records() -> None:
    a, b = build_fleet(1, 9, START, 5), build_fleet(2, 9, START, 5)
    assert accounts_csv(a.accounts) != accounts_csv(b.accounts)
    payloads_a = [m.payload for m in TelemetryGenerator(a)]
    payloads_b = [m.payload for m in TelemetryGenerator(b)]
    assert payloads_a != payloads_b


# ---------------------------------------------------------------- the fleet
@pytest.mark.parametrize("customers", [8, 9, 13, 24, 40])
@pytest.mark.parametrize("seed", [0, 7, 12345])
def test_every_pattern_is_planted_from_eight_customers(seed: int, customers: int) -> None:
    fleet = build_fleet(seed, customers, START, 60)
    assert {c.pattern for c in fleet.customers} == set(PATTERNS)
    truth = fleet.truth()
    assert all(truth["patterns"][p] for p in PATTERNS)
    assert truth["gateway_offline"] and truth["firmware_spike"]["version"] in FIRMWARE_VERSIONS


def test_segments_are_mostly_smb_and_engagement_follows_segment() -> None:
    fleet = build_fleet(7, 100, START, 60)
    segments = Counter(a.segment for a in fleet.accounts)
    assert segments["smb"] > segments["mid_market"] > segments["enterprise"] >= 1
    for a in fleet.accounts:
        lo, hi = {"smb": (3, 10), "mid_market": (10, 30), "enterprise": (30, 80)}[a.segment]
        assert lo <= a.entitled_devices <= hi
        if a.segment == "enterprise":
            assert a.engagement_model != "digital"
        if a.segment == "smb":
            assert a.engagement_model != "high_touch"
        if a.engagement_model == "high_touch":
            assert a.csm_owner
        if a.engagement_model == "digital":
            assert a.csm_owner is None
        assert a.nps is None or -100 <= a.nps <= 100
        assert a.contract_start < a.renewal_date
    multi_site = [c for c in fleet.customers if len(c.gateways) > 1]
    assert multi_site and all(c.account.segment == "enterprise" for c in multi_site)


def test_identifiers_match_the_contract(fleet: Fleet) -> None:
    contract = load_contract(1)
    ids = [a.customer_id for a in fleet.accounts]
    ids += [s for c in fleet.customers for s in c.site_ids]
    ids += [g.gateway_id for g in fleet.gateways] + [d.device_id for d in fleet.devices]
    assert len(ids) == len(set(ids))
    for identifier in ids:
        assert contract.identifier_re.fullmatch(identifier), identifier
        assert len(identifier) <= contract.limits.identifier_max_length
    assert fleet.customers[0].customer_id == "c-0001"
    assert fleet.customers[0].gateways[0].gateway_id == "c-0001-gw1"
    assert fleet.customers[0].devices[0].device_id == "c-0001-d001"


def test_onboarding_accounts_start_in_the_span_and_risky_ones_renew_soon() -> None:
    fleet = build_fleet(5, 40, START, 60)
    for c in fleet.customers:
        a = c.account
        if c.pattern in ("fast_onboarding", "stalled_onboarding"):
            assert START < a.contract_start <= fleet.end_date
        else:
            assert a.contract_start < START
        if c.pattern in ("gradual_decline", "sudden_drop"):
            assert a.renewal_date <= fleet.end_date + timedelta(days=90)


# ---------------------------------------------------------------- registry
def test_accounts_csv_layout_and_no_ground_truth_in_it(fleet: Fleet) -> None:
    text = accounts_csv(fleet.accounts)
    assert text.splitlines()[0] == (
        "customer_id,name,segment,engagement_model,arr_usd,contract_start,renewal_date,"
        "entitled_devices,csm_owner,nps,csm_channel,contact_email"
    )
    rows = list(csv.DictReader(io.StringIO(text)))
    assert tuple(rows[0]) == COLUMNS
    assert [r["customer_id"] for r in rows] == [a.customer_id for a in fleet.accounts]
    for row in rows:
        date.fromisoformat(row["contract_start"])
        date.fromisoformat(row["renewal_date"])
        assert row["arr_usd"].isdigit() and int(row["arr_usd"]) > 0
        assert row["entitled_devices"].isdigit()
        assert row["nps"] == "" or -100 <= int(row["nps"]) <= 100
        assert row["csm_owner"] == "" or "@" in row["csm_owner"]
        assert row["csm_channel"] in ("", "csm-chat") and (row["csm_channel"] == "" or row["csm_owner"])
        assert row["contact_email"].endswith(f"@{row['customer_id']}.example")
    assert any(r["nps"] == "" for r in rows) and any(r["csm_owner"] == "" for r in rows)
    for pattern in PATTERNS:
        assert pattern not in text


def test_gateway_config_is_the_agreed_toml(tmp_path: Path, fleet: Fleet) -> None:
    tomllib = pytest.importorskip("tomllib")
    paths = write_outputs(fleet, tmp_path, BrokerSettings("10.1.2.3", 1884))
    assert len(paths.gateway_configs) == len(fleet.gateways)
    gateway = fleet.gateways[0]
    config = tomllib.loads((tmp_path / "gateways" / f"{gateway.gateway_id}.toml").read_text())
    gid = gateway.gateway_id
    assert config == {
        "gateway": {"customer_id": gateway.customer_id, "site_id": gateway.site_id, "gateway_id": gid},
        "local": {
            "host": "10.1.2.3",
            "port": 1884,
            "topic_prefix": f"sim/{gid}/",
            "client_id": f"fleetpulse-gw-{gid}-local",
            "protocol": "5",
        },
        "upstream": {
            "host": "10.1.2.3", "port": 1884, "client_id": f"fleetpulse-gw-{gid}", "protocol": "5", "tls": False,
        },
        "batch": {"max_records": 500, "max_interval_ms": 1000},
        "dead_letters": {"path": f"dead-letters/{gid}.jsonl"},
    }
    truth = json.loads(paths.truth.read_text())
    assert truth["customers"][gateway.customer_id]["gateways"][0] == gid


def test_write_outputs_removes_configs_of_gateways_no_longer_simulated(tmp_path: Path) -> None:
    stale = tmp_path / "gateways" / "c-9999-gw1.toml"
    stale.parent.mkdir(parents=True)
    stale.write_text("[gateway]\n")
    write_outputs(build_fleet(1, 2, START, 3), tmp_path)
    assert not stale.exists()
    assert sorted(p.name for p in (tmp_path / "gateways").iterdir()) == ["c-0001-gw1.toml", "c-0002-gw1.toml"]


def test_gateway_config_strings_are_escaped() -> None:
    tomllib = pytest.importorskip("tomllib")
    gateway = build_fleet(1, 1, START, 1).gateways[0]
    config = tomllib.loads(gateway_config(gateway, BrokerSettings('host"with\\quote', 1)))
    assert config["local"]["host"] == 'host"with\\quote'


# ---------------------------------------------------------------- records
def test_every_generated_record_validates(fleet: Fleet, messages: list[DeviceMessage]) -> None:
    validator = Validator()
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    for m in messages:
        valid, rejected = validator.device_payload(m.payload, now_ms=now_ms)
        if m.malformed is None:
            assert rejected == [], (m.device_id, m.day, rejected)
            assert len(valid) == m.records > 0
        else:
            assert valid == [] and len(rejected) == 1, (m.malformed, rejected)
        assert m.topic == f"fleetpulse/v1/devices/{m.device_id}/telemetry"
        assert m.prefixed_topic == f"sim/{m.gateway_id}/{m.topic}"


def test_records_belong_to_their_device_and_day_in_time_order(
    fleet: Fleet, decoded: list[tuple[DeviceMessage, list[dict[str, Any]]]]
) -> None:
    per_device_day = []
    for m, records in decoded:
        day_start = datetime.combine(fleet.date_of(m.day), datetime.min.time(), UTC)
        lo = int(day_start.timestamp() * 1000)
        assert all(r["device_id"] == m.device_id for r in records)
        assert all(lo <= r["ts_ms"] < lo + 86_400_000 for r in records)
        assert [r["ts_ms"] for r in records] == sorted(r["ts_ms"] for r in records)
        per_device_day.append(len(records))
    mean = sum(per_device_day) / len(per_device_day)
    assert 8 <= mean <= 15, mean
    assert max(per_device_day) <= 25


def test_boot_and_seq_are_unique_and_seq_increases_within_a_boot(
    decoded: list[tuple[DeviceMessage, list[dict[str, Any]]]],
) -> None:
    seen: set[tuple[str, int, int]] = set()
    last: dict[str, tuple[int, int, int]] = {}  # device -> (boot, seq, ts_ms)
    reboots = 0
    for _m, records in decoded:
        for r in records:
            key = (r["device_id"], r["boot"], r["seq"])
            assert key not in seen, key
            seen.add(key)
            previous = last.get(r["device_id"])
            if previous is not None:
                boot, seq, ts = previous
                assert r["ts_ms"] >= ts
                if r["boot"] == boot:
                    assert r["seq"] == seq + 1
                else:
                    assert r["boot"] == boot + 1 and r["seq"] == 0
                    reboots += 1
            last[r["device_id"]] = (r["boot"], r["seq"], r["ts_ms"])
    assert reboots > 0  # the fleet does reboot, so the rule above was exercised


def test_heartbeats_every_four_hours_for_powered_devices(
    fleet: Fleet, decoded: list[tuple[DeviceMessage, list[dict[str, Any]]]]
) -> None:
    deployed_before = {d.device_id for d in fleet.devices if d.deploy_day is None}
    for m, records in decoded:
        beats = [r for r in records if r["kind"] == "heartbeat"]
        assert all(r["interval_s"] == 14400 and r["uptime_s"] >= 0 for r in beats)
        if m.device_id in deployed_before:
            assert len(beats) >= 6


def test_usage_and_feature_bodies(decoded: list[tuple[DeviceMessage, list[dict[str, Any]]]]) -> None:
    features = set()
    for _m, records in decoded:
        for r in records:
            if r["kind"] == "usage":
                assert [(q["name"], q["unit"]) for q in r["quantities"]] == [
                    ("runtime", "s"),
                    ("cycles", "count"),
                    ("energy", "kWh"),
                ]
                assert 0 < r["quantities"][0]["value"] <= r["period_s"] <= 14400
            elif r["kind"] == "feature":
                features.add(r["feature"])
                assert r["count"] >= 1
    assert features == {"scan", "print_color", "duplex", "secure_release", "remote_config"}


# ---------------------------------------------------------------- patterns
def test_gateway_offline_days_send_nothing_from_that_gateway(fleet: Fleet) -> None:
    sink = ListSink()
    summary = simulate(SimulationConfig(seed=11, customers=12, days=DAYS), sink, fleet=fleet)
    assert fleet.outages
    for outage in fleet.outages:
        days_seen = {m.day for m in sink.messages if m.gateway_id == outage.gateway_id}
        assert days_seen == set(range(outage.first_day))
        assert outage.last_day == DAYS - 1 and outage.last_day - outage.first_day + 1 >= 2
    assert summary.messages_withheld > 0
    assert summary.messages_sent == len(sink.messages)
    # The devices behind the dark gateway were in fact used: no data is not no usage.
    withheld = [m for m in TelemetryGenerator(fleet) if m.withheld]
    assert withheld and any(b'"kind":"usage"' in m.payload for m in withheld)


def test_multi_site_account_loses_only_one_gateway() -> None:
    fleet = build_fleet(7, 24, START, 60)
    dark = [c for c in fleet.customers if c.pattern == "gateway_offline" and len(c.gateways) > 1]
    assert dark, "an enterprise account carries the outage"
    assert [o.gateway_id for o in fleet.outages if o.customer_id == dark[0].customer_id] == [
        dark[0].offline_gateway
    ]


def test_sudden_drop_devices_keep_heartbeating_but_stop_using(
    fleet: Fleet, decoded: list[tuple[DeviceMessage, list[dict[str, Any]]]]
) -> None:
    for cid in _by_customer(fleet, "sudden_drop"):
        customer = fleet.customer(cid)
        drop = customer.drop_day
        assert drop is not None and drop == int(DAYS * 0.7)
        usage = _usage_devices_per_day(decoded, cid)
        before = sum(len(usage[d]) for d in range(drop)) / drop
        after = sum(len(usage[d]) for d in range(drop, DAYS)) / (DAYS - drop)
        assert before >= 0.8 * customer.account.entitled_devices
        assert after <= 0.2 * before
        for day in range(drop, DAYS):
            beating = {m.device_id for m, rs in decoded if m.customer_id == cid and m.day == day
                       and any(r["kind"] == "heartbeat" for r in rs)}
            assert beating == {d.device_id for d in customer.devices}


def test_expansion_uses_more_devices_than_entitled(
    fleet: Fleet, decoded: list[tuple[DeviceMessage, list[dict[str, Any]]]]
) -> None:
    for cid in _by_customer(fleet, "expansion"):
        usage = _usage_devices_per_day(decoded, cid)
        entitled = fleet.customer(cid).account.entitled_devices
        assert len(set().union(*usage.values())) > entitled
        assert len(usage[DAYS - 1]) > entitled  # the extra devices are in daily use by the end


def test_onboarding_ramps_fast_or_stalls(
    fleet: Fleet, decoded: list[tuple[DeviceMessage, list[dict[str, Any]]]]
) -> None:
    sent_days = defaultdict(set)
    for m, _ in decoded:
        sent_days[m.customer_id].add(m.day)
    for cid in _by_customer(fleet, "fast_onboarding"):
        customer = fleet.customer(cid)
        start = customer.onboard_day
        assert start is not None and min(sent_days[cid]) == start
        usage = _usage_devices_per_day(decoded, cid)
        window = set().union(*(usage[d] for d in range(start + 12, start + 15)))
        assert len(window) >= 0.85 * customer.account.entitled_devices
    for cid in _by_customer(fleet, "stalled_onboarding"):
        customer = fleet.customer(cid)
        assert customer.onboard_day is not None and min(sent_days[cid]) == customer.onboard_day
        usage = _usage_devices_per_day(decoded, cid)
        ever = set().union(*usage.values())
        assert 0 < len(ever) <= 0.35 * customer.account.entitled_devices


def test_gradual_decline_falls_over_the_span(
    fleet: Fleet, decoded: list[tuple[DeviceMessage, list[dict[str, Any]]]]
) -> None:
    for cid in _by_customer(fleet, "gradual_decline"):
        usage = _usage_devices_per_day(decoded, cid)
        first = sum(len(usage[d]) for d in range(7)) / 7
        last = sum(len(usage[d]) for d in range(DAYS - 7, DAYS)) / 7
        assert last <= 0.65 * first


def test_steady_accounts_stay_broadly_active(
    fleet: Fleet, decoded: list[tuple[DeviceMessage, list[dict[str, Any]]]]
) -> None:
    for cid in _by_customer(fleet, "steady"):
        usage = _usage_devices_per_day(decoded, cid)
        entitled = fleet.customer(cid).account.entitled_devices
        mean = sum(len(usage[d]) for d in range(DAYS)) / DAYS
        assert 0.7 * entitled <= mean <= entitled


def test_firmware_spike_is_one_version_on_many_customers_and_modest(
    fleet: Fleet, decoded: list[tuple[DeviceMessage, list[dict[str, Any]]]]
) -> None:
    spike = fleet.firmware_spike
    per_device_day: Counter[tuple[str, int]] = Counter()
    customers_hit = set()
    for m, records in decoded:
        for r in records:
            if r["kind"] == "error" and r["code"] == SPIKE_ERROR_CODE:
                assert r["fw"] == spike.version
                assert spike.first_day <= m.day <= spike.last_day
                assert r["severity"] in ("error", "critical")
                per_device_day[(m.device_id, m.day)] += 1
                customers_hit.add(m.customer_id)
    with_version = {d.customer_id for d in fleet.devices if d.initial_fw == spike.version}
    assert len(customers_hit) >= len(with_version) // 2 >= 2
    assert max(per_device_day.values()) <= 2


# ---------------------------------------------------------------- malformed
def test_each_malformed_kind_is_rejected_once() -> None:
    validator = Validator()
    reasons = {}
    for kind in MALFORMED_KINDS:
        valid, rejected = validator.device_payload(malformed_payload(kind, "c-0001-d001", 1_785_000_000_000, "3.2.1"))
        assert valid == [] and len(rejected) == 1, kind
        reasons[kind] = rejected[0].reason
    assert reasons == {
        "not_json": "not_json",
        "missing_field": "missing_field",
        "bad_identifier": "bad_identifier",
        "negative_quantity": "bad_quantity",
        "unknown_kind": "unknown_kind",
    }


def test_summary_counts_malformed_separately(fleet: Fleet, messages: list[DeviceMessage]) -> None:
    sink = ListSink()
    summary = simulate(
        SimulationConfig(seed=11, customers=12, days=DAYS, malformed_per_day=2), sink, fleet=fleet
    )
    assert summary.malformed_messages == 2 * DAYS
    assert sum(summary.malformed_by_kind.values()) == 2 * DAYS
    assert set(summary.malformed_by_kind) == set(MALFORMED_KINDS)
    sent = [m for m in messages if not m.withheld]
    assert summary.messages_sent == len(sent) == len(sink.messages)
    assert summary.records_sent == sum(m.records for m in sent)
    assert sum(summary.records_by_customer.values()) == summary.records_sent
    assert sink.events == ["open", "drain", "close"]


# ---------------------------------------------------------------- simulate / sinks
def test_pacing_uses_the_injected_clock_and_sleeper() -> None:
    now = [100.0]
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds

    progress: list[tuple[int, int]] = []
    config = SimulationConfig(seed=1, customers=2, days=3, seconds_per_day=2.0)
    simulate(config, ListSink(), lambda d, n: progress.append((d, n)), clock=lambda: now[0], sleep=sleep)
    assert sleeps == [2.0, 2.0]  # none after the last day
    assert progress == [(1, 3), (2, 3), (3, 3)]


def test_file_sink_writes_one_line_per_message_per_gateway(tmp_path: Path, fleet: Fleet) -> None:
    (tmp_path / "telemetry").mkdir()
    (tmp_path / "telemetry" / "old-gw.jsonl").write_text("stale\n")
    sink = FileSink(tmp_path, max_open_files=2)  # fewer handles than gateways: reopen path
    summary = simulate(SimulationConfig(seed=11, customers=12, days=3, malformed_per_day=1), sink)
    files = sorted((tmp_path / "telemetry").glob("*.jsonl"))
    assert [p.name for p in files] == sorted(f"{g.gateway_id}.jsonl" for g in fleet.gateways)
    assert tuple(files) == summary.paths
    validator = Validator()
    lines = 0
    for path in files:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            assert row["topic"].startswith(f"sim/{path.stem}/fleetpulse/v1/devices/")
            valid, rejected = validator.device_payload(row["payload"].encode())
            assert (len(rejected) == 1) if not valid else rejected == []
            lines += 1
    assert lines == summary.messages_sent == sink.sent


def test_generator_refuses_days_out_of_order(fleet: Fleet) -> None:
    generator = TelemetryGenerator(fleet)
    with pytest.raises(ValueError, match="in order"):
        generator.day(1)


class FakeInfo:
    def __init__(self, mid: int) -> None:
        self.mid = mid
        self.rc = 0


class FakeClient:
    """Stands in for paho: acks on a background thread, or synchronously, or never."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.on_connect: Any = None
        self.on_disconnect: Any = None
        self.on_publish: Any = None
        self.published: list[tuple[str, bytes, int]] = []
        self.pending: list[int] = []
        self.max_pending = 0
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread: threading.Thread | None = None

    def max_inflight_messages_set(self, n: int) -> None:
        self.inflight = n

    def connect(self, host: str, port: int, keepalive: int) -> None:
        pass

    def loop_start(self) -> None:
        class Ok:
            is_failure = False

        self.on_connect(self, None, None, Ok(), None)
        if self.mode == "async":
            self.thread = threading.Thread(target=self._ack_loop, daemon=True)
            self.thread.start()

    def _ack_loop(self) -> None:
        while not self.stop.is_set():
            with self.lock:
                mid = self.pending.pop(0) if self.pending else None
            if mid is None:
                self.stop.wait(0.001)
            else:
                self.on_publish(self, None, mid, None, None)

    def publish(self, topic: str, payload: bytes, qos: int) -> FakeInfo:
        mid = len(self.published) + 1
        self.published.append((topic, payload, qos))
        if self.mode == "sync":
            self.on_publish(self, None, mid, None, None)  # the PUBACK beats publish() returning
        elif self.mode == "async":
            with self.lock:
                self.pending.append(mid)
                self.max_pending = max(self.max_pending, len(self.pending))
        return FakeInfo(mid)

    def disconnect(self) -> None:
        self.stop.set()

    def loop_stop(self) -> None:
        if self.thread is not None:
            self.thread.join()


def _some_messages(n: int) -> list[DeviceMessage]:
    generator = TelemetryGenerator(build_fleet(1, 3, START, 2))
    return list(generator)[:n]


@pytest.mark.parametrize("mode", ["async", "sync"])
def test_mqtt_sink_bounds_inflight_and_drains(mode: str) -> None:
    client = FakeClient(mode)
    sink = MqttSink("broker.test", 1883, max_inflight=3, client_factory=lambda cid: client)
    sink.open()
    batch = _some_messages(20)
    for m in batch:
        sink.send(m)
    sink.drain()
    sink.close()
    assert sink.sent == sink.published == 20 and sink.errors == 0
    assert client.max_pending <= 3
    assert [(t, q) for t, _, q in client.published] == [(m.prefixed_topic, 1) for m in batch]


def test_mqtt_sink_gives_up_when_the_broker_stops_acking() -> None:
    client = FakeClient("never")
    sink = MqttSink("broker.test", 1883, max_inflight=2, ack_timeout_s=0.1, client_factory=lambda cid: client)
    sink.open()
    messages = _some_messages(3)
    sink.send(messages[0])
    sink.send(messages[1])
    with pytest.raises(TransientError, match=r"broker\.test:1883"):
        sink.send(messages[2])
    sink.close()


def test_mqtt_sink_names_the_broker_it_cannot_reach() -> None:
    port = free_port()  # nothing listens there
    sink = MqttSink("127.0.0.1", port)
    with pytest.raises(TransientError, match=f"127.0.0.1:{port}"):
        sink.open()
    sink.close()


# ---------------------------------------------------------------- CLI
def test_cli_writes_files_and_prints_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "sim"
    code = fleetpulse_cli.main(
        ["simulate", "--customers", "8", "--days", "4", "--to-files", "--out", str(out), "--malformed-per-day", "1"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "8 customers" in printed and "4 malformed messages" in printed
    assert (out / "accounts.csv").exists() and (out / "truth.json").exists()
    assert len(list((out / "gateways").glob("*.toml"))) == len(list((out / "telemetry").glob("*.jsonl")))
    truth = json.loads((out / "truth.json").read_text())
    assert truth["start_date"] == "2026-08-01" and truth["seed"] == 7


def test_cli_reports_an_unreachable_broker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    port = free_port()
    code = fleetpulse_cli.main(
        ["simulate", "--customers", "2", "--days", "1", "--broker", f"127.0.0.1:{port}", "--out", str(tmp_path)]
    )
    assert code == 1
    assert f"127.0.0.1:{port}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["--broker", "localhost"], "--broker"),
        (["--broker", "h:99999"], "--broker"),
        (["--start-date", "August"], "--start-date"),
        (["--customers", "0"], "--customers"),
        (["--seconds-per-day", "-1"], "--seconds-per-day"),
    ],
)
def test_cli_rejects_bad_arguments_naming_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], key: str
) -> None:
    code = fleetpulse_cli.main(["simulate", "--out", str(tmp_path), *argv])
    assert code == 2
    err = capsys.readouterr().err
    assert key in err and "fix:" in err
    assert not (tmp_path / "accounts.csv").exists()


def test_cli_warns_when_the_span_reaches_into_the_future(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    future = (datetime.now(UTC).date() + timedelta(days=3)).isoformat()
    argv = ["simulate", "--customers", "1", "--days", "1", "--to-files", "--out", str(tmp_path)]
    with caplog.at_level("WARNING", logger="fleetpulse.devices.simulator.cli"):
        assert fleetpulse_cli.main([*argv, "--start-date", future]) == 0
        assert "event_time_in_future" in caplog.text
        caplog.clear()
        assert fleetpulse_cli.main([*argv, "--start-date", "2020-01-01"]) == 0
        assert "event_time_in_future" not in caplog.text


def test_parse_broker_accepts_ipv6() -> None:
    assert sim_cli.parse_broker("[::1]:1883") == ("::1", 1883)
    assert sim_cli.parse_broker("broker.local:8883") == ("broker.local", 8883)
