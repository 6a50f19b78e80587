"""The gateway collector's configuration: one TOML file, environment overrides, typed result.

Resolution order, per key: the TOML file, then ``FLEETPULSE_GATEWAY__<SECTION>__<KEY>``
environment variables (parsed to the key's type), then the defaults below.
Everything is checked once, before any network I/O, and the first problem
raises :class:`fleetpulse.errors.ConfigError` naming the file (or the
environment variable), the key and the fix. Unknown sections and keys are
errors too, so a typo never silently falls back to a default.

The upstream password never sits in the file: ``upstream.password_env`` names
an environment variable holding it, or ``upstream.password_file`` a file
(first line) holding it. ``deploy/gateway/gateway.sample.toml`` documents
every key with its default and unit.

Standard library only (``tomllib``, Python 3.11+): this runs on the gateway.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from fleetpulse.errors import ConfigError
from fleetpulse.schemas import load_contract

from . import deadletters
from .spool import MIN_QUOTA_BYTES, ON_FULL_POLICIES

ENV_PREFIX = "FLEETPULSE_GATEWAY__"
MAX_PACKET_ID = 65535  # MQTT packet identifiers are 16 bit: bounds the in-flight windows


@dataclass(frozen=True)
class GatewayIds:
    """Who this gateway is; stamped on every batch."""

    customer_id: str
    site_id: str
    gateway_id: str


MQTT_PROTOCOLS = ("5", "3.1.1")


@dataclass(frozen=True)
class LocalConfig:
    """The gateway's own broker, where devices publish."""

    host: str = "127.0.0.1"
    port: int = 1883
    topic_prefix: str = ""
    client_id: str = ""  # "" → fleetpulse-gw-<gateway_id>-local
    keepalive_s: int = 30
    session_expiry_s: int = 86400
    receive_maximum: int = 1000
    protocol: str = "5"  # MQTT "5" or "3.1.1" (brokers without v5, e.g. the demo's amqtt)


@dataclass(frozen=True)
class UpstreamConfig:
    """The central broker that batches go to."""

    host: str = ""
    port: int = 1883
    client_id: str = ""  # "" → fleetpulse-gw-<gateway_id>
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password_env: str = ""
    password_file: str = ""
    keepalive_s: int = 30
    session_expiry_s: int = 86400
    protocol: str = "5"  # MQTT "5" or "3.1.1"
    connect_timeout_s: int = 10
    drain_timeout_s: int = 30
    reconnect_min_ms: int = 500
    reconnect_max_ms: int = 60_000
    # Resolved from password_env / password_file; never printed.
    password: str | None = field(default=None, repr=False)


COMPRESSIONS = ("none", "gzip")


@dataclass(frozen=True)
class BatchConfig:
    max_records: int = 500
    max_interval_ms: int = 1000
    max_inflight_batches: int = 64
    compression: str = "none"  # "gzip": RFC 1952, detected by the receiver from its magic bytes


@dataclass(frozen=True)
class SpoolConfig:
    """The durable on-disk spool between the device side and the uplink."""

    path: Path = Path("")  # "" → spool/<gateway_id> beside the config file
    quota_bytes: int = 1 << 30
    on_full: str = "drop_oldest"  # or "reject_new"
    ttl_s: int = 0  # 0: keep until delivered
    commit_interval_ms: int = 50
    commit_max_records: int = 2000


@dataclass(frozen=True)
class StatusConfig:
    interval_s: int = 60


@dataclass(frozen=True)
class DeadLettersConfig:
    """Where refused input is kept on the gateway, and how much of it (see :mod:`.deadletters`)."""

    path: Path = Path("dead-letters.jsonl")
    quota_bytes: int = 16 << 20  # all dead-letter files together; the oldest file goes first
    max_file_bytes: int = 2 << 20  # the active file is rotated at this size
    sample_bytes: int = 1024  # of each rejected payload (or record's JSON) kept in its row


@dataclass(frozen=True)
class CollectorConfig:
    """The whole, validated collector configuration."""

    source: str
    gateway: GatewayIds
    local: LocalConfig
    upstream: UpstreamConfig
    batch: BatchConfig = BatchConfig()
    spool: SpoolConfig = SpoolConfig()
    status: StatusConfig = StatusConfig()
    dead_letters: DeadLettersConfig = DeadLettersConfig()


