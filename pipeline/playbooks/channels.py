"""Where playbook messages go: Slack-compatible webhooks, generic webhooks, SMTP e-mail, MQTT, files.

Every channel has one method, ``send(row)``, that delivers one outbox row or
raises :class:`~fleetpulse.errors.TransientError` (worth retrying: connection
refused, timeout, HTTP 429/5xx, SMTP 4xx) or
:class:`~fleetpulse.errors.TerminalError` (refused for good: HTTP 4xx, SMTP
5xx, bad login, no recipient). The outbox worker (:mod:`.delivery`) decides
what to do next.

Every message carries its idempotency key: the ``Idempotency-Key`` header on
webhooks, the ``Message-ID`` of e-mails, a field of MQTT and file payloads.
A message is retried until acknowledged, so a receiver can see it twice if an
acknowledgement was lost; the key lets it drop the repeat.

Secrets come from environment variables the playbooks file names
(``url_env``, ``secret_env``, ``password_env``) and are resolved by
:func:`open_channels` at start; they never appear in the ledger or in errors.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import smtplib
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from email.message import EmailMessage
from email.utils import formatdate
from pathlib import Path
from typing import Any, Protocol

from fleetpulse import mqtt_client
from fleetpulse.errors import ConfigError, TerminalError, TransientError
from fleetpulse.mqtt_tls import TlsSettings

from .config import ChannelConfig, PlaybookSet
from .ledger import OutboxRow

USER_AGENT = "fleetpulse-playbooks/1"
SLACK_TEXT_LIMIT = 2900  # a section block holds 3000 characters


class RetryLater(TransientError):
    """Transient, and the peer said when to come back (HTTP Retry-After)."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Channel(Protocol):
    name: str

    def send(self, row: OutboxRow) -> None: ...


def _env(environ: Mapping[str, str], name: str | None, config: ChannelConfig, key: str, source: str) -> str | None:
    if name is None:
        return None
    value = environ.get(name)
    if not value:
        raise ConfigError(source, f"channels.{config.name}.{key}", f"environment variable {name} is not set",
                          f"export {name}=... (the secret stays out of the playbooks file)")
    return value


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    # Verification stays on; a private CA is added, never a way around checking.
    return ssl.create_default_context(cafile=ca_file) if ca_file else ssl.create_default_context()


def message_body(row: OutboxRow) -> dict[str, Any]:
    """The JSON a generic webhook, MQTT topic or file receives: the alert payload plus the rendered text."""
    return {**row.message.get("payload", {}), "idempotency_key": row.key, "notification": row.notification,
            "action": row.action, "kind": row.kind, "subject": row.message.get("subject", ""),
            "text": row.message.get("text", "")}


# ---- HTTP -------------------------------------------------------------------------------

UrlOpen = Callable[..., Any]


