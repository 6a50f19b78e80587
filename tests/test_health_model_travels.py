"""The health model travels with the signals it scored: the readers draw its bands, not the packaged ones.

A backfill scored with a custom model keeps that model beside its signals
(``<out>/health_model.yaml``); ``fleetpulse report`` and ``fleetpulse health``
read it from there. Before, the report always drew the packaged model's bands
(green from 70) whatever model had scored the signals.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetpulse.cli import main
from fleetpulse.pipeline.health.config import load_health_model
from fleetpulse.pipeline.jobs import backfill
from fleetpulse.pipeline.outputs import tables

from .test_shared_back_half import ACCOUNT, IN_PROCESS, _batches

DEFAULT = load_health_model(None)


def custom_model(tmp_path: Path) -> Path:
    text = DEFAULT.text.replace("green_min: 70", "green_min: 83").replace("yellow_min: 45", "yellow_min: 61")
    assert text != DEFAULT.text
    path = tmp_path / "strict_health.yaml"
    path.write_text(text, "utf-8")
    return path


def scored_with(tmp_path: Path, model_path: Path | None) -> Path:
    from fleetpulse.pipeline.lake.landing import LandingWriter

    lake, out = tmp_path / "lake", tmp_path / "out"
    writer = LandingWriter(lake)
    for row, _ in _batches():
        writer.add(row["topic"], row["payload"], row["received_ms"])
    writer.commit()
    config = backfill.JobConfig(lake=str(lake), out=str(out), accounts={"c1": ACCOUNT},
                                model=load_health_model(model_path))
    backfill.run(config, IN_PROCESS)
    return out


def test_the_report_and_the_account_view_use_the_model_that_scored_the_signals(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = scored_with(tmp_path, custom_model(tmp_path))
    kept = tables.read_health_model(out)
    assert (kept.bands.green_min, kept.bands.yellow_min) == (83, 61)

    assert main(["report", "--out", str(out)]) == 0
    html = (out / "index.html").read_text("utf-8")
    assert "green from 83, yellow from 61" in html
    assert "green from 70" not in html

    capsys.readouterr()
    assert main(["health", "--out", str(out), "--customer", "c1"]) == 0
    assert "Bands: green 83-100, yellow 61-83, red 0-61" in capsys.readouterr().out


def test_signals_from_before_the_model_travelled_are_read_with_the_packaged_one(tmp_path: Path) -> None:
    out = scored_with(tmp_path, None)
    (out / tables.HEALTH_MODEL_FILE).unlink()
    assert tables.read_health_model(out) == DEFAULT
