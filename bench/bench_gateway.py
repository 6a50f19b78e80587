"""Gateway collector store-and-forward benchmarks (issue 3), on real Mosquitto brokers.

Run from the repository root (it starts the Debian ``mosquitto`` through ``tests/servers.py``)::

    python -m bench.bench_gateway                 # 20,000 records, 500 MB backlog
    python -m bench.bench_gateway --quick         # smoke run: small sizes
    python -m bench.bench_gateway --records 50000 --backlog-mb 200 --only forward drain
    python -m bench.bench_gateway --only forward queue --local-conf deploy/gateway/mosquitto.conf

Four measurements, each against a baseline or a bound taken in the same run:

* **forward** — the collector (receive, validate, spool with group-commit fsync,
  QoS 1 batches upstream with ``max_inflight_batches`` in flight) against a bare
  paho relay (subscribe QoS 1 locally, republish each message QoS 1 upstream
  with the same in-flight window; no validation, no disk). Both run as their
  own process, as on a gateway, between two brokers started here; the device
  messages (10 records each) are published from this process and the time runs
  from the first publish to the last record seen by a subscriber on the
  central broker. Alternating trials, best of ``repeats``. Target: >= 0.7x.
* **spool** — ``Spool.append`` + ``commit`` (fsync) per record against append
  and one commit per ``GROUP_COMMIT_RECORDS`` records, fsync on, in a
  temporary directory (``$TMPDIR``, default ``/tmp``). Target: >= 5x.
* **drain** — a spool filled with ``--backlog-mb`` of records (direct
  ``Spool.append``, fsync off), then ``fleetpulse gateway run`` started on it
  with the central broker up: its peak RSS (``VmHWM``) while it drains
  everything, the time from process start to the first batch at the central
  broker, and the drain rate. The same process's peak RSS with an empty spool
  is measured too, so the backlog's share is visible. Target: peak < 64 MB.
* **queue** — the local broker's side of a collector restart: the collector's
  session exists but it is stopped while the devices publish ``records``; the
  rate at which the broker acknowledges them (it queues them for the session),
  then the rate at which a restarted collector takes them upstream. No target:
  it shows what the local broker's persistence settings cost.

The local broker is a plain test broker (``tests/servers.py``: persistence on,
Mosquitto's default 30-minute autosave) unless ``--local-conf`` names a gateway
broker config such as ``deploy/gateway/mosquitto.conf``: forward and queue then
run it as installed (included from Debian's ``mosquitto.conf``, see
``tests/gateway_broker.py``). Devices publish on its loopback listener, as the
collector does: the device listener's ACL admits one device per connection,
and the persistence settings are global.

``run(quick)`` returns the results for ``python -m bench``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .harness import Comparison, Measurement

if TYPE_CHECKING:
    from tests.servers import Server

REPO = Path(__file__).resolve().parent.parent
IDS = {"customer_id": "c-0001", "site_id": "c-0001-s1", "gateway_id": "c-0001-gw1"}
DEVICE_TOPIC = "fleetpulse/v1/devices/{device}/telemetry"
DEVICE_SUBSCRIPTION = "fleetpulse/v1/devices/+/telemetry"
#: Counting records at the central subscriber by this key is a C-speed bytes.count,
#: so the measuring side costs little and the same for both forwarders.
RECORD_KEY = b'"device_id"'

RECORDS_PER_MESSAGE = 10
INFLIGHT = 20  # the relay's in-flight window and the collector's max_inflight_batches
BATCH_MAX_RECORDS = 500
# A partial batch waits this long for more records; short, so the tail of a
# trial is not a timer (the gateway default is 1000 ms).
BATCH_MAX_INTERVAL_MS = 100
RECEIVE_MAXIMUM = 1000  # local receive window, for both forwarders (the collector's default)
GROUP_COMMIT_RECORDS = 256
RSS_TARGET_MB = 64.0
FORWARD_TARGET = 0.7
SPOOL_TARGET = 5.0
START_TIMEOUT_S = 30.0


# ------------------------------------------------------------------ test data
def device_record(device: str, seq: int, ts_ms: int) -> dict[str, Any]:
    """A valid contract-v1 record, shaped like the simulator's (kinds in turn)."""
    kind = ("heartbeat", "usage", "feature", "error")[seq % 4]
    bodies: dict[str, dict[str, Any]] = {
        "heartbeat": {"interval_s": 60, "uptime_s": 3600 + seq},
        "usage": {"period_s": 60, "quantities": [{"name": "pages", "value": 12, "unit": "pages"}]},
        "feature": {"feature": "scan_to_email", "count": 2},
        "error": {"code": "E042", "severity": "warning", "message": "paper jam"},
    }
    return {"device_id": device, "ts_ms": ts_ms, "boot": 1, "seq": seq, "kind": kind,
            "fw": "2.4.1", **bodies[kind]}


