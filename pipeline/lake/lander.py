"""The central-side lander: central broker → Parquet landing zone, losing nothing.

Subscribes with QoS 1 to every gateway's batch and status topics, with a fixed
client id and a persistent session, and acknowledges each message to the
broker only after the landing file holding it is committed (fsync + rename).
A crash before the commit means the broker redelivers; the batch job removes
the duplicates by (device_id, boot, seq). The streaming Beam source
(``ReadFromMqtt``) replaces this part later; the landing zone stays.

Commit policy: every ``commit_max_messages`` unacknowledged messages or every
``commit_interval_ms``, whichever comes first. Keep ``commit_max_messages`` at
or below the broker's in-flight window for this client (Mosquitto's
``max_inflight_messages``, 20 by default; ``deploy/central`` raises it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from fleetpulse import mqtt_client, mqtt_tls
from fleetpulse.clock import wall_clock_ms
from fleetpulse.errors import TransientError
from fleetpulse.schemas import load_contract

from .landing import LandingWriter, message_topic

log = logging.getLogger(__name__)

#: the command-line settings a TLS refusal names (see fleetpulse.mqtt_tls)
TLS_SETTINGS = mqtt_tls.TlsSettings(ca_key="--ca-file", host_key="--broker")


@dataclass(frozen=True)
class LanderConfig:
    lake: Path
    host: str = "127.0.0.1"
    port: int = 1883
    client_id: str = "fleetpulse-lander"
    tls: bool = False
    ca_file: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    keepalive_s: int = 30
    commit_max_messages: int = 100
    commit_interval_ms: int = 500
    file_max_rows: int = 5000
    #: contract topics to land; ("gateway_status",) beside ``fleetpulse ingest``,
    #: which lands the batches itself
    topics: tuple[str, ...] = ("gateway_batches", "gateway_status")

class Lander:
    """Lifecycle: ``start()`` connects and subscribes; ``stop()`` commits and disconnects.

    ``start()`` raises TransientError while the broker cannot be reached and
    :class:`~fleetpulse.mqtt_tls.TlsRefused` when its certificate does not verify
    (the constructor too, when ``ca_file`` cannot be loaded). ``client_factory``
    makes the paho client (:func:`fleetpulse.mqtt_client.new_client`; tests may
    pass a fake); it is configured here.
    """

    def __init__(
        self,
        config: LanderConfig,
        *,
        client_factory: Callable[[mqtt_client.ClientOptions], Any] = mqtt_client.new_client,
        clock_ms: Callable[[], int] = wall_clock_ms,
    ) -> None:
        self.config = config
        self._clock_ms = clock_ms
        self._contract = load_contract()
        self._lock = threading.Lock()
        self._writers = {
            zone: LandingWriter(config.lake, zone=zone, max_rows=config.file_max_rows)
            for zone in ("landing", "status")
        }
        self._unacked: list[tuple[int, int]] = []  # (mid, qos) waiting for the next commit
        self._commit_failing: str | None = None  # the error of a commit failure episode
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._timer: threading.Thread | None = None
        self.counters: dict[str, int] = {
            "received_messages": 0,
            "received_bytes": 0,
            "committed_messages": 0,
            "committed_files": 0,
            "reconnects": 0,
            "errors": 0,
        }
        # A persistent 3.1.1 session: the broker keeps what arrives while the lander is away.
        self._options = mqtt_client.ClientOptions(config.client_id, "3.1.1", persistent=True, manual_ack=True)
        self._client = client_factory(self._options)
        tls = mqtt_client.Tls(TLS_SETTINGS, ca_file=config.ca_file) if config.tls else None
        mqtt_client.configure(self._client, tls=tls, username=config.username, password=config.password)
        self._client.on_connect = self._on_connect
        self._client.on_disconnect = self._on_disconnect
        self._client.on_message = self._on_message

    # ------------------------------------------------------------ lifecycle
    def start(self, timeout_s: float = 10.0) -> None:
        cfg = self.config
        # An unreachable broker is TransientError (retried); a certificate that
        # does not verify is mqtt_tls.TlsRefused, which no retry fixes.
        mqtt_tls.connect(self._client, cfg.host, cfg.port, TLS_SETTINGS if cfg.tls else None,
                         **mqtt_client.connect_kwargs(self._options, keepalive_s=cfg.keepalive_s))
        self._client.loop_start()
        if not self._connected.wait(timeout_s):
            self._client.loop_stop()
            raise TransientError(f"central broker {cfg.host}:{cfg.port} did not accept the connection")
        self._timer = threading.Thread(target=self._commit_periodically, name="lander-commit", daemon=True)
        self._timer.start()

    def stop(self) -> None:
        """Commit what was received and disconnect; unacked messages are redelivered later."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
        self.commit()
        self._client.disconnect()
        self._client.loop_stop()
        log.info("lander stopped: %s", self.counters)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self.counters)

    # ------------------------------------------------------------ callbacks
    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if reason.is_failure:
            log.error("central broker refused the connection: %s", reason)
            return
        if self._connected.is_set():
            # Packet ids of the old connection mean nothing on this one: keep the
            # data (commit it) but do not ack; the broker redelivers and the
            # batch job drops the duplicates.
            self.counters["reconnects"] += 1
            self.commit(ack=False)
        for name in self.config.topics:
            client.subscribe(self._contract.subscription(name), qos=1)
        log.info("lander connected to %s:%d as %s (session present: %s)",
                 self.config.host, self.config.port, self.config.client_id, flags.session_present)
        self._connected.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not self._stop.is_set():
            log.warning("lander lost the central broker (%s); paho reconnects", reason)

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        topic = message_topic(message)  # never raises: a non-UTF-8 topic lands escaped
        zone = "status" if topic.endswith("/status") else "landing"
        with self._lock:
            self.counters["received_messages"] += 1
            self.counters["received_bytes"] += len(message.payload)
            full = self._writers[zone].add(topic, bytes(message.payload), self._clock_ms())
            self._unacked.append((message.mid, message.qos))
            due = full or len(self._unacked) >= self.config.commit_max_messages
        if due:
            self.commit()

    # --------------------------------------------------------------- commit
    def commit(self, *, ack: bool = True) -> bool:
        """Commit every zone's buffer, then acknowledge the messages it held.

        Returns False when the disk refused (counted and logged): the messages
        stay buffered and unacknowledged, and the next commit tries again.
        """
        with self._lock:
            try:
                for writer in self._writers.values():
                    if writer.commit() is not None:
                        self.counters["committed_files"] += 1
            except OSError as exc:
                self.counters["errors"] += 1
                # Logged once per episode: a full disk retried every commit interval
                # must not become a flood of tracebacks.
                if self._commit_failing is None:
                    log.error("landing commit into %s failed: %s; acknowledging nothing (the broker "
                              "keeps the messages) and retrying every commit", self.config.lake, exc)
                self._commit_failing = str(exc)
                return False
            if self._commit_failing is not None:
                log.warning("landing commits into %s succeed again after %s", self.config.lake,
                            self._commit_failing)
                self._commit_failing = None
            acks, self._unacked = self._unacked, []
            self.counters["committed_messages"] += len(acks)
        if ack:
            for mid, qos in acks:
                if qos > 0:
                    self._client.ack(mid, qos)
        return True

    def _commit_periodically(self) -> None:
        interval_s = self.config.commit_interval_ms / 1000
        while not self._stop.wait(interval_s):
            self.commit()