class _Http:
    """POST JSON; map the outcome onto transient / terminal."""

    def __init__(self, name: str, url: str, timeout_ms: int, urlopen: UrlOpen | None = None) -> None:
        self.name, self.url, self.timeout_s = name, url, timeout_ms / 1000
        self.urlopen = urlopen or urllib.request.urlopen

    def post(self, body: bytes, headers: dict[str, str]) -> None:
        request = urllib.request.Request(self.url, data=body, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": USER_AGENT, **headers})
        try:
            with self.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            status = exc.code
            what = f"channel {self.name}: HTTP {status} {exc.reason}"
            exc.close()
            if status == 429 or status == 408 or status >= 500:
                retry_after = exc.headers.get("Retry-After") if exc.headers else None
                if retry_after and retry_after.strip().isdigit():
                    raise RetryLater(what, float(retry_after)) from None
                raise TransientError(what) from None
            raise TerminalError(what) from None
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, DNS, timeout
            reason = getattr(exc, "reason", exc)
            raise TransientError(f"channel {self.name}: {type(exc).__name__}: {reason}") from None


class SlackWebhook:
    """A Slack-compatible incoming webhook (Slack, Mattermost, Rocket.Chat...): ``{"text", "blocks"}``."""

    def __init__(self, config: ChannelConfig, url: str, urlopen: UrlOpen | None = None) -> None:
        self.name = config.name
        self.http = _Http(config.name, url, config.timeout_ms, urlopen)

    @staticmethod
    def body(row: OutboxRow) -> dict[str, Any]:
        subject, text = row.message.get("subject", ""), row.message.get("text", "")
        if len(text) > SLACK_TEXT_LIMIT:
            text = text[:SLACK_TEXT_LIMIT] + "..."
        blocks: list[dict[str, Any]] = [
            {"type": "header", "text": {"type": "plain_text", "text": subject[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        ]
        link = row.message.get("payload", {}).get("report_link")
        if link:
            blocks.append({"type": "actions", "elements": [
                {"type": "button", "text": {"type": "plain_text", "text": "Open in the report"}, "url": link}]})
        blocks.append({"type": "context", "elements": [
            {"type": "mrkdwn", "text": f"{row.playbook} · {row.notification} · episode {row.episode_id}"}]})
        return {"text": f"{subject}\n{text}", "blocks": blocks}

    def send(self, row: OutboxRow) -> None:
        self.http.post(json.dumps(self.body(row)).encode("utf-8"), {"Idempotency-Key": row.key})


class Webhook:
    """Any HTTP endpoint: the alert as JSON, an Idempotency-Key header and, with a secret, an HMAC signature."""

    SIGNATURE_HEADER = "X-FleetPulse-Signature"

    def __init__(self, config: ChannelConfig, url: str, secret: str | None, urlopen: UrlOpen | None = None) -> None:
        self.name, self.secret = config.name, secret
        self.http = _Http(config.name, url, config.timeout_ms, urlopen)

    @staticmethod
    def signature(secret: str, body: bytes) -> str:
        return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()

    def send(self, row: OutboxRow) -> None:
        body = json.dumps(message_body(row), sort_keys=True).encode("utf-8")
        headers = {"Idempotency-Key": row.key, "X-FleetPulse-Event": row.notification}
        if self.secret:
            headers[self.SIGNATURE_HEADER] = self.signature(self.secret, body)
        self.http.post(body, headers)


# ---- e-mail -----------------------------------------------------------------------------

SmtpFactory = Callable[..., smtplib.SMTP]


class Smtp:
    """E-mail over SMTP: STARTTLS (default), implicit TLS or plain; certificates are verified."""

    def __init__(self, config: ChannelConfig, username: str | None, password: str | None,
                 smtp: SmtpFactory | None = None, smtp_ssl: SmtpFactory | None = None) -> None:
        self.name, self.config = config.name, config
        self.username, self.password = username, password
        self._smtp = smtp or smtplib.SMTP
        self._smtp_ssl = smtp_ssl or smtplib.SMTP_SSL

    def email(self, row: OutboxRow, recipients: list[str]) -> EmailMessage:
        sender = self.config.sender or ""
        domain = sender.rsplit("@", 1)[-1].strip("> ") or "fleetpulse.invalid"
        msg = EmailMessage()
        msg["From"] = sender
        msg["To"] = ", ".join(recipients)
        msg["Subject"] = row.message.get("subject", "")
        msg["Date"] = formatdate(usegmt=True)
        # The idempotency key as Message-ID: a repeat after a lost acknowledgement threads as the same mail.
        msg["Message-ID"] = f"<{row.key}@{domain}>"
        msg["X-FleetPulse-Episode"] = row.episode_id
        msg["X-FleetPulse-Playbook"] = row.playbook
        msg.set_content(row.message.get("text", ""))
        return msg

    def send(self, row: OutboxRow) -> None:
        recipients = list(self.config.to) or ([row.recipient] if row.recipient else [])
        if not recipients:
            raise TerminalError(f"channel {self.name}: no recipient (the channel has no `to` and the account "
                                f"has no address for a {row.kind} action)")
        message = self.email(row, recipients)
        timeout = self.config.timeout_ms / 1000
        host, port = self.config.host or "localhost", self.config.port or 25
        try:
            if self.config.security == "ssl":
                client = self._smtp_ssl(host, port, timeout=timeout, context=_tls_context(self.config.ca_file))
            else:
                client = self._smtp(host, port, timeout=timeout)
            with client:
                if self.config.security == "starttls":
                    client.starttls(context=_tls_context(self.config.ca_file))
                if self.username is not None and self.password is not None:
                    client.login(self.username, self.password)
                client.send_message(message, from_addr=self.config.sender, to_addrs=recipients)
        except (smtplib.SMTPAuthenticationError, smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused,
                smtplib.SMTPNotSupportedError) as exc:
            raise TerminalError(f"channel {self.name}: {type(exc).__name__}: {_smtp_reason(exc)}") from None
        except smtplib.SMTPResponseException as exc:
            what = f"channel {self.name}: SMTP {exc.smtp_code} {_smtp_reason(exc)}"
            raise (TransientError(what) if 400 <= exc.smtp_code < 500 else TerminalError(what)) from None
        except ssl.SSLCertVerificationError as exc:
            raise TerminalError(f"channel {self.name}: TLS certificate not trusted ({exc.verify_message}); "
                                "set ca_file to the server's CA") from None
        except (smtplib.SMTPException, OSError) as exc:  # disconnects, refused, timeouts
            raise TransientError(f"channel {self.name}: {type(exc).__name__}: {exc}") from None


def _smtp_reason(exc: Exception) -> str:
    error = getattr(exc, "smtp_error", None)
    if isinstance(error, bytes):
        return error.decode("utf-8", "replace")
    return str(exc)


# ---- MQTT -------------------------------------------------------------------------------


class Mqtt:
    """Publish the alert JSON to a topic (rendered per message at enqueue time) with QoS 1 by default."""

    def __init__(self, config: ChannelConfig, username: str | None, password: str | None,
                 client_factory: Callable[[str], Any] | None = None) -> None:
        self.name, self.config = config.name, config
        self.username, self.password = username, password
        self.client_factory = client_factory or _paho_client

    def send(self, row: OutboxRow) -> None:
        topic = row.recipient
        if not topic:
            raise TerminalError(f"channel {self.name}: no topic for this message")
        timeout = self.config.timeout_ms / 1000
        client = self.client_factory(f"fleetpulse-playbooks-{row.key[-12:]}")
        connected = threading.Event()
        outcome: dict[str, Any] = {}

        def on_connect(_c: Any, _u: Any, _f: Any, reason: Any, _p: Any = None) -> None:
            outcome["reason"] = reason
            connected.set()

        client.on_connect = on_connect
        tls = None
        if self.config.security == "tls":
            settings = TlsSettings(ca_key=f"channels.{self.name}.ca_file", host_key=f"channels.{self.name}.host")
            tls = mqtt_client.Tls(settings, ca_file=self.config.ca_file)
        # (a CA file that cannot be loaded is TlsFilesUnusable: terminal, naming the key)
        mqtt_client.configure(client, tls=tls, username=self.username, password=self.password)
        try:
            client.connect(self.config.host or "localhost", self.config.port or 1883, keepalive=30)
        except OSError as exc:
            raise TransientError(f"channel {self.name}: cannot connect ({exc})") from None
        client.loop_start()
        try:
            if not connected.wait(timeout):
                raise TransientError(f"channel {self.name}: no CONNACK within {timeout:g}s")
            reason = outcome["reason"]
            if getattr(reason, "is_failure", False):
                denied = getattr(reason, "value", 0) in (0x86, 0x87, 4, 5)  # bad credentials / not authorised
                raise (TerminalError if denied else TransientError)(f"channel {self.name}: broker refused: {reason}")
            info = client.publish(topic, json.dumps(message_body(row), sort_keys=True), qos=self.config.qos)
            info.wait_for_publish(timeout)
            if not info.is_published():
                raise TransientError(f"channel {self.name}: publish not acknowledged within {timeout:g}s")
        except (RuntimeError, ValueError) as exc:  # paho: not connected / queue full
            raise TransientError(f"channel {self.name}: {exc}") from None
        finally:
            client.disconnect()
            client.loop_stop()


def _paho_client(client_id: str) -> Any:
    return mqtt_client.new_client(mqtt_client.ClientOptions(client_id, "3.1.1"))


# ---- file -------------------------------------------------------------------------------


class FileChannel:
    """Append one JSON line per message and fsync: an audit trail, or a hand-off to another tool."""

    def __init__(self, config: ChannelConfig, base: Path | None = None) -> None:
        self.name = config.name
        path = Path(config.path or "")
        self.path = path if path.is_absolute() or base is None else base / path

    def send(self, row: OutboxRow) -> None:
        line = json.dumps({**message_body(row), "channel": self.name, "recipient": row.recipient},
                          sort_keys=True, ensure_ascii=False)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(line + "\n")
                handle.flush()
                os.fsync(handle.fileno())
        except OSError as exc:
            raise TransientError(f"channel {self.name}: cannot append to {self.path} ({exc.strerror})") from None


def open_channel(config: ChannelConfig, environ: Mapping[str, str], source: str,
                 base: Path | None = None) -> Channel:
    """A channel ready to send; ConfigError when a secret it names is missing from the environment."""
    if config.type == "slack":
        return SlackWebhook(config, _env(environ, config.url_env, config, "url_env", source) or "")
    if config.type == "webhook":
        return Webhook(config, _env(environ, config.url_env, config, "url_env", source) or "",
                       _env(environ, config.secret_env, config, "secret_env", source))
    username = _env(environ, config.username_env, config, "username_env", source)
    password = _env(environ, config.password_env, config, "password_env", source)
    if config.type == "smtp":
        return Smtp(config, username, password)
    if config.type == "mqtt":
        return Mqtt(config, username, password)
    return FileChannel(config, base)


def open_channels(book: PlaybookSet, environ: Mapping[str, str] | None = None,
                  base: Path | None = None) -> dict[str, Channel]:
    """Every channel of a playbooks file (file channels' relative paths resolve against ``base``)."""
    env = os.environ if environ is None else environ
    return {name: open_channel(config, env, book.source, base) for name, config in book.channels.items()}