def device_messages(records: int, *, devices: int = 100, first_seq: int = 0,
                    now_ms: int | None = None) -> list[tuple[str, bytes]]:
    """``records`` records as (device, payload) messages of ``RECORDS_PER_MESSAGE`` records."""
    ts_ms = (time.time_ns() // 1_000_000 if now_ms is None else now_ms) - 60_000
    out: list[tuple[str, bytes]] = []
    seq = first_seq
    made = 0
    while made < records:
        device = f"dev-{len(out) % devices:03d}"
        size = min(RECORDS_PER_MESSAGE, records - made)
        body = [device_record(device, seq + i, ts_ms) for i in range(size)]
        out.append((device, json.dumps(body).encode()))
        seq += size
        made += size
    return out


# ------------------------------------------------------------------ MQTT sides
class CentralSubscriber:
    """Counts records arriving at the central broker (device topics and the batch topic)."""

    def __init__(self, port: int, topics: list[str]) -> None:
        import paho.mqtt.client as mqtt

        self._lock = threading.Lock()
        self._target = 0
        self.records = 0
        self.messages = 0
        self.first_at: float | None = None  # perf_counter of the first message since expect()
        self.done_at: float | None = None
        self.done = threading.Event()
        subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-central-{os.getpid()}",
                                   protocol=mqtt.MQTTv5)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *a: subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.subscribe([(t, 1) for t in topics])
        self._client.loop_start()
        if not subscribed.wait(10):
            raise RuntimeError("central subscriber: no SUBACK within 10 s")

    def expect(self, records: int) -> None:
        """Start counting afresh; ``done`` is set when ``records`` records have arrived."""
        with self._lock:
            self._target = records
            self.records = self.messages = 0
            self.first_at = self.done_at = None
            self.done.clear()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        n = bytes(message.payload).count(RECORD_KEY)
        now = time.perf_counter()
        with self._lock:
            if self.first_at is None:
                self.first_at = now
            self.records += n
            self.messages += 1
            if self._target and self.records >= self._target and not self.done.is_set():
                self.done_at = now
                self.done.set()

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


