"""Gateway collector configuration: TOML + environment → typed config, or one named error."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetpulse.devices.collector.config import describe, load_config
from fleetpulse.errors import ConfigError

from .test_collector_support import config_text, write_config

SAMPLE = Path(__file__).resolve().parents[1] / "deploy" / "gateway" / "gateway.sample.toml"


def _error(tmp_path: Path, text: str, environ: dict[str, str] | None = None) -> ConfigError:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ=environ or {})
    return info.value


def test_sample_config_loads_with_documented_values() -> None:
    config = load_config(SAMPLE, environ={})
    assert config.gateway.customer_id == "c-0001"
    assert config.gateway.gateway_id == "c-0001-gw1"
    assert config.local.client_id == "fleetpulse-gw-c-0001-gw1-local"
    assert config.upstream.client_id == "fleetpulse-gw-c-0001-gw1"
    assert (config.batch.max_records, config.batch.max_interval_ms, config.batch.max_inflight_batches) == (
        500, 1000, 64)
    assert config.status.interval_s == 60
    assert config.dead_letters.path == Path("/var/lib/fleetpulse/dead-letters.jsonl")
    assert config.spool.path == Path("/var/lib/fleetpulse/spool")  # the unit's StateDirectory
    assert (config.spool.quota_bytes, config.spool.on_full, config.spool.ttl_s) == (1 << 30, "drop_oldest", 0)


def test_sample_config_documents_every_key() -> None:
    from dataclasses import fields

    from fleetpulse.devices.collector.config import _SECTIONS

    text = SAMPLE.read_text()
    for section, cls in _SECTIONS.items():
        assert f"[{section}]" in text
        for f in fields(cls):
            if f.name != "password":
                assert f"\n{f.name} = " in text or f"\n# {f.name} = " in text, f"{section}.{f.name}"


def test_defaults_fill_optional_keys(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text('[gateway]\ncustomer_id = "c-9"\nsite_id = "c-9-s1"\ngateway_id = "gw-9"\n'
                    '[upstream]\nhost = "central.example"\n')
    config = load_config(path, environ={})
    assert config.local.host == "127.0.0.1" and config.local.port == 1883
    assert config.local.client_id == "fleetpulse-gw-gw-9-local"
    assert config.upstream.client_id == "fleetpulse-gw-gw-9"
    assert config.status.interval_s == 60
    assert config.dead_letters.path == tmp_path / "dead-letters.jsonl"


@pytest.mark.parametrize(
    ("text_change", "key"),
    [
        (lambda t: t.replace('customer_id = "c-0001"\n', ""), "gateway.customer_id"),
        (lambda t: t.replace("port = 1883", 'port = "1883"', 1), "local.port"),
        (lambda t: t.replace("tls = false", 'tls = "no"'), "upstream.tls"),
        (lambda t: t.replace("max_records = 500", "max_records = 5001"), "batch.max_records"),
        (lambda t: t.replace("max_records = 500", "max_records = 0"), "batch.max_records"),
        (lambda t: t.replace("max_interval_ms = 1000", "max_interval_ms = true"), "batch.max_interval_ms"),
        (lambda t: t.replace("max_inflight_batches = 64", "max_inflight_batches = 0"),
         "batch.max_inflight_batches"),
        (lambda t: t.replace("interval_s = 60", "interval_s = 0"), "status.interval_s"),
        (lambda t: t.replace('site_id = "c-0001-s1"', 'site_id = "site one"'), "gateway.site_id"),
        (lambda t: t.replace("keepalive_s = 30", "keepalive_s = 1"), "upstream.keepalive_s"),
        (lambda t: t.replace('topic_prefix = ""', 'topic_prefix = "sim/#/"'),
         "local.topic_prefix"),
        # a local session that ends with the connection would drop what was queued for the collector
        (lambda t: t.replace('topic_prefix = ""', 'topic_prefix = ""\nsession_expiry_s = 0'),
         "local.session_expiry_s"),
        (lambda t: t.replace('"fleetpulse-gw-c-0001-gw1-local"', '"fleetpulse-gw-c-0001-gw1"'),
         "upstream.client_id"),
        (lambda t: t.replace("port = 1883", "port = 70000", 1), "local.port"),
        (lambda t: t.replace('host = "127.0.0.1"', 'host = "mqtt://central:1883"', 1), "local.host"),
        (lambda t: t + "[batch2]\n", "batch2"),
        (lambda t: t.replace("max_records = 500", "max_record = 500"), "batch.max_record"),
        (lambda t: t.replace('username = ""', 'username = "gw"\npassword = "hunter2"'), "upstream.password"),
        (lambda t: t.replace("tls = false", 'tls = false\nca_file = "ca.pem"'), "upstream.ca_file"),
        (lambda t: t.replace("tls = false", 'tls = true\ncert_file = "c.pem"'), "upstream.key_file"),
        (lambda t: t.replace('username = ""', 'password_env = "X"'), "upstream.username"),
    ],
)
def test_each_bad_value_names_file_and_key(tmp_path: Path, text_change, key: str) -> None:
    error = _error(tmp_path, text_change(config_text()))
    assert error.key == key
    assert error.source == str(tmp_path / "gateway.toml")
    line = str(error)
    assert "\n" not in line and key in line and "fix:" in line and str(tmp_path) in line


def test_missing_file_and_bad_syntax(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.toml", environ={})
    error = _error(tmp_path, "[gateway\n")
    assert error.key == "(syntax)" and "not valid TOML" in error.problem


def test_environment_overrides_parse_to_the_key_type(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    environ = {
        "FLEETPULSE_GATEWAY__UPSTREAM__HOST": "central.example.com",
        "FLEETPULSE_GATEWAY__UPSTREAM__PORT": "8883",
        "FLEETPULSE_GATEWAY__UPSTREAM__TLS": "true",
        "FLEETPULSE_GATEWAY__BATCH__MAX_RECORDS": "250",
        "FLEETPULSE_GATEWAY__LOCAL__TOPIC_PREFIX": "sim/c-0001-gw1/",
        "UNRELATED": "ignored",
    }
    config = load_config(path, environ=environ)
    assert config.upstream.host == "central.example.com"
    assert config.upstream.port == 8883 and config.upstream.tls is True
    assert config.batch.max_records == 250
    assert config.local.topic_prefix == "sim/c-0001-gw1/"
    assert config.local.port == 1883  # untouched keys keep the file's value


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("FLEETPULSE_GATEWAY__UPSTREAM__PORT", "eighty", "not an integer"),
        ("FLEETPULSE_GATEWAY__UPSTREAM__TLS", "maybe", "not a boolean"),
        ("FLEETPULSE_GATEWAY__UPSTREAM__HOSTNAME", "x", "unknown key"),
        ("FLEETPULSE_GATEWAY__UPSTREAM__PASSWORD", "hunter2", "inline passwords"),
        ("FLEETPULSE_GATEWAY__BATCH__MAX_RECORDS", "9000", "outside"),
        ("FLEETPULSE_GATEWAY__HOST", "x", "FLEETPULSE_GATEWAY__<SECTION>__<KEY>"),
    ],
)
def test_bad_environment_override_names_the_variable(tmp_path: Path, name: str, value: str,
                                                      problem: str) -> None:
    error = _error(tmp_path, config_text(), environ={name: value})
    assert error.key == name
    assert error.source == "environment"
    assert problem in str(error)


def test_password_from_env_var_named_in_config_and_masked(tmp_path: Path) -> None:
    path = write_config(tmp_path, extra_upstream='password_env = "FLEETPULSE_UPSTREAM_PASSWORD"\n')
    path.write_text(path.read_text().replace('username = ""', 'username = "gw1"'))
    config = load_config(path, environ={"FLEETPULSE_UPSTREAM_PASSWORD": "s3cret"})
    assert config.upstream.password == "s3cret"
    assert "s3cret" not in repr(config)
    text = describe(config)
    assert "s3cret" not in text and '"***"' in text
    assert 'password_env = "FLEETPULSE_UPSTREAM_PASSWORD"' in text

    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == "upstream.password_env"
    assert "FLEETPULSE_UPSTREAM_PASSWORD is not set" in str(info.value)


def test_password_from_file_relative_to_config(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("from-file\nignored\n")
    secret.chmod(0o640)
    path = write_config(tmp_path, extra_upstream='password_file = "secret.txt"\n')
    path.write_text(path.read_text().replace('username = ""', 'username = "gw1"'))
    assert load_config(path, environ={}).upstream.password == "from-file"
    (tmp_path / "secret.txt").unlink()
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == "upstream.password_file"


def test_absolute_dead_letter_path_is_kept(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere" / "dl.jsonl"
    config = load_config(write_config(tmp_path, dead_letters=str(target)), environ={})
    assert config.dead_letters.path == target


@pytest.mark.parametrize("key", ["password_file", "key_file"])
def test_secrets_readable_by_every_user_are_refused(tmp_path: Path, key: str) -> None:
    secret = tmp_path / "secret.pem"
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    extra = (f'{key} = "secret.pem"\n' if key == "password_file"
             else f'cert_file = "{secret}"\nkey_file = "{secret}"\n')
    path = write_config(tmp_path, extra_upstream=extra)
    text = path.read_text().replace('username = ""', 'username = "gw1"')
    if key == "key_file":
        text = text.replace("tls = false", "tls = true")
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert info.value.key == f"upstream.{key}"
    assert "chmod 600" in str(info.value)
    secret.chmod(0o600)
    load_config(path, environ={})


def test_spool_section_defaults_resolution_and_errors(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path), environ={})
    assert config.spool.path == tmp_path / "spool" / "c-0001-gw1"  # one spool per gateway by default
    assert config.spool.quota_bytes == 1 << 30 and config.spool.on_full == "drop_oldest"
    assert config.spool.ttl_s == 0
    for text, key in (('on_full = "newest"\n', "spool.on_full"), ("quota_bytes = 10\n", "spool.quota_bytes"),
                      ('path = ""\n', "spool.path"), ("ttl_s = -1\n", "spool.ttl_s")):
        with pytest.raises(ConfigError) as info:
            load_config(write_config(tmp_path, spool=text), environ={})
        assert info.value.key == key, text
    env = {"FLEETPULSE_GATEWAY__SPOOL__ON_FULL": "reject_new",
           "FLEETPULSE_GATEWAY__SPOOL__PATH": str(tmp_path / "elsewhere")}
    config = load_config(write_config(tmp_path), environ=env)
    assert config.spool.on_full == "reject_new" and config.spool.path == tmp_path / "elsewhere"
