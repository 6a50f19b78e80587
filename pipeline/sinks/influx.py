"""The InfluxDB sink: checked points -> line protocol -> batched, retried writes.

One sink, two wire protocols, chosen by :class:`InfluxConfig`:

* **v2** (InfluxDB 2.x, 3.x, Cloud, and servers that speak ``/api/v2/write``
  such as VictoriaMetrics): influxdb-client's ``WriteApi`` in SYNCHRONOUS
  mode (url, token, org, bucket), gzip, precision seconds. The client retries
  only in its batching mode and its ``flush()`` does nothing, so batching and
  retries are done here, around the synchronous call, the same way for both
  protocols.
* **v1** (InfluxDB 1.x): ``POST /write?db=&rp=&precision=s`` with a gzip body
  and optional basic auth, through :mod:`urllib.request`. Standard library on
  purpose: one request carries up to ``batch_size`` (5000) points, so a
  connection per request costs nothing measurable, and it adds no dependency
  (``requests`` is only a transitive dependency of Beam, not one of ours).

Error handling, for both: connection errors, timeouts, 408/429/5xx are retried
with capped, jittered exponential backoff that honours ``Retry-After``, for at
most ``max_retry_s``; then :class:`InfluxUnavailable` (a ``TransientError``)
names the URL. 401/403/404 (and redirects, other 4xx) raise
:class:`InfluxRefused` (a ``TerminalError``) saying what to check.

400/422 mean the server refused some of the data: the batch is split in
halves, recursively, until the refused lines are isolated; the good lines are
written and each refused line comes back as a dead letter (reason
``server_rejected``, the server's text as detail) and in
``WriteResult.failed``. One bad line in 5,000 costs about 26 extra requests of
shrinking size. InfluxDB 1.x already keeps the good points of a refused batch
("partial write"); sending them again while bisecting overwrites them with the
same values, which is harmless because a point is keyed by series and window
start. The splitting is bounded (``max_split_requests`` per batch): past it,
a still-refused part is dead-lettered whole. 413 (payload too large) splits
the batch in halves the same way and the sink remembers the size that fitted
for its later batches.

While the server is down a call blocks, retrying one batch for at most
``max_retry_s``: the caller (one Beam DoFn instance) holds at most two encoded
batches (the one being sent, the next one encoded), so memory stays bounded and
the back-pressure reaches the pipeline; past the budget
:class:`InfluxUnavailable` tells the runner to retry the bundle, nothing of the
batch having been acknowledged.

Throughput: :class:`PointEncoder` checks and escapes names once per point
shape, so encoding costs about a third of checking and encoding each point
from scratch; and when a call has more than one batch, a sender thread writes
batch *k* while the caller encodes batch *k+1* (figures: docs/BENCHMARKS.md).

Tokens and passwords are never logged and never part of a message or repr.
On a remote runner they should not be part of the pipeline graph either: the
config can hold a *reference* instead (``token_secret`` / ``password_secret``,
an object with ``get_str()`` such as Beam's ``GcpSecret``; from the
environment ``INFLUX_TOKEN_SECRET`` / ``INFLUX_PASSWORD_SECRET`` =
``projects/<p>/secrets/<name>/versions/<v>``), which :class:`InfluxSink` reads
when it is opened: in the Beam DoFn's ``setup``, on the worker.

Use::

    config = InfluxConfig.from_env(os.environ)   # None: InfluxDB not configured
    if config is not None:
        with open_sink(config) as sink:
            result = sink.write_points(points)   # dicts: measurement, tags, fields, ts_s
            dead_letters = result.rejected       # (point, reason, detail)

A sink is not thread-safe: use one per thread (a Beam DoFn instance).
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import http.client
import json
import logging
import math
import os
import random
import ssl
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC
from typing import Any, NamedTuple, Protocol, TypeVar

from fleetpulse.errors import ConfigError, TerminalError, TransientError
from fleetpulse.pipeline.secrets import SecretRef, gcp_secret, is_secret_version, read_secret
from fleetpulse.schemas.influx import (
    DESIGN_REASONS,
    DesignViolation,
    InfluxDesign,
    InfluxFieldSpec,
    MeasurementSpec,
    load_influx_design,
)

from .line_protocol import (
    INT64_MAX,
    INT64_MIN,
    LINE_REASONS,
    TS_S_MAX,
    TS_S_MIN,
    InvalidPoint,
    field_key_text,
    field_value_text,
    measurement_text,
    tags_text,
    to_line,
)

log = logging.getLogger(__name__)
_N = TypeVar("_N", int, float)

#: Every reason a point can become a dead letter here (bounded; counter labels).
SINK_REASONS = tuple(dict.fromkeys((*DESIGN_REASONS, *LINE_REASONS, "server_rejected")))

#: Bounded ``error_type`` labels of failed write attempts.
ERROR_TYPES = (
    "connection",
    "timeout",
    "rate_limited",
    "server_error",
    "bad_request",
    "payload_too_large",
    "auth",
    "not_found",
    "redirect",
    "tls",
    "client_error",
)

#: Requests a sink may spend per batch isolating refused lines (1 bad line in 5,000: ~26).
DEFAULT_MAX_SPLIT_REQUESTS = 256

# Level 1: 5,000 device lines shrink ~22x at ~0.1 s per 100k lines; level 9 gets
# ~42x at 7x the CPU, which the sink's single thread would spend instead of encoding.
_GZIP_LEVEL = 1
_MAX_MESSAGE_CHARS = 1000

_V2_KEYS = ("INFLUX_TOKEN", "INFLUX_TOKEN_SECRET", "INFLUX_ORG", "INFLUX_BUCKET")
_V1_KEYS = (
    "INFLUX_DB", "INFLUX_DATABASE", "INFLUX_RP", "INFLUX_USERNAME", "INFLUX_PASSWORD",
    "INFLUX_PASSWORD_SECRET",
)

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


# --------------------------------------------------------------------- config
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
        env = {k: v.strip() for k, v in environ.items() if k.startswith("INFLUX_") and v.strip()}
        names = dict(ENV_NAMES)
        url = _alias(env, "INFLUX_URL", "INFLUX_HOST", names, "url")
        if url is None:
            stray = sorted(env)
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


# ----------------------------------------------------------------- transports
class SendFailure(Exception):
    """One write attempt failed; ``kind`` decides: transient (retry), terminal, rejected (data)."""

    def __init__(
        self,
        kind: str,
        error_type: str,
        message: str,
        *,
        status: int | None = None,
        retry_after_s: float | None = None,
        fix: str = "",
    ) -> None:
        assert kind in ("transient", "terminal", "rejected"), kind
        assert error_type in ERROR_TYPES, error_type
        super().__init__(message)
        self.kind, self.error_type, self.message = kind, error_type, message
        self.status, self.retry_after_s, self.fix = status, retry_after_s, fix


class Transport(Protocol):
    """Sends one batch (lines joined by newlines); raises :class:`SendFailure`."""

    target: str

    def send(self, body: str) -> None: ...

    def close(self) -> None: ...


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - now_s)
    return max(0.0, seconds) if math.isfinite(seconds) else None


def server_message(body: str | bytes | None) -> str:
    """The error text of an InfluxDB response: JSON ``error``/``message``, else the raw text."""
    if body is None:
        return ""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if isinstance(obj, dict):
        for key in ("error", "message"):
            if isinstance(obj.get(key), str):
                text = obj[key]
                break
    text = text.strip()
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."


def classify_status(
    config: InfluxConfig, status: int, message: str, retry_after_s: float | None
) -> SendFailure:
    """Turn a non-2xx HTTP status into a SendFailure whose fix says what to check."""
    n = ENV_NAMES
    detail = f"HTTP {status}" + (f": {message}" if message else "")
    if status in (408, 429) or (500 <= status <= 599 and status not in (501, 505)):
        error_type = {408: "timeout", 429: "rate_limited"}.get(status, "server_error")
        return SendFailure(
            "transient", error_type, detail, status=status, retry_after_s=retry_after_s
        )
    if status in (400, 422):
        return SendFailure("rejected", "bad_request", detail, status=status)
    if status == 413:
        return SendFailure(
            "rejected",
            "payload_too_large",
            detail,
            status=status,
            fix=f"lower {n['batch_size']} (now {config.batch_size})",
        )
    if status in (401, 403):
        if config.api_version == 2:
            fix = (
                f"check that {n['token']} is valid and has write permission on bucket "
                f"{config.bucket!r} in org {config.org!r}"
            )
        else:
            fix = (
                f"check {n['username']}/{n['password']} and that the user has WRITE on "
                f"database {config.database!r}"
            )
        return SendFailure("terminal", "auth", detail, status=status, fix=fix)
    if status == 404:
        if config.api_version == 2:
            fix = (
                f"check that bucket {config.bucket!r} ({n['bucket']}) exists in org {config.org!r} "
                f"({n['org']}) and that {n['url']} is the server root"
            )
        else:
            fix = (
                f"check that database {config.database!r} exists (CREATE DATABASE), that retention "
                f"policy {config.retention_policy!r} exists if {n['retention_policy']} is set, and "
                f"that {n['url']} is the server root"
            )
        return SendFailure("terminal", "not_found", detail, status=status, fix=fix)
    if 300 <= status <= 399:
        return SendFailure(
            "terminal",
            "redirect",
            detail,
            status=status,
            fix=f"set {n['url']} to the address the server redirects to (often https://)",
        )
    return SendFailure(
        "terminal",
        "client_error",
        detail,
        status=status,
        fix=f"check {n['url']} points at an InfluxDB {config.api_version}.x write API",
    )


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """A redirected POST would be replayed as a GET without its body: refuse instead."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _ssl_context(config: InfluxConfig) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=config.ca_file)
    if not config.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class V1HttpTransport:
    """InfluxDB 1.x ``/write`` over urllib: gzip body, basic auth in a header (not the URL)."""

    def __init__(
        self,
        config: InfluxConfig,
        *,
        opener: urllib.request.OpenerDirector | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self.target = config.write_target
        self._timeout_s = config.timeout_ms / 1000
        self._wall_clock = wall_clock
        self._headers = {"Content-Type": "text/plain; charset=utf-8"}
        if config.gzip:
            self._headers["Content-Encoding"] = "gzip"
        if config.username:
            pair = f"{config.username}:{config.password or ''}".encode()
            self._headers["Authorization"] = "Basic " + base64.b64encode(pair).decode("ascii")
        self._opener = opener or urllib.request.build_opener(
            urllib.request.HTTPSHandler(context=_ssl_context(config)), _RefuseRedirects()
        )

    def send(self, body: str) -> None:
        data = body.encode("utf-8")
        if self._config.gzip:
            data = gzip.compress(data, compresslevel=_GZIP_LEVEL)
        request = urllib.request.Request(
            self.target, data=data, headers=self._headers, method="POST"
        )
        try:
            with self._opener.open(request, timeout=self._timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            with exc:
                try:
                    text = exc.read()
                except OSError:
                    text = b""
                retry_after = parse_retry_after(exc.headers.get("Retry-After"), self._wall_clock())
            raise classify_status(
                self._config, exc.code, server_message(text), retry_after
            ) from None
        except urllib.error.URLError as exc:
            raise _network_failure(exc.reason) from None
        except (OSError, http.client.HTTPException) as exc:
            raise _network_failure(exc) from None

    def close(self) -> None:
        """Nothing to release: urllib holds no connection between requests."""


def _network_failure(reason: object) -> SendFailure:
    if isinstance(reason, ssl.SSLCertVerificationError):
        return SendFailure(
            "terminal",
            "tls",
            f"TLS certificate verification failed: {reason}",
            fix=f"give the server's CA in {ENV_NAMES['ca_file']} (or fix the certificate)",
        )
    if isinstance(reason, TimeoutError):
        return SendFailure("transient", "timeout", f"timed out: {reason}")
    return SendFailure("transient", "connection", f"{type(reason).__name__}: {reason}")


class V2ClientTransport:
    """InfluxDB 2.x/3.x ``/api/v2/write`` through influxdb-client's SYNCHRONOUS WriteApi."""

    def __init__(
        self,
        config: InfluxConfig,
        *,
        client_factory: Callable[..., Any] | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        # Imported here so v1-only installs and CLI start-up do not pay for it.
        import urllib3
        from influxdb_client import InfluxDBClient, WritePrecision
        from influxdb_client.client.write_api import SYNCHRONOUS
        from influxdb_client.rest import ApiException

        self._config = config
        self.target = config.write_target
        self._wall_clock = wall_clock
        self._api_exception = ApiException
        self._urllib3_errors = urllib3.exceptions
        self._precision: Any = WritePrecision.S
        self._bucket: str = config.bucket or ""
        self._org: str = config.org or ""
        kwargs: dict[str, Any] = {
            "url": config.base_url,
            "token": config.token,
            "org": config.org,
            "timeout": config.timeout_ms,
            "enable_gzip": config.gzip,
            "verify_ssl": config.verify_ssl,
            # No retry inside the client: every attempt is ours to count and bound.
            "retries": False,
        }
        if config.ca_file:
            kwargs["ssl_ca_cert"] = config.ca_file
        self._client = (client_factory or InfluxDBClient)(**kwargs)
        self._write_api = self._client.write_api(write_options=SYNCHRONOUS)

    def send(self, body: str) -> None:
        try:
            self._write_api.write(
                bucket=self._bucket,
                org=self._org,
                record=body,
                write_precision=self._precision,
            )
        except self._api_exception as exc:
            status = int(exc.status or 0)
            if status == 0:
                # The client reports TLS failures as status 0 with the SSL error as reason.
                reason = str(exc.reason)
                if "CERTIFICATE_VERIFY_FAILED" in reason or "certificate verify failed" in reason:
                    raise SendFailure(
                        "terminal",
                        "tls",
                        f"TLS certificate verification failed: {reason.strip()}",
                        fix=f"give the server's CA in {ENV_NAMES['ca_file']} (or fix the certificate)",
                    ) from None
                raise SendFailure("transient", "connection", reason.strip()) from None
            headers: Mapping[str, str] = exc.headers or {}
            retry_after = parse_retry_after(headers.get("Retry-After"), self._wall_clock())
            raise classify_status(
                self._config, status, server_message(exc.body), retry_after
            ) from None
        except self._urllib3_errors.NewConnectionError as exc:
            # Checked first: urllib3 makes it a subclass of ConnectTimeoutError.
            raise SendFailure("transient", "connection", f"{type(exc).__name__}: {exc}") from None
        except self._urllib3_errors.TimeoutError as exc:
            raise SendFailure("transient", "timeout", f"timed out: {exc}") from None
        except self._urllib3_errors.HTTPError as exc:
            raise SendFailure("transient", "connection", f"{type(exc).__name__}: {exc}") from None
        except OSError as exc:
            raise _network_failure(exc) from None

    def close(self) -> None:
        self._write_api.close()
        self._client.close()


def make_transport(config: InfluxConfig) -> Transport:
    """The transport ``config`` asks for (v1 urllib or v2 influxdb-client)."""
    if not config.verify_ssl:
        log.warning(
            "TLS certificate verification is OFF for InfluxDB at %s (%s=false)",
            config.base_url,
            ENV_NAMES["verify_ssl"],
        )
    if config.api_version == 1:
        return V1HttpTransport(config)
    return V2ClientTransport(config)


# -------------------------------------------------------------------- results
class RejectedPoint(NamedTuple):
    """A point that was not written, why (a reason from SINK_REASONS) and the detail."""

    point: Any
    reason: str
    detail: str


@dataclass(frozen=True)
class FailedBatch:
    """Lines the server refused as data (400/413/422), isolated by bisection.

    Usually one line; more only when the split budget ran out. These lines
    were not written; the other lines of their batch were.
    """

    index: int  # batch number within the write_lines/write_points call
    first_line: int  # offset of its first line in the lines given
    line_count: int
    status: int | None
    message: str  # the server's error text
    lines: Sequence[str] = field(repr=False, default=())


@dataclass
class WriteResult:
    """What one write_points/write_lines call did; counts use the sink's counter names."""

    received: int = 0  # points (write_points) or lines (write_lines) given
    sent: int = 0  # points the server acknowledged
    batches: int = 0  # requests the server acknowledged (a split batch counts each part)
    retries: int = 0
    splits: int = 0  # refused batches split in two to isolate bad lines (400/422) or fit (413)
    errors: int = 0  # failed attempts, retried or not
    dropped: int = 0  # points not written: rejected before sending + in failed batches
    rejected: list[RejectedPoint] = field(default_factory=list)
    failed: list[FailedBatch] = field(default_factory=list)


@dataclass
class SinkCounters:
    """Running totals of a sink (the same names as every FleetPulse component)."""

    received: int = 0
    sent: int = 0
    dropped: int = 0
    errors: int = 0
    batches: int = 0
    retries: int = 0
    splits: int = 0
    errors_by_type: dict[str, int] = field(default_factory=dict)
    dropped_by_reason: dict[str, int] = field(default_factory=dict)

    def snapshot(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "sent": self.sent,
            "dropped": self.dropped,
            "errors": self.errors,
            "batches": self.batches,
            "retries": self.retries,
            "splits": self.splits,
            "errors_by_type": dict(self.errors_by_type),
            "dropped_by_reason": dict(self.dropped_by_reason),
        }


class InfluxUnavailable(TransientError):
    """InfluxDB did not take a batch within max_retry_s; the call may be retried as a whole."""

    def __init__(
        self, message: str, *, target: str, batch_index: int, sent: int, error_type: str
    ) -> None:
        super().__init__(message)
        self.target, self.batch_index, self.sent, self.error_type = (
            target,
            batch_index,
            sent,
            error_type,
        )


class InfluxRefused(TerminalError):
    """InfluxDB refused for good (credentials, missing database/bucket, TLS, wrong URL)."""

    def __init__(
        self,
        message: str,
        *,
        target: str,
        batch_index: int,
        sent: int,
        status: int | None,
        error_type: str,
    ) -> None:
        super().__init__(message)
        self.target, self.batch_index, self.sent = target, batch_index, sent
        self.status, self.error_type = status, error_type


# ------------------------------------------------------------------- encoding
#: Point shapes an encoder keeps a plan for; points of further shapes take the checked path.
MAX_SHAPES = 1024
#: Checked series keys (measurement and tags as text) an encoder keeps over all shapes;
#: past it they are all forgotten and rebuilt, so a huge fleet costs time, not memory.
MAX_SERIES = 65_536
#: Checked values kept per string field (firmware versions, bands: few distinct values).
MAX_STRINGS_PER_FIELD = 1024

_FLOAT_MAX = sys.float_info.max
_NONE = type(None)


class _Shape:
    """What one point shape needs per point, worked out once from the design and the names.

    A shape is (measurement, tag keys, field keys, exact field value types). The
    design specs of the names and their escaping depend only on the shape; what
    depends on values is checked per point: numbers against ``bounds`` (the
    design range narrowed to what line protocol carries: int64, finite), strings
    against the design and escaping (remembered per distinct value), tag values
    by series (remembered per distinct tuple of tag values), and the timestamp.
    """

    __slots__ = ("spec", "window_s", "head", "template", "bounds", "strings", "order", "series")

    def __init__(
        self,
        spec: MeasurementSpec,
        head: str,
        template: str,
        bounds: tuple[tuple[int, float, float], ...],
        strings: tuple[tuple[int, Any, InfluxFieldSpec, set[str]], ...],
        order: tuple[tuple[int, tuple[float, float] | None], ...] | None,
    ) -> None:
        self.spec = spec
        self.window_s = spec.window_s
        self.head = head  # the escaped measurement
        # " k=%d,k=%r,k=\"%s\" %d": %-formatting is the fastest way to write the values.
        self.template = template
        self.bounds = bounds  # (index, low, high) of int and float values written as given
        self.strings = strings  # (index, key, spec, values known to need no escaping)
        # None: every value is written as given, in order. Otherwise (some None values
        # left out, bools, ints in float fields): (index, None to write as given, "bool",
        # or the (low, high) of an int written as a float) per value written.
        self.order = order
        self.series: dict[tuple[Any, ...], str] = {}  # tag values -> head + ",k=v..."


def _inclusive_bounds(spec: InfluxFieldSpec, low: float, high: float) -> tuple[float, float] | None:
    """The design range narrowed to [low, high]; None if a design bound is not a finite number."""
    for bound in (spec.min, spec.max):
        if bound is not None and (type(bound) not in (int, float) or not math.isfinite(bound)):
            return None
    return (
        low if spec.min is None else max(spec.min, low),
        high if spec.max is None else min(spec.max, high),
    )


_BOOL = (0.0, 0.0)  # marks a bool in _Shape.order (compared by identity)


class PointEncoder:
    """Checks points against the design and encodes them, doing per point only what values need.

    Points of one measurement nearly always share tag keys, field keys and
    value types, so the design lookups, name checks and escaping are done once
    per shape (:class:`_Shape`) and each point only has its values checked.
    The result is exactly what ``design.check`` followed by :func:`to_line`
    gives, because a point the fast path is not sure about (anything out of
    range, to escape or to refuse) is given to that checked path, which writes
    the same line or refuses with its reason and detail.

    Its caches are bounded (defaults :data:`MAX_SHAPES`, :data:`MAX_SERIES`,
    :data:`MAX_STRINGS_PER_FIELD`); not thread-safe (one per sink).
    """

    def __init__(
        self,
        design: InfluxDesign,
        *,
        max_shapes: int = MAX_SHAPES,
        max_series: int = MAX_SERIES,
        max_strings_per_field: int = MAX_STRINGS_PER_FIELD,
    ) -> None:
        self.design = design
        self._max_shapes = max_shapes
        self._max_series = max_series
        self._max_strings = max_strings_per_field
        self._shapes: dict[tuple[Any, ...], _Shape | None] = {}
        self._series_count = 0

    def cached(self) -> dict[str, int]:
        """How much the caches hold: shapes, series, string values."""
        plans = [shape for shape in self._shapes.values() if shape is not None]
        return {
            "shapes": len(self._shapes),
            "series": sum(len(shape.series) for shape in plans),
            "strings": sum(len(known) for shape in plans for *_, known in shape.strings),
        }

    def encode(self, points: Iterable[Any]) -> tuple[list[str], list[Any], list[RejectedPoint]]:
        """(lines, the points they encode, rejected points) for ``points``, in order."""
        lines: list[str] = []
        kept: list[Any] = []
        rejected: list[RejectedPoint] = []
        shapes = self._shapes
        for point in points:
            try:
                measurement = point["measurement"]
                tags = point.get("tags") or {}
                fields = point["fields"]
                ts_s = point["ts_s"]
            except (KeyError, TypeError, AttributeError):
                rejected.append(
                    RejectedPoint(
                        point, "not_a_point", "expected a dict with measurement, tags, fields, ts_s"
                    )
                )
                continue
            line = None
            if type(tags) is dict and type(fields) is dict:
                # The fast path: inline, as it runs per point. Any doubt leaves line None.
                tag_values = tuple(tags.values())
                values = tuple(fields.values())
                # The exact types are part of the shape: equal is not enough, as a str
                # subclass or a bool is written differently (or refused).
                types = map(type, (measurement, *tags, *tag_values, *fields, *values))
                key = (measurement, tuple(tags), *fields, *types)
                try:
                    shape = shapes[key]
                except KeyError:
                    shape = self._add_shape(key, len(tags), len(values))
                except TypeError:  # an unhashable measurement: the checked path names it
                    shape = None
                if shape is not None:
                    line = self._line(shape, tags, tag_values, values, ts_s)
            elif not isinstance(tags, Mapping) or not isinstance(fields, Mapping):
                rejected.append(
                    RejectedPoint(point, "not_a_point", "tags and fields must be mappings")
                )
                continue
            if line is None:
                try:
                    tags, fields, ts_s = self.design.check(measurement, tags, fields, ts_s)
                    line = to_line(measurement, tags, fields, ts_s)
                except (DesignViolation, InvalidPoint) as exc:
                    rejected.append(RejectedPoint(point, exc.reason, exc.detail))
                    continue
            lines.append(line)
            kept.append(point)
        return lines, kept, rejected

    def _line(
        self,
        shape: _Shape,
        tags: dict[Any, Any],
        tag_values: tuple[str | None, ...],
        values: tuple[Any, ...],
        ts_s: Any,
    ) -> str | None:
        """The line of a point of ``shape``, or None when the checked path must decide."""
        series = shape.series.get(tag_values)  # str or None values, by shape
        if series is None:
            series = self._add_series(shape, tags, tag_values)
            if series is None:
                return None
        for index, low, high in shape.bounds:
            if not low <= values[index] <= high:  # NaN compares false
                return None
        for index, key, spec, known in shape.strings:
            if values[index] not in known and not self._plain_string(
                key, spec, values[index], known
            ):
                return None
        if type(ts_s) is not int or not TS_S_MIN <= ts_s <= TS_S_MAX or ts_s % shape.window_s:
            return None
        if shape.order is None:
            return series + shape.template % (*values, ts_s)
        args: list[Any] = []
        for index, convert in shape.order:
            value = values[index]
            if convert is _BOOL:
                value = "true" if value else "false"
            elif convert is not None:  # an int in a float field: written as that float
                if not INT64_MIN <= value <= INT64_MAX:
                    return None
                value = float(value)
                if not convert[0] <= value <= convert[1]:
                    return None
            args.append(value)
        args.append(ts_s)
        return series + shape.template % tuple(args)

    def _plain_string(self, key: Any, spec: InfluxFieldSpec, value: str, known: set[str]) -> bool:
        """Whether a string field value fits the design and needs no escaping; remembered if so."""
        if spec.values and value not in spec.values:
            return False
        if spec.max_length is not None and len(value) > spec.max_length:
            return False
        try:
            if field_value_text(key, value) != f'"{value}"':
                return False
        except InvalidPoint:
            return False
        if len(known) < self._max_strings:
            known.add(value)
        return True

    def _add_series(
        self, shape: _Shape, tags: dict[Any, Any], tag_values: tuple[str | None, ...]
    ) -> str | None:
        """Check and encode a new series key and remember it; None when the checked path must decide."""
        try:
            series = shape.head + tags_text(shape.spec.check_tags(tags))
        except (DesignViolation, InvalidPoint):
            return None
        if self._series_count >= self._max_series:
            for known in self._shapes.values():
                if known is not None:
                    known.series.clear()
            self._series_count = 0
        shape.series[tag_values] = series
        self._series_count += 1
        return series

    def _add_shape(self, key: tuple[Any, ...], tag_count: int, count: int) -> _Shape | None:
        """Plan the shape of ``key`` (see :meth:`encode`) and remember it, while there is room."""
        if len(self._shapes) >= self._max_shapes:
            return None  # planning every point of a new shape would cost more than checking it
        measurement, tag_keys = key[0], key[1]
        field_keys = key[2 : 2 + count]
        names_type, *types = key[2 + count :]
        # The measurement and every key must be exact str; tag values str or None.
        names_types = (
            names_type,
            *types[:tag_count],
            *types[2 * tag_count : 2 * tag_count + count],
        )
        tag_value_types = types[tag_count : 2 * tag_count]
        shape = None
        if all(kind is str for kind in names_types) and all(
            kind in (str, _NONE) for kind in tag_value_types
        ):
            shape = self._plan(
                measurement, tag_keys, field_keys, tuple(types[-count:] if count else ())
            )
        self._shapes[key] = shape
        return shape

    def _plan(
        self,
        measurement: Any,
        tag_keys: tuple[Any, ...],
        field_keys: tuple[Any, ...],
        types: tuple[type, ...],
    ) -> _Shape | None:
        """The plan for one shape; None when its points all take the checked path.

        None for what refuses every point of the shape (unknown measurement,
        tag or field, a type the design does not take, a missing required
        field, a name line protocol cannot carry), which the checked path
        explains, and for a design bound that is not a finite number.
        """
        if not isinstance(measurement, str):
            return None
        spec = self.design.measurements.get(measurement)
        if spec is None or any(key not in spec.tags for key in tag_keys):
            return None
        if type(spec.window_s) is not int or spec.window_s <= 0:
            return None
        try:
            head = measurement_text(measurement)
        except InvalidPoint:
            return None
        parts: list[str] = []
        bounds: list[tuple[int, float, float]] = []
        strings: list[tuple[int, Any, InfluxFieldSpec, set[str]]] = []
        order: list[tuple[int, tuple[float, float] | None]] = []
        present = set()
        as_given = True  # every value present and written as given
        for index, (key, kind) in enumerate(zip(field_keys, types, strict=True)):
            if kind is _NONE:  # None values are left out
                as_given = False
                continue
            field_spec = spec.fields.get(key)
            if field_spec is None and isinstance(key, str):
                field_spec = spec.field_spec(key)
            if field_spec is None:
                return None
            try:
                text = field_key_text(key).replace("%", "%%")
            except InvalidPoint:
                return None
            present.add(key)
            wanted = field_spec.type
            convert: tuple[float, float] | None = None
            if wanted == "int" and kind is int:
                limits = _inclusive_bounds(field_spec, INT64_MIN, INT64_MAX)
                if limits is None:
                    return None
                bounds.append((index, *limits))
                parts.append(f"{text}=%di")
            elif wanted == "float" and kind is float:
                limits = _inclusive_bounds(field_spec, -_FLOAT_MAX, _FLOAT_MAX)
                if limits is None:
                    return None
                bounds.append((index, *limits))
                parts.append(f"{text}=%r")
            elif wanted == "float" and kind is int:  # the design converts it to a float
                convert = _inclusive_bounds(field_spec, -_FLOAT_MAX, _FLOAT_MAX)
                if convert is None:
                    return None
                as_given = False
                parts.append(f"{text}=%r")
            elif wanted == "bool" and kind is bool:
                convert, as_given = _BOOL, False
                parts.append(f"{text}=%s")
            elif wanted == "string" and kind is str:
                strings.append((index, key, field_spec, set()))
                parts.append(f'{text}="%s"')
            else:
                return None
            order.append((index, convert))
        if not parts or not spec.required_fields <= present:
            return None
        return _Shape(
            spec,
            head,
            " " + ",".join(parts) + " %d",
            tuple(bounds),
            tuple(strings),
            None if as_given else tuple(order),
        )


def points_to_lines(
    points: Iterable[Any], design: InfluxDesign | None = None
) -> tuple[list[str], list[RejectedPoint]]:
    """Check points against the design and encode them: (lines, rejected); never raises.

    A point is a dict ``{"measurement", "tags", "fields", "ts_s"}``. Rejected
    points come back as ``(point, reason, detail)`` to be kept as dead letters.
    """
    lines, _, rejected = PointEncoder(design or load_influx_design(1)).encode(points)
    return lines, rejected


# ----------------------------------------------------------------------- sink
class InfluxSink:
    """Writes points to InfluxDB in batches with bounded retries; see the module docstring.

    ``transport``, ``clock``, ``sleep`` and ``rng`` can be injected (tests
    pass a fake transport or a fake clock); by default the transport is built
    from ``config`` without network I/O. ``max_split_requests`` bounds the
    extra requests spent isolating refused lines in one batch.
    """

    def __init__(
        self,
        config: InfluxConfig,
        *,
        transport: Transport | None = None,
        design: InfluxDesign | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_split_requests: int = DEFAULT_MAX_SPLIT_REQUESTS,
    ) -> None:
        # Secret references are read here, where the sink runs (the worker), not at launch.
        self.config = config.validate().with_secrets()
        self.design = design or load_influx_design(1)
        self._encoder = PointEncoder(self.design)
        self.counters = SinkCounters()
        self._transport = transport if transport is not None else make_transport(self.config)
        self._clock = clock
        self._sleep = sleep
        self._rng = rng or random.Random()
        self._max_split_requests = max_split_requests
        # Lowered after a 413 to the size that fitted, so later batches do not pay for it again.
        self._lines_per_request = config.batch_size
        self._closed = False

    @property
    def target(self) -> str:
        return self._transport.target

    def __enter__(self) -> InfluxSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the client; safe to call twice."""
        if not self._closed:
            self._closed = True
            self._transport.close()

    # ------------------------------------------------------------------ write
    def write_points(self, points: Iterable[Any]) -> WriteResult:
        """Check, encode and write points; invalid or server-refused ones come back in ``rejected``.

        Raises :class:`InfluxUnavailable` (retry later) or :class:`InfluxRefused`
        (fix the config); batches written before the raise stay written, which
        is harmless because points are keyed by series and window start.

        When there is more than one batch, batch *k+1* is encoded while batch
        *k* is being sent (by one sender thread, in order): at most two
        batches are held, and batches, retries, splits and the counters are
        the same as when encoding everything first.
        """
        points = list(points)
        self.counters.received += len(points)
        kept: list[Any] = []
        rejected: list[RejectedPoint] = []
        if self._closed:
            rejected = self._encoder.encode(points)[2]
            self._count_rejected(rejected)
            raise RuntimeError("InfluxSink is closed")
        result = WriteResult()
        batches = self._encoded_batches(points, kept, rejected)
        counted = 0  # rejected points already counted as dropped
        # One batch (the common DoFn bundle) needs no thread: it is sent where it was encoded.
        sender = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="influx-sink-send")
            if len(points) > self.config.batch_size
            else None
        )
        in_flight: Future[None] | None = None
        try:
            for index, start, lines in batches:
                try:
                    if in_flight is not None:
                        in_flight.result()
                        in_flight = None
                    # Counted here, with no send in flight: only one thread updates the counters.
                    counted = self._count_rejected(rejected, counted)
                    if sender is None:
                        self._send_lines(lines, start, index, result)
                    else:
                        in_flight = sender.submit(self._send_lines, lines, start, index, result)
                except Exception:
                    # As when everything was encoded before sending: every point is counted.
                    for _ in batches:
                        pass
                    self._count_rejected(rejected, counted)
                    raise
            if in_flight is not None:
                in_flight.result()
        finally:
            if sender is not None:
                sender.shutdown(wait=True)
        self._count_rejected(rejected, counted)
        result.received = len(points)
        for batch in result.failed:
            for offset in range(batch.first_line, batch.first_line + batch.line_count):
                rejected.append(RejectedPoint(kept[offset], "server_rejected", batch.message))
        result.rejected = rejected
        result.dropped = len(rejected)
        return result

    def _encoded_batches(
        self, points: list[Any], kept: list[Any], rejected: list[RejectedPoint]
    ) -> Iterator[tuple[int, int, list[str]]]:
        """(batch index, offset of its first line, lines): ``batch_size`` lines, the last fewer.

        The same batches as slicing all encoded lines: points are encoded just
        far enough to fill the next batch. Appends to ``kept`` and ``rejected``.
        """
        size = self.config.batch_size
        lines: list[str] = []
        index = start = position = 0
        while position < len(points):
            chunk = points[position : position + size - len(lines)]
            position += len(chunk)
            encoded, chunk_kept, chunk_rejected = self._encoder.encode(chunk)
            lines += encoded
            kept += chunk_kept
            rejected += chunk_rejected
            if len(lines) == size:
                yield index, start, lines
                index, start, lines = index + 1, start + size, []
        if lines:
            yield index, start, lines

    def _count_rejected(self, rejected: list[RejectedPoint], counted: int = 0) -> int:
        """Count ``rejected[counted:]`` as dropped; returns how many are counted now."""
        for item in rejected[counted:]:
            self._count_dropped(item.reason, 1)
        return len(rejected)

    def write_lines(self, lines: Sequence[str]) -> WriteResult:
        """Write already-encoded lines (one point each) in batches of ``batch_size``."""
        self.counters.received += len(lines)
        result = self._write(lines)
        result.received = len(lines)
        return result

    def _write(self, lines: Sequence[str]) -> WriteResult:
        if self._closed:
            raise RuntimeError("InfluxSink is closed")
        result = WriteResult()
        size = self.config.batch_size
        for index, start in enumerate(range(0, len(lines), size)):
            self._send_lines(lines[start : start + size], start, index, result)
        return result

    def _send_lines(
        self, batch: Sequence[str], start: int, index: int, result: WriteResult
    ) -> None:
        """Join one batch into a request body, refusing line breaks, and write it."""
        body = "\n".join(batch)
        if body.count("\n") != len(batch) - 1 or "\r" in body:
            bad = next(i for i, line in enumerate(batch) if "\n" in line or "\r" in line)
            raise ValueError(
                f"line {start + bad} contains a line break; encode points with to_line()"
            )
        self._write_batch(batch, start, index, body, result)

    def _write_batch(
        self, batch: Sequence[str], start: int, index: int, body: str, result: WriteResult
    ) -> None:
        """One batch: send it (in parts after a 413); split refused parts until isolated."""
        step = self._lines_per_request
        # (offset within the call, lines), first part on top of the stack.
        pending: list[tuple[int, Sequence[str]]] = [
            (start + i, batch[i : i + step]) for i in reversed(range(0, len(batch), step))
        ]
        budget = self._max_split_requests
        while pending:
            offset, part = pending.pop()
            failure = self._send(
                body if len(part) == len(batch) else "\n".join(part), index, result
            )
            if failure is None:
                result.sent += len(part)
                result.batches += 1
                self.counters.sent += len(part)
                self.counters.batches += 1
                continue
            if len(part) > 1 and budget >= 2:
                budget -= 2
                half = len(part) // 2
                if failure.status == 413 and half < self._lines_per_request:
                    log.warning(
                        "InfluxDB at %s: %d lines are too large a request (HTTP 413); "
                        "sending at most %d per request from now on",
                        self.target,
                        len(part),
                        half,
                    )
                    self._lines_per_request = half
                pending.append((offset + half, part[half:]))
                pending.append((offset, part[:half]))
                result.splits += 1
                self.counters.splits += 1
                continue
            message = failure.message + (f"; {failure.fix}" if failure.fix else "")
            if len(part) > 1:
                message += (
                    f" (not isolated further: the split budget of {self._max_split_requests} "
                    f"requests for this batch is used up)"
                )
            log.warning(
                "InfluxDB at %s refused %d line(s) of batch %d: %s",
                self.target,
                len(part),
                index,
                message[:200],
            )
            result.failed.append(
                FailedBatch(index, offset, len(part), failure.status, message, part)
            )
            result.dropped += len(part)
            self._count_dropped("server_rejected", len(part))

    def _send(self, body: str, index: int, result: WriteResult) -> SendFailure | None:
        """One batch with retries: None when written, the failure when the data was refused."""
        started = self._clock()
        attempt = 0
        while True:
            try:
                self._transport.send(body)
                return None
            except SendFailure as failure:
                result.errors += 1
                self.counters.errors += 1
                by_type = self.counters.errors_by_type
                by_type[failure.error_type] = by_type.get(failure.error_type, 0) + 1
                if failure.kind == "rejected":
                    return failure
                if failure.kind == "terminal":
                    raise InfluxRefused(
                        f"InfluxDB at {self.target} refused the write ({failure.message}); "
                        f"{failure.fix}",
                        target=self.target,
                        batch_index=index,
                        sent=result.sent,
                        status=failure.status,
                        error_type=failure.error_type,
                    ) from None
                delay = self._backoff_s(attempt)
                if failure.retry_after_s is not None:
                    delay = failure.retry_after_s
                elapsed = self._clock() - started
                if elapsed + delay > self.config.max_retry_s:
                    waited = (
                        f"; the server asked to wait {delay:g}s"
                        if failure.retry_after_s is not None
                        else ""
                    )
                    message = (
                        f"InfluxDB at {self.target} did not take batch {index} within "
                        f"max_retry_s={self.config.max_retry_s:g} ({attempt + 1} attempts over "
                        f"{elapsed:.1f}s, last: {failure.message}{waited}); nothing of this batch "
                        f"was written and it is safe to write it again"
                    )
                    log.warning("%s", message)
                    raise InfluxUnavailable(
                        message,
                        target=self.target,
                        batch_index=index,
                        sent=result.sent,
                        error_type=failure.error_type,
                    ) from None
                log.info(
                    "InfluxDB at %s: %s; retry %d of batch %d in %.2fs",
                    self.target,
                    failure.message[:200],
                    attempt + 1,
                    index,
                    delay,
                )
                self._sleep(delay)
                attempt += 1
                result.retries += 1
                self.counters.retries += 1

    def _backoff_s(self, attempt: int) -> float:
        """Capped exponential backoff with equal jitter: between half and all of the cap."""
        cap_ms = min(
            self.config.backoff_max_ms, self.config.backoff_initial_ms * 2 ** min(attempt, 30)
        )
        return (cap_ms / 2 + self._rng.uniform(0, cap_ms / 2)) / 1000

    def _count_dropped(self, reason: str, count: int) -> None:
        self.counters.dropped += count
        by_reason = self.counters.dropped_by_reason
        by_reason[reason] = by_reason.get(reason, 0) + count


def open_sink(config: InfluxConfig, **kwargs: Any) -> InfluxSink:
    """Build the sink for ``config`` (no network I/O until the first write)."""
    return InfluxSink(config, **kwargs)