# Key types per section, read off the dataclasses so the two never disagree.
_SECTIONS: dict[str, type] = {
    "gateway": GatewayIds,
    "local": LocalConfig,
    "upstream": UpstreamConfig,
    "batch": BatchConfig,
    "spool": SpoolConfig,
    "status": StatusConfig,
    "dead_letters": DeadLettersConfig,
}
_NOT_IN_FILE = {("upstream", "password")}
_REQUIRED = {
    ("gateway", "customer_id"),
    ("gateway", "site_id"),
    ("gateway", "gateway_id"),
    ("upstream", "host"),
}
_TYPES: dict[tuple[str, str], type] = {
    (section, f.name): {"str": str, "int": int, "bool": bool, "Path": str}.get(str(f.type), str)
    for section, cls in _SECTIONS.items()
    for f in fields(cls)
    if (section, f.name) not in _NOT_IN_FILE
}


class _Reader:
    """Turns raw TOML + environment into typed values, raising named ConfigErrors."""

    def __init__(self, source: str, raw: dict[str, Any], environ: Mapping[str, str]) -> None:
        self.source = source
        self.raw = raw
        self.environ = environ
        # (section, key) -> (value, where it came from)
        self.values: dict[tuple[str, str], tuple[Any, str]] = {}

    def fail(self, key: str, problem: str, fix: str, source: str | None = None) -> ConfigError:
        return ConfigError(source=source or self.source, key=key, problem=problem, fix=fix)

    def collect(self) -> None:
        for section, body in self.raw.items():
            if section not in _SECTIONS:
                raise self.fail(
                    section,
                    "unknown section",
                    f"remove it or use one of [{'], ['.join(_SECTIONS)}]",
                )
            if not isinstance(body, dict):
                raise self.fail(section, f"must be a table, got {body!r}", f"write it as [{section}]")
            for key, value in body.items():
                self._known(section, key, self.source)
                self.values[(section, key)] = (self._typed(section, key, value, self.source), self.source)
        for name, text in self.environ.items():
            if not name.startswith(ENV_PREFIX):
                continue
            parts = name[len(ENV_PREFIX):].split("__")
            if len(parts) != 2:
                raise self.fail(
                    name,
                    "not of the form FLEETPULSE_GATEWAY__<SECTION>__<KEY>",
                    "rename or unset the environment variable",
                    source="environment",
                )
            section, key = parts[0].lower(), parts[1].lower()
            if section not in _SECTIONS:
                raise self.fail(
                    name,
                    f"unknown section {section!r}",
                    f"use one of {', '.join(_SECTIONS)} or unset the variable",
                    source="environment",
                )
            self._known(section, key, "environment", env_name=name)
            value = self._from_text(section, key, text, name)
            self.values[(section, key)] = (self._typed(section, key, value, name), "environment")

    def _known(self, section: str, key: str, source: str, env_name: str | None = None) -> None:
        dotted = env_name or f"{section}.{key}"
        if (section, key) in _NOT_IN_FILE:
            raise self.fail(
                dotted,
                "inline passwords are not allowed",
                "set upstream.password_env to the name of an environment variable "
                "holding it, or upstream.password_file to a file holding it",
                source=source,
            )
        if (section, key) not in _TYPES:
            known = sorted(k for s, k in _TYPES if s == section)
            raise self.fail(
                dotted,
                "unknown key",
                f"remove it or use one of: {', '.join(known)}",
                source=source,
            )

    def _from_text(self, section: str, key: str, text: str, env_name: str) -> Any:
        kind = _TYPES[(section, key)]
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise self.fail(env_name, f"{text!r} is not a boolean", "set it to true or false",
                            source="environment")
        if kind is int:
            try:
                return int(text.strip())
            except ValueError:
                raise self.fail(env_name, f"{text!r} is not an integer", "set it to a whole number",
                                source="environment") from None
        return text

    def _typed(self, section: str, key: str, value: Any, where: str) -> Any:
        kind = _TYPES[(section, key)]
        dotted = where if where.startswith(ENV_PREFIX) else f"{section}.{key}"
        source = "environment" if where.startswith(ENV_PREFIX) else self.source
        ok = (
            isinstance(value, bool)
            if kind is bool
            else isinstance(value, int) and not isinstance(value, bool)
            if kind is int
            else isinstance(value, str)
        )
        if not ok:
            example = {bool: "true", int: "1000", str: '"text"'}[kind]
            name = {bool: "a boolean", int: "an integer", str: "a string"}[kind]
            raise self.fail(
                dotted,
                f"must be {name}, got {value!r}",
                f"write it like {key} = {example}",
                source=source,
            )
        return value

    def get(self, section: str, key: str, default: Any = None) -> Any:
        if (section, key) in self.values:
            return self.values[(section, key)][0]
        if (section, key) in _REQUIRED:
            raise self.fail(
                f"{section}.{key}",
                "is required and missing",
                f"add {key} = \"...\" under [{section}] (or set {ENV_PREFIX}{section.upper()}__{key.upper()})",
            )
        return default

    def where(self, section: str, key: str) -> tuple[str, str]:
        """(source, key name) to blame for a bad value: the file or the env var."""
        origin = self.values.get((section, key), (None, self.source))[1]
        if origin == "environment":
            return "environment", f"{ENV_PREFIX}{section.upper()}__{key.upper()}"
        return self.source, f"{section}.{key}"

    def bad(self, section: str, key: str, problem: str, fix: str) -> ConfigError:
        source, dotted = self.where(section, key)
        return ConfigError(source=source, key=dotted, problem=problem, fix=fix)


