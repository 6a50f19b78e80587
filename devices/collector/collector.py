"""The gateway collector: local broker → validate → durable spool → batches → central broker.

Run it with ``fleetpulse gateway run --config gateway.toml``; embed it as::

    collector = Collector(load_config("gateway.toml"))
    collector.start()          # TransientError if the local broker cannot be reached
    ...
    collector.stop()           # commit, drain what the uplink takes in time, disconnect

Delivery. Device messages are read from the gateway's local broker with QoS 1
on a persistent MQTT v5 session. Their valid records are appended to the
on-disk spool (:mod:`.spool`) and the device message is acknowledged there
(manual PUBACK) only once the spool has fsynced them (group commit: one fsync
for every record that arrived meanwhile). A crash before that means the local
broker redelivers; after it, the record is on disk. Batches are read back from
the spool, published with QoS 1 on a persistent session with a fixed client
id, and released from the spool when the central broker acknowledges them.
Whatever was in flight when the collector died is sent again at the next
start: the only duplicates are those, and downstream removes them by
``(device_id, boot, seq)``. The spool is one FIFO, so each device's records
go upstream in the order they arrived.

What is refused is a dead letter (:mod:`.deadletters`: rotated files within
``dead_letters.quota_bytes``, each row keeping ``dead_letters.sample_bytes``
of its payload), and its message is acknowledged with the same group commit:
whatever a message holds, it is acknowledged once its records are spooled or
dead-lettered, so no message can occupy the local broker's window and come
back after every restart. A record must name the device of its topic (else
``device_mismatch``: one device cannot speak for another), and a topic that
names no valid device is refused whole (``topic_mismatch``). A fault of the
collector's own on some message is refused whole too (``internal_error``,
counted in errors). A dead-letter disk that fails drops the rows (counted in
``dead_letters_dropped``) and never holds intake up; only a spool that cannot
be written stops acknowledging (the local broker redelivers after a restart).

The uplink may be down for days: the collector starts without it, spools
within ``spool.quota_bytes`` (``on_full`` says what gives when it is full,
every drop counted by reason) and reconnects with capped exponential backoff
and jitter, so a thousand gateways coming back after a central outage do not
arrive in lockstep.

Threads. paho runs one network thread per client. Their callbacks never touch
collector state and never call paho: they put an event on a queue that one
worker thread consumes. The worker alone validates, spools, commits, writes
dead letters, publishes and acknowledges, so no lock is held across a paho call
(paho calls ``on_publish`` while holding its own out-message lock, and
``publish()`` takes that lock: a collector lock shared by both would deadlock).
At most ``batch.max_inflight_batches`` batches wait for a PUBACK; the rest stay
on disk, so memory does not grow with the backlog. QoS 0 device messages need no
acknowledgement and so escape the local broker's receive window: as a backstop
the local ``on_message`` callback blocks when ``2 × receive_maximum`` messages
are waiting for the worker.

Counters (the names every FleetPulse component uses): received_messages,
received_records, spooled_records (made durable), sent_records / sent_batches
(acknowledged upstream), dropped_records by reason (validation reasons and
internal_error; spool_quota, spool_ttl, spool_corrupt), dead_letters (rows
written), dead_letters_dropped (rows lost: deleted for the quota, or refused
by a failing disk), errors, reconnects; and the gauges spool_backlog_records,
spool_bytes. Each received record is either offered to the spool or a
dead-letter row under its reason in dropped_records; what the spool then
refuses or loses is counted under spool_*.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fleetpulse import mqtt_tls
from fleetpulse.errors import ConfigError, TerminalError, TransientError, quote
from fleetpulse.schemas import Rejection, Validator, dead_letter, load_contract

from .batching import Envelope, encode_record
from .config import CollectorConfig
from .deadletters import DeadLetterFiles
from .spool import Position, Spool, SpoolLocked

log = logging.getLogger(__name__)

COUNTER_NAMES = (
    "received_messages",
    "received_records",
    "spooled_records",
    "sent_records",
    "sent_batches",
    "dead_letters",
    "dead_letters_dropped",
    "spool_quarantined_files",
    "errors",
    "reconnects",
)
GAUGE_NAMES = ("spool_backlog_records", "spool_bytes")
#: CONNACK reason codes that retrying will not fix (MQTT v5 §3.2.2.2).
_REFUSED_FOR_GOOD = {0x84, 0x85, 0x86, 0x87, 0x8C}
#: Longest the worker sleeps without looking at its timers (an injected clock may jump).
_MAX_WAIT_S = 1.0
#: Wait after the central broker refused a batch (PUBACK reason >= 0x80) before resending it.
_REFUSED_RETRY_MS = 5000
#: A dead letter keeps this much of a topic beyond the configured prefix (a valid device
#: topic is far shorter; MQTT allows 64 KiB, which would crowd out the payload sample).
_TOPIC_KEEP_CHARS = 256
#: The reason for input the collector could not process because of its own fault (a bug):
#: kept and acknowledged like any rejection, so it cannot come back after every restart.
INTERNAL_ERROR = "internal_error"


#: The settings a TLS refusal by the central broker names (see fleetpulse.mqtt_tls).
_UPSTREAM_TLS = mqtt_tls.TlsSettings(
    ca_key="upstream.ca_file", host_key="upstream.host", cert_key="upstream.cert_file"
)


class BrokerUnreachable(TransientError):
    """A broker did not accept the connection at start; worth retrying."""


class BrokerRefused(TerminalError):
    """A broker refused the connection for a reason retrying won't fix (credentials, ACL, TLS)."""


