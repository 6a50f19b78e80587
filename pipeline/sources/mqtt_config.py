"""The MQTT source's settings, and the checks made before a job starts.

:class:`MqttSourceConfig` is everything a reader needs, validated at
construction; :func:`check_broker` verifies the broker's TLS certificate (and
waits for an unreachable broker) on the launching machine;
:func:`broker_password` resolves the password where the reader runs.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from dataclasses import dataclass, field

from fleetpulse import mqtt_tls
from fleetpulse.errors import TransientError
from fleetpulse.pipeline.secrets import SecretRef, read_secret
from fleetpulse.schemas import load_contract

log = logging.getLogger(__name__)

TLS_SETTINGS = mqtt_tls.TlsSettings(ca_key="--ca-file", host_key="--broker")

METRICS_NAMESPACE = "fleetpulse.pipeline.mqtt"
#: how the watermark moves while no message arrives (see the module docstring)
IDLE_WATERMARK_MODES = ("hold", "wall_clock")
def _default_topic() -> str:
    return load_contract().subscription("gateway_batches")


def _default_status_topic() -> str:
    return load_contract().subscription("gateway_status")


@dataclass(frozen=True)
class MqttSourceConfig:
    """Everything a reader needs; validated at construction (ValueError names the key)."""

    host: str = "127.0.0.1"
    port: int = 1883
    topic: str = field(default_factory=_default_topic)
    #: the gateways' status topics, read in the same session so that live scoring
    #: learns that a gateway said "offline" (None: batches only)
    status_topic: str | None = field(default_factory=_default_status_topic)
    share_group: str | None = "fleetpulse-ingest"
    client_id_prefix: str = "fleetpulse-ingest"
    readers: int = 1
    qos: int = 1
    tls: bool = False
    ca_file: str | None = None
    username: str | None = None
    #: name of the environment variable holding the password, read on the worker
    #: when connecting, so the secret never travels inside the pipeline graph
    password_env: str | None = None
    #: a reference to the password (a ``SecretRef`` such as Beam's ``GcpSecret(version)``,
    #: which reads Secret Manager), resolved in the reader's ``setup`` on the worker;
    #: only the reference is in the graph. Takes precedence over ``password_env``.
    password_secret: SecretRef | None = field(default=None, repr=False, hash=False)
    keepalive_s: int = 30
    session_expiry_s: int = 7 * 86400
    connect_timeout_s: float = 10.0
    receive_maximum: int = 100
    max_messages_per_bundle: int = 100
    max_bundle_ms: int = 500
    watermark_lag_ms: int = 300_000
    idle_watermark: str = "hold"
    idle_watermark_ms: int = 60_000
    max_messages: int | None = None
    idle_stop_ms: int | None = None
    stop_file: str | None = None
    #: "5" (default), or "3.1.1" for brokers without MQTT v5 (one reader, no
    #: shared subscription, no Receive Maximum: the broker's own in-flight
    #: window must be at least max_messages_per_bundle)
    protocol: str = "5"

    def __post_init__(self) -> None:
        if self.protocol not in ("5", "3.1.1"):
            raise ValueError(f"protocol={self.protocol!r}: \"5\" or \"3.1.1\"")
        if self.protocol == "3.1.1" and (self.share_group or self.readers > 1):
            raise ValueError(
                "share_group: MQTT 3.1.1 has no shared subscriptions; use one reader and "
                "share_group=None, or MQTT 5"
            )
        if self.readers < 1:
            raise ValueError(f"readers={self.readers}: at least 1")
        if self.readers > 1 and not self.share_group:
            raise ValueError(
                "share_group: several readers need a shared subscription, "
                "or each would receive every message"
            )
        if self.qos not in (1, 2):
            raise ValueError(f"qos={self.qos}: 1 or 2 (QoS 0 cannot be acknowledged, so it can lose data)")
        if self.idle_watermark not in IDLE_WATERMARK_MODES:
            raise ValueError(f"idle_watermark={self.idle_watermark!r}: one of {IDLE_WATERMARK_MODES}")
        if not 1 <= self.max_messages_per_bundle <= self.receive_maximum:
            raise ValueError(
                f"max_messages_per_bundle={self.max_messages_per_bundle}: between 1 and "
                f"receive_maximum={self.receive_maximum} (the broker sends no more until "
                "a bundle is finalized)"
            )
        for name in ("max_bundle_ms", "keepalive_s", "session_expiry_s", "watermark_lag_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}={getattr(self, name)} must not be negative")

    @property
    def topics(self) -> tuple[str, ...]:
        """The topic filters read: the batches, and the status topics unless turned off."""
        return (self.topic,) if self.status_topic is None else (self.topic, self.status_topic)

    @property
    def subscriptions(self) -> tuple[str, ...]:
        """The filters subscribed to: shared when ``share_group`` is set."""
        return tuple(f"$share/{self.share_group}/{t}" if self.share_group else t for t in self.topics)

    def client_id(self, reader: int) -> str:
        """The fixed client id of reader ``reader``: the same on every restart."""
        return f"{self.client_id_prefix}-{reader}"


def check_broker(config: MqttSourceConfig, stop: threading.Event, *, wait: bool = True) -> bool:
    """Before a job starts: wait until the broker answers, and verify its TLS certificate.

    The readers connect later, on the workers, where a certificate that does
    not verify would only fail bundles; checked here, the job stops at start
    with one line naming the setting (TlsRefused). A bare TCP/TLS handshake:
    no MQTT session is opened or taken over. Returns False when ``stop`` was
    set while waiting for an unreachable broker. ``wait=False`` (the workers
    run elsewhere and may reach what this machine cannot) tries once and
    only warns when the broker cannot be reached from here.
    """
    def attempt() -> None:
        if config.tls:
            mqtt_tls.check_tls(config.host, config.port, config.ca_file, TLS_SETTINGS,
                               timeout_s=config.connect_timeout_s)
        else:
            try:
                socket.create_connection((config.host, config.port), config.connect_timeout_s).close()
            except OSError as exc:
                raise TransientError(f"cannot reach MQTT broker {config.host}:{config.port}: {exc}") from None

    if wait:
        return mqtt_tls.until_reachable(attempt, stop)
    try:
        attempt()
    except TransientError as exc:
        log.warning("%s from this machine; the workers will try from theirs", exc)
    return True


def broker_password(config: MqttSourceConfig) -> str | None:
    """The broker password, read where the readers run (the worker): from ``password_secret``,
    else from the variable ``password_env``; None without a ``username``.
    """
    if not config.username:
        return None
    if config.password_secret is not None:
        return read_secret(config.password_secret, f"the broker password of {config.username!r}")
    return os.environ.get(config.password_env) if config.password_env else None


