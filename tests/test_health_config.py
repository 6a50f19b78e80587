"""The health model config: the packaged default, scoring functions, and errors that name file and key."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import pytest

from fleetpulse.errors import ConfigError
from fleetpulse.pipeline.health.config import Scoring, Threshold, load_health_model

MINIMAL = """
components:
  adoption:
    weight: 2
    linear: {zero_at: 0, full_at: 1}
  reliability:
    weight: 1
    thresholds:
      - {at_most: 0.1, score: 100}
      - {score: 20}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "health.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_packaged_default_is_package_data_and_loads() -> None:
    assert (resources.files("fleetpulse.pipeline.health") / "default_health.yaml").is_file()
    model = load_health_model(None)
    assert model.source.endswith("default_health.yaml")
    assert [c.name for c in model.components] == [
        "adoption", "engagement", "breadth", "reliability", "firmware", "nps"]
    assert model.usage_quantity == "runtime_s"
    assert (model.window_days, model.trend_days, model.baseline_days) == (7, 7, 28)
    assert model.coverage.low_coverage_below == 0.6
    assert model.alerts.usage_drop_pct == 40
    assert model.component("nps") is not None and model.component("nps").weight == 0
    assert [model.bands.band(h) for h in (70, 69.9, 45, 44.9)] == ["green", "yellow", "yellow", "red"]


def test_segment_override_replaces_only_the_named_weights(tmp_path: Path) -> None:
    model = load_health_model(write(tmp_path, MINIMAL + "segments:\n  smb:\n    weights: {adoption: 0.5}\n"))
    assert model.weights_for("smb") == {"adoption": 0.5, "reliability": 1}
    assert model.weights_for("enterprise") == {"adoption": 2, "reliability": 1}
    assert model.weights_for("unknown") == {"adoption": 2, "reliability": 1}


def test_stage_profile_wins_over_the_segment_profile(tmp_path: Path) -> None:
    text = MINIMAL + (
        "segments:\n  smb:\n    weights: {adoption: 0.5}\n"
        "stages:\n  onboarding:\n    weights: {adoption: 3}\n"
    )
    model = load_health_model(write(tmp_path, text))
    assert model.weights_for("smb", "onboarding") == {"adoption": 3, "reliability": 1}
    assert model.weights_for("smb", "mature") == {"adoption": 0.5, "reliability": 1}
    assert model.weights_for("enterprise") == {"adoption": 2, "reliability": 1}


def test_packaged_default_weighs_adoption_up_during_onboarding() -> None:
    model = load_health_model(None)
    assert model.weights_for("smb", "onboarding")["adoption"] > model.weights_for("smb")["adoption"]


def test_minimal_file_takes_defaults_for_everything_else(tmp_path: Path) -> None:
    model = load_health_model(write(tmp_path, MINIMAL))
    assert [c.name for c in model.components] == ["adoption", "reliability"]
    assert model.bands.green_min == 70 and model.lifecycle.onboarding_days == 90
    assert model.source == str(tmp_path / "health.yaml")


def test_linear_scoring_clamps_and_runs_either_way() -> None:
    rising = Scoring("linear", zero_at=0.5, full_at=1.0)
    assert [rising.score(v) for v in (0.2, 0.5, 0.75, 1.0, 1.7)] == [0, 0, 50, 100, 100]
    falling = Scoring("linear", zero_at=1.0, full_at=0.0)  # lower is better
    assert falling.score(0.25) == 75


def test_threshold_scoring_first_match_wins_and_no_match_is_zero() -> None:
    rows = (Threshold(100, at_most=0.05), Threshold(40, at_most=0.5))
    scoring = Scoring("thresholds", thresholds=rows)
    assert [scoring.score(v) for v in (0.0, 0.05, 0.3, 0.9)] == [100, 100, 40, 0]
    at_least = Scoring("thresholds", thresholds=(Threshold(100, at_least=0.9), Threshold(10)))
    assert [at_least.score(v) for v in (0.95, 0.1)] == [100, 10]


@pytest.mark.parametrize(
    ("text", "key", "words"),
    [
        (MINIMAL.replace("weight: 2", "wieght: 2"), "components.adoption.wieght", "unknown key"),
        (MINIMAL + "colour: blue\n", "colour", "unknown key"),
        (MINIMAL.replace("adoption:", "adopshun:"), "components.adopshun", "unknown key"),
        (MINIMAL.replace("weight: 2", "weight: 0").replace("weight: 1", "weight: 0"),
         "components.adoption.weight", "sum to 0"),
        (MINIMAL.replace("weight: 2", "weight: -1"), "components.adoption.weight", "out of range"),
        (MINIMAL.replace("weight: 2", "weight: lots"), "components.adoption.weight", "not a number"),
        (MINIMAL + "bands: {green_min: 40, yellow_min: 60}\n", "bands.yellow_min", "not below green_min"),
        (MINIMAL + "segments:\n  midmarket:\n    weights: {adoption: 1}\n", "segments.midmarket", "unknown key"),
        (MINIMAL + "segments:\n  smb:\n    weights: {adoption: 0, reliability: 0}\n",
         "segments.smb.weights", "sum to 0"),
        (MINIMAL + "segments:\n  smb:\n    weights: {firmware: 1}\n", "segments.smb.weights.firmware",
         "unknown key"),
        (MINIMAL.replace("full_at: 1", "full_at: 0"), "components.adoption.linear.full_at", "equals zero_at"),
        (MINIMAL.replace("      - {score: 20}", "      - {score: 20}\n      - {at_most: 1, score: 5}"),
         "components.reliability.thresholds[1]", "rows after it never apply"),
        (MINIMAL + "lifecycle: {onboarding_days: 10.5}\n", "lifecycle.onboarding_days", "whole number"),
        (MINIMAL + "coverage: {hold_components: [reliability]}\n", "coverage.hold_components", "usage components"),
        (MINIMAL + "alerts: {usage_drop_pct: 0}\n", "alerts.usage_drop_pct", "out of range"),
        (MINIMAL + "baseline_days: 5\nbaseline_min_days: 6\n", "baseline_min_days", "longer than"),
        ("components: [adoption]\n", "components", "expected a mapping"),
        ("components:\n  adoption: {weight: 1\n", "line 3", "not valid YAML"),
    ],
)
def test_config_errors_name_the_file_and_the_key(tmp_path: Path, text: str, key: str, words: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_health_model(path)
    error = caught.value
    assert error.source == str(path)
    assert error.key == key
    assert words in error.problem
    assert error.fix
    assert str(path) in str(error) and key in str(error)


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_health_model(tmp_path / "nope.yaml")
    assert caught.value.source == str(tmp_path / "nope.yaml")
    assert "cannot read" in caught.value.problem
