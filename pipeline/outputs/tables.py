"""What the jobs write, and how to read it back.

    <out>/signals/part-*.parquet        one row per customer and day (DailySignal)
    <out>/device_hourly/part-*.parquet  one row per device and hour (DeviceHour)
    <out>/alerts.jsonl                  alerts raised, one JSON object per line
    <out>/dead_letters.jsonl            records and messages refused, with reasons
    <out>/health_model.yaml             the health model the signals were scored with

The streaming job writes the same tables as per-bundle parts
(``part-p<pane>-<hash>.parquet``, ``alerts/part-*.jsonl``,
``dead_letters/part-*.jsonl``; see :mod:`.bundles`), and the readers here read
either layout.

Rows are flat Parquet columns (components as a list of structs), so CS Ops can
query them with any Parquet tool; :func:`read_signals` turns them back into
:class:`~fleetpulse.pipeline.model.DailySignal` for the reports.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from fleetpulse.pipeline.health.config import HealthModel, load_health_model
from fleetpulse.pipeline.lake.storage import commit_bytes, join
from fleetpulse.pipeline.model import SIGNAL_SCHEMA, Alert, Component, DailySignal, DeviceHour


def signal_row(signal: DailySignal) -> dict[str, Any]:
    row = dataclasses.asdict(signal)
    row["components"] = [dataclasses.asdict(c) for c in signal.components]
    return row


def signal_from_row(row: dict[str, Any]) -> DailySignal:
    values = dict(row)
    values["components"] = tuple(Component(**c) for c in row["components"] or ())
    return DailySignal(**values)


def device_hour_row(hour: DeviceHour) -> dict[str, Any]:
    row = dataclasses.asdict(hour)
    for key in ("usage", "features", "error_fw"):
        row[key] = sorted(row[key].items())
    row["seq_spans"] = [
        {"boot": boot, "min_seq": low, "max_seq": high, "records": count}
        for boot, (low, high, count) in sorted(hour.seq_spans.items())
    ]
    return row


def alert_json(alert: Alert) -> str:
    return json.dumps(dataclasses.asdict(alert), sort_keys=True, ensure_ascii=False)


def alert_from_json(line: str) -> Alert:
    return Alert(**json.loads(line))


_PANE = re.compile(r"part-p(\d+)-")


def pane_of(path: Path) -> int:
    """The pane index in a streaming part's name (``part-p<pane>-<hash>``); 0 for a batch file."""
    found = _PANE.match(path.name)
    return int(found.group(1)) if found else 0


def read_signals(out: str | Path) -> list[DailySignal]:
    """Every customer-day's signal under ``<out>/signals``, sorted by customer and day.

    The batch job writes each customer-day once; the streaming job writes a
    part per firing (``part-p<pane>-…``), each restating the history: of a
    customer-day's versions the one of the latest pane is kept.
    """
    folder = Path(out) / "signals"
    latest: dict[tuple[str, str], tuple[int, DailySignal]] = {}
    for path in sorted(folder.glob("part-*.parquet")):
        pane = pane_of(path)
        for row in pq.read_table(path, schema=SIGNAL_SCHEMA).to_pylist():
            key = (row["customer_id"], row["day"])
            if key not in latest or pane > latest[key][0]:
                latest[key] = (pane, signal_from_row(row))
    return [signal for _, signal in sorted(latest.values(), key=lambda ps: (ps[1].customer_id, ps[1].day))]


def read_alerts(out: str | Path) -> list[Alert]:
    """The alerts in ``<out>/alerts.jsonl`` (batch) or ``<out>/alerts/part-*.jsonl`` (streaming; an
    alert a later firing raised again is read once)."""
    root = Path(out)
    paths = [root / "alerts.jsonl", *sorted((root / "alerts").glob("part-*.jsonl"))]
    lines = {line for path in paths if path.is_file() for line in path.read_text("utf-8").splitlines()}
    alerts = [alert_from_json(line) for line in lines if line.strip()]
    return sorted(alerts, key=lambda a: (a.day, a.customer_id, a.kind, a.title))


def latest_per_customer(signals: list[DailySignal]) -> list[DailySignal]:
    latest: dict[str, DailySignal] = {}
    for signal in signals:
        if signal.customer_id not in latest or signal.day > latest[signal.customer_id].day:
            latest[signal.customer_id] = signal
    return list(latest.values())


#: the health model a job scored with, written beside its signals (its YAML, as given)
HEALTH_MODEL_FILE = "health_model.yaml"


def write_health_model(out: str, model: HealthModel) -> str:
    """Keep ``model`` beside the signals under ``out`` (local or ``gs://``), atomically; returns the path."""
    path = join(out, HEALTH_MODEL_FILE)
    commit_bytes(path, model.text.encode("utf-8"))
    return path


def read_health_model(out: str | Path) -> HealthModel:
    """The health model the signals under ``out`` were scored with: the one the job kept beside
    them, else (outputs of a job before models travelled) the packaged default."""
    path = Path(out) / HEALTH_MODEL_FILE
    return load_health_model(path if path.is_file() else None)


def dead_letter_json(row: dict[str, Any]) -> str:
    """A dead-letter row as one JSON line (non-JSON values such as bytes as their repr)."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False, default=repr)