class DevicePublisher:
    """Publishes device messages to the local broker with QoS 1, as devices do."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-devices-{os.getpid()}",
                                   protocol=mqtt.MQTTv5)
        # A wide window, so the device side is never what limits the forwarders.
        self._client.max_inflight_messages_set(1000)
        connected = threading.Event()
        self._client.on_connect = lambda *a: connected.set()
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        if not connected.wait(10):
            raise RuntimeError("device publisher: no CONNACK within 10 s")
        self._infos: list[Any] = []

    def publish_all(self, messages: list[tuple[str, bytes]]) -> None:
        self._infos = [self._client.publish(DEVICE_TOPIC.format(device=d), body, qos=1)
                       for d, body in messages]

    def wait_acked(self, timeout_s: float = 60.0) -> None:
        for info in self._infos:
            info.wait_for_publish(timeout_s)

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def relay_main(argv: list[str]) -> int:
    """The baseline forwarder: ``LOCAL_PORT UPSTREAM_PORT INFLIGHT READY_FILE``; runs until SIGTERM.

    Subscribes QoS 1 on the local broker and republishes every message QoS 1
    on the same topic upstream, with ``INFLIGHT`` messages in flight; paho
    acknowledges each local message when the callback returns. No
    validation, no disk.
    """
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    local_port, upstream_port, inflight = (int(a) for a in argv[:3])
    ready_file = Path(argv[3])
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *a: stop.set())

    upstream = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-relay-up", protocol=mqtt.MQTTv5)
    upstream.max_inflight_messages_set(inflight)
    up_ready = threading.Event()
    upstream.on_connect = lambda *a: up_ready.set()
    upstream.connect("127.0.0.1", upstream_port)
    upstream.loop_start()

    local = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-relay-local", protocol=mqtt.MQTTv5)
    subscribed = threading.Event()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        upstream.publish(message.topic, message.payload, qos=1)

    local.on_message = on_message
    local.on_connect = lambda c, *a: c.subscribe(DEVICE_SUBSCRIPTION, qos=1)
    local.on_subscribe = lambda *a: subscribed.set()
    props = Properties(PacketTypes.CONNECT)
    props.ReceiveMaximum = RECEIVE_MAXIMUM
    local.connect("127.0.0.1", local_port, properties=props)
    local.loop_start()
    if not (up_ready.wait(START_TIMEOUT_S) and subscribed.wait(START_TIMEOUT_S)):
        return 1
    ready_file.write_text("ready\n")
    stop.wait()
    local.disconnect()
    local.loop_stop()
    upstream.disconnect()
    upstream.loop_stop()
    return 0


# ------------------------------------------------------------------ processes
def collector_config(folder: Path, *, local_port: int, upstream_port: int, quota_bytes: int,
                     tag: str) -> Path:
    """A collector TOML for the benchmark (own client ids per trial: no session carries over)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "gateway.toml"
    path.write_text(
        "[gateway]\n" + "".join(f'{k} = "{v}"\n' for k, v in IDS.items())
        + f'[local]\nhost = "127.0.0.1"\nport = {local_port}\nclient_id = "bench-gw-{tag}-local"\n'
        f"receive_maximum = {RECEIVE_MAXIMUM}\n"
        f'[upstream]\nhost = "127.0.0.1"\nport = {upstream_port}\nclient_id = "bench-gw-{tag}"\n'
        "drain_timeout_s = 5\n"
        f"[batch]\nmax_records = {BATCH_MAX_RECORDS}\nmax_interval_ms = {BATCH_MAX_INTERVAL_MS}\n"
        f"max_inflight_batches = {INFLIGHT}\n"
        f'[spool]\npath = "{folder / "spool"}"\nquota_bytes = {quota_bytes}\n'
        "[status]\ninterval_s = 3600\n"
        f'[dead_letters]\npath = "{folder / "dead-letters.jsonl"}"\n'
    )
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    return env


@contextmanager
def process(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """A child process (stderr to ``log``), stopped with SIGTERM (then killed) afterwards."""
    with open(log, "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=err, cwd=REPO, env=_env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _wait_for(condition: Any, what: str, proc: subprocess.Popen[bytes], log: Path,
              timeout_s: float = START_TIMEOUT_S) -> None:
    from tests.servers import wait_until

    def check() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with {proc.returncode}; log:\n"
                               f"{log.read_text(errors='replace')[-2000:]}")
        return bool(condition())

    wait_until(check, timeout_s, what)


def collector_argv(config: Path) -> list[str]:
    return [sys.executable, "-m", "fleetpulse", "gateway", "run", "--config", str(config)]


def relay_argv(local_port: int, upstream_port: int, ready: Path) -> list[str]:
    code = "import sys; from bench.bench_gateway import relay_main; sys.exit(relay_main(sys.argv[1:]))"
    return [sys.executable, "-c", code, str(local_port), str(upstream_port), str(INFLIGHT), str(ready)]


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (``/proc/<pid>/stat``), all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_status_kb(pid: int, field_name: str) -> int:
    """A ``/proc/<pid>/status`` figure in kB (VmHWM: peak resident set; VmRSS: current)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


# ------------------------------------------------------------------ the local broker
@dataclass(frozen=True)
class LocalBroker:
    """The gateway's broker for a measurement: its process and the port devices and forwarders use."""

    server: Server
    port: int
    name: str


def local_broker(workdir: Path, local_conf: Path | None) -> LocalBroker:
    """A started local broker: the plain test broker, or ``local_conf`` as installed on a gateway."""
    if local_conf is None:
        from tests.servers import mosquitto

        server = mosquitto(workdir).start()
        return LocalBroker(server, server.port, "test broker (default autosave)")
    from tests.gateway_broker import gateway_broker

    broker = gateway_broker(workdir, conf_text=local_conf.read_text()).start()
    return LocalBroker(broker.server, broker.collector_port, str(local_conf))


