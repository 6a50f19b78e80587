"""``fleetpulse demo``: the whole path on embedded defaults (the parts run in :mod:`fleetpulse.pipeline.demo`).

    two MQTT brokers (Debian's Mosquitto if installed, else amqtt in process)
      ▲ simulator: a seeded fleet publishes device telemetry to the gateway-local broker
      │ gateway collectors (one per simulated gateway): validate, spool, stamp, batch, forward
      ▼ fleetpulse ingest (streaming Beam job): central broker → <out>/lake (landing, records),
        InfluxDB fp_device_hourly when INFLUX_URL is set; a lander keeps the gateways' status
        (without Mosquitto: the lander lands the batches too)
    Beam batch job over the same lake: rollups → customer signals → <out>/signals
    → the portfolio table and the alerts raised; InfluxDB too when INFLUX_URL is set.
    playbooks (deploy/playbooks/lifecycle.yaml) → alerts and digital touches, captured to <out>/playbooks/sent.

Every run starts from an empty lake, so the same seed gives the same table.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, default=Path("fleetpulse-demo"), help="working folder (default ./fleetpulse-demo)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--customers", type=int, default=24)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--malformed-per-day", type=int, default=2,
                        help="deliberately malformed device messages per day (dead-lettered at the gateway)")
    parser.add_argument("--no-progress", action="store_true", help="plain log lines instead of a progress display")
    parser.add_argument("--broker", choices=("auto", "mosquitto", "amqtt"), default="auto",
                        help="auto (default): Debian's mosquitto if installed, which runs the streaming "
                             "ingest; amqtt: in-process brokers and the lander, no server needed")


def run(args: argparse.Namespace) -> int:
    root = logging.getLogger()
    if not args.no_progress and root.level > logging.DEBUG:
        # The progress display is the demo's output: keep the 29 collectors' and
        # Beam's INFO lines (and Beam's import-time notes on optional GCP
        # libraries) out of it. --log-level DEBUG or --no-progress show them.
        root.setLevel(logging.ERROR)
    from fleetpulse.pipeline.demo.orchestrate import DemoConfig, run_demo

    if root.level == logging.ERROR:
        root.setLevel(logging.WARNING)

    result = run_demo(
        DemoConfig(
            out=args.out,
            seed=args.seed,
            customers=args.customers,
            days=args.days,
            malformed_per_day=args.malformed_per_day,
            progress=not args.no_progress,
            broker=args.broker,
        )
    )
    print(result.report)
    return 0
