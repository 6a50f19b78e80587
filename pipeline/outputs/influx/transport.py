"""How a batch of lines reaches InfluxDB: one :class:`Transport` per wire protocol.

Both send one request per batch and turn every failure into a
:class:`SendFailure` whose ``kind`` tells the sink what to do with it:

* **v2** (:class:`V2ClientTransport`; InfluxDB 2.x, 3.x, Cloud, and servers
  that speak ``/api/v2/write`` such as VictoriaMetrics): influxdb-client's
  ``WriteApi`` in SYNCHRONOUS mode (url, token, org, bucket), gzip, precision
  seconds. The client retries only in its batching mode and its ``flush()``
  does nothing, so batching and retries are the sink's, around the
  synchronous call, the same way for both protocols.
* **v1** (:class:`V1HttpTransport`; InfluxDB 1.x): ``POST
  /write?db=&rp=&precision=s`` with a gzip body and optional basic auth,
  through :mod:`urllib.request`. Standard library on purpose: one request
  carries up to ``batch_size`` (5000) points, so a connection per request
  costs nothing measurable, and it adds no dependency (``requests`` is only a
  transitive dependency of Beam, not one of ours).

:func:`classify_status`: connection errors, timeouts, 408/429/5xx are
``transient`` (the sink retries them, honouring ``Retry-After``, read by
:func:`parse_retry_after`); 400/422 and 413 are ``rejected`` (the data, not
the server: the sink splits the batch); 401/403/404, redirects and other 4xx
are ``terminal``, with a ``fix`` saying what to check. Credentials never
appear in a message.
"""

from __future__ import annotations

import base64
import email.utils
import gzip
import http.client
import json
import logging
import math
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from datetime import UTC
from typing import Any, Protocol

from .config import ENV_NAMES, InfluxConfig

log = logging.getLogger(__name__)

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

# Level 1: 5,000 device lines shrink ~22x at ~0.1 s per 100k lines; level 9 gets
# ~42x at 7x the CPU, which the sink's single thread would spend instead of encoding.
_GZIP_LEVEL = 1
_MAX_MESSAGE_CHARS = 1000


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
