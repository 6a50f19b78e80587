"""Channels against real servers: an HTTP server for webhooks, aiosmtpd for SMTP, Mosquitto for MQTT."""

from __future__ import annotations

import hashlib
import hmac
import json
import shutil
import ssl
import subprocess
import threading
from collections.abc import Iterator
from email import message_from_bytes
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar

import paho.mqtt.client as mqtt
import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from fleetpulse.errors import ConfigError, TerminalError, TransientError
from fleetpulse.pipeline.playbooks.channels import Mqtt, SlackWebhook, Smtp, Webhook, open_channels
from fleetpulse.pipeline.playbooks.config import ChannelConfig, DeliveryPolicy
from fleetpulse.pipeline.playbooks.delivery import OutboxWorker
from fleetpulse.pipeline.playbooks.engine import Recorder
from fleetpulse.pipeline.playbooks.ledger import FAILED, SENT, Ledger, OutboxRow

from .servers import LocalHTTPServer, free_port, wait_until
from .test_playbooks_support import HEADER, book, history, sig

pytestmark = pytest.mark.integration


def outbox_row(key: str = "fp-0123456789abcdef", recipient: str | None = "jane@vendor.example") -> OutboxRow:
    return OutboxRow(
        key=key, episode_id="ep-1", customer_id="acme", playbook="health-red", action="notify_csm-0",
        kind="notify_csm", notification="open", day="2026-03-02", channel="x", recipient=recipient,
        message={"subject": "[FleetPulse] Opened: Health entered red - Acme", "text": "What changed: red.\nCall.",
                 "payload": {"schema": "fleetpulse.alert.v1", "episode_id": "ep-1",
                             "report_link": "https://cs.example/r#acct-acme"}},
    )


# ---- HTTP ---------------------------------------------------------------------------------


class Recording(BaseHTTPRequestHandler):
    """Answers each POST with the next scripted status (then 200); records what it accepted."""

    script: ClassVar[list[int]] = []
    received: ClassVar[list[tuple[dict[str, str], bytes, int]]] = []
    lock = threading.Lock()

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            status = self.script.pop(0) if self.script else 200
            self.received.append(({k.lower(): v for k, v in self.headers.items()}, body, status))
        self.send_response(status)
        if status == 429:
            self.send_header("Retry-After", "0")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def http_server() -> Iterator[LocalHTTPServer]:
    Recording.script, Recording.received = [], []
    server = LocalHTTPServer(Recording)
    yield server
    server.close()


def webhook_book(extra_header: str = "") -> Any:
    header = HEADER.replace("sales: {type: file, path: sales.jsonl}",
                            "sales: {type: webhook, url_env: SALES_URL, secret_env: SALES_SECRET, timeout_ms: 2000}")
    return book("""
    - name: lead
      title: Expansion lead
      step: Sales calls.
      trigger: {type: expansion}
      actions: [{kind: csql, channel: sales}]
    """, header=header + extra_header)


def test_a_webhook_that_fails_a_few_times_is_retried_and_delivered_once(tmp_path: Path,
                                                                         http_server: LocalHTTPServer) -> None:
    Recording.script = [503, 502, 429]
    b = webhook_book()
    env = {"SALES_URL": http_server.url + "/hook", "SALES_SECRET": "s3cret"}
    with Ledger.open(tmp_path) as ledger:
        Recorder(b, ledger, 0).record([history([sig(0, adoption=1.3, active=13)])])
        channels = open_channels(b, env)
        policy = DeliveryPolicy(max_attempts=6, backoff_initial_ms=10, backoff_max_ms=40)
        report = OutboxWorker(ledger, channels, policy).drain(max_wait_ms=10_000)
        (row,) = ledger.outbox()
    assert (row.status, row.attempts, report.sent, report.errors) == (SENT, 4, 1, 3)
    assert [status for _, _, status in Recording.received] == [503, 502, 429, 200]
    headers, body, _ = Recording.received[-1]
    # the same key on every attempt, so the receiver can drop a repeat
    assert {h["idempotency-key"] for h, _, _ in Recording.received} == {row.key}
    expected = "sha256=" + hmac.new(b"s3cret", body, hashlib.sha256).hexdigest()
    assert headers["x-fleetpulse-signature"] == expected
    sent = json.loads(body)
    assert sent["idempotency_key"] == row.key and sent["kind"] == "csql" and sent["schema"] == "fleetpulse.alert.v1"
    assert "Expansion lead: 13 of 10 entitled devices active" in sent["what_changed"]


