"""What the collector's two MQTT connections share: the client factory, the start-up connect, reconnect jitter.

The local side (:mod:`.intake`) and the central side (:mod:`.uplink`) each
own one paho client made by the collector's ``client_factory`` from a
:class:`ClientSpec` (:func:`paho_client` by default; tests pass fakes). Both
keep a persistent session and reconnect with capped exponential back-off and
jitter (:mod:`fleetpulse.backoff`), so a thousand gateways coming back after
an outage do not arrive in lockstep. They differ in what an unreachable
broker means at start: the local broker must answer; the central one may be
down for days while the spool holds the data.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from fleetpulse import mqtt_client, mqtt_tls
from fleetpulse.backoff import Backoff
from fleetpulse.errors import TerminalError, TransientError

from .config import CollectorConfig, LocalConfig, UpstreamConfig

#: CONNACK reason codes that retrying will not fix (MQTT v5 §3.2.2.2).
_REFUSED_FOR_GOOD = {0x84, 0x85, 0x86, 0x87, 0x8C}


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

    @property
    def options(self) -> mqtt_client.ClientOptions:
        # Both connections keep their session: the local broker queues device messages
        # while the collector restarts, the central one the batches in flight.
        return mqtt_client.ClientOptions(self.client_id, self.protocol, persistent=True,
                                         manual_ack=self.manual_ack)


def paho_client(spec: ClientSpec) -> Any:
    """The real client: paho-mqtt 2.x, callback API v2, MQTT v5 (or 3.1.1 for older brokers)."""
    return mqtt_client.new_client(spec.options)


class Connection:
    """One of the collector's broker connections: its client, its reconnect back-off, its start-up connect.

    Subclasses say what the role's failures at start mean (:meth:`_unreachable`,
    :meth:`_no_connack`, :meth:`_refused_for_now`). paho's callbacks run on its
    network thread: they only enqueue, count and log.
    """

    role: ClassVar[str]

    def __init__(self, config: CollectorConfig, client_factory: Callable[[ClientSpec], Any],
                 backoff: Backoff) -> None:
        self.config = config
        self._backoff = backoff
        self.client = client_factory(self.spec)
        self._connack = threading.Event()
        self._connack_reason: Any = None
        self._ever_connected = False

    @property
    def settings(self) -> LocalConfig | UpstreamConfig:
        return self.config.local if self.role == "local" else self.config.upstream

    @property
    def endpoint(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def spec(self) -> ClientSpec:
        return ClientSpec(self.role, self.settings.client_id, manual_ack=self.role == "local",
                          protocol=self.settings.protocol)

    def jitter_next_reconnect(self, client: Any) -> None:
        """Set paho's next reconnect wait to a jittered, capped delay (paho's own has no jitter)."""
        mqtt_client.jitter_reconnect(client, self._backoff)

    def connect(self) -> None:
        """Connect and wait for the CONNACK; what a failure means is the role's (see the subclasses)."""
        cfg = self.settings
        kwargs = self._connect_kwargs()
        try:
            mqtt_tls.connect(self.client, cfg.host, cfg.port, self._tls_settings(), **kwargs)
        except mqtt_tls.TlsRefused as exc:
            # A certificate that does not verify: no retry fixes that (fleetpulse.mqtt_tls).
            raise BrokerRefused(str(exc)) from None
        except TransientError as exc:  # refused, unreachable, DNS
            self._unreachable(exc, kwargs)
            return
        self.client.loop_start()
        timeout_s = self.config.upstream.connect_timeout_s
        connacked = self._connack.wait(timeout_s)
        self._after_connack_wait()
        if not connacked:
            self._no_connack(timeout_s)
            return
        reason = self._connack_reason
        if getattr(reason, "is_failure", False):
            text = f"{self.role} broker {cfg.host}:{cfg.port} refused the connection: {reason}"
            if getattr(reason, "value", 0) in _REFUSED_FOR_GOOD:
                raise BrokerRefused(f"{text}; check {self.role}.client_id, username and password")
            self._refused_for_now(text)

    def disconnect(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    # ------------------------------------------------------------------ per role
    def _connect_kwargs(self) -> dict[str, Any]:
        return mqtt_client.connect_kwargs(self.spec.options, keepalive_s=self.settings.keepalive_s,
                                          session_expiry_s=self.settings.session_expiry_s)

    def _tls_settings(self) -> mqtt_tls.TlsSettings | None:
        return None

    def _unreachable(self, exc: TransientError, kwargs: dict[str, Any]) -> None:
        raise NotImplementedError

    def _no_connack(self, timeout_s: int) -> None:
        raise NotImplementedError

    def _refused_for_now(self, text: str) -> None:
        raise NotImplementedError

    def _after_connack_wait(self) -> None:
        """A refusal that arrives without a CONNACK (TLS 1.3 refuses a client certificate after the handshake)."""
