"""How every FleetPulse MQTT client tells a TLS refusal from an unreachable broker.

A broker that cannot be reached yet (refused, DNS, no route) is worth
retrying: it may come back. A broker whose certificate does not verify (a
wrong CA bundle, an expired certificate, a host name the certificate does not
name) will not verify on the next try either: retrying forever only hides a
configuration fault. So the gateway collector, the lander and the streaming
reader all connect through :func:`connect`, which raises

* :class:`TlsRefused` (terminal) naming the setting to change and the fix, and
* :class:`~fleetpulse.errors.TransientError` for an unreachable broker,
  which :func:`until_reachable` retries with back-off.

:func:`check_tls` does the same TLS handshake without MQTT, so a job that
connects later on its workers (``fleetpulse ingest``) can refuse a bad
certificate at start without opening, or disturbing, a broker session.

Standard library only (the gateway imports it too).
"""

from __future__ import annotations

import logging
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import TerminalError, TransientError

log = logging.getLogger(__name__)


class TlsRefused(TerminalError):
    """TLS with the broker cannot succeed with this configuration; the message names the setting."""


@dataclass(frozen=True)
class TlsSettings:
    """Where a client's TLS settings come from, for the message that names them.

    ``ca_key`` is the setting holding the CA bundle (``--ca-file``,
    ``upstream.ca_file``), ``host_key`` the one holding the broker's host
    name, ``cert_key`` the client certificate's, if the client has one.
    """

    ca_key: str
    host_key: str
    cert_key: str | None = None


def refusal(exc: ssl.SSLError, host: str, port: int, settings: TlsSettings) -> TlsRefused:
    """The terminal error for a failed TLS handshake, naming the setting to fix."""
    where = f"TLS with broker {host}:{port} failed"
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = exc.verify_message or str(exc)
        lowered = message.lower()
        if "hostname mismatch" in lowered or "ip address mismatch" in lowered:
            return TlsRefused(
                f"{where}: certificate verify failed: {message}; fix: set {settings.host_key} to a "
                "name the broker's certificate holds (its subjectAltName), or reissue the certificate"
            )
        if "expired" in lowered or "not yet valid" in lowered:
            return TlsRefused(
                f"{where}: certificate verify failed: {message}; fix: the broker's certificate must be "
                f"renewed (or this machine's clock set); {settings.ca_key} is not the problem"
            )
        return TlsRefused(
            f"{where}: certificate verify failed: {message}; fix: point {settings.ca_key} at the CA "
            "bundle that signed the broker's certificate"
        )
    fix = f"check {settings.ca_key}"
    if settings.cert_key:
        fix += f", {settings.cert_key}"
    return TlsRefused(f"{where}: {exc}; fix: {fix} and that the port speaks TLS")


def connect(client: Any, host: str, port: int, settings: TlsSettings | None, **kwargs: Any) -> None:
    """``client.connect(host, port, **kwargs)`` with TLS refusals made terminal.

    ``settings`` None: the client does not use TLS (an SSL error cannot occur).
    """
    try:
        client.connect(host, port, **kwargs)
    except ssl.SSLError as exc:  # an OSError too: caught first
        if settings is None:
            raise
        _close_handshake_socket(exc)
        raise refusal(exc, host, port, settings) from None
    except OSError as exc:  # refused, unreachable, DNS
        raise TransientError(f"cannot reach MQTT broker {host}:{port}: {exc}") from exc


def _close_handshake_socket(exc: BaseException) -> None:
    """Close the socket paho (2.x) leaves open when a TLS handshake fails inside connect().

    It lives only in the failed call's frames; unclosed, it leaks a file
    descriptor per refused attempt and warns when collected.
    """
    tb = exc.__traceback__
    while tb is not None:
        for value in tb.tb_frame.f_locals.values():
            if isinstance(value, socket.socket):
                value.close()
        tb = tb.tb_next


def client_context(ca_file: str | None, settings: TlsSettings) -> ssl.SSLContext:
    """The verifying client context paho builds for ``tls_set(ca_certs=ca_file)``.

    Raises TlsRefused naming ``settings.ca_key`` when the bundle cannot be loaded.
    """
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise TlsRefused(
            f"{settings.ca_key}={ca_file!r} cannot be loaded as a CA bundle: {exc}; "
            "fix: point it at a readable PEM file"
        ) from None


def check_tls(
    host: str, port: int, ca_file: str | None, settings: TlsSettings, *, timeout_s: float = 10.0
) -> None:
    """Verify the broker's certificate with a bare TLS handshake (no MQTT, no session).

    Raises TlsRefused when it does not verify, TransientError when the broker
    cannot be reached (the caller decides whether to wait for it).
    """
    context = client_context(ca_file, settings)
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as raw:
            with context.wrap_socket(raw, server_hostname=host):
                return
    except ssl.SSLError as exc:
        raise refusal(exc, host, port, settings) from None
    except OSError as exc:
        raise TransientError(f"cannot reach MQTT broker {host}:{port}: {exc}") from None


def until_reachable(
    attempt: Callable[[], None], stop: threading.Event, *, first_s: float = 1.0, max_s: float = 60.0
) -> bool:
    """Call ``attempt`` until it raises no TransientError; False when ``stop`` was set first.

    Any other error (TlsRefused, a refused login) propagates: it is not a
    matter of waiting.
    """
    delay_s = first_s
    while not stop.is_set():
        try:
            attempt()
            return True
        except TransientError as exc:
            log.warning("%s; retrying in %.0fs", exc, delay_s)
            stop.wait(delay_s)
            delay_s = min(delay_s * 2, max_s)
    return False
