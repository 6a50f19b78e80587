"""``fleetpulse simulate``: write a seeded fleet's registry and configs, then its telemetry.

Examples::

    fleetpulse simulate --to-files                      # ./fleetpulse-sim/telemetry/*.jsonl
    fleetpulse simulate --broker 127.0.0.1:1883 --seconds-per-day 2

Always writes ``accounts.csv``, ``truth.json`` and ``gateways/*.toml`` under
``--out``; then publishes over MQTT (``--broker``) or writes JSONL files
(``--to-files``, the default when no broker is given). The same ``--seed`` and
arguments give byte-identical outputs.
"""

from __future__ import annotations

import argparse
import logging
import sys
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING

from fleetpulse.errors import ConfigError, TerminalError, TransientError

if TYPE_CHECKING:
    from .simulation import SimulationConfig

log = logging.getLogger(__name__)

SOURCE = "fleetpulse simulate arguments"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seed", type=int, default=7, help="random seed (default 7)")
    parser.add_argument("--customers", type=int, default=24, help="number of accounts (default 24)")
    parser.add_argument("--days", type=int, default=60, help="simulated days (default 60)")
    parser.add_argument(
        "--start-date",
        default="2026-08-01",
        help="first simulated day, YYYY-MM-DD (default 2026-08-01, fixed so runs repeat)",
    )
    parser.add_argument(
        "--out", default="./fleetpulse-sim", help="output folder (default ./fleetpulse-sim)"
    )
    target = parser.add_mutually_exclusive_group()
    target.add_argument(
        "--broker",
        metavar="HOST:PORT",
        help="publish over MQTT to this broker (also written into the gateway configs)",
    )
    target.add_argument(
        "--to-files",
        action="store_true",
        help="write telemetry/<gateway_id>.jsonl under --out (the default without --broker)",
    )
    parser.add_argument(
        "--seconds-per-day",
        type=float,
        default=0.0,
        help="wall-clock seconds per simulated day (default 0 = as fast as possible)",
    )
    parser.add_argument(
        "--malformed-per-day",
        type=int,
        default=0,
        help="deliberately malformed device messages to plant per day (default 0)",
    )
    parser.add_argument(
        "--registry-only",
        action="store_true",
        help="write accounts.csv, truth.json and gateways/*.toml, send no telemetry "
        "(start the collectors from these configs, then run again without this flag)",
    )


def parse_broker(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``[v6]:PORT``) into (host, port); ConfigError naming the fix."""
    host, sep, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ConfigError(
            SOURCE, "--broker", f"{text!r} is not HOST:PORT", "give e.g. --broker 127.0.0.1:1883"
        )
    return host, int(port_text)


def _config(args: argparse.Namespace) -> SimulationConfig:
    from .simulation import SimulationConfig

    try:
        start = date.fromisoformat(args.start_date)
    except ValueError:
        raise ConfigError(
            SOURCE, "--start-date", f"{args.start_date!r} is not a date", "use YYYY-MM-DD, e.g. 2026-08-01"
        ) from None
    checks = (
        ("--customers", args.customers >= 1, "at least 1"),
        ("--days", args.days >= 1, "at least 1"),
        ("--malformed-per-day", args.malformed_per_day >= 0, "0 or more"),
        ("--seconds-per-day", args.seconds_per_day >= 0, "0 or more"),
    )
    for key, ok, need in checks:
        if not ok:
            value = getattr(args, key.lstrip("-").replace("-", "_"))
            raise ConfigError(SOURCE, key, f"{value} is out of range", f"give a value {need}")
    return SimulationConfig(
        seed=args.seed,
        customers=args.customers,
        days=args.days,
        start_date=start,
        malformed_per_day=args.malformed_per_day,
        seconds_per_day=args.seconds_per_day,
    )


def run(args: argparse.Namespace) -> int:
    from .publish import FileSink, MqttSink, Sink
    from .registry import BrokerSettings, write_outputs
    from .simulation import simulate

    config = _config(args)
    broker = BrokerSettings(*parse_broker(args.broker)) if args.broker else BrokerSettings()
    fleet = config.build_fleet()
    today = datetime.now(UTC).date()
    if fleet.end_date >= today:
        # Receivers bound event time by their clock (contract: at most 5 min ahead).
        log.warning(
            "the simulated span ends %s, not before today (%s): collectors will dead-letter "
            "records from the future as event_time_in_future; pick an earlier --start-date",
            fleet.end_date,
            today,
        )
    outputs = write_outputs(fleet, args.out, broker)
    if args.registry_only:
        print(f"wrote {outputs.accounts}, {outputs.truth} and {len(outputs.gateway_configs)} gateway configs")
        return 0
    sink: Sink
    if args.broker:
        sink = MqttSink(broker.host, broker.port, client_id=f"fleetpulse-simulator-{config.seed}")
        target = f"MQTT broker {broker.host}:{broker.port} (topics sim/<gateway_id>/...)"
    else:
        sink = FileSink(args.out)
        target = f"{sink.directory}/"

    def progress(done: int, total: int) -> None:
        if done == total or done % 10 == 0:
            log.info("simulated day %d of %d", done, total)

    try:
        summary = simulate(config, sink, progress, fleet=fleet)
    except (TransientError, TerminalError) as exc:
        print(f"fleetpulse simulate: {exc}", file=sys.stderr)
        return 1
    devices = len(fleet.devices)
    print(
        f"simulated {len(fleet.customers)} customers, {len(fleet.gateways)} gateways, "
        f"{devices} devices over {config.days} days from {config.start_date} (seed {config.seed})"
    )
    print(
        f"sent {summary.messages_sent} messages to {target}: {summary.records_sent} valid records, "
        f"{summary.malformed_messages} malformed messages"
    )
    print(
        f"withheld {summary.messages_withheld} messages ({summary.records_withheld} records) "
        "of gateways planted offline"
    )
    print(
        f"wrote {outputs.accounts}, {outputs.truth}, "
        f"{len(outputs.gateway_configs)} gateway configs in {outputs.accounts.parent / 'gateways'}/"
    )
    return 0
