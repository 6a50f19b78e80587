"""How every FleetPulse MQTT client is built: paho-mqtt 2.x, callback API v2, MQTT 5 or 3.1.1.

The gateway collector's two connections, the lander, the streaming reader,
the playbooks' MQTT channel, the demo and the device simulator all make their
paho clients here, so that a protocol, a persistent session, TLS, credentials
and jittered reconnects mean the same thing in each::

    options = ClientOptions("fleetpulse-lander", protocol="3.1.1", persistent=True, manual_ack=True)
    client = build(options, tls=Tls(TLS_SETTINGS, ca_file=ca), username=user, password=secret,
                   reconnect=Backoff(500, 60_000))
    mqtt_tls.connect(client, host, port, TLS_SETTINGS, **connect_kwargs(options, keepalive_s=30,
                                                                          session_expiry_s=86400))

:func:`build` is :func:`new_client` (construction) followed by
:func:`configure` (credentials, TLS, first reconnect delay); a part that
takes an injected client factory calls :func:`configure` on whatever the
factory returned, so a test's fake sees the same calls as paho does.

A *persistent* session survives disconnects: the broker keeps the
subscriptions and the QoS 1 messages queued meanwhile. In 3.1.1 that is
``clean_session=False`` when the client is made; in MQTT 5 it is
``clean_start=False`` plus a session expiry at each CONNECT, which
:func:`connect_kwargs` supplies.

paho-mqtt and the standard library only: the gateway imports it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from .backoff import Backoff
from .mqtt_tls import TlsRefused, TlsSettings

#: The MQTT versions FleetPulse speaks ("3.1.1" for brokers without v5, e.g. the demo's amqtt).
PROTOCOLS = ("5", "3.1.1")


@dataclass(frozen=True)
class ClientOptions:
    """What a client is: its id, its protocol, whether its session persists, who acknowledges."""

    client_id: str
    protocol: str = "5"  # one of PROTOCOLS
    #: the broker keeps the session (subscriptions, queued QoS 1 messages) between connections
    persistent: bool = False
    #: the caller acknowledges each received message itself (``client.ack(mid, qos)``)
    manual_ack: bool = False

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"MQTT protocol must be one of {PROTOCOLS}, not {self.protocol!r}")


@dataclass(frozen=True)
class Tls:
    """TLS to the broker: verified against ``ca_file`` (None: the system's trust store).

    ``cert_file`` / ``key_file``: the client certificate, for brokers that
    want one. ``settings`` names the settings in error messages.
    """

    settings: TlsSettings
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None


class TlsFilesUnusable(TlsRefused):
    """A CA bundle, certificate or key named in the settings cannot be loaded.

    ``key`` is the setting to fix (``settings.ca_key`` or ``settings.cert_key``)
    and ``cause`` the error loading it.
    """

    def __init__(self, message: str, key: str, cause: BaseException) -> None:
        super().__init__(message)
        self.key, self.cause = key, cause


def new_client(options: ClientOptions) -> Any:
    """A paho client (callback API v2) for ``options``; not connected, not configured."""
    import paho.mqtt.client as mqtt

    if options.protocol == "3.1.1":
        # No session expiry in 3.1.1: the session persists until clean_session is set again.
        return mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=options.client_id,
            protocol=mqtt.MQTTv311,
            clean_session=not options.persistent,
            manual_ack=options.manual_ack,
        )
    return mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=options.client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=options.manual_ack,
    )


def configure(
    client: Any,
    *,
    tls: Tls | None = None,
    username: str | None = None,
    password: str | None = None,
    reconnect: Backoff | None = None,
) -> None:
    """Credentials (when ``username`` is set), TLS, and the first jittered reconnect delay.

    Raises :class:`TlsFilesUnusable` (terminal) naming the setting when a
    TLS file cannot be loaded. With ``reconnect``, call
    :func:`jitter_reconnect` again after each failed attempt and each lost
    connection (paho keeps one delay until told another), and reset the
    back-off on a successful CONNACK.
    """
    if username:
        client.username_pw_set(username, password)
    if tls is not None:
        try:
            client.tls_set(
                ca_certs=tls.ca_file or None,  # None: the system's trust store
                certfile=tls.cert_file or None,
                keyfile=tls.key_file or None,
                cert_reqs=ssl.CERT_REQUIRED,
            )
        except (OSError, ssl.SSLError) as exc:
            raise _unusable(tls, exc) from None
    if reconnect is not None:
        jitter_reconnect(client, reconnect)


def build(
    options: ClientOptions,
    *,
    tls: Tls | None = None,
    username: str | None = None,
    password: str | None = None,
    reconnect: Backoff | None = None,
) -> Any:
    """:func:`new_client` then :func:`configure`: a client ready to connect."""
    client = new_client(options)
    configure(client, tls=tls, username=username, password=password, reconnect=reconnect)
    return client


def jitter_reconnect(client: Any, backoff: Backoff) -> None:
    """Set paho's next reconnect wait to the back-off's next delay (paho's own has no jitter)."""
    delay = backoff.next_s()
    client.reconnect_delay_set(min_delay=delay, max_delay=delay)


def connect_kwargs(
    options: ClientOptions,
    *,
    keepalive_s: int,
    session_expiry_s: int | None = None,
    receive_maximum: int | None = None,
) -> dict[str, Any]:
    """The keyword arguments of ``client.connect()`` / ``connect_async()`` for ``options``.

    MQTT 5 only: a persistent client resumes its session (``clean_start``
    False) and asks the broker to keep it ``session_expiry_s``;
    ``receive_maximum`` bounds the messages the broker sends unacknowledged.
    3.1.1 has neither property (the broker's in-flight window is the bound).
    """
    kwargs: dict[str, Any] = {"keepalive": keepalive_s}
    if options.protocol != "5":
        return kwargs
    if options.persistent and session_expiry_s is None:
        # (without an expiry an MQTT 5 session ends with the connection: nothing would persist)
        raise ValueError(f"client {options.client_id}: a persistent MQTT 5 session needs session_expiry_s")
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    if options.persistent:
        kwargs["clean_start"] = False
    if session_expiry_s is not None or receive_maximum is not None:
        props = Properties(PacketTypes.CONNECT)
        if session_expiry_s is not None:
            props.SessionExpiryInterval = session_expiry_s
        if receive_maximum is not None:
            props.ReceiveMaximum = receive_maximum
        kwargs["properties"] = props
    return kwargs


def _unusable(tls: Tls, exc: BaseException) -> TlsFilesUnusable:
    """Which file could not be loaded: the certificate and key if they do not load alone, else the CA."""
    settings = tls.settings
    if tls.cert_file and settings.cert_key:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_cert_chain(tls.cert_file, tls.key_file or None)
        except (OSError, ssl.SSLError):
            return TlsFilesUnusable(
                f"{settings.cert_key}={tls.cert_file!r} (with its key) cannot be loaded: {exc}; "
                "fix: point it and the key file at a readable PEM certificate and its key",
                settings.cert_key, exc)
    return TlsFilesUnusable(
        f"{settings.ca_key}={tls.ca_file!r} cannot be loaded as a CA bundle: {exc}; "
        "fix: point it at a readable PEM file", settings.ca_key, exc)
