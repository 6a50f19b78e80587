"""``fleetpulse land``: run the central-side lander until SIGTERM/SIGINT.

    fleetpulse land --broker mqtt.example.com:8883 --tls --ca-file ca.pem --lake ./lake

The password comes from ``FLEETPULSE_CENTRAL_PASSWORD`` (never a flag).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from pathlib import Path

from fleetpulse import mqtt_tls
from fleetpulse.errors import ConfigError

log = logging.getLogger(__name__)


def parse_hostport(value: str, *, key: str, source: str = "command line") -> tuple[str, int]:
    """``host:port`` → (host, port), or a ConfigError naming ``key``."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(source, key, f"{value!r} is not host:port", "write it like 127.0.0.1:1883")
    return host, int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", default="127.0.0.1:1883", help="central broker host:port")
    parser.add_argument("--lake", required=True, type=Path, help="lake root folder")
    parser.add_argument("--client-id", default="fleetpulse-lander", help="fixed MQTT client id (persistent session)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS (server certificate verified)")
    parser.add_argument("--ca-file", help="CA bundle to verify the broker with (default: system CAs)")
    parser.add_argument("--username", help="MQTT username; password from FLEETPULSE_CENTRAL_PASSWORD")
    parser.add_argument("--commit-interval-ms", type=int, default=500)
    parser.add_argument("--commit-max-messages", type=int, default=100)
    parser.add_argument("--status-only", action="store_true",
                        help="land only the gateways' status messages (beside `fleetpulse ingest`, "
                             "which lands the batches itself)")


def build_config(args: argparse.Namespace):  # -> LanderConfig (import kept lazy)
    from fleetpulse.pipeline.lake.lander import LanderConfig

    host, port = parse_hostport(args.broker, key="--broker")
    if args.commit_interval_ms <= 0 or args.commit_max_messages <= 0:
        raise ConfigError("command line", "--commit-interval-ms/--commit-max-messages",
                          "must be positive", "pass values above 0")
    return LanderConfig(
        lake=args.lake,
        host=host,
        port=port,
        client_id=args.client_id,
        tls=args.tls,
        ca_file=args.ca_file,
        username=args.username,
        password=os.environ.get("FLEETPULSE_CENTRAL_PASSWORD"),
        commit_interval_ms=args.commit_interval_ms,
        commit_max_messages=args.commit_max_messages,
        topics=("gateway_status",) if args.status_only else ("gateway_batches", "gateway_status"),
    )


def run(args: argparse.Namespace) -> int:
    from fleetpulse.pipeline.lake.lander import Lander

    config = build_config(args)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    lander = Lander(config)
    # An unreachable broker is waited for; a certificate that does not verify
    # (mqtt_tls.TlsRefused) ends the command with one line, exit 1.
    if not mqtt_tls.until_reachable(lander.start, stop):
        return 0
    log.info("landing into %s", config.lake)
    last = time.monotonic()
    while not stop.wait(1.0):
        if time.monotonic() - last >= 60:
            log.info("lander counters: %s", lander.snapshot())
            last = time.monotonic()
    lander.stop()
    return 0