def test_a_refused_webhook_fails_for_good_and_stays_visible(tmp_path: Path, http_server: LocalHTTPServer) -> None:
    Recording.script = [404]
    b = webhook_book()
    with Ledger.open(tmp_path) as ledger:
        Recorder(b, ledger, 0).record([history([sig(0, adoption=1.3, active=13)])])
        channels = open_channels(b, {"SALES_URL": http_server.url, "SALES_SECRET": "x"})
        OutboxWorker(ledger, channels, DeliveryPolicy(5, 10, 10)).drain(10_000)
        (row,) = ledger.outbox(status=FAILED)
    assert row.attempts == 1 and "HTTP 404" in (row.last_error or "")
    assert len(Recording.received) == 1


def test_an_unreachable_webhook_is_transient_and_a_missing_secret_stops_at_start() -> None:
    config = ChannelConfig(name="hook", type="webhook", url_env="U", timeout_ms=500)
    with pytest.raises(TransientError, match="hook"):
        Webhook(config, f"http://127.0.0.1:{free_port()}/", None).send(outbox_row())
    with pytest.raises(ConfigError) as caught:
        open_channels(webhook_book(), {"SALES_URL": "http://x"})
    assert caught.value.key == "channels.sales.secret_env" and "SALES_SECRET" in caught.value.problem


def test_slack_compatible_webhook_gets_text_and_blocks(http_server: LocalHTTPServer) -> None:
    SlackWebhook(ChannelConfig(name="chat", type="slack"), http_server.url).send(outbox_row())
    headers, body, _ = Recording.received[0]
    sent = json.loads(body)
    assert sent["text"].startswith("[FleetPulse] Opened: Health entered red - Acme\nWhat changed: red.")
    assert sent["blocks"][0] == {"type": "header", "text": {"type": "plain_text",
                                                             "text": "[FleetPulse] Opened: Health entered red - Acme"}}
    assert sent["blocks"][2]["elements"][0]["url"] == "https://cs.example/r#acct-acme"
    assert headers["content-type"] == "application/json"


# ---- SMTP ---------------------------------------------------------------------------------


class Inbox:
    def __init__(self, reply: str = "250 OK") -> None:
        self.reply = reply
        self.messages: list[tuple[str, list[str], bytes]] = []

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's naming
        if self.reply.startswith("250"):
            self.messages.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        return self.reply


