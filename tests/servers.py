"""Real servers for integration tests: Mosquitto, InfluxDB 1.x, VictoriaMetrics.

Each starts the Debian binary on a free loopback port with its own temporary
directory, waits until it answers (polling a condition, never sleeping a fixed
time) and is stopped afterwards. `.ci/run` installs the packages.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0, what: str = "condition") -> None:
    """Poll ``condition`` until it is true; fail the test with ``what`` on timeout."""
    deadline = time.monotonic() + timeout_s
    delay = 0.01
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return 200 <= resp.status < 300
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def require_binary(name: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if os.path.exists(f"/usr/sbin/{name}") else None)
    if path is None:
        pytest.fail(f"{name} is not installed: run .ci/run, or apt-get install the Debian package")
    return path


@dataclass
class Server:
    """A running server process; ``stop()``/``start()`` let tests take it down and back."""

    name: str
    argv: list[str]
    port: int
    workdir: Path
    ready: Callable[[], bool]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> Server:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.workdir)
        log.close()
        try:
            wait_until(
                lambda: self.proc is not None and self.proc.poll() is None and self.ready(),
                timeout_s=30,
                what=f"{self.name} on port {self.port}",
            )
        except AssertionError:
            raise AssertionError(
                f"{self.name} did not start; log:\n{self.log_path.read_text(errors='replace')[-3000:]}"
            ) from None
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def mosquitto(workdir: Path, port: int | None = None) -> Server:
    """A Mosquitto broker with persistence in ``workdir`` and no queue limit surprises."""
    port = port or free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(
        "\n".join(
            [
                f"listener {port} 127.0.0.1",
                "allow_anonymous true",
                "persistence true",
                f"persistence_location {workdir}/",
                "max_queued_messages 0",
                "max_inflight_messages 100",
                "log_dest stdout",
                "log_type error",
                "log_type warning",
                "user root" if os.geteuid() == 0 else "",
            ]
        )
        + "\n"
    )
    return Server(
        "mosquitto",
        [require_binary("mosquitto"), "-c", str(conf)],
        port,
        workdir,
        ready=lambda: _port_open(port),
    )


def influxdb_v1(workdir: Path) -> Server:
    """InfluxDB 1.x (Debian's influxd) with HTTP on a free port, auth off."""
    port, rpc = free_port(), free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "influxdb.conf"
    conf.write_text(
        f"""reporting-disabled = true
bind-address = "127.0.0.1:{rpc}"
[meta]
  dir = "{workdir}/meta"
[data]
  dir = "{workdir}/data"
  wal-dir = "{workdir}/wal"
  query-log-enabled = false
[http]
  bind-address = "127.0.0.1:{port}"
  log-enabled = false
  max-body-size = 0
[monitor]
  store-enabled = false
"""
    )
    return Server(
        "influxd",
        [require_binary("influxd"), "-config", str(conf)],
        port,
        workdir,
        ready=lambda: _http_ok(f"http://127.0.0.1:{port}/ping"),
    )


def victoria_metrics(workdir: Path) -> Server:
    """VictoriaMetrics: a real server speaking InfluxDB's /api/v2/write."""
    port = free_port()
    workdir.mkdir(parents=True, exist_ok=True)
    return Server(
        "victoria-metrics",
        [
            require_binary("victoria-metrics"),
            f"-storageDataPath={workdir}/data",
            f"-httpListenAddr=127.0.0.1:{port}",
            # Simulated fleets live in the past; the default retention (1 month)
            # would silently drop their samples.
            "-retentionPeriod=100y",
            "-search.disableCache",
            "-search.latencyOffset=0s",
            "-loggerLevel=ERROR",
        ],
        port,
        workdir,
        ready=lambda: _http_ok(f"http://127.0.0.1:{port}/health"),
    )


class LocalHTTPServer:
    """A real HTTP(S) server on a free loopback port, serving ``handler`` in a thread.

    For tests of HTTP clients against servers FleetPulse does not ship (status
    codes, size limits, TLS failures); ``close()`` stops it.
    """

    def __init__(self, handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None) -> None:
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        scheme = "https" if tls is not None else "http"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


def mosquitto_with(workdir: Path, conf_text: str, port: int) -> Server:
    """A Mosquitto broker running ``conf_text`` (which must listen on ``port``), not yet started.

    For tests of broker configurations (TLS listeners, password files, ACLs);
    ``user root`` is added when the tests run as root, which Mosquitto otherwise refuses.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    conf = workdir / "mosquitto.conf"
    conf.write_text(conf_text.rstrip("\n") + "\n" + ("user root\n" if os.geteuid() == 0 else ""))
    return Server(
        "mosquitto",
        [require_binary("mosquitto"), "-c", str(conf)],
        port,
        workdir,
        ready=lambda: _port_open(port),
    )
