"""The gateway collector: local broker → validate → stamp → batch → central broker, losing nothing.

Run it with ``fleetpulse gateway run --config gateway.toml``; embed it as::

    collector = Collector(load_config("gateway.toml"))
    collector.start()          # TransientError if a broker cannot be reached
    ...
    collector.stop()           # drain: flush, wait for every PUBACK, disconnect

Delivery. Device messages are read from the gateway's local broker with QoS 1
on a persistent MQTT v5 session and acknowledged there (manual PUBACK) only
after every batch holding their records was acknowledged by the central
broker. Until then the local broker keeps them: a crash or a drain timeout
means redelivery at the next start (duplicates, removed downstream by
``(device_id, boot, seq)``), never loss. Batches go upstream with QoS 1 on a
persistent session with a fixed client id; paho resends un-acknowledged ones
after a reconnect. Durable on-disk spooling comes later.

Threads and back-pressure. paho runs one network thread per client. Their
callbacks never touch collector state and never call paho: they put an event
on a queue that one worker thread consumes. The worker alone validates,
batches, writes dead letters, publishes and acknowledges, so no lock is held
across a paho call (paho calls ``on_publish`` while holding its own
out-message lock, and ``publish()`` takes that lock: a collector lock shared
by both would deadlock). At most ``batch.max_inflight_batches`` batches wait
for a PUBACK; beyond that finished batches wait in memory, and since their
device messages stay un-acknowledged the local broker stops sending once
``local.receive_maximum`` messages are outstanding (MQTT v5 flow control, the
broker's side of the back-pressure, nothing blocks). QoS 0 device messages
need no acknowledgement and so escape that window: as a backstop the local
``on_message`` callback blocks when ``2 × receive_maximum`` messages are
outstanding. That blocks only the local client's network thread; the PUBACKs
that free space arrive on the upstream client's thread and the worker is
independent, so this cannot deadlock (if it lasts longer than the local
keepalive the local broker drops the connection, paho reconnects and the
broker redelivers what was not acknowledged).

Counters (the names every FleetPulse component uses): received_messages,
received_records, sent_records / sent_batches (acknowledged upstream),
dropped_records by reason (each rejection counts once; a payload refused whole
counts as one), dead_letters, errors, reconnects.
"""

from __future__ import annotations

import json
import logging
import queue
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from fleetpulse.errors import ConfigError, TerminalError, TransientError
from fleetpulse.schemas import Rejection, Validator, dead_letter, load_contract

from .batching import Batch, Batcher, MessageToken, encode_record
from .config import CollectorConfig

log = logging.getLogger(__name__)

COUNTER_NAMES = (
    "received_messages",
    "received_records",
    "sent_records",
    "sent_batches",
    "dead_letters",
    "errors",
    "reconnects",
)
#: CONNACK reason codes that retrying will not fix (MQTT v5 §3.2.2.2).
_REFUSED_FOR_GOOD = {0x84, 0x85, 0x86, 0x87, 0x8C}
#: Longest the worker sleeps without looking at its timers (an injected clock may jump).
_MAX_WAIT_S = 1.0
#: Wait after the central broker refused a batch (PUBACK reason >= 0x80) before resending it.
_REFUSED_RETRY_MS = 5000


class BrokerUnreachable(TransientError):
    """A broker did not accept the connection at start; worth retrying."""


class BrokerRefused(TerminalError):
    """A broker refused the connection for a reason retrying won't fix (credentials, ACL)."""


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


