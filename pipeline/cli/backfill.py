"""``fleetpulse backfill``: run the batch job over the lake.

    fleetpulse backfill --lake ./lake --accounts accounts.csv --out ./signals \\
        [--health-model health.yaml] [--from 2026-08-01] [--to 2026-09-30] [-- --runner=DataflowRunner …]

Configuration is resolved and validated before anything runs: the accounts
registry, the health model, the InfluxDB environment, the lake, the period.
Arguments after ``--`` are passed to Beam unchanged.

``--from`` / ``--to`` select records by *event* time (``ts_ms``), in whole UTC
days, both inclusive: ``--from 2026-08-01 --to 2026-08-31`` is every record
stamped from 2026-08-01T00:00:00Z up to, not including, 2026-09-01T00:00:00Z.
Either may be left out (open on that side). Only the period is written (raw
archive partitions, device hours, signals, alerts, InfluxDB points), but a
day's signals look back — trends, baselines, coverage holds, alert onsets,
time to value — so the job reads and scores the history before ``--from`` too:
all of it by default, which makes the period's outputs exactly those of a run
over the whole lake; ``--history-days N`` reads only N days before ``--from``
(at least the health model's ``warmup_days``: trends, holds and alert onsets
are then still exact; time to value and the newest fleet firmware may be
missed for accounts onboarded earlier). Nothing after ``--to`` is read.
"""

from __future__ import annotations

import argparse
import logging
import os
from datetime import date

from fleetpulse.errors import ConfigError

log = logging.getLogger(__name__)


def parse_day(flag: str, value: str | None) -> date | None:
    """A ``--from`` / ``--to`` value as a date (None when not given); ConfigError otherwise."""
    if value is None:
        return None
    try:
        if len(value) != 10:  # fromisoformat also takes 20260801 and week dates
            raise ValueError(value)
        return date.fromisoformat(value)
    except ValueError:
        raise ConfigError(
            "command line", flag, f"{value!r} is not a UTC date", "write it as YYYY-MM-DD, e.g. 2026-08-01"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--lake", required=True, help="lake root (local folder or gs://…)")
    parser.add_argument("--accounts", required=True, help="accounts registry CSV (CRM export)")
    parser.add_argument("--out", required=True, help="output folder for signals, alerts, dead letters")
    parser.add_argument("--health-model", help="health model YAML (default: the packaged model)")
    parser.add_argument("--from", dest="from_day", metavar="YYYY-MM-DD",
                        help="first event day to include (UTC, inclusive; default: the lake's first)")
    parser.add_argument("--to", dest="to_day", metavar="YYYY-MM-DD",
                        help="last event day to include (UTC, inclusive; default: the lake's last)")
    parser.add_argument("--history-days", type=int, metavar="N",
                        help="days before --from read for scoring only (default: the whole lake, exact; "
                             "at least the health model's warmup_days)")
    parser.add_argument("--hour-shards", type=int, default=1, metavar="N",
                        help="groups per event hour for dedupe, rollups and the raw archive, by device "
                             "(default 1; raise it when one hour of the fleet is too big for a worker)")
    parser.add_argument("beam_args", nargs="*", help="Beam pipeline options, after --")


def resolve(args: argparse.Namespace):  # -> JobConfig
    """Validate every input without running anything; ConfigError names what is wrong."""
    from fleetpulse.pipeline.health.config import load_health_model
    from fleetpulse.pipeline.jobs.backfill import JobConfig
    from fleetpulse.pipeline.lake.landing import landing_files
    from fleetpulse.pipeline.outputs.influx import InfluxConfig
    from fleetpulse.schemas.accounts import load_accounts

    from_day, to_day = parse_day("--from", args.from_day), parse_day("--to", args.to_day)
    if from_day and to_day and to_day < from_day:
        raise ConfigError("command line", "--to", f"{to_day} is before --from {from_day}",
                          "swap the dates (both are inclusive)")
    if "://" not in args.lake and not landing_files(args.lake):
        raise ConfigError(
            "command line", "--lake", f"{args.lake} has no landing files (landing/dt=*/part-*.parquet)",
            "point --lake at the folder `fleetpulse land` writes to",
        )
    if args.hour_shards < 1:
        raise ConfigError("command line", "--hour-shards", f"{args.hour_shards} is not a positive number",
                          "use 1 (the default) or more")
    model = load_health_model(args.health_model)
    history_days = args.history_days
    if history_days is not None:
        if from_day is None:
            raise ConfigError("command line", "--history-days", "is given without --from",
                              "add --from YYYY-MM-DD, or leave --history-days out")
        if history_days < model.warmup_days:
            raise ConfigError(
                "command line", "--history-days",
                f"{history_days} is shorter than the health model's warmup_days ({model.warmup_days}): "
                "trends and holds at the start of the period would differ from a full run",
                f"use at least {model.warmup_days}, or leave it out to read the whole lake",
            )
    return JobConfig(
        lake=args.lake,
        out=args.out,
        accounts=load_accounts(args.accounts),
        model=model,
        influx=InfluxConfig.from_env(os.environ),
        from_day=from_day,
        to_day=to_day,
        history_days=history_days,
        hour_shards=args.hour_shards,
    )


def run(args: argparse.Namespace) -> int:
    from fleetpulse.pipeline.jobs import backfill
    from fleetpulse.pipeline.jobs.metrics import counters
    from fleetpulse.pipeline.outputs import tables as outputs
    from fleetpulse.pipeline.report.text import render_portfolio

    config = resolve(args)
    result = backfill.run(config, list(args.beam_args))
    for key, value in counters(result).items():
        log.info("counter %s = %d", key, value)
    if "://" not in config.out:
        signals = outputs.read_signals(config.out)
        print(render_portfolio(outputs.latest_per_customer(signals), outputs.read_alerts(config.out)))
    return 0