def check_login(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
    ok = isinstance(auth_data, LoginPassword) and (auth_data.login, auth_data.password) == (b"fp", b"pw")
    return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself


@pytest.fixture
def tls_files(tmp_path: Path) -> tuple[ssl.SSLContext, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("openssl is not installed: apt-get install openssl")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    return context, cert


def smtp_server(inbox: Inbox, **kwargs: Any) -> Controller:
    controller = Controller(inbox, hostname="127.0.0.1", port=free_port(), **kwargs)
    controller.start()
    return controller


def test_smtp_starttls_with_login_verified_against_the_ca(tls_files: tuple[ssl.SSLContext, Path]) -> None:
    context, cert = tls_files
    inbox = Inbox()
    server = smtp_server(inbox, tls_context=context, require_starttls=True, authenticator=check_login,
                         auth_require_tls=True)
    try:
        config = ChannelConfig(name="mail", type="smtp", host="127.0.0.1", port=server.port, security="starttls",
                               ca_file=str(cert), sender="fleetpulse@vendor.example", timeout_ms=5000)
        Smtp(config, "fp", "pw").send(outbox_row(key="fp-abc"))
        (mail_from, rcpt, content), = inbox.messages
        assert mail_from == "fleetpulse@vendor.example" and rcpt == ["jane@vendor.example"]
        mail = message_from_bytes(content)
        assert mail["Subject"] == "[FleetPulse] Opened: Health entered red - Acme"
        assert mail["Message-ID"] == "<fp-abc@vendor.example>" and mail["X-FleetPulse-Episode"] == "ep-1"
        assert "What changed: red." in mail.get_payload()
        with pytest.raises(TerminalError, match="Authentication"):
            Smtp(config, "fp", "wrong").send(outbox_row())
        # without the CA the certificate is not trusted: refused, not sent in clear
        untrusted = ChannelConfig(**{**config.__dict__, "ca_file": None})
        with pytest.raises(TerminalError, match="not trusted"):
            Smtp(untrusted, "fp", "pw").send(outbox_row())
        assert len(inbox.messages) == 1
    finally:
        server.stop()


def test_smtp_temporary_and_permanent_refusals() -> None:
    for reply, error in (("451 4.3.0 try again later", TransientError), ("554 5.7.1 rejected", TerminalError)):
        server = smtp_server(Inbox(reply))
        try:
            config = ChannelConfig(name="mail", type="smtp", host="127.0.0.1", port=server.port, security="none",
                                   sender="cs@vendor.example", to=("sales@vendor.example",), timeout_ms=5000)
            with pytest.raises(error, match=reply.split()[0]):
                Smtp(config, None, None).send(outbox_row())
        finally:
            server.stop()
    down = ChannelConfig(name="mail", type="smtp", host="127.0.0.1", port=free_port(), security="none",
                         sender="cs@vendor.example", timeout_ms=1000)
    with pytest.raises(TransientError):
        Smtp(down, None, None).send(outbox_row())
    with pytest.raises(TerminalError, match="no recipient"):
        Smtp(down, None, None).send(outbox_row(recipient=None))


def test_digital_touches_by_email_end_to_end(tmp_path: Path) -> None:
    inbox = Inbox()
    server = smtp_server(inbox)
    try:
        header = HEADER.replace("customer: {type: file, path: customer.jsonl}",
                                f"customer: {{type: smtp, host: 127.0.0.1, port: {server.port}, security: none, "
                                "from: success@vendor.example}")
        b = book("""
        - name: welcome
          step: none
          trigger: {type: time_to_value}
          actions:
            - kind: touch_customer
              channel: customer
              template: {subject: "Welcome, $account_name", text: "$active_devices of $entitled_devices in use."}
        """, header=header)
        with Ledger.open(tmp_path) as ledger:
            Recorder(b, ledger, 0).record([history([sig(0), sig(1, ttv=9), sig(2, ttv=9)])])
            OutboxWorker(ledger, open_channels(b, {}), b.delivery).drain()
            assert [r.status for r in ledger.outbox()] == [SENT]
        (_, rcpt, content), = inbox.messages
        mail = message_from_bytes(content)
        assert rcpt == ["admin@acme.example"] and mail["Subject"] == "Welcome, Acme Dental"
        assert mail.get_payload().strip() == "9 of 10 in use."
    finally:
        server.stop()


# ---- MQTT ---------------------------------------------------------------------------------


def test_mqtt_topic_gets_the_alert_with_qos1(mosquitto: Any) -> None:
    got: list[tuple[str, bytes, int]] = []
    subscribed = threading.Event()
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-sub")
    sub.on_subscribe = lambda *a: subscribed.set()
    sub.on_message = lambda c, u, m: got.append((m.topic, m.payload, m.qos))
    sub.connect("127.0.0.1", mosquitto.port)
    sub.subscribe("fleetpulse/alerts/#", qos=1)
    sub.loop_start()
    try:
        wait_until(subscribed.is_set, 10, "the subscription")
        config = ChannelConfig(name="ops", type="mqtt", host="127.0.0.1", port=mosquitto.port,
                               topic="fleetpulse/alerts/${playbook}/${customer_id}", qos=1, timeout_ms=5000)
        Mqtt(config, None, None).send(outbox_row(recipient="fleetpulse/alerts/health-red/acme"))
        wait_until(lambda: bool(got), 10, "the alert on the topic")
    finally:
        sub.loop_stop()
        sub.disconnect()
    topic, payload, qos = got[0]
    assert topic == "fleetpulse/alerts/health-red/acme" and qos == 1
    assert json.loads(payload)["idempotency_key"] == "fp-0123456789abcdef"
    mosquitto.stop()
    with pytest.raises(TransientError, match="cannot connect"):
        Mqtt(config, None, None).send(outbox_row(recipient="fleetpulse/alerts/x"))