def _section(reader: _Reader, name: str, cls: type) -> Any:
    values = {}
    for f in fields(cls):
        if (name, f.name) in _NOT_IN_FILE:
            continue
        if (name, f.name) in reader.values or (name, f.name) in _REQUIRED:
            values[f.name] = reader.get(name, f.name)
    return cls(**values)


def _check_range(reader: _Reader, section: str, key: str, value: int, low: int, high: int, unit: str) -> None:
    if not low <= value <= high:
        raise reader.bad(section, key, f"{value} is outside [{low}, {high}]",
                         f"set a value between {low} and {high} {unit}".rstrip())


def _check_identifier(reader: _Reader, key: str, value: str) -> None:
    contract = load_contract()
    limits = contract.limits
    if len(value) > limits.identifier_max_length or not contract.identifier_re.fullmatch(value):
        raise reader.bad(
            "gateway",
            key,
            f"{value!r} is not a valid identifier",
            f"use at most {limits.identifier_max_length} characters matching {limits.identifier_pattern}",
        )


def _check_client_id(reader: _Reader, section: str, value: str) -> None:
    if not value or len(value.encode("utf-8")) > 65535 or any(c in value for c in "\0+#/"):
        raise reader.bad(section, "client_id", f"{value!r} is not a usable MQTT client id",
                         "use a non-empty name without '/', '+', '#'")


