"""fleetpulse.mqtt_client: one way to build and configure a paho client, on fakes and real paho."""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from fleetpulse import mqtt_client
from fleetpulse.backoff import Backoff
from fleetpulse.mqtt_client import ClientOptions, Tls, TlsFilesUnusable
from fleetpulse.mqtt_tls import TlsRefused, TlsSettings

from .test_gateway_security import Certs, certs  # noqa: F401  (the session's test certificates)

SETTINGS = TlsSettings(ca_key="upstream.ca_file", host_key="upstream.host", cert_key="upstream.cert_file")


class Recorder:
    """Records the configuration calls paho's client takes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def username_pw_set(self, username: str, password: str | None = None) -> None:
        self.calls.append(("credentials", (username, password)))

    def tls_set(self, **kwargs: Any) -> None:
        self.calls.append(("tls", kwargs))

    def reconnect_delay_set(self, min_delay: float = 1, max_delay: float = 120) -> None:
        self.calls.append(("reconnect", (min_delay, max_delay)))


class Top:
    def uniform(self, a: float, b: float) -> float:
        return b


# ------------------------------------------------------------------ construction
@pytest.mark.parametrize(("protocol", "persistent", "clean"), [("3.1.1", True, False), ("3.1.1", False, True)])
def test_a_311_client_persists_its_session_through_clean_session(protocol: str, persistent: bool,
                                                                 clean: bool) -> None:
    client = mqtt_client.new_client(ClientOptions("gw-1", protocol, persistent=persistent, manual_ack=True))
    assert client.protocol == mqtt.MQTTv311 and client._clean_session is clean
    assert client._client_id == b"gw-1" and client._manual_ack is True


def test_a_v5_client_is_made_with_callback_api_v2() -> None:
    client = mqtt_client.new_client(ClientOptions("gw-1", "5", persistent=True))
    assert client.protocol == mqtt.MQTTv5 and client._manual_ack is False
    assert client._callback_api_version == mqtt.CallbackAPIVersion.VERSION2


def test_an_unknown_protocol_is_refused() -> None:
    with pytest.raises(ValueError, match="'3.1'"):
        ClientOptions("gw-1", "3.1")


# ------------------------------------------------------------------ connect arguments
def test_a_persistent_v5_client_resumes_its_session_with_an_expiry() -> None:
    options = ClientOptions("gw-1", "5", persistent=True)
    kwargs = mqtt_client.connect_kwargs(options, keepalive_s=30, session_expiry_s=86400, receive_maximum=100)
    assert kwargs["keepalive"] == 30 and kwargs["clean_start"] is False
    assert kwargs["properties"].SessionExpiryInterval == 86400 and kwargs["properties"].ReceiveMaximum == 100
    with pytest.raises(ValueError, match="session_expiry_s"):
        mqtt_client.connect_kwargs(options, keepalive_s=30)


def test_a_311_or_clean_client_connects_with_paho_defaults() -> None:
    assert mqtt_client.connect_kwargs(ClientOptions("a", "3.1.1", persistent=True), keepalive_s=20,
                                      session_expiry_s=60, receive_maximum=5) == {"keepalive": 20}
    assert mqtt_client.connect_kwargs(ClientOptions("a", "5"), keepalive_s=20) == {"keepalive": 20}


# ------------------------------------------------------------------ configuration
def test_configure_sets_credentials_verifying_tls_and_a_jittered_first_reconnect() -> None:
    client = Recorder()
    tls = Tls(SETTINGS, ca_file="ca.pem", cert_file="gw.pem", key_file="gw.key")
    mqtt_client.configure(client, tls=tls, username="gw1", password="s3cret",
                          reconnect=Backoff(500, 8000, Top()))
    assert client.calls == [
        ("credentials", ("gw1", "s3cret")),
        ("tls", {"ca_certs": "ca.pem", "certfile": "gw.pem", "keyfile": "gw.key",
                 "cert_reqs": ssl.CERT_REQUIRED}),
        ("reconnect", (0.5, 0.5)),
    ]


def test_configure_without_a_username_or_ca_leaves_them_to_defaults() -> None:
    client = Recorder()
    mqtt_client.configure(client, tls=Tls(SETTINGS), username="")
    assert client.calls == [("tls", {"ca_certs": None, "certfile": None, "keyfile": None,
                                     "cert_reqs": ssl.CERT_REQUIRED})]


def test_each_reconnect_gets_the_next_jittered_delay() -> None:
    client, backoff = Recorder(), Backoff(500, 2000, Top())
    for _ in range(4):
        mqtt_client.jitter_reconnect(client, backoff)
    assert [delay for _, delay in client.calls] == [(0.5, 0.5), (1.0, 1.0), (2.0, 2.0), (2.0, 2.0)]


def test_build_returns_a_configured_real_client() -> None:
    client = mqtt_client.build(ClientOptions("lander", "3.1.1", persistent=True), username="u", password="p")
    assert client._username == b"u" and client._password == b"p"


# ------------------------------------------------------------------ TLS files that do not load
def test_a_missing_ca_bundle_is_terminal_and_names_its_setting(tmp_path: Path) -> None:
    with pytest.raises(TlsFilesUnusable) as info:
        mqtt_client.build(ClientOptions("gw"), tls=Tls(SETTINGS, ca_file=str(tmp_path / "missing.pem")))
    assert isinstance(info.value, TlsRefused) and info.value.key == "upstream.ca_file"
    assert "upstream.ca_file=" in str(info.value) and "missing.pem" in str(info.value)


def test_a_ca_bundle_that_is_no_certificate_names_the_ca_even_beside_a_good_client_certificate(
        tmp_path: Path, certs: Certs) -> None:  # noqa: F811
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate")
    cert, key = certs.client["c-0001-gw1"]
    with pytest.raises(TlsFilesUnusable) as info:
        mqtt_client.build(ClientOptions("gw"), tls=Tls(SETTINGS, ca_file=str(bogus), cert_file=str(cert),
                                                       key_file=str(key)))
    assert info.value.key == "upstream.ca_file"


def test_a_client_certificate_that_does_not_load_names_the_cert_setting(
        tmp_path: Path, certs: Certs) -> None:  # noqa: F811
    with pytest.raises(TlsFilesUnusable) as info:
        mqtt_client.build(ClientOptions("gw"), tls=Tls(SETTINGS, ca_file=str(certs.ca),
                                                       cert_file=str(tmp_path / "gw.pem"),
                                                       key_file=str(tmp_path / "gw.key")))
    assert info.value.key == "upstream.cert_file" and "gw.pem" in str(info.value)


# ------------------------------------------------------------------ the parts build through it
class FakeFactory:
    """A client factory that hands out Recorders and keeps the options it was asked for."""

    def __init__(self) -> None:
        self.options: list[ClientOptions] = []
        self.client = Recorder()
        self.client.calls = []

    def __call__(self, options: ClientOptions) -> Recorder:
        self.options.append(options)
        return self.client


def test_the_lander_asks_for_a_persistent_manually_acknowledged_311_session(tmp_path: Path) -> None:
    from fleetpulse.pipeline.lake.lander import Lander, LanderConfig

    factory = FakeFactory()
    Lander(LanderConfig(lake=tmp_path, client_id="lander-1", tls=True, ca_file="ca.pem", username="lander",
                        password="pw"), client_factory=factory)
    assert factory.options == [ClientOptions("lander-1", "3.1.1", persistent=True, manual_ack=True)]
    assert factory.client.calls == [
        ("credentials", ("lander", "pw")),
        ("tls", {"ca_certs": "ca.pem", "certfile": None, "keyfile": None, "cert_reqs": ssl.CERT_REQUIRED}),
    ]


def test_an_mqtt_channel_ca_file_that_does_not_load_fails_the_message_for_good(tmp_path: Path) -> None:
    from fleetpulse.errors import TerminalError
    from fleetpulse.pipeline.playbooks.channels import Mqtt
    from fleetpulse.pipeline.playbooks.config import ChannelConfig

    from .test_playbooks_channels import outbox_row

    config = ChannelConfig(name="ops", type="mqtt", host="127.0.0.1", port=1, security="tls",
                           ca_file=str(tmp_path / "missing.pem"), topic="fleetpulse/alerts/x")
    with pytest.raises(TerminalError, match=r"channels\.ops\.ca_file="):
        Mqtt(config, None, None).send(outbox_row(recipient="fleetpulse/alerts/x"))