# ------------------------------------------------------------------ 1. forward
def _trial(kind: str, folder: Path, local: LocalBroker, central: Server, subscriber: CentralSubscriber,
           devices: DevicePublisher, messages: list[tuple[str, bytes]], records: int,
           probe_seq: int) -> tuple[float, float]:
    """One timed forwarding run: seconds from the first publish to the last record upstream, and
    the CPU seconds the forwarder process used meanwhile."""
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / "stderr.log"
    if kind == "relay":
        ready = folder / "ready"
        argv = relay_argv(local.port, central.port, ready)
    else:
        config = collector_config(folder, local_port=local.port, upstream_port=central.port,
                                  quota_bytes=1 << 30, tag=folder.name)
        argv = collector_argv(config)
    with process(argv, log) as proc:
        if kind == "relay":
            _wait_for(ready.exists, "relay ready", proc, log)
        else:
            _wait_for(lambda: "started" in log.read_text(errors="replace"), "collector started", proc, log)
        # Warm-up: one record end to end proves both connections and subscriptions.
        subscriber.expect(1)
        devices.publish_all(device_messages(1, devices=1, first_seq=probe_seq))
        _wait_for(subscriber.done.is_set, f"{kind}: warm-up record upstream", proc, log, 10)
        subscriber.expect(records)
        cpu = proc_cpu_s(proc.pid)
        started = time.perf_counter()
        devices.publish_all(messages)
        # A guard against a hang, not a speed bound: a local broker that snapshots its
        # database per message (--local-conf) forwards a few hundred records a second.
        _wait_for(subscriber.done.is_set, f"{kind}: {records} records upstream", proc, log,
                  60 + records / 20)
        cpu = proc_cpu_s(proc.pid) - cpu
        assert subscriber.done_at is not None
        elapsed = subscriber.done_at - started
        devices.wait_acked()
        if subscriber.records != records:
            raise AssertionError(f"{kind}: {subscriber.records} records upstream, expected {records}")
    if kind == "collector" and proc.returncode != 0:
        raise AssertionError(f"collector exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
    return elapsed, cpu


@dataclass(frozen=True)
class ForwardComparison(Comparison):
    """A forward-rate comparison that also reports each forwarder's CPU time per record.

    CPU per record is far less sensitive to a busy machine than the rate, and
    says whether a forwarder was busy or waiting (rate x CPU/record < 1 core).
    """

    cpu_us_per_record: tuple[float, float] = (0.0, 0.0)  # (baseline, candidate), median of trials

    def line(self) -> str:
        base, cand = self.cpu_us_per_record
        return f"{super().line()}  [CPU/record: relay {base:.1f} us, collector {cand:.1f} us]"


def forward_rate(workdir: Path, records: int = 20_000, repeats: int = 3,
                 local_conf: Path | None = None) -> ForwardComparison:
    """Collector vs bare paho relay between two real Mosquitto brokers; best of ``repeats`` each."""
    from fleetpulse.schemas import load_contract
    from tests.servers import mosquitto

    batch_topic = load_contract().topic("gateway_batches", **IDS)
    local = local_broker(workdir / "local-broker", local_conf)
    central = mosquitto(workdir / "central-broker").start()
    subscriber = devices = None
    try:
        subscriber = CentralSubscriber(central.port, [DEVICE_SUBSCRIPTION, batch_topic])
        devices = DevicePublisher(local.port)
        messages = device_messages(records)
        best = {"relay": float("inf"), "collector": float("inf")}
        cpu: dict[str, list[float]] = {"relay": [], "collector": []}
        for n in range(repeats):
            for kind in ("relay", "collector"):
                seconds, cpu_s = _trial(kind, workdir / f"{kind}-{n}", local, central, subscriber,
                                        devices, messages, records, probe_seq=10_000_000 + 2 * n)
                best[kind] = min(best[kind], seconds)
                cpu[kind].append(cpu_s)
        return ForwardComparison(
            f"gateway forward rate ({records:,} records, messages of {RECORDS_PER_MESSAGE}, "
            f"{INFLIGHT} in flight, real mosquitto x2, local: {local.name})",
            Measurement("bare paho relay (QoS 1 in, QoS 1 out)", records, best["relay"]),
            Measurement("collector (validate, spool+fsync, batches)", records, best["collector"]),
            FORWARD_TARGET,
            (statistics.median(cpu["relay"]) / records * 1e6,
             statistics.median(cpu["collector"]) / records * 1e6),
        )
    finally:
        if devices is not None:
            devices.close()
        if subscriber is not None:
            subscriber.close()
        central.stop()
        local.server.stop()


# ------------------------------------------------------------------ 2. spool
def spool_commit(workdir: Path, records: int = 2000, repeats: int = 3,
                 group: int = GROUP_COMMIT_RECORDS) -> Comparison:
    """Group commit (one fsync per ``group`` records) vs one commit per record; fsync on."""
    from fleetpulse.devices.collector.batching import encode_record
    from fleetpulse.devices.collector.spool import Spool

    ts_ms = time.time_ns() // 1_000_000
    data = [encode_record(device_record(f"dev-{i % 100:03d}", i, ts_ms)) for i in range(records)]

    def trial(name: str, every: int) -> float:
        folder = workdir / name
        spool = Spool(folder, quota_bytes=1 << 30, fsync=True)
        spool.open()
        try:
            started = time.perf_counter()
            for i, item in enumerate(data, 1):
                spool.append(item, ts_ms)
                if i % every == 0:
                    spool.commit()
            spool.commit()
            elapsed = time.perf_counter() - started
            if spool.backlog_records != records:
                raise AssertionError(f"{spool.backlog_records} records spooled, expected {records}")
        finally:
            spool.close()
            shutil.rmtree(folder)
        return elapsed

    per_record = grouped = float("inf")
    for n in range(repeats):
        per_record = min(per_record, trial(f"per-record-{n}", 1))
        grouped = min(grouped, trial(f"grouped-{n}", group))
    return Comparison(
        f"spool writes, fsync on ({records:,} records in {workdir})",
        Measurement("append+commit per record", records, per_record),
        Measurement(f"append, commit every {group}", records, grouped),
        SPOOL_TARGET,
    )


# ------------------------------------------------------------------ 3. drain
@dataclass(frozen=True)
class DrainResult:
    """Restarting on a large backlog: memory, start latency, drain rate."""

    backlog_bytes: int
    records: int
    fill_s: float
    idle_peak_rss_kb: int  # the same collector started on an empty spool
    peak_rss_kb: int  # VmHWM of the collector that drained the backlog
    first_batch_s: float  # process start → first batch at the central broker
    drain_s: float  # first batch → last record at the central broker
    target_rss_mb: float = RSS_TARGET_MB

    benchmark = "gateway restart on a spool backlog"

    @property
    def rate(self) -> float:
        return self.records / self.drain_s if self.drain_s > 0 else float("inf")

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_kb / 1024

    @property
    def ok(self) -> bool:
        return self.peak_rss_mb < self.target_rss_mb

    def line(self) -> str:
        return (
            f"{self.benchmark}: {self.backlog_bytes / 2**20:,.0f} MB ({self.records:,} records, filled in "
            f"{self.fill_s:.0f} s with fsync off) drained at "
            f"{self.rate:,.0f} records/s ({self.drain_s:.1f} s); first batch {self.first_batch_s:.2f} s "
            f"after process start; peak RSS {self.peak_rss_mb:.1f} MB (empty spool: "
            f"{self.idle_peak_rss_kb / 1024:.1f} MB)  target < {self.target_rss_mb:g} MB: "
            f"{'PASS' if self.ok else 'FAIL'}"
        )


def fill_spool(folder: Path, backlog_bytes: int, quota_bytes: int) -> int:
    """Append records (fsync off) until the spool holds ``backlog_bytes``; returns how many."""
    from fleetpulse.devices.collector.spool import Spool

    ts_ms = time.time_ns() // 1_000_000 - 60_000
    # Records shaped like encode_record's output; formatted directly, for speed.
    template = ('{"device_id":"dev-%03d","ts_ms":' + str(ts_ms) + ',"boot":1,"seq":%d,"kind":"usage",'
                '"fw":"2.4.1","period_s":60,"quantities":[{"name":"pages","value":12,"unit":"pages"}]}')
    spool = Spool(folder, quota_bytes=quota_bytes, fsync=False)
    spool.open()
    n = 0
    try:
        while spool.disk_bytes < backlog_bytes:
            for _ in range(10_000):
                spool.append((template % (n % 1000, n)).encode(), ts_ms)
                n += 1
            spool.commit()
    finally:
        spool.close()
    return n


def drain(workdir: Path, backlog_mb: int = 500) -> DrainResult:
    """Fill a spool with ``backlog_mb`` MB, start the collector on it, measure while it drains."""
    from fleetpulse.devices.collector.spool import Spool
    from fleetpulse.schemas import load_contract
    from tests.servers import mosquitto

    backlog_bytes = backlog_mb << 20
    quota_bytes = max(backlog_bytes + backlog_bytes // 4, 64 << 20)
    batch_topic = load_contract().topic("gateway_batches", **IDS)
    local = mosquitto(workdir / "local-broker").start()
    central = mosquitto(workdir / "central-broker").start()
    subscriber = None
    try:
        subscriber = CentralSubscriber(central.port, [batch_topic])

        # Baseline: the same collector on an empty spool.
        idle = workdir / "idle"
        config = collector_config(idle, local_port=local.port, upstream_port=central.port,
                                  quota_bytes=quota_bytes, tag="idle")
        with process(collector_argv(config), idle / "stderr.log") as proc:
            _wait_for(lambda: "started" in (idle / "stderr.log").read_text(errors="replace"),
                      "idle collector started", proc, idle / "stderr.log")
            idle_peak = proc_status_kb(proc.pid, "VmHWM")

        folder = workdir / "backlog"
        config = collector_config(folder, local_port=local.port, upstream_port=central.port,
                                  quota_bytes=quota_bytes, tag="backlog")
        started = time.perf_counter()
        records = fill_spool(folder / "spool", backlog_bytes, quota_bytes)
        fill_s = time.perf_counter() - started
        on_disk = sum(p.stat().st_size for p in (folder / "spool").glob("*.seg"))

        subscriber.expect(records)
        log = folder / "stderr.log"
        spawned = time.perf_counter()
        with process(collector_argv(config), log) as proc:
            _wait_for(subscriber.done.is_set, f"{records:,} records drained", proc, log,
                      120 + records / 5000)
            peak = proc_status_kb(proc.pid, "VmHWM")
        if proc.returncode != 0:
            raise AssertionError(f"collector exited {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        assert subscriber.first_at is not None and subscriber.done_at is not None
        if subscriber.records != records:
            raise AssertionError(f"{subscriber.records} records upstream, expected {records}")
        # Every record released: the spool is empty for the next start.
        spool = Spool(folder / "spool", quota_bytes=quota_bytes, fsync=False)
        left = spool.open().backlog_records
        spool.close()
        if left:
            raise AssertionError(f"{left} records left in the spool after the drain")
        return DrainResult(
            backlog_bytes=on_disk,
            records=records,
            fill_s=fill_s,
            idle_peak_rss_kb=idle_peak,
            peak_rss_kb=peak,
            first_batch_s=subscriber.first_at - spawned,
            drain_s=subscriber.done_at - subscriber.first_at,
        )
    finally:
        if subscriber is not None:
            subscriber.close()
        central.stop()
        local.stop()


# ------------------------------------------------------------------ 4. queue
@dataclass(frozen=True)
class QueueResult:
    """Devices publishing while the collector is stopped, then the restarted collector draining."""

    broker: str
    records: int
    messages: int
    queue_s: float  # first publish → last PUBACK to the devices (the broker queues for the session)
    drain_s: float  # collector process start → last record at the central broker
    db_bytes: int  # the local broker's snapshot with everything queued

    benchmark = "local broker while the collector is stopped"
    ok = True  # no target: what the persistence settings cost

    def line(self) -> str:
        return (
            f"{self.benchmark} ({self.broker}): {self.messages:,} device messages ({self.records:,} "
            f"records) acknowledged at {self.messages / self.queue_s:,.0f} messages/s "
            f"({self.queue_s:.1f} s; snapshot {self.db_bytes / 2**20:.1f} MB); the restarted collector "
            f"took them upstream at {self.records / self.drain_s:,.0f} records/s ({self.drain_s:.1f} s)"
        )


def queue_rate(workdir: Path, records: int = 20_000, local_conf: Path | None = None) -> QueueResult:
    """What a collector restart asks of the local broker: queue ``records`` for its session, hand them over."""
    from fleetpulse.schemas import load_contract
    from tests.servers import mosquitto

    batch_topic = load_contract().topic("gateway_batches", **IDS)
    local = local_broker(workdir / "local-broker", local_conf)
    central = mosquitto(workdir / "central-broker").start()
    subscriber = devices = None
    try:
        subscriber = CentralSubscriber(central.port, [batch_topic])
        devices = DevicePublisher(local.port)
        folder = workdir / "collector"
        config = collector_config(folder, local_port=local.port, upstream_port=central.port,
                                  quota_bytes=1 << 30, tag="queue")
        log = folder / "stderr.log"
        # First run: the collector's session and subscription exist; one record proves it.
        with process(collector_argv(config), log) as proc:
            _wait_for(lambda: "started" in log.read_text(errors="replace"), "collector started", proc, log)
            subscriber.expect(1)
            devices.publish_all(device_messages(1, devices=1, first_seq=20_000_000))
            _wait_for(subscriber.done.is_set, "warm-up record upstream", proc, log)
        messages = device_messages(records)
        started = time.perf_counter()
        devices.publish_all(messages)
        devices.wait_acked(600)
        queue_s = time.perf_counter() - started
        db = local.server.workdir / "mosquitto.db"
        db_bytes = db.stat().st_size if db.exists() else 0
        subscriber.expect(records)
        started = time.perf_counter()
        with process(collector_argv(config), log) as proc:
            _wait_for(subscriber.done.is_set, f"{records:,} queued records upstream", proc, log,
                      120 + records / 20)
        drain_s = time.perf_counter() - started
        return QueueResult(local.name, records, len(messages), queue_s, drain_s, db_bytes)
    finally:
        if devices is not None:
            devices.close()
        if subscriber is not None:
            subscriber.close()
        central.stop()
        local.server.stop()


# ------------------------------------------------------------------ entry points
BENCHMARKS = ("forward", "spool", "drain", "queue")


def run(quick: bool = False, *, records: int | None = None, backlog_mb: int | None = None,
        only: tuple[str, ...] = BENCHMARKS,
        local_conf: Path | None = None) -> list[Comparison | DrainResult | QueueResult]:
    """The measurements (``quick``: small sizes for a smoke run); ``local_conf``: see the module docstring."""
    records = records or (2_000 if quick else 20_000)
    backlog_mb = backlog_mb or (20 if quick else 500)
    repeats = 1 if quick else 5
    results: list[Comparison | DrainResult | QueueResult] = []
    with tempfile.TemporaryDirectory(prefix="fp-bench-gateway-") as tmp:
        root = Path(tmp)
        if "forward" in only:
            results.append(forward_rate(root / "forward", records, repeats, local_conf))
        if "spool" in only:
            results.append(spool_commit(root / "spool", 200 if quick else 2000, repeats))
        if "drain" in only:
            results.append(drain(root / "drain", backlog_mb))
        if "queue" in only:
            results.append(queue_rate(root / "queue", records, local_conf))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_gateway", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--records", type=int, help="records forwarded per trial (default 20,000; quick 2,000)")
    parser.add_argument("--backlog-mb", type=int, help="spool backlog to drain (default 500; quick 20)")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, default=list(BENCHMARKS),
                        help="run only these measurements")
    parser.add_argument("--local-conf", type=Path, metavar="FILE",
                        help="run the local broker of forward and queue from this gateway broker config, "
                             "as installed (e.g. deploy/gateway/mosquitto.conf); default: a plain test broker")
    args = parser.parse_args(argv)
    if args.local_conf is not None and not args.local_conf.is_file():
        parser.error(f"--local-conf {args.local_conf}: no such file")
    failed = False
    for result in run(args.quick, records=args.records, backlog_mb=args.backlog_mb, only=tuple(args.only),
                      local_conf=args.local_conf):
        print(result.line(), flush=True)
        failed |= not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