def _validate(reader: _Reader, config: CollectorConfig) -> CollectorConfig:
    ids = config.gateway
    for key in ("customer_id", "site_id", "gateway_id"):
        _check_identifier(reader, key, getattr(ids, key))

    local, up = config.local, config.upstream
    if not local.client_id:
        local = replace(local, client_id=f"fleetpulse-gw-{ids.gateway_id}-local")
    if not up.client_id:
        up = replace(up, client_id=f"fleetpulse-gw-{ids.gateway_id}")
    for section, part in (("local", local), ("upstream", up)):
        if not part.host.strip() or "://" in part.host or " " in part.host:
            raise reader.bad(section, "host", f"{part.host!r} is not a host name",
                             "set the broker's host name or address only (no scheme, no port)")
        _check_range(reader, section, "port", part.port, 1, 65535, "")
        _check_range(reader, section, "keepalive_s", part.keepalive_s, 5, 65535, "seconds")
        # A local session that ends with the connection drops every device message
        # queued for the collector while it restarts: the local broker must keep it.
        _check_range(reader, section, "session_expiry_s", part.session_expiry_s,
                     60 if section == "local" else 0, 4294967295, "seconds")
        _check_client_id(reader, section, part.client_id)
        if part.protocol not in MQTT_PROTOCOLS:
            raise reader.bad(section, "protocol", f"{part.protocol!r} is not an MQTT version we speak",
                             f"use one of {', '.join(repr(p) for p in MQTT_PROTOCOLS)}")
    if local.client_id == up.client_id:
        # Two connections with one client id would take each other's session
        # over and over when both brokers are the same (the simulator does that).
        raise reader.bad("upstream", "client_id", f"is the same as local.client_id ({up.client_id!r})",
                         "give the two connections different client ids")
    _check_range(reader, "local", "receive_maximum", local.receive_maximum, 1, MAX_PACKET_ID, "messages")
    if any(c in local.topic_prefix for c in "+#\0"):
        raise reader.bad("local", "topic_prefix", f"{local.topic_prefix!r} contains a wildcard",
                         "use a plain prefix such as \"sim/c-0001-gw1/\"")

    _check_range(reader, "upstream", "connect_timeout_s", up.connect_timeout_s, 1, 600, "seconds")
    _check_range(reader, "upstream", "drain_timeout_s", up.drain_timeout_s, 0, 3600, "seconds")
    if not up.tls:
        for key in ("ca_file", "cert_file", "key_file"):
            if getattr(up, key):
                raise reader.bad("upstream", key, "is set but upstream.tls is false",
                                 "set upstream.tls = true (or remove the file setting)")
    if bool(up.cert_file) != bool(up.key_file):
        raise reader.bad("upstream", "key_file" if up.cert_file else "cert_file",
                         "client certificates need both cert_file and key_file", "set both or neither")
    if up.password_env and up.password_file:
        raise reader.bad("upstream", "password_file", "password_env and password_file are both set",
                         "keep one of them")
    if (up.password_env or up.password_file) and not up.username:
        raise reader.bad("upstream", "username", "a password source is set but username is empty",
                         "set upstream.username")

    limits = load_contract().limits
    batch = config.batch
    _check_range(reader, "batch", "max_records", batch.max_records, 1, limits.max_records_per_message,
                 "records (the contract's max_records_per_message)")
    _check_range(reader, "batch", "max_interval_ms", batch.max_interval_ms, 1, 3_600_000, "ms")
    _check_range(reader, "batch", "max_inflight_batches", batch.max_inflight_batches, 1,
                 MAX_PACKET_ID - 100, "batches")
    if batch.compression not in COMPRESSIONS:
        raise reader.bad("batch", "compression", f"{batch.compression!r} is not supported",
                         f"use one of {', '.join(repr(c) for c in COMPRESSIONS)}")
    _check_range(reader, "upstream", "reconnect_min_ms", up.reconnect_min_ms, 10, 3_600_000, "ms")
    _check_range(reader, "upstream", "reconnect_max_ms", up.reconnect_max_ms, up.reconnect_min_ms,
                 3_600_000, "ms (at least reconnect_min_ms)")
    spool = config.spool
    _check_range(reader, "spool", "quota_bytes", spool.quota_bytes, MIN_QUOTA_BYTES, 1 << 50, "bytes")
    if spool.on_full not in ON_FULL_POLICIES:
        raise reader.bad("spool", "on_full", f"{spool.on_full!r} is not a policy",
                         f"use one of {', '.join(repr(p) for p in ON_FULL_POLICIES)}")
    _check_range(reader, "spool", "ttl_s", spool.ttl_s, 0, 10 * 365 * 86400, "seconds (0 = no expiry)")
    _check_range(reader, "spool", "commit_interval_ms", spool.commit_interval_ms, 0, 60_000, "ms")
    _check_range(reader, "spool", "commit_max_records", spool.commit_max_records, 1, 1_000_000, "records")
    if not str(spool.path).strip():
        raise reader.bad("spool", "path", "is empty", "set a directory for the spool")
    _check_range(reader, "status", "interval_s", config.status.interval_s, 1, 86400, "seconds")
    _validate_dead_letters(reader, config)
    return replace(config, local=local, upstream=up)