@dataclass(frozen=True)
class ClientSpec:
    """What the collector asks of its client factory for one connection."""

    role: str  # "local" or "upstream"
    client_id: str
    manual_ack: bool
    protocol: str = "5"  # "5" or "3.1.1" (see the config's [local]/[upstream] protocol)


def paho_client(spec: ClientSpec) -> Any:
    """The real client: paho-mqtt 2.x, callback API v2, MQTT v5 (or 3.1.1 for older brokers)."""
    import paho.mqtt.client as mqtt

    if spec.protocol == "3.1.1":
        # No session-expiry or receive-maximum in 3.1.1: the session persists
        # (clean_session False) and flow control is the broker's in-flight window.
        return mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=spec.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=False,
            manual_ack=spec.manual_ack,
        )
    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=spec.client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=spec.manual_ack,
    )


def wall_clock_ms() -> int:
    return time.time_ns() // 1_000_000


class Backoff:
    """Capped exponential reconnect delays with jitter ("equal jitter": half fixed, half random).

    Attempt n waits between d/2 and d where d = min(max_ms, min_ms × 2ⁿ): never
    a hot loop, never longer than the cap, and gateways that lost the same broker
    at the same moment spread out instead of reconnecting in lockstep.
    """

    def __init__(self, min_ms: int, max_ms: int, rng: random.Random | None = None) -> None:
        self.min_ms = min_ms
        self.max_ms = max_ms
        self._rng = rng or random.Random()
        self._attempt = 0

    def next_s(self) -> float:
        ceiling = min(self.max_ms, self.min_ms * (2 ** min(self._attempt, 40)))
        self._attempt += 1
        return (ceiling / 2 + self._rng.uniform(0, ceiling / 2)) / 1000

    def reset(self) -> None:
        self._attempt = 0


