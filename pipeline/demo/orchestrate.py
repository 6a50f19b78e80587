"""Runs every FleetPulse part for ``make demo`` and its test.

The live path is the streaming one: collectors forward to the central broker,
``fleetpulse ingest`` (a subprocess: Beam on the FnApiRunner) lands, dedupes
and archives the batches as they come, and a lander keeps the gateways'
status messages. Then the batch job recomputes the signals over the same lake
(the replayable path a data engineer uses with a new health model).

After the Beam job, the sample playbooks (deploy/playbooks/lifecycle.yaml) run
over the signals with every channel captured to a file channel
(``<out>/playbooks/sent/<channel>.jsonl``), so the demo shows the alerts and
digital touches the seeded fleet deserves without mail servers or webhooks.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from fleetpulse.devices.collector.collector import Collector
from fleetpulse.devices.collector.config import load_config
from fleetpulse.devices.simulator.publish import MqttSink
from fleetpulse.devices.simulator.registry import BrokerSettings, write_outputs
from fleetpulse.devices.simulator.simulation import SimulationConfig, simulate
from fleetpulse.errors import FleetPulseError
from fleetpulse.pipeline.analytics.retention import compute_retention
from fleetpulse.pipeline.analytics.usage import Period, open_archive, period_usage
from fleetpulse.pipeline.health.config import load_health_model
from fleetpulse.pipeline.jobs.backfill import JobConfig
from fleetpulse.pipeline.jobs.backfill import run as run_backfill
from fleetpulse.pipeline.jobs.metrics import counters
from fleetpulse.pipeline.lake.lander import Lander, LanderConfig
from fleetpulse.pipeline.model import Alert, DailySignal
from fleetpulse.pipeline.outputs import tables as outputs
from fleetpulse.pipeline.outputs.influx import InfluxConfig
from fleetpulse.pipeline.playbooks.channels import Channel, FileChannel
from fleetpulse.pipeline.playbooks.config import ChannelConfig, PlaybookSet, load_playbooks
from fleetpulse.pipeline.playbooks.engine import PlaybookRun, run_playbooks
from fleetpulse.pipeline.playbooks.ledger import EpisodeRow, Ledger, OutboxRow
from fleetpulse.pipeline.report.html import render_html
from fleetpulse.pipeline.report.text import render_portfolio
from fleetpulse.schemas.accounts import load_accounts

from .broker import InProcessBroker, MosquittoBroker, mosquitto_binary
from .progress import Progress


@dataclass(frozen=True)
class DemoConfig:
    out: Path = Path("fleetpulse-demo")
    seed: int = 7
    customers: int = 24
    days: int = 60
    malformed_per_day: int = 2
    progress: bool = True
    landing_timeout_s: float = 120.0
    #: the streaming ingest stops after this long without a message
    ingest_idle_stop_ms: int = 5000
    #: "auto": Debian's Mosquitto if installed (the streaming path), else amqtt
    #: in process (the lander path); or force "mosquitto" / "amqtt"
    broker: str = "auto"
    #: the sample playbooks in a clone; None skips the playbooks step
    playbooks: Path | None = Path(__file__).resolve().parents[2] / "deploy" / "playbooks" / "lifecycle.yaml"


@dataclass(frozen=True)
class DemoResult:
    out: Path
    truth: dict[str, Any]
    latest: list[DailySignal]
    alerts: list[Alert]
    records_sent: int
    dead_letters_at_gateways: int
    counters: dict[str, int]
    report: str
    playbook_run: PlaybookRun | None = None
    episodes: tuple[EpisodeRow, ...] = ()
    messages: tuple[OutboxRow, ...] = ()  # every message the playbooks queued, with its status


class DemoError(FleetPulseError):
    pass


#: the streaming job's reader client id prefix (reader 0 connects as <prefix>-0)
INGEST_CLIENT = "fleetpulse-demo-ingest"


def prepare_ingest_session(host: str, port: int, client_id: str, protocol: str, timeout_s: float = 10.0) -> None:
    """Create the streaming reader's persistent session before anything is published.

    A broker keeps messages only for subscriptions that exist; the ingest job
    takes seconds to start, so its session is made first (as a deployment does
    once), and the job resumes it.
    """
    from fleetpulse import mqtt_client
    from fleetpulse.pipeline.sources.mqtt import MqttSourceConfig

    subscribed = threading.Event()
    source = (MqttSourceConfig(protocol="3.1.1", share_group=None) if protocol == "3.1.1"
              else MqttSourceConfig())
    options = mqtt_client.ClientOptions(client_id, protocol=protocol, persistent=True)
    client = mqtt_client.build(options)
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect(host, port, **mqtt_client.connect_kwargs(options, keepalive_s=60,
                                                            session_expiry_s=source.session_expiry_s))
    client.loop_start()
    try:
        client.subscribe([(sub, 1) for sub in source.subscriptions])
        if not subscribed.wait(timeout_s):
            raise DemoError(f"the central broker {host}:{port} did not confirm the ingest subscription")
    finally:
        client.disconnect()
        client.loop_stop()


def start_ingest(host: str, port: int, lake: Path, out: Path, log: Path, idle_stop_ms: int) -> subprocess.Popen[bytes]:
    """``fleetpulse ingest`` against the demo's central broker, stopping after ``idle_stop_ms`` of quiet."""
    with open(log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "fleetpulse", "ingest", "--broker", f"{host}:{port}",
             "--client-id-prefix", INGEST_CLIENT,
             "--lake", str(lake), "--out", str(out), "--idle-stop-ms", str(idle_stop_ms)],
            stdout=subprocess.DEVNULL, stderr=err,
        )


