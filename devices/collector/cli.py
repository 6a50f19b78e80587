"""``fleetpulse gateway``: run the gateway collector, check its configuration, or build the ACL.

    fleetpulse gateway run --config /etc/fleetpulse/gateway.toml
    fleetpulse gateway check --config /etc/fleetpulse/gateway.toml
    fleetpulse gateway acl gateways/*.toml > /etc/mosquitto/acl

``run`` validates the configuration (a bad one exits 2 with one line naming
the file, the key and the fix), connects — retrying with capped exponential
backoff while a broker cannot be reached — and runs until SIGTERM or SIGINT,
then drains (every batch acknowledged upstream, bounded by
``upstream.drain_timeout_s``) and exits 0. A broker that refuses the
credentials exits 1. ``check`` prints the resolved configuration (file +
environment overrides + defaults) with the password masked. ``acl`` prints
the central broker's Mosquitto ACL for the given gateway configs (one block
per gateway confined to its own customer's topics, plus the readers); it reads
no secret and ignores the environment (see :mod:`.acl`).

Nothing heavy is imported until a subcommand runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import CollectorConfig

log = logging.getLogger(__name__)

#: Longest wait between two start attempts while a broker is unreachable.
MAX_START_BACKOFF_S = 60.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="gateway_command", metavar="ACTION", required=True)
    for name, text in (
        ("run", "run the collector until SIGTERM/SIGINT, then drain and exit"),
        ("check", "validate the configuration and print it resolved, secrets masked"),
    ):
        action = sub.add_parser(name, help=text, description=text)
        action.add_argument(
            "--config",
            required=True,
            metavar="FILE",
            help="collector TOML file (see deploy/gateway/gateway.sample.toml)",
        )
    acl_text = "print the central broker's Mosquitto ACL for these gateways' configs"
    acl = sub.add_parser("acl", help=acl_text, description=acl_text)
    acl.add_argument("configs", nargs="+", metavar="CONFIG",
                     help="the gateways' collector TOML files (one per gateway)")
    acl.add_argument("--reader", action="append", metavar="USER",
                     help="a user that may read every gateway's topics (repeatable; "
                          "default: fleetpulse-lander)")


def run(args: argparse.Namespace) -> int:
    if args.gateway_command == "acl":
        from .acl import DEFAULT_READERS, grants_from_files, render_acl

        # ConfigError naming the gateway file and key: the dispatcher prints one line, exits 2.
        print(render_acl(grants_from_files(args.configs), args.reader or DEFAULT_READERS), end="")
        return 0
    from .config import describe, load_config

    config = load_config(args.config)  # ConfigError: the dispatcher prints one line, exits 2
    if args.gateway_command == "check":
        print(describe(config), end="")
        return 0
    return serve(config)


def serve(config: CollectorConfig, *, stop: threading.Event | None = None) -> int:
    """Start (retrying), run until ``stop`` is set or a signal arrives, then drain."""
    from fleetpulse.errors import TerminalError, TransientError

    from .collector import Collector

    stop = stop or threading.Event()
    restore = _install_signal_handlers(stop)
    try:
        delay_s = 1.0
        while True:
            collector = Collector(config)
            try:
                collector.start()
                break
            except TransientError as exc:
                log.warning("%s; retrying in %.0fs", exc, delay_s)
                if stop.wait(delay_s):
                    return 0
                delay_s = min(delay_s * 2, MAX_START_BACKOFF_S)
            except TerminalError as exc:
                log.error("%s", exc)
                return 1
        while not stop.wait(1.0):
            if collector.failure is not None:
                break
        # A drain that times out loses nothing (the records stay in the spool
        # for the next start), so it is no failure; a spool that cannot be
        # written is: exit 1 and let the service manager restart us.
        collector.stop()
        return 1 if collector.failure is not None else 0
    finally:
        restore()


def _install_signal_handlers(stop: threading.Event) -> Callable[[], None]:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def handler(signum: int, frame: FrameType | None) -> None:
        log.info("received %s: draining and stopping", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}

    def restore() -> None:
        for sig, old in previous.items():
            signal.signal(sig, old)

    return restore
