"""Where and how the InfluxDB sink writes: :class:`InfluxConfig`, from code or ``INFLUX_*``.

The config is validated without network I/O (:meth:`InfluxConfig.validate`);
every error is a :class:`~fleetpulse.errors.ConfigError` naming the key the
user set (the environment variable when it came from there) and the fix.
:meth:`InfluxConfig.from_env` reads exactly the variables in
:data:`ENV_KEYS`; the README's InfluxDB table documents each of them (a test
holds the two equal).

Tokens and passwords are never logged and never part of a message or repr.
On a remote runner they should not be part of the pipeline graph either: the
config can hold a *reference* instead (``token_secret`` / ``password_secret``,
an object with ``get_str()`` such as Beam's ``GcpSecret``; from the
environment ``INFLUX_TOKEN_SECRET`` / ``INFLUX_PASSWORD_SECRET`` =
``projects/<p>/secrets/<name>/versions/<v>``), which the sink reads through
:meth:`InfluxConfig.with_secrets` when it is opened: in the Beam DoFn's
``setup``, on the worker.
"""

from __future__ import annotations

import logging
import math
import os
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from fleetpulse.errors import ConfigError
from fleetpulse.pipeline.secrets import SecretRef, gcp_secret, is_secret_version, read_secret

log = logging.getLogger(__name__)
_N = TypeVar("_N", int, float)

#: Config field -> environment variable, for messages that name what to fix.
ENV_NAMES: dict[str, str] = {
    "url": "INFLUX_URL",
    "api_version": "INFLUX_API_VERSION",
    "token": "INFLUX_TOKEN",
    "org": "INFLUX_ORG",
    "bucket": "INFLUX_BUCKET",
    "database": "INFLUX_DB",
    "retention_policy": "INFLUX_RP",
    "username": "INFLUX_USERNAME",
    "password": "INFLUX_PASSWORD",
    "token_secret": "INFLUX_TOKEN_SECRET",
    "password_secret": "INFLUX_PASSWORD_SECRET",
    "verify_ssl": "INFLUX_VERIFY_SSL",
    "ca_file": "INFLUX_CA_FILE",
    "timeout_ms": "INFLUX_TIMEOUT_MS",
    "batch_size": "INFLUX_BATCH_SIZE",
    "max_retry_s": "INFLUX_MAX_RETRY_S",
    "backoff_initial_ms": "INFLUX_BACKOFF_INITIAL_MS",
    "backoff_max_ms": "INFLUX_BACKOFF_MAX_MS",
    "gzip": "INFLUX_GZIP",
}

#: Second names accepted for a variable of :data:`ENV_NAMES` (alias -> main name).
ENV_ALIASES: dict[str, str] = {"INFLUX_HOST": "INFLUX_URL", "INFLUX_DATABASE": "INFLUX_DB"}

#: Every variable :meth:`InfluxConfig.from_env` reads, and nothing else.
ENV_KEYS: tuple[str, ...] = (*ENV_NAMES.values(), *ENV_ALIASES)

_V2_KEYS = ("INFLUX_TOKEN", "INFLUX_TOKEN_SECRET", "INFLUX_ORG", "INFLUX_BUCKET")
_V1_KEYS = (
    "INFLUX_DB", "INFLUX_DATABASE", "INFLUX_RP", "INFLUX_USERNAME", "INFLUX_PASSWORD",
    "INFLUX_PASSWORD_SECRET",
)


