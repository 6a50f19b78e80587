"""``fleetpulse report``: write the self-contained HTML portfolio report.

    fleetpulse report --out ./signals                        # reads ./signals, writes ./signals/index.html
    fleetpulse report --out ./site --signals ./signals --title "EMEA portfolio"
    fleetpulse report --out ./site --signals ./signals --retention retention.json

``--signals`` is the folder ``fleetpulse backfill --out`` wrote (default: the
``--out`` folder). ``--retention`` is the file ``fleetpulse retention --json``
wrote; without it the report has no retention section. Prints the report's path.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from fleetpulse.errors import ConfigError

REPORT_NAME = "index.html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help=f"folder to write {REPORT_NAME} into (created if missing)")
    parser.add_argument("--signals", help="the folder `fleetpulse backfill --out` wrote (default: --out)")
    parser.add_argument("--title", default="FleetPulse customer health", help="the report's title")
    parser.add_argument("--retention", help="JSON file written by `fleetpulse retention --json` (optional)")


def read_retention(path: str) -> Any:
    """The retention file as parsed JSON (an object with ``retention`` rows), else a ConfigError naming --retention."""
    try:
        data = json.loads(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise ConfigError("command line", "--retention", f"cannot read {path} ({exc.strerror})",
                          "pass the file `fleetpulse retention --json FILE` wrote, or leave --retention out") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError("command line", "--retention", f"{path} is not JSON ({exc})",
                          "pass the file `fleetpulse retention --json FILE` wrote") from None
    if not isinstance(data, dict) or not isinstance(data.get("retention"), list):
        raise ConfigError("command line", "--retention", f"{path} is not a retention report (no 'retention' rows)",
                          "pass the file `fleetpulse retention --json FILE` wrote")
    return data


def run(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from fleetpulse.pipeline.outputs import tables as outputs
    from fleetpulse.pipeline.report.html import render_html

    key = "--signals" if args.signals else "--out"
    source = Path(args.signals or args.out)
    signals = outputs.read_signals(source)
    if not signals:
        raise ConfigError("command line", key, f"no signals under {source / 'signals'}",
                          "pass --signals with the folder `fleetpulse backfill --out` wrote "
                          "(run `fleetpulse backfill` or `make demo` first)")
    retention = read_retention(args.retention) if args.retention else None
    # The bands drawn are those of the model that scored the signals, kept beside them.
    text = render_html(signals, outputs.read_alerts(source), title=args.title,
                       generated_at=datetime.now(UTC), retention=retention,
                       model=outputs.read_health_model(source))
    target = Path(args.out) / REPORT_NAME
    # Write then rename: a browser reloading the report never sees half a file.
    partial = target.with_name(f".{REPORT_NAME}.partial")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        partial.write_text(text, encoding="utf-8")
        os.replace(partial, target)
    except OSError as exc:
        raise ConfigError("command line", "--out", f"cannot write {target} ({exc.strerror})",
                          "pass a folder you can write to") from None
    print(target)
    return 0