class Counters:
    """Thread-safe counters with the shared FleetPulse names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTER_NAMES + GAUGE_NAMES, 0)
        self._dropped: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def set(self, name: str, value: int) -> None:
        with self._lock:
            self._values[name] = value

    def drop(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snap: dict[str, Any] = dict(self._values)
            snap["dropped_records"] = dict(sorted(self._dropped.items()))
        return snap


# ---------------------------------------------------------------- worker events
@dataclass(eq=False)
class MessageToken:
    """One device message from the local broker, until its records are durable."""

    mid: int
    qos: int
    generation: int  # local connection it arrived on: packet ids mean nothing on another
    topic: str = ""


@dataclass(frozen=True)
class _Received:
    topic: str
    payload: bytes
    token: MessageToken


@dataclass(frozen=True)
class _Acked:
    mid: int
    failure: str | None  # the PUBACK's reason when the broker refused the message


class _StatusNow:
    pass


class _Stop:
    pass


class _Wake:
    def __init__(self) -> None:
        self.done = threading.Event()


@dataclass(eq=False)
class _Sent:
    """A batch handed to the upstream client (or a stretch of skipped records), in spool order."""

    end: Position  # releasing this releases every record before it
    records: int
    payload: bytes = b""
    first_index: int = 0
    acked: bool = False
    mid: int | None = None


class Collector:
    """One gateway's collector. Lifecycle: construct (no I/O) → ``start()`` → ``stop()``.

    ``client_factory`` builds the two MQTT clients (paho's by default; tests
    pass fakes), ``clock`` returns wall-clock epoch milliseconds (event-time
    checks, ``sent_ms``, batch deadlines, spool TTL, status timing). A
    collector is started once; after a failed ``start()`` build a new one.
    """

    def __init__(
        self,
        config: CollectorConfig,
        *,
        client_factory: Callable[[ClientSpec], Any] = paho_client,
        clock: Callable[[], int] = wall_clock_ms,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self._clock = clock
        self._contract = load_contract()
        self._validator = Validator(self._contract)
        ids = config.gateway
        id_args = {"customer_id": ids.customer_id, "site_id": ids.site_id, "gateway_id": ids.gateway_id}
        self._source = f"gateway:{ids.gateway_id}"
        self.batch_topic = self._contract.topic("gateway_batches", **id_args)
        self.status_topic = self._contract.topic("gateway_status", **id_args)
        self.subscription = config.local.topic_prefix + self._contract.subscription("device_telemetry")
        self._envelope = Envelope(
            **id_args,
            max_payload_bytes=self._contract.limits.max_payload_bytes,
            compression=config.batch.compression,
        )
        # Records are read back from the spool within this many payload bytes: the
        # commas between max_records records always fit beside them.
        self._read_budget = self._envelope.max_body_bytes - config.batch.max_records
        self.spool = Spool(
            config.spool.path,
            quota_bytes=config.spool.quota_bytes,
            on_full=config.spool.on_full,
            ttl_s=config.spool.ttl_s,
            clock=clock,
        )
        self._counters = Counters()
        self._events: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._backoff = {
            role: Backoff(config.upstream.reconnect_min_ms, config.upstream.reconnect_max_ms, rng)
            for role in ("local", "upstream")
        }

        # Worker-thread state (only the worker touches these once started).
        self._sent: deque[_Sent] = deque()  # in spool order
        self._inflight: dict[int, _Sent] = {}
        self._retry: deque[_Sent] = deque()  # refused by the broker, to resend
        self._retry_at_ms: int | None = None
        self._batch_due_ms: int | None = None
        self._uncommitted: list[MessageToken] = []
        self._uncommitted_since_ms = 0
        self._seen_drops: dict[str, int] = {}
        self._status_mid: int | None = None
        self._next_status_ms = 0
        self._last_status_ms = 0
        self._draining = False
        self._holding = False  # logging: inside an uplink-full episode
        dead = config.dead_letters
        self.dead_letters = DeadLetterFiles(dead.path, quota_bytes=dead.quota_bytes,
                                            max_file_bytes=dead.max_file_bytes)
        self._seen_dead_letter_drops = 0
        self._seen_dead_letter_errors = 0
        self._topic_prefix = config.local.topic_prefix
        self._logged_internal: set[str] = set()
        identifier = self._contract.identifier_re.fullmatch
        longest = self._contract.limits.identifier_max_length
        self._is_identifier: Callable[[str], bool] = lambda v: len(v) <= longest and bool(identifier(v))

        # Messages handed to the worker and not yet settled (spooled or dead-lettered).
        self._pending_cond = threading.Condition()
        self._pending_messages = 0
        self._pending_cap = 2 * config.local.receive_maximum
        self._backlog = 0  # spool records not yet acknowledged upstream (for wait_idle)
        # Local connection epoch: a PUBACK for a packet id of an older connection
        # would acknowledge some other message on the new one.
        self._ack_lock = threading.Lock()
        self._local_generation = 0

        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._drained = threading.Event()
        self._connack = {"local": threading.Event(), "upstream": threading.Event()}
        self._connack_reason: dict[str, Any] = {}
        self._ever_connected = {"local": False, "upstream": False}
        self._upstream_window = 65535  # the central broker's Receive Maximum (CONNACK)
        # With TLS 1.3 a broker refuses a client certificate only after the handshake:
        # paho's connect() has returned and the alert reaches only its log.
        self._upstream_error: str | None = None
        self._tls_refusal: str | None = None
        self._started = False
        self._stopped = False
        self._worker: threading.Thread | None = None
        self._failure: str | None = None

        self._local = client_factory(
            ClientSpec("local", config.local.client_id, manual_ack=True, protocol=config.local.protocol)
        )
        self._upstream = client_factory(
            ClientSpec(
                "upstream", config.upstream.client_id, manual_ack=False, protocol=config.upstream.protocol
            )
        )

    # ------------------------------------------------------------------ public
    @property
    def counters(self) -> dict[str, Any]:
        """A snapshot of the counters (see the module docstring for their meaning)."""
        return self._counters.snapshot()

    @property
    def failure(self) -> str | None:
        """Why the collector gave up (the spool could not be written), or None while it is healthy.

        Once set, nothing more is acknowledged to the local broker; whoever runs
        the collector should stop it and exit non-zero, so a restart recovers
        the spool and the local broker redelivers what was not acknowledged.
        """
        return self._failure

    @property
    def pending_messages(self) -> int:
        """Device messages received but not yet spooled (durably) or dead-lettered."""
        with self._pending_cond:
            return self._pending_messages

    @property
    def backlog_records(self) -> int:
        """Spooled records the central broker has not acknowledged yet."""
        with self._pending_cond:
            return self._backlog

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait until every device message received so far is settled and the spool is empty.

        Settled means: its valid records reached the central broker (acknowledged)
        and its invalid ones are in the dead-letter file. Returns False on timeout.
        """
        with self._pending_cond:
            return self._pending_cond.wait_for(
                lambda: self._pending_messages == 0 and self._backlog == 0, timeout_s
            )

    def tick(self, timeout_s: float = 10.0) -> bool:
        """Make the worker look at its timers now and wait until it has.

        For tests that advance an injected clock: everything queued before the
        tick, and every timer due at the clock's current time, has been
        handled when this returns True.
        """
        wake = _Wake()
        self._events.put(wake)
        return wake.done.wait(timeout_s)

    def start(self) -> None:
        """Open the dead-letter file and the spool, connect both brokers, start the worker.

        The local broker must answer: :class:`BrokerUnreachable` (transient)
        if it does not. The central broker may be down (the spool holds the
        data until it returns), but a refusal retrying won't fix (credentials,
        ACL, a TLS certificate that does not verify) raises
        :class:`BrokerRefused` (terminal). ConfigError for unusable TLS files,
        dead-letter path or spool directory.
        """
        if self._started:
            raise RuntimeError("a Collector is started once; build a new one")
        self._started = True
        self._open_dead_letters()
        self._open_spool()
        try:
            self._setup_local()
            self._setup_upstream()
            # Local first: if the central broker is down nothing was announced
            # upstream, and device data goes to the spool meanwhile.
            self._connect("local", self._local)
            self._connect("upstream", self._upstream)
        except BaseException:
            self._abort_start()
            raise
        self._worker = threading.Thread(target=self._run, name="collector-worker", daemon=True)
        self._worker.start()
        log.info(
            "collector %s started: local %s %s → spool %s → upstream %s %s",
            self.config.gateway.gateway_id,
            self._endpoint("local"),
            self.subscription,
            self.config.spool.path,
            self._endpoint("upstream"),
            self.batch_topic,
        )

    def stop(self, timeout_s: float | None = None) -> bool:
        """Commit, drain and disconnect; True if the spool was emptied in time.

        Commits the spool and acknowledges the device messages it holds, then
        waits up to ``timeout_s`` (default ``upstream.drain_timeout_s``) for the
        central broker to acknowledge everything spooled, publishes the
        retained "offline" status and disconnects. What is not acknowledged by
        then stays in the spool for the next start. Messages that arrive once
        stopping began are left un-acknowledged for the local broker to
        redeliver at the next start.
        """
        if self._worker is None or self._stopped:
            return True  # never started (or start failed: it cleaned up itself)
        self._stopped = True
        timeout = self.config.upstream.drain_timeout_s if timeout_s is None else timeout_s
        started_at = time.monotonic()
        self._stopping.set()
        with self._pending_cond:
            self._pending_cond.notify_all()  # release an on_message blocked on back-pressure
        self._events.put(_Stop())
        drained = self._drained.wait(timeout)
        self._abort.set()
        self._events.put(_Wake())
        self._worker.join(timeout=10)
        if not drained:
            log.warning(
                "drain timed out after %.1fs: %d records stay in the spool %s for the next start "
                "(%d batches awaiting the upstream broker %s)",
                timeout,
                self.spool.backlog_records,
                self.config.spool.path,
                len(self._inflight),
                self._endpoint("upstream"),
            )
        # The PUBACKs for spooled messages were queued before this DISCONNECT.
        self._local.disconnect()
        self._local.loop_stop()
        remaining = max(0.0, timeout - (time.monotonic() - started_at))
        self._publish_final_status(min(max(remaining, 0.2), 5.0))
        self._upstream.disconnect()
        self._upstream.loop_stop()
        try:
            self.spool.close()
        except OSError as exc:
            log.error("spool %s not closed cleanly: %s (recovered at the next start)",
                      self.config.spool.path, exc)
        self.dead_letters.close()
        log.info("collector %s stopped; counters: %s", self.config.gateway.gateway_id,
                 json.dumps(self.counters, sort_keys=True))
        return drained

    # ------------------------------------------------------------------ set-up
    def _endpoint(self, role: str) -> str:
        cfg = self.config.local if role == "local" else self.config.upstream
        return f"{cfg.host}:{cfg.port}"

    def _open_dead_letters(self) -> None:
        path = self.config.dead_letters.path
        try:
            self.dead_letters.open()  # closed in stop()
        except OSError as exc:
            raise ConfigError(
                source=self.config.source,
                key="dead_letters.path",
                problem=f"cannot open {path} for appending: {exc.strerror or exc}",
                fix="point it at a writable location",
            ) from None
        self._sync_dead_letter_counters()  # files over a (lowered) quota were trimmed

    def _open_spool(self) -> None:
        try:
            report = self.spool.open()
        except SpoolLocked as exc:
            self.dead_letters.close()
            raise TerminalError(f"{exc}; give each collector its own spool.path") from None
        except OSError as exc:
            self.dead_letters.close()
            raise ConfigError(
                source=self.config.source,
                key="spool.path",
                problem=f"cannot use {self.config.spool.path}: {exc.strerror or exc}",
                fix="point it at a directory the collector's user can write (on persistent storage)",
            ) from None
        self._backlog = report.backlog_records
        self._update_spool_gauges()
        if report.backlog_records or report.torn_bytes or report.deleted_segments:
            log.info("spool %s: %d records (%d bytes) waiting from before the restart; "
                     "cut a torn tail of %d bytes", self.config.spool.path, report.backlog_records,
                     report.backlog_bytes, report.torn_bytes)

    def _connect_properties(self, role: str) -> Any:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.CONNECT)
        if role == "local":
            props.SessionExpiryInterval = self.config.local.session_expiry_s
            props.ReceiveMaximum = self.config.local.receive_maximum
        else:
            props.SessionExpiryInterval = self.config.upstream.session_expiry_s
        return props

    def _jitter_next_reconnect(self, role: str, client: Any) -> None:
        """Set paho's next reconnect wait to a jittered, capped delay (paho's own has no jitter)."""
        delay = self._backoff[role].next_s()
        client.reconnect_delay_set(min_delay=delay, max_delay=delay)

    def _setup_local(self) -> None:
        client = self._local
        client.on_connect = self._on_local_connect
        client.on_disconnect = self._on_local_disconnect
        client.on_message = self._on_local_message
        client.on_subscribe = self._on_local_subscribe
        client.on_connect_fail = lambda c, u: self._jitter_next_reconnect("local", c)
        self._jitter_next_reconnect("local", client)

    def _setup_upstream(self) -> None:
        cfg = self.config.upstream
        client = self._upstream
        client.on_connect = self._on_upstream_connect
        client.on_disconnect = self._on_upstream_disconnect
        client.on_publish = self._on_upstream_publish
        client.on_connect_fail = lambda c, u: self._jitter_next_reconnect("upstream", c)
        client.on_log = self._on_upstream_log
        self._jitter_next_reconnect("upstream", client)
        # Room for the batches plus a status message, so paho never queues a batch itself.
        client.max_inflight_messages_set(self.config.batch.max_inflight_batches + 2)
        client.will_set(self.status_topic, self._status_payload("offline", counters={}), qos=1, retain=True)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password)
        if cfg.tls:
            try:
                client.tls_set(
                    ca_certs=cfg.ca_file or None,  # None: the system's trust store
                    certfile=cfg.cert_file or None,
                    keyfile=cfg.key_file or None,
                    cert_reqs=ssl.CERT_REQUIRED,
                )
            except (OSError, ssl.SSLError) as exc:
                key = "upstream.ca_file"
                text = str(exc)
                if cfg.cert_file and ("cert" in text.lower() or "key" in text.lower() or "PEM" in text):
                    key = "upstream.cert_file"
                raise ConfigError(
                    source=self.config.source,
                    key=key,
                    problem=f"TLS files cannot be loaded: {exc}",
                    fix="point ca_file (and cert_file/key_file) at readable PEM files",
                ) from None

    def _connect(self, role: str, client: Any) -> None:
        cfg = self.config.local if role == "local" else self.config.upstream
        v5 = cfg.protocol == "5"
        kwargs: dict[str, Any] = {"keepalive": cfg.keepalive_s}
        if v5:
            kwargs.update(clean_start=False, properties=self._connect_properties(role))
        tls = _UPSTREAM_TLS if role == "upstream" and self.config.upstream.tls else None
        try:
            mqtt_tls.connect(client, cfg.host, cfg.port, tls, **kwargs)
        except mqtt_tls.TlsRefused as exc:
            # A certificate that does not verify: no retry fixes that (fleetpulse.mqtt_tls).
            raise BrokerRefused(str(exc)) from None
        except TransientError as exc:  # refused, unreachable, DNS
            if role == "local":
                raise BrokerUnreachable(
                    f"cannot reach {role} broker {cfg.host}:{cfg.port}: {exc.__cause__}") from exc
            log.warning("upstream broker %s:%d unreachable (%s): spooling to %s and retrying with backoff",
                        cfg.host, cfg.port, exc.__cause__, self.config.spool.path)
            self._jitter_next_reconnect(role, client)
            client.connect_async(cfg.host, cfg.port, **kwargs)
            client.loop_start()
            return
        client.loop_start()
        timeout_s = self.config.upstream.connect_timeout_s
        connacked = self._connack[role].wait(timeout_s)
        if role == "upstream" and self._tls_refusal is not None:
            raise BrokerRefused(
                f"TLS with upstream broker {cfg.host}:{cfg.port} refused by the broker: "
                f"{self._tls_refusal}; it wants a client certificate signed by its CA: check "
                "upstream.cert_file and upstream.key_file"
            )
        if not connacked:
            if role == "local":
                raise BrokerUnreachable(
                    f"cannot reach {role} broker {cfg.host}:{cfg.port}: no CONNACK within {timeout_s}s"
                )
            log.warning("upstream broker %s:%d sent no CONNACK within %ds: spooling meanwhile",
                        cfg.host, cfg.port, timeout_s)
            return
        reason = self._connack_reason[role]
        if getattr(reason, "is_failure", False):
            text = f"{role} broker {cfg.host}:{cfg.port} refused the connection: {reason}"
            if getattr(reason, "value", 0) in _REFUSED_FOR_GOOD:
                raise BrokerRefused(f"{text}; check {role}.client_id, username and password")
            if role == "local":
                raise BrokerUnreachable(f"cannot reach {text}")
            log.warning("%s; spooling and retrying", text)

    def _abort_start(self) -> None:
        self._stopping.set()
        with self._pending_cond:
            self._pending_cond.notify_all()
        for client in (self._local, self._upstream):
            client.disconnect()
            client.loop_stop()
        self.spool.close()
        self.dead_letters.close()

    # ---------------------------------------------------------- paho callbacks
    # These run on paho's network threads: they only enqueue, count and log.
    def _on_local_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connack_reason["local"] = reason
        if getattr(reason, "is_failure", False):
            log.error("local broker %s refused the connection: %s", self._endpoint("local"), reason)
            self._jitter_next_reconnect("local", client)
            self._connack["local"].set()
            return
        self._backoff["local"].reset()
        with self._ack_lock:
            self._local_generation += 1
        client.subscribe(self.subscription, qos=1)
        if self._ever_connected["local"]:
            self._counters.add("reconnects")
            log.warning("reconnected to local broker %s (session present: %s); re-subscribed",
                        self._endpoint("local"), getattr(flags, "session_present", None))
        self._ever_connected["local"] = True
        self._connack["local"].set()

    def _on_local_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        for reason in reasons or ():
            if getattr(reason, "is_failure", False):
                self._counters.add("errors")
                log.error("local broker %s refused the subscription %s: %s",
                          self._endpoint("local"), self.subscription, reason)

    def _on_local_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        with self._ack_lock:
            self._local_generation += 1
        self._jitter_next_reconnect("local", client)
        if not self._stopping.is_set():
            log.warning("lost local broker %s (%s); reconnecting", self._endpoint("local"), reason)

    def _on_local_message(self, client: Any, userdata: Any, message: Any) -> None:
        if self._stopping.is_set():
            return  # not acknowledged: the local broker redelivers it at the next start
        with self._pending_cond:
            if self._pending_messages >= self._pending_cap:
                log.warning("back-pressure: %d device messages waiting for the spool; pausing the "
                            "local reader", self._pending_messages)
                while self._pending_messages >= self._pending_cap and not self._stopping.is_set():
                    self._pending_cond.wait(1.0)
                if self._stopping.is_set():
                    return
            self._pending_messages += 1
        try:
            topic = message.topic
        except UnicodeDecodeError:
            topic = "<topic is not UTF-8>"
        token = MessageToken(message.mid, message.qos, self._local_generation, topic)
        self._events.put(_Received(topic, bytes(message.payload), token))

    def _on_upstream_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connack_reason["upstream"] = reason
        if getattr(reason, "is_failure", False):
            log.error("upstream broker %s refused the connection: %s", self._endpoint("upstream"), reason)
            self._jitter_next_reconnect("upstream", client)
            self._connack["upstream"].set()
            return
        self._backoff["upstream"].reset()
        # Brokers may enforce the Receive Maximum they announce, and paho does not
        # honour it (nor may its own limit change once connected): the worker keeps
        # batches plus one status message within it.
        server_max = getattr(props, "ReceiveMaximum", None) or 65535
        self._upstream_window = server_max
        if server_max <= self.config.batch.max_inflight_batches:
            log.info("upstream broker %s allows %d messages in flight: keeping at most %d batches "
                     "unacknowledged",
                     self._endpoint("upstream"), server_max, max(1, server_max - 1))
        if self._ever_connected["upstream"]:
            self._counters.add("reconnects")
            log.warning("reconnected to upstream broker %s (session present: %s)",
                        self._endpoint("upstream"), getattr(flags, "session_present", None))
        self._ever_connected["upstream"] = True
        self._events.put(_StatusNow())  # the Will may have said "offline" meanwhile
        self._connack["upstream"].set()

    def _on_upstream_log(self, client: Any, userdata: Any, level: int, buf: str) -> None:
        import paho.mqtt.client as mqtt

        if level == mqtt.MQTT_LOG_ERR:
            self._upstream_error = buf

    def _on_upstream_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._jitter_next_reconnect("upstream", client)
        error, self._upstream_error = self._upstream_error, None
        if (error and "alert" in error and self.config.upstream.tls
                and not self._ever_connected["upstream"] and not self._connack["upstream"].is_set()):
            self._tls_refusal = error  # start() reports it: no retry fixes a missing certificate
            self._connack_reason["upstream"] = reason
            self._connack["upstream"].set()
            return
        if not self._stopping.is_set():
            log.warning("lost upstream broker %s (%s%s); spooling, reconnecting with backoff and then "
                        "resending un-acknowledged batches", self._endpoint("upstream"), reason,
                        f": {error}" if error else "")

    def _on_upstream_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._events.put(_Acked(mid, str(reason) if getattr(reason, "is_failure", False) else None))

    # ------------------------------------------------------------------ worker
    def _run(self) -> None:
        while not self._abort.is_set():
            try:
                event: object | None = self._events.get(timeout=self._wait_s())
            except queue.Empty:
                event = None
            try:
                if event is not None:
                    self._handle(event)
                self._housekeeping()
            except Exception:  # the worker must outlive any one bad event
                self._counters.add("errors")
                log.exception("collector worker: unexpected error (counted in errors); continuing")
            if isinstance(event, _Wake):
                event.done.set()
            if (
                self._draining
                and not self._uncommitted
                and not self._sent
                and self.spool.backlog_records == 0
                and self._events.empty()
            ):
                self._drained.set()
                return

    def _wait_s(self) -> float:
        now = self._clock()
        deadlines = [self._next_status_ms]
        if self._uncommitted:
            deadlines.append(self._uncommitted_since_ms + self.config.spool.commit_interval_ms)
        if self._batch_due_ms is not None:
            deadlines.append(self._batch_due_ms)
        if self._retry_at_ms is not None:
            deadlines.append(self._retry_at_ms)
        return min(max((min(deadlines) - now) / 1000, 0.0), _MAX_WAIT_S)

    def _handle(self, event: object) -> None:
        if isinstance(event, _Received):
            self._receive(event)
        elif isinstance(event, _Acked):
            self._acked(event)
        elif isinstance(event, _StatusNow):
            self._publish_status()
        elif isinstance(event, _Stop):
            self._draining = True
            log.info("draining: %d records in the spool, %d batches awaiting PUBACK",
                     self.spool.backlog_records, len(self._inflight))

    def _receive(self, event: _Received) -> None:
        """Spool a device message's valid records and dead-letter the rest; then it is acknowledged.

        The acknowledgement (at the next group commit) does not depend on the
        content: a topic that names no device, a payload that trips the
        validator, a record that cannot be encoded and a dead-letter disk that
        fails all end as a counted dead letter (or a counted dropped one), so
        no message can hold a slot of the local broker's window and come back
        after every restart. Only a spool that cannot be written stops
        acknowledging (see :meth:`_fail`).
        """
        now = self._clock()
        self._counters.add("received_messages")
        counted = False
        try:
            valid, rejected = self._validate(event, now)
            self._counters.add("received_records", len(valid) + len(rejected))
            counted = True
            if not self._spool_records(valid, rejected, now):
                return  # the spool failed: nothing more is acknowledged
        # Our fault, not the input's (the validator and encoder never raise by contract):
        # keep the whole message as a dead letter and settle it all the same (records
        # spooled before the fault stay spooled).
        except Exception as exc:  # noqa: BLE001 (logged by _internal_error, once per kind)
            if not counted:
                self._counters.add("received_records")  # the message, as one unreadable record
            rejected = [self._internal_error(exc)]
        self._dead_letter(rejected, event, now)
        if not self._uncommitted:
            self._uncommitted_since_ms = now
        self._uncommitted.append(event.token)
        if self.spool.uncommitted_records >= self.config.spool.commit_max_records:
            self._commit()

    def _spool_records(self, valid: list[dict[str, Any]], rejected: list[Rejection], now: int) -> bool:
        """Append valid records to the spool (one too large for a batch joins ``rejected``); False if the spool failed."""
        for record in valid:
            data = encode_record(record)
            if not self._envelope.fits(data):
                rejected.append(Rejection(
                    "payload_too_large",
                    f"record of {len(data)} bytes cannot fit a batch of "
                    f"{self._envelope.max_payload_bytes} bytes",
                    None,
                ))
                continue
            try:
                self.spool.append(data, now)  # (False: refused by the quota, counted by the spool)
            except OSError as exc:
                self._fail(exc)
                return False
        return True

    def _validate(self, event: _Received, now: int) -> tuple[list[dict[str, Any]], list[Rejection]]:
        """The message's valid records and its rejections."""
        ids = self._contract.topic_ids("device_telemetry", event.topic, prefix=self._topic_prefix)
        device_id = ids.get("device_id") if ids else None
        if device_id is None or not self._is_identifier(device_id):
            # Without the topic's device the records cannot be checked against it (spoofing).
            return [], [Rejection(
                "topic_mismatch",
                f"topic {quote(event.topic)} is not {self._topic_prefix}"
                f"{self._contract.topics['device_telemetry']['pattern']} with a valid device_id",
            )]
        # A gateway without a real-time clock boots in the past until NTP sets it;
        # then "too far in the future" would refuse every record, so skip that check.
        now_ms = now if now >= self._contract.limits.min_event_time_ms else None
        return self._validator.device_payload(event.payload, now_ms=now_ms, device_id=device_id)

    def _internal_error(self, exc: Exception) -> Rejection:
        """A whole-message rejection for a fault of the collector's own (counted in errors)."""
        self._counters.add("errors")
        kind = type(exc).__name__
        # A hostile stream may hit the same bug thousands of times: one traceback per kind.
        if kind not in self._logged_internal:
            self._logged_internal.add(kind)
            log.error("collector fault on a device message (kept as a dead letter, reason %s; counted "
                      "in errors; later ones of this kind are not logged)", INTERNAL_ERROR, exc_info=exc)
        return Rejection(INTERNAL_ERROR, f"{kind}: {quote(str(exc), 160)}")

    def _commit(self) -> None:
        """Group commit: one fsync makes every appended record durable, then acknowledge their messages."""
        try:
            durable = self.spool.commit()
        except OSError as exc:
            self._fail(exc)
            return
        self._counters.add("spooled_records", durable)
        # Dead letters too are on disk before their messages are acknowledged; a
        # failing dead-letter disk is counted and must not hold intake up.
        self.dead_letters.sync()
        self._sync_dead_letter_counters()
        tokens, self._uncommitted = self._uncommitted, []
        self._sync_backlog()
        for token in tokens:
            self._settle(token)

    def _fail(self, exc: OSError) -> None:
        """The spool cannot be written: acknowledge nothing more, and say so once."""
        self._counters.add("errors")
        if self._failure is None:
            self._failure = f"cannot write the spool {self.config.spool.path}: {exc.strerror or exc}"
            log.critical("%s; acknowledging nothing more to the local broker (it redelivers "
                         "what was not acknowledged after a restart)", self._failure)
        self._uncommitted = []
        self._abort.set()

    def _dead_letter(self, rejections: list[Rejection], event: _Received, now: int) -> None:
        """Count each rejection by reason and keep it as a dead-letter row; never raises."""
        if not rejections:
            return
        sample = self.config.dead_letters.sample_bytes
        keep = len(self._topic_prefix) + _TOPIC_KEEP_CHARS
        topic = event.topic if len(event.topic) <= keep else event.topic[:keep] + "..."
        rows = []
        for rejection in rejections:
            self._counters.drop(rejection.reason)
            try:
                row = dead_letter(rejection, source=self._source, topic=topic, at_ms=now,
                                  payload=event.payload, sample_bytes=sample)
            except Exception as exc:  # dead_letter() is content-proof; if not, keep the reason and a sample
                self._counters.add("errors")
                log.error("dead letter for %s not built (%s); kept with a payload sample only",
                          rejection.reason, type(exc).__name__, exc_info=exc)
                row = dead_letter(Rejection(rejection.reason, f"not built: {type(exc).__name__}"),
                                  source=self._source, topic=None, at_ms=now, payload=event.payload,
                                  sample_bytes=sample)
            rows.append(row)
        self._counters.add("dead_letters", self.dead_letters.write(rows))
        self._sync_dead_letter_counters()

    def _sync_dead_letter_counters(self) -> None:
        """Carry the dead-letter files' drops and failures into the counters."""
        files = self.dead_letters
        if files.dropped_rows != self._seen_dead_letter_drops:
            self._counters.add("dead_letters_dropped", files.dropped_rows - self._seen_dead_letter_drops)
            self._seen_dead_letter_drops = files.dropped_rows
        if files.errors != self._seen_dead_letter_errors:
            self._counters.add("errors", files.errors - self._seen_dead_letter_errors)
            self._seen_dead_letter_errors = files.errors

    def _settle(self, token: MessageToken) -> None:
        if token.qos > 0:
            with self._ack_lock:
                if token.generation == self._local_generation:
                    self._local.ack(token.mid, token.qos)
        with self._pending_cond:
            self._pending_messages -= 1
            self._pending_cond.notify_all()

    def _acked(self, event: _Acked) -> None:
        if event.mid == self._status_mid:
            self._status_mid = None
            if event.failure:
                self._counters.add("errors")
                log.error("upstream broker refused the status message: %s", event.failure)
            return
        sent = self._inflight.pop(event.mid, None)
        if sent is None:
            return
        if event.failure:
            self._counters.add("errors")
            log.error("upstream broker refused batch %d (%d records): %s; resending in %ds",
                      sent.first_index, sent.records, event.failure, _REFUSED_RETRY_MS // 1000)
            self._retry.append(sent)
            self._retry_at_ms = self._clock() + _REFUSED_RETRY_MS
            return
        sent.acked = True
        self._counters.add("sent_batches")
        self._counters.add("sent_records", sent.records)
        self._release()

    def _release(self) -> None:
        """Release the longest acknowledged prefix of what was sent, in spool order."""
        released = None
        while self._sent and self._sent[0].acked:
            released = self._sent.popleft().end
        if released is not None:
            self.spool.acknowledge(released)
            self._sync_backlog()

    def _sync_backlog(self) -> None:
        with self._pending_cond:
            if self._backlog != self.spool.backlog_records:
                self._backlog = self.spool.backlog_records
                self._pending_cond.notify_all()

    def _housekeeping(self) -> None:
        now = self._clock()
        if self._uncommitted and (
            self._events.empty()  # nothing else waiting: commit now (lowest latency)
            or now - self._uncommitted_since_ms >= self.config.spool.commit_interval_ms
            or now < self._uncommitted_since_ms
            or self._draining
        ):
            self._commit()
        self._pump(now)
        self._sync_backlog()  # quota and TTL drops shrink it too
        self._sync_spool_counters()
        if now >= self._next_status_ms or now < self._last_status_ms:
            if self._next_status_ms:  # not the first: also log the counters periodically
                log.info("collector %s counters: %s", self.config.gateway.gateway_id,
                         json.dumps(self.counters, sort_keys=True))
            self._publish_status()

    def _sync_spool_counters(self) -> None:
        for reason, n in self.spool.dropped.items():
            seen = self._seen_drops.get(reason, 0)
            if n != seen:
                self._counters.drop(reason, n - seen)
                self._seen_drops[reason] = n
        self._update_spool_gauges()

    def _update_spool_gauges(self) -> None:
        self._counters.set("spool_backlog_records", self.spool.backlog_records)
        self._counters.set("spool_bytes", self.spool.disk_bytes)
        # files the spool found in its directory and moved aside (counted since open)
        self._counters.set("spool_quarantined_files", self.spool.quarantined_files)

    def _pump(self, now: int) -> None:
        """Publish batches from the spool while fewer than max_inflight_batches await a PUBACK."""
        self._batch_due_ms = None
        cap = max(1, min(self.config.batch.max_inflight_batches, self._upstream_window - 1))
        if self._retry and self._retry_at_ms is not None:
            # (a clock stepped backwards by more than the delay ends the wait too)
            if 0 < self._retry_at_ms - now <= _REFUSED_RETRY_MS:
                return
            self._retry_at_ms = None
        while self._retry and len(self._inflight) < cap:
            self._publish(self._retry.popleft())
        while len(self._inflight) < cap and self.spool.unread_records:
            if self.spool.unread_records < self.config.batch.max_records and not self._draining:
                # Not a full batch yet: wait until the oldest unread record is
                # max_interval_ms old (a backlog from before a restart is due at once).
                oldest = self.spool.peek_at_ms()
                if oldest is not None and 0 < oldest + self.config.batch.max_interval_ms - now <= (
                    self.config.batch.max_interval_ms
                ):
                    self._batch_due_ms = oldest + self.config.batch.max_interval_ms
                    break
            records, end = self.spool.read(self.config.batch.max_records, self._read_budget)
            if not records and (not self._sent or end <= self._sent[-1].end) and end <= self.spool.released:
                break  # nothing read and nothing skipped: never spin
            sent = _Sent(end=end, records=len(records))
            self._sent.append(sent)
            if not records:  # expired or corrupt stretch: nothing to send, release it in turn
                sent.acked = True
                self._release()
                continue
            sent.first_index = records[0].index
            sent.payload = self._envelope.encode([r.data for r in records], records[0].index, now)
            self._publish(sent)
        holding = len(self._inflight) >= cap and self.spool.unread_records > 0
        if holding and not self._holding:
            log.info("uplink window full: %d batches await upstream PUBACK (max_inflight_batches); "
                     "%d records wait in the spool", len(self._inflight), self.spool.unread_records)
        self._holding = holding

    def _publish(self, sent: _Sent) -> None:
        info = self._upstream.publish(self.batch_topic, sent.payload, qos=1)
        sent.mid = info.mid
        self._inflight[info.mid] = sent

    # ------------------------------------------------------------------ status
    def _status_payload(self, state: str, counters: dict[str, Any] | None = None) -> bytes:
        ids = self.config.gateway
        status = {
            "v": 1,
            "gateway_id": ids.gateway_id,
            "customer_id": ids.customer_id,
            "site_id": ids.site_id,
            "at_ms": self._clock(),
            "state": state,
            "counters": self.counters if counters is None else counters,
        }
        return json.dumps(status, separators=(",", ":")).encode("utf-8")

    def _publish_status(self) -> None:
        now = self._clock()
        self._next_status_ms = now + self.config.status.interval_s * 1000
        self._last_status_ms = now
        if self._status_mid is not None:
            return  # the previous one is still unacknowledged; don't pile them up offline
        info = self._upstream.publish(self.status_topic, self._status_payload("online"), qos=1, retain=True)
        self._status_mid = info.mid

    def _publish_final_status(self, timeout_s: float) -> None:
        info = self._upstream.publish(self.status_topic, self._status_payload("offline"), qos=1, retain=True)
        if info.rc != 0:
            log.warning("upstream broker %s not connected: the offline status is left to the Will",
                        self._endpoint("upstream"))
            return
        try:
            info.wait_for_publish(timeout_s)
        except (RuntimeError, ValueError) as exc:
            log.warning("offline status not delivered: %s", exc)
            return
        if not info.is_published():
            log.warning("offline status not acknowledged within %.1fs", timeout_s)