def _validate_dead_letters(reader: _Reader, config: CollectorConfig) -> None:
    dead = config.dead_letters
    if not str(dead.path).strip():
        raise reader.bad("dead_letters", "path", "is empty", "set a file path for rejected messages")
    spool_dir = Path(os.path.normpath(config.spool.path))
    if spool_dir in Path(os.path.normpath(dead.path)).parents:
        # The spool owns its directory (files it does not know are moved aside).
        raise reader.bad("dead_letters", "path", f"{str(dead.path)!r} is inside spool.path ({spool_dir})",
                         "put the dead-letter file outside the spool directory, e.g. beside it")
    _check_range(reader, "dead_letters", "quota_bytes", dead.quota_bytes, deadletters.MIN_QUOTA_BYTES,
                 1 << 40, "bytes")
    _check_range(reader, "dead_letters", "max_file_bytes", dead.max_file_bytes, deadletters.MIN_FILE_BYTES,
                 dead.quota_bytes // 2, "bytes (at most half of dead_letters.quota_bytes)")
    _check_range(reader, "dead_letters", "sample_bytes", dead.sample_bytes, 0,
                 dead.max_file_bytes // deadletters.SAMPLE_GROWTH,
                 f"bytes (at most dead_letters.max_file_bytes / {deadletters.SAMPLE_GROWTH}, so a row fits a file)")


def parse_config(
    raw: dict[str, Any],
    *,
    source: str,
    base_dir: Path,
    environ: Mapping[str, str] | None = None,
) -> CollectorConfig:
    """Validate already-parsed TOML data plus environment overrides (no file or network I/O).

    The password is not resolved here; see :func:`resolve_secrets`.
    """
    reader = _Reader(source, raw, os.environ if environ is None else environ)
    reader.collect()
    dead = _section(reader, "dead_letters", DeadLettersConfig)
    if str(dead.path).strip():  # (an empty one set explicitly is refused by _validate)
        dl_path = Path(dead.path)
        dead = replace(dead, path=dl_path if dl_path.is_absolute() else base_dir / dl_path)
    spool = _section(reader, "spool", SpoolConfig)
    if ("spool", "path") not in reader.values:
        spool = replace(spool, path=Path("spool") / str(reader.get("gateway", "gateway_id")))
    if str(spool.path).strip():  # (an empty one set explicitly is refused by _validate)
        spool_path = Path(spool.path)
        spool = replace(spool, path=spool_path if spool_path.is_absolute() else base_dir / spool_path)
    config = CollectorConfig(
        source=source,
        gateway=_section(reader, "gateway", GatewayIds),
        local=_section(reader, "local", LocalConfig),
        upstream=_section(reader, "upstream", UpstreamConfig),
        batch=_section(reader, "batch", BatchConfig),
        spool=spool,
        status=_section(reader, "status", StatusConfig),
        dead_letters=dead,
    )
    return _validate(reader, config)


def resolve_secrets(
    config: CollectorConfig,
    *,
    environ: Mapping[str, str] | None = None,
    read_text: Callable[[Path], str] = lambda p: p.read_text("utf-8"),
) -> CollectorConfig:
    """Fill in ``upstream.password`` from ``password_env`` or ``password_file``.

    Also refuses a client key or password file that any user on the gateway
    could read: secrets belong to the service user (mode 0600 or 0640).
    """
    up = config.upstream
    env = os.environ if environ is None else environ
    if up.key_file:
        _check_private(config, "upstream.key_file", Path(up.key_file))
    if up.password_env:
        if up.password_env not in env:
            raise ConfigError(
                source=config.source,
                key="upstream.password_env",
                problem=f"environment variable {up.password_env} is not set",
                fix=f"export {up.password_env} with the upstream password, or remove password_env",
            )
        return replace(config, upstream=replace(up, password=env[up.password_env]))
    if up.password_file:
        path = Path(up.password_file)
        if not path.is_absolute():
            path = Path(config.source).parent / path
        _check_private(config, "upstream.password_file", path)
        try:
            lines = read_text(path).splitlines()
        except OSError as exc:
            raise ConfigError(
                source=config.source,
                key="upstream.password_file",
                problem=f"cannot read {path}: {exc.strerror or exc}",
                fix="point it at a readable file whose first line is the password",
            ) from None
        return replace(config, upstream=replace(up, password=lines[0] if lines else ""))
    return config


def _check_private(config: CollectorConfig, key: str, path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # reported by whoever reads it, with the reason
    if mode & 0o007:
        raise ConfigError(
            source=config.source,
            key=key,
            problem=f"{path} is accessible to every user on this machine (mode {mode & 0o777:03o})",
            fix=f"chmod 600 {path} (owned by the collector's service user)",
        )


def read_toml(path: Path, *, missing_fix: str = "pass --config with the path of an existing TOML file") -> dict[str, Any]:
    """A TOML file's contents; ConfigError (file, syntax) with the fix otherwise."""
    source = str(path)
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(source=source, key="(file)", problem="file not found", fix=missing_fix) from None
    except OSError as exc:
        raise ConfigError(source=source, key="(file)", problem=f"cannot read: {exc.strerror or exc}",
                          fix="check the path and its permissions") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source=source, key="(syntax)", problem=f"not valid TOML: {exc}",
                          fix="correct the TOML syntax at that position") from None


def load_config(path: str | Path, *, environ: Mapping[str, str] | None = None) -> CollectorConfig:
    """Read, validate and resolve the collector configuration at ``path``."""
    path = Path(path)
    source = str(path)
    raw = read_toml(path)
    config = parse_config(raw, source=source, base_dir=path.resolve().parent, environ=environ)
    return resolve_secrets(config, environ=environ)


def describe(config: CollectorConfig) -> str:
    """The resolved configuration as TOML, with the password masked (for ``gateway check``)."""
    lines = [f"# resolved from {config.source} and FLEETPULSE_GATEWAY__* environment variables"]
    for section in _SECTIONS:
        part = getattr(config, section)
        lines.append(f"[{section}]")
        for f in fields(part):
            value = getattr(part, f.name)
            if f.name == "password":
                shown = '"***"' if value else '""'
                lines.append(f"# password = {shown}  (resolved from password_env / password_file)")
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, int):
                text = str(value)
            else:
                text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines.append(f"{f.name} = {text}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
