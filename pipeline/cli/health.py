"""``fleetpulse health``: the portfolio table, or one account explained.

    fleetpulse health --out ./signals                  # every account, worst first, and the alerts
    fleetpulse health --out ./signals --customer c-0007
"""

from __future__ import annotations

import argparse

from fleetpulse.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="the folder `fleetpulse backfill --out` wrote")
    parser.add_argument("--customer", help="explain one account instead of listing the portfolio")


def run(args: argparse.Namespace) -> int:
    from fleetpulse.pipeline.outputs import tables as outputs
    from fleetpulse.pipeline.report.text import render_account, render_portfolio

    signals = outputs.read_signals(args.out)
    if not signals:
        raise ConfigError("command line", "--out", f"no signals under {args.out}/signals",
                          "run `fleetpulse backfill` (or `make demo`) first")
    if args.customer:
        history = [s for s in signals if s.customer_id == args.customer]
        if not history:
            known = ", ".join(sorted({s.customer_id for s in signals})[:10])
            raise ConfigError("command line", "--customer", f"{args.customer!r} has no signals",
                              f"use one of: {known} …")
        print(render_account(history, outputs.read_health_model(args.out)))
    else:
        print(render_portfolio(outputs.latest_per_customer(signals), outputs.read_alerts(args.out)))
    return 0