@dataclass(frozen=True)
class InfluxConfig:
    """Where and how to write. Secrets are kept out of ``repr``.

    ``api_version`` 2 needs ``token`` (or ``token_secret``), ``org`` and
    ``bucket``; 1 needs ``database`` (``retention_policy``,
    ``username``/``password`` optional). ``token_secret``/``password_secret``
    are references read by :meth:`with_secrets` where the sink opens.
    """

    url: str
    api_version: int = 2
    token: str | None = field(default=None, repr=False)
    org: str | None = None
    bucket: str | None = None
    database: str | None = None
    retention_policy: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    verify_ssl: bool = True
    ca_file: str | None = None
    timeout_ms: int = 10_000
    #: lines per request, and the most points WriteToInflux hands one sink call
    batch_size: int = 5000
    max_retry_s: float = 60.0
    backoff_initial_ms: int = 200
    backoff_max_ms: int = 10_000
    gzip: bool = True
    #: references instead of ``token`` / ``password``, read on the worker (see the module docstring)
    token_secret: SecretRef | None = field(default=None, repr=False, hash=False)
    password_secret: SecretRef | None = field(default=None, repr=False, hash=False)

    def with_secrets(self) -> InfluxConfig:
        """This config with its secret references read into ``token`` / ``password``.

        Call it where the sink runs (a DoFn's ``setup``): the value then exists
        only on the worker, never in the pipeline graph. Raises TerminalError
        when a reference cannot be read.
        """
        if self.token_secret is None and self.password_secret is None:
            return self
        return replace(
            self,
            token=_read_secret(self.token_secret, "token_secret") if self.token_secret else self.token,
            password=(
                _read_secret(self.password_secret, "password_secret")
                if self.password_secret
                else self.password
            ),
            token_secret=None,
            password_secret=None,
        )

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/")

    @property
    def write_target(self) -> str:
        """The write URL as it appears in messages (never with credentials)."""
        if self.api_version == 1:
            query = {"db": self.database or ""}
            if self.retention_policy:
                query["rp"] = self.retention_policy
            query["precision"] = "s"
            return f"{self.base_url}/write?{urllib.parse.urlencode(query)}"
        query = {"org": self.org or "", "bucket": self.bucket or "", "precision": "s"}
        return f"{self.base_url}/api/v2/write?{urllib.parse.urlencode(query)}"

    def validate(
        self, source: str = "InfluxConfig", names: Mapping[str, str] | None = None
    ) -> InfluxConfig:
        """Check the settings without network I/O; raise ConfigError naming the key and fix.

        ``names`` maps field names to what the user set (environment variables,
        file keys) so the error names the key they can find.
        """

        def key(name: str) -> str:
            return names.get(name, name) if names else name

        def fail(name: str, problem: str, fix: str) -> ConfigError:
            return ConfigError(source, key(name), problem, fix)

        parsed = urllib.parse.urlsplit(self.url)
        # Checked first, and the URL is never quoted when it may hold a secret.
        if "@" in parsed.netloc:
            raise fail(
                "url",
                "contains credentials",
                f"remove them from the URL; use {key('token')} (v2) or "
                f"{key('username')}/{key('password')} (v1)",
            )
        if parsed.query or parsed.fragment:
            raise fail(
                "url",
                "has a query string or fragment",
                f"set {key('url')} to the server root only; database/bucket have their own keys",
            )
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise fail(
                "url",
                f"{self.url!r} is not an http(s) URL",
                f"set {key('url')} to the server root, e.g. http://influxdb:8086",
            )
        if self.api_version not in (1, 2):
            raise fail(
                "api_version", f"{self.api_version!r} is not 1 or 2", "set 1 (InfluxDB 1.x) or 2"
            )
        for value, ref in (("token", "token_secret"), ("password", "password_secret")):
            if getattr(self, value) and getattr(self, ref) is not None:
                raise fail(
                    ref,
                    f"is set together with {key(value)}",
                    f"keep one: {key(ref)} (read on the worker) or {key(value)}",
                )
        if self.api_version == 2:
            for name, what in (
                ("bucket", "the bucket to write to"),
                ("org", "the organization name or ID (InfluxDB 3 ignores it: any value works)"),
                ("token", "an API token with write permission on the bucket"),
            ):
                if not getattr(self, name) and not (name == "token" and self.token_secret is not None):
                    raise fail(
                        name, "is required for the InfluxDB v2 API", f"set {key(name)} to {what}"
                    )
            for name in ("database", "retention_policy", "username", "password", "password_secret"):
                if getattr(self, name):
                    raise fail(
                        name,
                        f"is a v1 setting but {key('api_version')} is 2",
                        f"remove {key(name)}, or set {key('api_version')}=1 to write to InfluxDB 1.x",
                    )
        else:
            if not self.database:
                raise fail(
                    "database",
                    "is required for the InfluxDB 1.x API",
                    f"set {key('database')} to the database name",
                )
            if bool(self.username) != bool(self.password or self.password_secret is not None):
                missing, given = (
                    ("password", "username") if self.username else ("username", "password")
                )
                raise fail(
                    missing,
                    f"is not set but {key(given)} is",
                    f"set both {key('username')} and {key('password')}, or neither",
                )
            for name in ("token", "token_secret", "org", "bucket"):
                if getattr(self, name):
                    raise fail(
                        name,
                        f"is a v2 setting but {key('api_version')} is 1",
                        f"remove {key(name)}, or set {key('api_version')}=2",
                    )
        if not self.verify_ssl and self.ca_file:
            raise fail(
                "ca_file",
                f"is set while {key('verify_ssl')} is false",
                f"keep verification on with {key('ca_file')}, or remove {key('ca_file')}",
            )
        if self.ca_file and not os.path.isfile(self.ca_file):
            raise fail(
                "ca_file", f"{self.ca_file!r} is not a file", "give the path of a PEM CA bundle"
            )
        for name, minimum in (("timeout_ms", 1), ("batch_size", 1), ("backoff_initial_ms", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise fail(
                    name,
                    f"{value!r} must be an integer >= {minimum}",
                    f"set {key(name)} to e.g. {getattr(type(self), name)}",
                )
        if (
            not isinstance(self.backoff_max_ms, int)
            or self.backoff_max_ms < self.backoff_initial_ms
        ):
            raise fail(
                "backoff_max_ms",
                f"{self.backoff_max_ms!r} is below {key('backoff_initial_ms')}={self.backoff_initial_ms}",
                f"set {key('backoff_max_ms')} >= {key('backoff_initial_ms')}",
            )
        if not math.isfinite(self.max_retry_s) or self.max_retry_s < 0:
            raise fail(
                "max_retry_s",
                f"{self.max_retry_s!r} must be >= 0",
                f"set {key('max_retry_s')} to e.g. 60 (0 = no retry)",
            )
        return self

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> InfluxConfig | None:
        """Resolve the config from ``INFLUX_*`` variables; None when no URL is set.

        ``INFLUX_URL`` (alias ``INFLUX_HOST``) enables the sink. The API version
        is ``INFLUX_API_VERSION`` when set, else v2 if ``INFLUX_TOKEN/ORG/BUCKET``
        are set, v1 if ``INFLUX_DB`` (alias ``INFLUX_DATABASE``)/``RP``/
        ``USERNAME``/``PASSWORD`` are. Empty values count as unset.
        """
        src = "environment"
        # Read through ENV_KEYS only, so that tuple is the complete list to document.
        env = {key: value for key in ENV_KEYS if (value := environ.get(key, "").strip())}
        names = dict(ENV_NAMES)
        url = _alias(env, "INFLUX_URL", "INFLUX_HOST", names, "url")
        if url is None:
            stray = sorted(k for k, v in environ.items() if k.startswith("INFLUX_") and v.strip())
            if stray:
                log.warning(
                    "InfluxDB sink disabled: %s set but INFLUX_URL is not", ", ".join(stray)
                )
            return None
        database = _alias(env, "INFLUX_DB", "INFLUX_DATABASE", names, "database")
        explicit = env.get("INFLUX_API_VERSION")
        if explicit is not None:
            if explicit.lower().lstrip("v") not in ("1", "2"):
                raise ConfigError(
                    src,
                    "INFLUX_API_VERSION",
                    f"{explicit!r} is not 1 or 2",
                    "set 1 (InfluxDB 1.x) or 2 (2.x/3.x/Cloud)",
                )
            api_version = int(explicit.lower().lstrip("v"))
        else:
            v2 = [k for k in _V2_KEYS if k in env]
            v1 = [k for k in _V1_KEYS if k in env]
            if v2 and v1:
                raise ConfigError(
                    src,
                    "INFLUX_API_VERSION",
                    f"both v2 settings ({', '.join(v2)}) and v1 settings ({', '.join(v1)}) are set",
                    "set INFLUX_API_VERSION=1 or 2 and remove the other group",
                )
            if not v2 and not v1:
                raise ConfigError(
                    src,
                    "INFLUX_BUCKET",
                    f"{names['url']} is set but neither INFLUX_BUCKET (v2) nor INFLUX_DB (v1) is",
                    "set INFLUX_BUCKET, INFLUX_ORG and INFLUX_TOKEN for InfluxDB 2.x/3.x, "
                    "or INFLUX_DB for 1.x; unset INFLUX_URL to disable the sink",
                )
            api_version = 2 if v2 else 1
        config = cls(
            url=url,
            api_version=api_version,
            token=env.get("INFLUX_TOKEN"),
            org=env.get("INFLUX_ORG"),
            bucket=env.get("INFLUX_BUCKET"),
            database=database,
            retention_policy=env.get("INFLUX_RP"),
            username=env.get("INFLUX_USERNAME"),
            password=env.get("INFLUX_PASSWORD"),
            token_secret=_env_secret(env, "INFLUX_TOKEN_SECRET"),
            password_secret=_env_secret(env, "INFLUX_PASSWORD_SECRET"),
            verify_ssl=_env_bool(env, "INFLUX_VERIFY_SSL", True),
            ca_file=env.get("INFLUX_CA_FILE"),
            timeout_ms=_env_number(env, "INFLUX_TIMEOUT_MS", cls.timeout_ms),
            batch_size=_env_number(env, "INFLUX_BATCH_SIZE", cls.batch_size),
            max_retry_s=_env_number(env, "INFLUX_MAX_RETRY_S", cls.max_retry_s),
            backoff_initial_ms=_env_number(env, "INFLUX_BACKOFF_INITIAL_MS", cls.backoff_initial_ms),
            backoff_max_ms=_env_number(env, "INFLUX_BACKOFF_MAX_MS", cls.backoff_max_ms),
            gzip=_env_bool(env, "INFLUX_GZIP", True),
        )
        return config.validate(src, names)


def _alias(
    env: Mapping[str, str], main: str, alias: str, names: dict[str, str], name: str
) -> str | None:
    a, b = env.get(main), env.get(alias)
    if a is not None and b is not None and a != b:
        # Values not quoted: a URL may carry credentials.
        raise ConfigError("environment", alias, f"differs from {main}", f"set only {main}")
    if a is None and b is not None:
        names[name] = alias
    return a if a is not None else b


def _env_secret(env: Mapping[str, str], key: str) -> SecretRef | None:
    """A Secret Manager reference from ``key`` (a version name; the value is read on the worker)."""
    version = env.get(key)
    if version is None:
        return None
    if not is_secret_version(version):
        raise ConfigError(
            "environment", key, f"{version!r} is not a secret version",
            f"set {key}=projects/<project>/secrets/<name>/versions/<n or latest>",
        )
    return gcp_secret(version)


def _read_secret(ref: SecretRef, name: str) -> str:
    return read_secret(ref, f"InfluxDB {ENV_NAMES[name]}")


def _env_number(env: Mapping[str, str], key: str, default: _N) -> _N:
    """``key`` parsed as the type of ``default`` (int or float); a ConfigError names it otherwise."""
    raw = env.get(key)
    if raw is None:
        return default
    kind = type(default)
    try:
        return kind(raw)
    except ValueError:
        what = "an integer" if kind is int else "a number"
        raise ConfigError(
            "environment", key, f"{raw!r} is not {what}", f"set {key} to e.g. {default:g}"
        ) from None


def _env_bool(env: Mapping[str, str], key: str, default: bool) -> bool:
    raw = env.get(key)
    if raw is None:
        return default
    value = raw.lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(
        "environment", key, f"{raw!r} is not true or false", f"set {key}=true or {key}=false"
    )