def landed_messages(lake: Path) -> int:
    """Messages in the lake's landing zone (committed files only)."""
    import pyarrow.parquet as pq

    from fleetpulse.pipeline.lake.landing import landing_dir

    return sum(pq.ParquetFile(f).metadata.num_rows
               for f in landing_dir(lake).rglob("*.parquet") if not f.name.startswith("."))


@contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Send file descriptor 2 (ours and the Beam worker processes') to ``path`` meanwhile.

    The local runner's worker processes inherit our stderr and log their
    start-up there; the demo keeps that out of its progress display.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def write_report(out: Path, lake: Path, accounts: Path, signals: list[DailySignal], alerts: list[Alert],
                 quantity: str, days: int) -> Path:
    """Usage retention (first half of the span against the second) and the HTML report."""
    first = date.fromisoformat(min(s.day for s in signals))
    last = date.fromisoformat(max(s.day for s in signals))
    half = max(1, (last - first).days // 2)
    base = Period(first, first + timedelta(days=half - 1))
    compare = Period(first + timedelta(days=half), last)
    archive = open_archive(lake)
    retention = compute_retention(
        load_accounts(accounts), period_usage(archive, base, quantity), period_usage(archive, compare, quantity),
        base, compare, quantity=quantity,
    )
    figures = retention.as_dict()
    (out / "retention.json").write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    page = render_html(signals, alerts, title=f"FleetPulse demo portfolio ({days} days)",
                       generated_at=datetime.now(UTC), retention=figures)
    target = out / "report" / "index.html"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(page, encoding="utf-8")
    return target


def capture_channels(book: PlaybookSet, folder: Path) -> dict[str, Channel]:
    """Every channel of the playbooks file, replaced by a file channel: what would have been sent, on disk."""
    return {name: FileChannel(ChannelConfig(name=name, type="file", path=str(folder / f"{name}.jsonl")))
            for name in book.channels}


def run_demo_playbooks(path: Path, out: Path, signals_dir: Path, accounts: Path,
                       report: Path) -> tuple[PlaybookRun, list[EpisodeRow], list[OutboxRow], str]:
    """The sample playbooks over the demo's signals, from an empty ledger; returns what they did and a summary."""
    root = out / "playbooks"
    shutil.rmtree(root, ignore_errors=True)
    # Alerts link into the demo's own report.
    book = dataclasses.replace(load_playbooks(path), report_url=report.resolve().as_uri())
    run = run_playbooks(signals_dir, book, load_accounts(accounts), root / "state",
                        channels=capture_channels(book, root / "sent"), max_wait_ms=5_000)
    with Ledger.open(root / "state", exclusive=False) as ledger:
        episodes, messages = ledger.episodes(), ledger.outbox()
    kinds = {"notify_csm": "CSM alerts", "notify_team": "team feed", "touch_customer": "digital touches",
             "csql": "CSQLs to Sales"}
    counts = ", ".join(f"{sum(1 for m in messages if m.kind == k and m.status == 'sent')} {label}"
                       for k, label in kinds.items())
    lines = [f"Playbooks ({path.name}): {len(episodes)} episodes; sent {counts}"]
    for e in episodes:
        sent = [m for m in messages if m.episode_id == e.episode_id and m.status == "sent"]
        what = " ".join(e.what_changed.split())
        lines.append(f"  {e.customer_id} {e.playbook:<20} {e.status:<8} {e.opened_day}  "
                     f"{len(sent)} sent  {what[:80] + ('...' if len(what) > 80 else '')}")
    lines.append(f"Messages as sent: {root / 'sent'}/*.jsonl   Episodes: fleetpulse alerts --state {root / 'state'}")
    return run, episodes, messages, "\n".join(lines)


def _wait(condition: Any, timeout_s: float, what: str, tick: Any = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        if tick is not None:
            tick()
        time.sleep(0.05)


def run_demo(config: DemoConfig) -> DemoResult:
    out = config.out
    sim_dir, lake, signals_dir = out / "sim", out / "lake", out / "signals"
    for folder in (sim_dir, lake, signals_dir):
        shutil.rmtree(folder, ignore_errors=True)
    progress = Progress(6 if config.playbooks else 5, enabled=config.progress)
    sim = SimulationConfig(
        seed=config.seed, customers=config.customers, days=config.days,
        malformed_per_day=config.malformed_per_day,
    )

    progress.step("MQTT brokers")
    # Two brokers, as in the field: the gateways' local one (devices publish
    # there) and the central one (gateways forward batches, the ingest reads).
    binary = mosquitto_binary() if config.broker in ("auto", "mosquitto") else None
    if config.broker == "mosquitto" and binary is None:
        raise DemoError("--broker mosquitto: mosquitto is not installed (apt-get install mosquitto)")
    brokers: list[Any] = []
    if binary is not None:
        brokers = [MosquittoBroker(binary, out / "brokers" / name) for name in ("local", "central")]
    else:
        brokers = [InProcessBroker(), InProcessBroker()]
    for b in brokers:
        b.start()
    broker, central = brokers
    streaming = binary is not None
    progress.done(f"{'mosquitto' if streaming else 'amqtt'}: gateway-local on :{broker.port}, "
                  f"central on :{central.port}")
    collectors: list[Collector] = []
    lander: Lander | None = None
    ingest: subprocess.Popen[bytes] | None = None
    stream_dir = out / "stream"
    shutil.rmtree(stream_dir, ignore_errors=True)
    ingest_log = out / "ingest.log"
    ingest_log.unlink(missing_ok=True)
    try:
        fleet = sim.build_fleet()
        paths = write_outputs(fleet, sim_dir, BrokerSettings(broker.host, broker.port, protocol=broker.protocol))
        if streaming:
            progress.step("gateway collectors, streaming ingest, status lander")
            prepare_ingest_session(central.host, central.port, f"{INGEST_CLIENT}-0", central.protocol)
            ingest = start_ingest(central.host, central.port, lake, stream_dir, ingest_log,
                                  config.ingest_idle_stop_ms)
            topics: tuple[str, ...] = ("gateway_status",)
        else:
            # amqtt drops a QoS 1 message whose PUBACK takes over 5 s, which the
            # streaming reader (it acknowledges after its bundle commits) can
            # exceed: without Mosquitto the lander lands the batches.
            progress.step("gateway collectors and central lander (install mosquitto for the streaming path)")
            topics = ("gateway_batches", "gateway_status")
        lander = Lander(LanderConfig(lake=lake, host=central.host, port=central.port,
                                     client_id="fleetpulse-demo-lander", topics=topics))
        lander.start()
        upstream = {"FLEETPULSE_GATEWAY__UPSTREAM__PORT": str(central.port),
                    "FLEETPULSE_GATEWAY__UPSTREAM__PROTOCOL": central.protocol}
        for config_path in paths.gateway_configs:
            collector = Collector(load_config(config_path, environ=upstream))
            collector.start()
            collectors.append(collector)
        progress.done(f"{len(collectors)} collectors → "
                      + (f"fleetpulse ingest → {lake} (log {ingest_log})" if streaming else f"lander → {lake}"))

        progress.step(f"simulating {config.customers} customers × {config.days} days")
        summary = simulate(
            sim, MqttSink(broker.host, broker.port), fleet=fleet,
            progress=lambda d, n: progress.bar(d, n, "days"),
        )
        progress.done(
            f"{summary.records_sent:,} records in {summary.messages_sent:,} device messages "
            f"({summary.malformed_messages} malformed on purpose)"
        )

        progress.step("forwarding" + (" and streaming ingest" if streaming else " and landing"))

        def forwarded() -> int:
            return sum(c.counters["sent_records"] for c in collectors)

        _wait(lambda: forwarded() >= summary.records_sent, config.landing_timeout_s,
              "the collectors to forward every record",
              tick=lambda: progress.bar(forwarded(), summary.records_sent, "records"))
        for collector in collectors:
            collector.stop(timeout_s=30)
        batches = sum(c.counters["sent_batches"] for c in collectors)
        runs = 0
        if streaming:
            # The ingest stops once the broker has been quiet for a while. If it
            # stopped before the last batch (a long stall), it runs again: the
            # restart resumes the session; nothing is lost or counted twice.
            runs = 1
            while True:
                running = ingest
                assert running is not None
                # The streaming job works through the whole fleet history here
                # (~2,000 records/s while everything shares two cores).
                _wait(lambda p=running: p.poll() is not None,
                      max(config.landing_timeout_s, summary.records_sent / 500),
                      "the streaming ingest to finish")
                if running.returncode != 0:
                    raise DemoError(f"fleetpulse ingest exited with {running.returncode}; see {ingest_log}")
                if landed_messages(lake) >= batches or runs >= 3:
                    break
                runs += 1
                ingest = start_ingest(central.host, central.port, lake, stream_dir, ingest_log,
                                      config.ingest_idle_stop_ms)
            ingest = None
            if landed_messages(lake) < batches:
                raise DemoError(f"the ingest landed {landed_messages(lake)} of {batches} batches; "
                                f"see {ingest_log}")
            _wait(lambda: lander.snapshot()["committed_messages"] >= len(collectors),
                  config.landing_timeout_s, "the lander to keep the gateways' status")
        else:
            _wait(lambda: lander.snapshot()["committed_messages"] >= batches, config.landing_timeout_s,
                  "the lander to commit every batch")
        lander.stop()
        lander = None
        dead = sum(c.counters["dead_letters"] for c in collectors)
        how = (f"streamed into the lake ({runs} ingest run{'s' if runs > 1 else ''})" if streaming
               else "landed")
        progress.done(f"{forwarded():,} records in {batches:,} batches {how}; {dead} dead letters at gateways")
    finally:
        for collector in collectors:
            collector.stop(timeout_s=5)
        if ingest is not None and ingest.poll() is None:
            ingest.terminate()  # SIGTERM: the job drains
            try:
                ingest.wait(timeout=30)
            except subprocess.TimeoutExpired:
                ingest.kill()  # the brokers below must stop whatever happens here
                ingest.wait()
        if lander is not None:
            lander.stop()
        for b in brokers:
            b.stop()

    progress.step("Beam batch job over the lake (recompute the signals)")
    influx = InfluxConfig.from_env(os.environ)
    job = JobConfig(
        lake=str(lake), out=str(signals_dir),
        accounts=load_accounts(paths.accounts), model=load_health_model(None), influx=influx,
    )
    with stderr_to(out / "beam.log"):
        result = run_backfill(job, [])
    job_counters = counters(result)
    signals = outputs.read_signals(signals_dir)
    latest = outputs.latest_per_customer(signals)
    alerts = outputs.read_alerts(signals_dir)
    progress.done(f"{len(signals):,} customer-days scored, {len(alerts)} alerts"
                  + (f", written to InfluxDB at {influx.url}" if influx else ""))

    report_path = write_report(out, lake, paths.accounts, signals, alerts, job.model.usage_quantity, config.days)
    playbook_run: PlaybookRun | None = None
    episodes: list[EpisodeRow] = []
    messages: list[OutboxRow] = []
    playbook_summary = ""
    if config.playbooks is not None:
        progress.step("playbooks: alerts and digital touches")
        playbook_run, episodes, messages, playbook_summary = run_demo_playbooks(
            config.playbooks, out, signals_dir, paths.accounts, report_path)
        progress.done(f"{len(episodes)} episodes, {playbook_run.counters()['sent']} messages sent")

    worst = min(latest, key=lambda s: s.health).customer_id if latest else "ID"
    report = "\n".join([
        render_portfolio(latest, alerts),
        "",
        f"Signals: {signals_dir}/signals/*.parquet   Alerts: {signals_dir}/alerts.jsonl   "
        f"Beam log: {out}/beam.log   Streaming ingest log: {out}/ingest.log",
        f"Dead letters: gateways {sim_dir}/gateways/dead-letters/, pipeline {signals_dir}/dead_letters.jsonl",
        f"Explain one account: fleetpulse health --out {signals_dir} --customer {worst}",
        f"Portfolio report (open in a browser): {report_path}",
    ] + (["", playbook_summary] if playbook_summary else []))
    return DemoResult(
        out=out,
        truth=json.loads(Path(paths.truth).read_text("utf-8")),
        latest=latest,
        alerts=alerts,
        records_sent=summary.records_sent,
        dead_letters_at_gateways=dead,
        counters=job_counters,
        report=report,
        playbook_run=playbook_run,
        episodes=tuple(episodes),
        messages=tuple(messages),
    )
