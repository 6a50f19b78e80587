"""The ``fleetpulse`` command: one entry point, a subcommand per job.

Gateway subcommands (``simulate``, ``gateway``) need only paho-mqtt and the
standard library. Pipeline subcommands need the ``pipeline`` extra; without it
they exit 1 with the exact install command instead of an ImportError.

Each subcommand lives in the module named in :data:`COMMANDS`, which exposes
``add_arguments(parser)`` (no heavy imports) and ``run(args) -> int``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from . import __version__
from .errors import ConfigError, TerminalError


@dataclass(frozen=True)
class Command:
    name: str
    module: str
    help: str
    extras: tuple[str, ...] = ()  # extras whose packages must be importable


PIPELINE = "pipeline"
DEMO = "demo"

#: extra name -> the import names it provides (checked before a command runs)
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    PIPELINE: ("apache_beam", "pyarrow", "influxdb_client", "yaml"),
    DEMO: ("amqtt",),
}

COMMANDS: tuple[Command, ...] = (
    Command("simulate", "fleetpulse.devices.simulator.cli", "simulate a seeded fleet of customers and devices"),
    Command("gateway", "fleetpulse.devices.collector.cli", "run the gateway collector"),
    Command("land", "fleetpulse.pipeline.cli.land", "land central-broker batches in the Parquet lake", (PIPELINE,)),
    Command("backfill", "fleetpulse.pipeline.cli.backfill", "batch job over the lake: rollups, signals, alerts", (PIPELINE,)),
    Command("ingest", "fleetpulse.pipeline.cli.ingest", "streaming job: central broker to the lake, InfluxDB and alerts", (PIPELINE,)),
    Command("health", "fleetpulse.pipeline.cli.health", "print the portfolio table or one account explained", (PIPELINE,)),
    Command("retention", "fleetpulse.pipeline.cli.retention", "usage retention by cohort and segment, and CSM coverage", (PIPELINE,)),
    Command("report", "fleetpulse.pipeline.cli.report", "a self-contained HTML portfolio report", (PIPELINE,)),
    Command("playbooks", "fleetpulse.pipeline.cli.playbooks", "check, dry-run or run playbooks: alerts and digital touches", (PIPELINE,)),
    Command("alerts", "fleetpulse.pipeline.cli.alerts", "list playbook episodes and failed deliveries; snooze", (PIPELINE,)),
    Command("demo", "fleetpulse.pipeline.cli.demo", "the whole path on embedded defaults", (PIPELINE, DEMO)),
)


def missing_extras(extras: Sequence[str]) -> list[str]:
    return [
        extra
        for extra in extras
        if any(importlib.util.find_spec(mod) is None for mod in EXTRA_MODULES[extra])
    ]


def install_hint(extras: Sequence[str]) -> str:
    return f"pip install 'fleetpulse[{','.join(extras)}]'"


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser; only the ``selected`` command's module is imported (fast start)."""
    parser = argparse.ArgumentParser(
        prog="fleetpulse",
        description="Device telemetry to customer-success signals.",
    )
    parser.add_argument("--version", action="version", version=f"fleetpulse {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity (default INFO)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for command in COMMANDS:
        sp = sub.add_parser(command.name, help=command.help, description=command.help)
        sp.set_defaults(_command=command)
        if command.name == selected:
            importlib.import_module(command.module).add_arguments(sp)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    by_name = {c.name: c for c in COMMANDS}
    selected = next((a for a in argv if a in by_name), None)
    if selected is not None:
        # Before parsing: without the extra, the command's own options are unknown.
        missing = missing_extras(by_name[selected].extras)
        if missing:
            print(
                f"fleetpulse {selected} needs the {' and '.join(missing)} extra: "
                f"{install_hint(missing)}",
                file=sys.stderr,
            )
            return 1
    args = build_parser(selected).parse_args(argv)
    command: Command = args._command
    logging.basicConfig(
        level=args.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    module = importlib.import_module(command.module)
    try:
        return int(module.run(args) or 0)
    except ConfigError as exc:
        # One line naming the file, the key and the fix; no traceback.
        print(f"fleetpulse {command.name}: {exc}", file=sys.stderr)
        return 2
    except TerminalError as exc:
        # A peer refused for good (a certificate that does not verify, credentials
        # refused): retrying cannot help, so stop with one line naming the setting.
        print(f"fleetpulse {command.name}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