class Counters:
    """Thread-safe counters with the shared FleetPulse names."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values = dict.fromkeys(COUNTER_NAMES, 0)
        self._dropped: dict[str, int] = {}

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._values[name] += n

    def drop(self, reason: str, n: int = 1) -> None:
        with self._lock:
            self._dropped[reason] = self._dropped.get(reason, 0) + n

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            snap: dict[str, Any] = dict(self._values)
            snap["dropped_records"] = dict(sorted(self._dropped.items()))
        return snap


# ---------------------------------------------------------------- worker events
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


class Collector:
    """One gateway's collector. Lifecycle: construct (no I/O) → ``start()`` → ``stop()``.

    ``client_factory`` builds the two MQTT clients (paho's by default; tests
    pass fakes), ``clock`` returns wall-clock epoch milliseconds (event-time
    checks, ``sent_ms``, batch deadlines, status timing). A collector is
    started once; after a failed ``start()`` build a new one.
    """

    def __init__(
        self,
        config: CollectorConfig,
        *,
        client_factory: Callable[[ClientSpec], Any] = paho_client,
        clock: Callable[[], int] = wall_clock_ms,
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
        self._batcher = Batcher(
            customer_id=ids.customer_id,
            site_id=ids.site_id,
            gateway_id=ids.gateway_id,
            max_records=config.batch.max_records,
            max_interval_ms=config.batch.max_interval_ms,
            max_payload_bytes=self._contract.limits.max_payload_bytes,
        )
        self._counters = Counters()
        self._events: queue.SimpleQueue[object] = queue.SimpleQueue()

        # Worker-thread state (only the worker touches these once started).
        self._ready: deque[Batch] = deque()
        self._inflight: dict[int, Batch] = {}
        self._retry_at_ms: int | None = None
        self._status_mid: int | None = None
        self._next_status_ms = 0
        self._last_status_ms = 0
        self._draining = False
        self._holding = False  # logging: inside a back-pressure episode
        self._dead_letters: IO[str] | None = None

        # Messages handed to the worker and not yet settled (acked or dead-lettered).
        self._pending_cond = threading.Condition()
        self._pending_messages = 0
        self._pending_cap = 2 * config.local.receive_maximum
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
        self._started = False
        self._stopped = False
        self._worker: threading.Thread | None = None

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
    def pending_messages(self) -> int:
        """Device messages received but not yet acknowledged upstream or dead-lettered."""
        with self._pending_cond:
            return self._pending_messages

    def wait_idle(self, timeout_s: float = 30.0) -> bool:
        """Wait until every device message received so far is settled.

        Settled means: all its valid records are in batches the central broker
        acknowledged, and its invalid ones are in the dead-letter file. Returns
        False on timeout. Open batches still flush on their own timers.
        """
        with self._pending_cond:
            return self._pending_cond.wait_for(lambda: self._pending_messages == 0, timeout_s)

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
        """Open the dead-letter file, connect both brokers, subscribe, start the worker.

        Raises :class:`BrokerUnreachable` (transient) when a broker cannot be
        reached or does not answer within ``upstream.connect_timeout_s``,
        :class:`BrokerRefused` (terminal) when it refuses the credentials, and
        ConfigError for unusable TLS files or dead-letter path. Afterwards
        paho reconnects on its own.
        """
        if self._started:
            raise RuntimeError("a Collector is started once; build a new one")
        self._started = True
        self._open_dead_letters()
        try:
            self._setup_local()
            self._setup_upstream()
            # Local first: if the central broker is down nothing was announced
            # upstream, and messages already delivered stay un-acknowledged.
            self._connect("local", self._local)
            self._connect("upstream", self._upstream)
        except BaseException:
            self._abort_start()
            raise
        self._worker = threading.Thread(target=self._run, name="collector-worker", daemon=True)
        self._worker.start()
        log.info(
            "collector %s started: local %s %s → upstream %s %s",
            self.config.gateway.gateway_id,
            self._endpoint("local"),
            self.subscription,
            self._endpoint("upstream"),
            self.batch_topic,
        )

    def stop(self, timeout_s: float | None = None) -> bool:
        """Drain and disconnect; True if every batch was acknowledged upstream in time.

        Flushes the open batch, waits up to ``timeout_s`` (default
        ``upstream.drain_timeout_s``) for every PUBACK, acknowledges the device
        messages on the local broker, publishes the retained "offline" status
        and disconnects. Messages that arrive once stopping began are left
        un-acknowledged for the local broker to redeliver at the next start.
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
            open_records = self._batcher.open_records
            waiting = len(self._inflight) + len(self._ready)
            records = sum(len(b) for b in self._inflight.values()) + sum(len(b) for b in self._ready)
            log.warning(
                "drain timed out after %.1fs: %d batches (%d records) not acknowledged by the "
                "upstream broker %s and %d records never sent; their device messages were not "
                "acknowledged on the local broker, which redelivers them at the next start",
                timeout,
                waiting,
                records,
                self._endpoint("upstream"),
                open_records,
            )
        # The PUBACKs for drained messages were queued before this DISCONNECT.
        self._local.disconnect()
        self._local.loop_stop()
        remaining = max(0.0, timeout - (time.monotonic() - started_at))
        self._publish_final_status(min(max(remaining, 0.2), 5.0))
        self._upstream.disconnect()
        self._upstream.loop_stop()
        if self._dead_letters is not None:
            self._dead_letters.close()
        log.info("collector %s stopped; counters: %s", self.config.gateway.gateway_id,
                 json.dumps(self.counters, sort_keys=True))
        return drained

    # ------------------------------------------------------------------ set-up
    def _endpoint(self, role: str) -> str:
        cfg = self.config.local if role == "local" else self.config.upstream
        return f"{cfg.host}:{cfg.port}"

    def _open_dead_letters(self) -> None:
        path: Path = self.config.dead_letters.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dead_letters = open(path, "a", encoding="utf-8")  # closed in stop()
        except OSError as exc:
            raise ConfigError(
                source=self.config.source,
                key="dead_letters.path",
                problem=f"cannot open {path} for appending: {exc.strerror or exc}",
                fix="point it at a writable location",
            ) from None

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

    def _setup_local(self) -> None:
        client = self._local
        client.on_connect = self._on_local_connect
        client.on_disconnect = self._on_local_disconnect
        client.on_message = self._on_local_message
        client.on_subscribe = self._on_local_subscribe
        client.reconnect_delay_set(min_delay=1, max_delay=30)

    def _setup_upstream(self) -> None:
        cfg = self.config.upstream
        client = self._upstream
        client.on_connect = self._on_upstream_connect
        client.on_disconnect = self._on_upstream_disconnect
        client.on_publish = self._on_upstream_publish
        client.reconnect_delay_set(min_delay=1, max_delay=30)
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
        try:
            if v5:
                client.connect(
                    cfg.host,
                    cfg.port,
                    keepalive=cfg.keepalive_s,
                    clean_start=False,
                    properties=self._connect_properties(role),
                )
            else:
                client.connect(cfg.host, cfg.port, keepalive=cfg.keepalive_s)
        except OSError as exc:  # refused, unreachable, DNS, TLS handshake (ssl.SSLError)
            raise BrokerUnreachable(f"cannot reach {role} broker {cfg.host}:{cfg.port}: {exc}") from exc
        client.loop_start()
        timeout_s = self.config.upstream.connect_timeout_s
        if not self._connack[role].wait(timeout_s):
            raise BrokerUnreachable(
                f"cannot reach {role} broker {cfg.host}:{cfg.port}: no CONNACK within {timeout_s}s"
            )
        reason = self._connack_reason[role]
        if getattr(reason, "is_failure", False):
            text = f"{role} broker {cfg.host}:{cfg.port} refused the connection: {reason}"
            if getattr(reason, "value", 0) in _REFUSED_FOR_GOOD:
                raise BrokerRefused(f"{text}; check {role}.client_id, username and password")
            raise BrokerUnreachable(f"cannot reach {text}")

    def _abort_start(self) -> None:
        self._stopping.set()
        with self._pending_cond:
            self._pending_cond.notify_all()
        for client in (self._local, self._upstream):
            client.disconnect()
            client.loop_stop()
        if self._dead_letters is not None:
            self._dead_letters.close()

    # ---------------------------------------------------------- paho callbacks
    # These run on paho's network threads: they only enqueue, count and log.
    def _on_local_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self._connack_reason["local"] = reason
        if getattr(reason, "is_failure", False):
            log.error("local broker %s refused the connection: %s", self._endpoint("local"), reason)
            self._connack["local"].set()
            return
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
        if not self._stopping.is_set():
            log.warning("lost local broker %s (%s); paho reconnects", self._endpoint("local"), reason)

    def _on_local_message(self, client: Any, userdata: Any, message: Any) -> None:
        if self._stopping.is_set():
            return  # not acknowledged: the local broker redelivers it at the next start
        with self._pending_cond:
            if self._pending_messages >= self._pending_cap:
                log.warning("back-pressure: %d device messages outstanding; pausing the local "
                            "reader until the upstream broker acknowledges", self._pending_messages)
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
            self._connack["upstream"].set()
            return
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

    def _on_upstream_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if not self._stopping.is_set():
            log.warning("lost upstream broker %s (%s); paho reconnects and resends "
                        "un-acknowledged batches", self._endpoint("upstream"), reason)

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
                and not self._ready
                and not self._inflight
                and self._batcher.open_batch is None
                and self._events.empty()
            ):
                self._drained.set()
                return

    def _wait_s(self) -> float:
        now = self._clock()
        deadlines = [self._next_status_ms]
        batch_deadline = self._batcher.deadline_ms()
        if batch_deadline is not None:
            deadlines.append(batch_deadline)
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
            log.info("draining: %d records open, %d batches waiting, %d awaiting PUBACK",
                     self._batcher.open_records, len(self._ready), len(self._inflight))

    def _receive(self, event: _Received) -> None:
        now = self._clock()
        # A gateway without a real-time clock boots in the past until NTP sets it;
        # then "too far in the future" would refuse every record, so skip that check.
        now_ms = now if now >= self._contract.limits.min_event_time_ms else None
        valid, rejected = self._validator.device_payload(event.payload, now_ms=now_ms)
        self._counters.add("received_messages")
        self._counters.add("received_records", len(valid) + len(rejected))
        for record in valid:
            data = encode_record(record)
            if not self._batcher.fits(data):
                rejected.append(Rejection(
                    "payload_too_large",
                    f"record of {len(data)} bytes cannot fit a batch of "
                    f"{self._batcher.max_payload_bytes} bytes",
                    None,
                ))
                continue
            self._ready.extend(self._batcher.add(data, event.token, now))
        if rejected:
            self._dead_letter(rejected, event, now)
        if event.token.refs == 0:
            self._settle(event.token)

    def _dead_letter(self, rejections: list[Rejection], event: _Received, now: int) -> None:
        lines = []
        for rejection in rejections:
            self._counters.drop(rejection.reason)
            row = dead_letter(rejection, source=self._source, topic=event.topic, at_ms=now,
                              payload=event.payload)
            lines.append(json.dumps(row, ensure_ascii=False, default=repr) + "\n")
        assert self._dead_letters is not None
        try:
            self._dead_letters.write("".join(lines))
            self._dead_letters.flush()
        except OSError as exc:
            self._counters.add("errors")
            log.error("cannot append %d dead letters to %s: %s; rows follow:\n%s", len(lines),
                      self.config.dead_letters.path, exc, "".join(lines).rstrip())
            return
        self._counters.add("dead_letters", len(lines))

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
        batch = self._inflight.pop(event.mid, None)
        if batch is None:
            return
        if event.failure:
            self._counters.add("errors")
            log.error("upstream broker refused batch %d (%d records): %s; resending in %ds",
                      batch.seq, len(batch), event.failure, _REFUSED_RETRY_MS // 1000)
            self._ready.appendleft(batch)
            self._retry_at_ms = self._clock() + _REFUSED_RETRY_MS
            return
        self._counters.add("sent_batches")
        self._counters.add("sent_records", len(batch))
        for token in batch.tokens:
            token.refs -= 1
            if token.refs == 0:
                self._settle(token)

    def _housekeeping(self) -> None:
        now = self._clock()
        if self._batcher.due(now):
            closed = self._batcher.close()
            if closed is not None:
                self._ready.append(closed)
        self._pump(now)
        if now >= self._next_status_ms or now < self._last_status_ms:
            if self._next_status_ms:  # not the first: also log the counters periodically
                log.info("collector %s counters: %s", self.config.gateway.gateway_id,
                         json.dumps(self.counters, sort_keys=True))
            self._publish_status()

    def _pump(self, now: int) -> None:
        """Publish finished batches while fewer than max_inflight_batches await a PUBACK."""
        if self._retry_at_ms is not None:
            # (a clock stepped backwards by more than the delay ends the wait too)
            if 0 < self._retry_at_ms - now <= _REFUSED_RETRY_MS:
                return
            self._retry_at_ms = None
        cap = max(1, min(self.config.batch.max_inflight_batches, self._upstream_window - 1))
        while len(self._inflight) < cap:
            if not self._ready:
                # Close the open batch early when nothing more can come: draining,
                # or the local broker's window is full of our un-acknowledged messages.
                window_full = (
                    self._pending_messages >= self.config.local.receive_maximum
                    and self._events.empty()  # messages already here go into this batch
                )
                if self._batcher.open_batch is None or not (self._draining or window_full):
                    break
                closed = self._batcher.close()
                assert closed is not None
                self._ready.append(closed)
            batch = self._ready.popleft()
            info = self._upstream.publish(self.batch_topic, self._batcher.encode(batch, now), qos=1)
            self._inflight[info.mid] = batch
        holding = len(self._inflight) >= cap and bool(self._ready)
        if holding and not self._holding:
            log.info("back-pressure: %d batches await upstream PUBACK (max_inflight_batches); "
                     "holding %d finished batches and their device acknowledgements",
                     len(self._inflight), len(self._ready))
        self._holding = holding

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
