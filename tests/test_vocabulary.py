"""One vocabulary: bands, stages, severities and alert kinds are declared once, in pipeline/model.py.

The declared-once check reads the source of every package (pipeline, schemas,
devices) with :mod:`ast`: outside ``pipeline/model.py`` no tuple, list or set
literal spells out a whole vocabulary, and no dict literal maps its words to
integers (a rank table). Subsets chosen for a reason (the stages drawn in red)
and maps from a word to something else (a band's colour) are allowed; the
colour maps are checked to cover every band instead.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import pytest

from fleetpulse.errors import ConfigError
from fleetpulse.pipeline.health.config import Bands, load_health_model
from fleetpulse.pipeline.health.score import score_account
from fleetpulse.pipeline.model import (
    ALERT_KINDS,
    BANDS,
    PROFILE_STAGES,
    SEVERITIES,
    STAGES,
    band_rank,
    most_severe_first,
    severity_rank,
    worst_band_first,
)
from fleetpulse.pipeline.report import charts

from .test_health_score import START, account, cday, fleet, two_gateway_days
from .test_playbooks_support import book, one

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "schemas", "devices")
HOME = Path("pipeline/model.py")
VOCABULARIES = {"BANDS": BANDS, "STAGES": STAGES, "SEVERITIES": SEVERITIES, "ALERT_KINDS": ALERT_KINDS}
def _strings(nodes: Sequence[ast.expr | None]) -> list[str]:
    return [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def redeclarations(path: Path) -> list[tuple[int, str]]:
    """(line, vocabulary) for each literal in the file that spells out a vocabulary or ranks its words."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        for name, words in VOCABULARIES.items():
            if isinstance(node, ast.Tuple | ast.List | ast.Set) and set(words) <= set(_strings(node.elts)):
                found.append((node.lineno, name))
            elif isinstance(node, ast.Dict):
                keys = set(_strings(node.keys)) & set(words)
                ints = all(isinstance(v, ast.Constant) and type(v.value) is int for v in node.values)
                if len(keys) >= 2 and ints:
                    found.append((node.lineno, name))
    return found


def test_the_vocabulary_is_declared_only_in_the_model() -> None:
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if relative == HOME:
                continue
            offenders += [f"{relative}:{line}: {name}" for line, name in redeclarations(path)]
    assert offenders == [], "import these from fleetpulse.pipeline.model instead: " + ", ".join(offenders)


def test_the_check_finds_a_copy(tmp_path: Path) -> None:
    copy = tmp_path / "copy.py"
    copy.write_text('ORDER = ("onboarding", "adopting", "mature", "renewal_window", "at_risk", "churned")\n'
                    'RANK = {"critical": 0, "warning": 1}\n'
                    'COLOUR = {"green": "#0f0", "red": "#f00"}\n'
                    'ALARM = ("at_risk", "churned")\n')
    assert redeclarations(copy) == [(1, "STAGES"), (2, "SEVERITIES")]
    assert redeclarations(ROOT / HOME) != []  # the model itself is found, and skipped above


def test_ranks_mean_worse_is_higher() -> None:
    # band_rank is InfluxDB's band_rank field: these values are a contract (see test_influx_sink.py).
    assert [band_rank(b) for b in ("green", "yellow", "red")] == [0, 1, 2]
    assert [severity_rank(s) for s in ("info", "warning", "critical")] == [0, 1, 2]
    for rank, word in ((band_rank, "purple"), (severity_rank, "error")):
        with pytest.raises(ValueError, match=f"'{word}' is not a"):
            rank(word)


def test_worst_first_keys_keep_the_reports_orders() -> None:
    # The reports' orders before the vocabulary moved here: an unknown band before red, an unknown severity last.
    assert sorted(["green", "purple", "yellow", "red"], key=worst_band_first) == ["purple", "red", "yellow", "green"]
    assert sorted(["info", "bogus", "critical", "warning"], key=most_severe_first) == [
        "critical", "warning", "info", "bogus"]


def test_profile_stages_are_stages_in_lifecycle_order() -> None:
    assert [s for s in STAGES if s in PROFILE_STAGES] == list(PROFILE_STAGES)


def test_band_ranges_cover_the_health_scale_in_band_order() -> None:
    bands = Bands(green_min=70.0, yellow_min=45.0)
    assert bands.ranges() == (("green", 70.0, 100.0), ("yellow", 45.0, 70.0), ("red", 0.0, 45.0))
    assert [bands.band(h) for h in (100, 70, 69.9, 45, 44.9, 0, -1, math.nan)] == [
        "green", "green", "yellow", "yellow", "red", "red", "red", "red"]


def test_every_band_has_its_colours_in_the_html_report() -> None:
    assert set(charts.BAND_COLOUR) == set(BANDS) == set(charts.BAND_FILL)
    assert set(charts.ALARM_STAGES) <= set(STAGES)


def test_the_scorer_speaks_only_the_vocabulary() -> None:
    model = load_health_model(None)
    runs = [
        # usage stops: band_worsened and usage_drop
        (account(), [cday(i) for i in range(40)] + [cday(i, active=()) for i in range(40, 60)], 59),
        # a gateway goes silent
        (account(), [two_gateway_days(i) for i in range(40)] + [two_gateway_days(i, silent=True)
                                                                 for i in range(40, 45)], 44),
        # more devices in use than bought
        (account(entitled_devices=3), [cday(i) for i in range(30)], 29),
        # a new contract with one device of four in use, and one long past its renewal and idle
        (account(contract_start=START), [cday(i, active=("d1",)) for i in range(20)], 19),
        (account(renewal_date=date(2023, 6, 1)), [cday(i, active=()) for i in range(60)], 59),
    ]
    kinds, stages = set(), set()
    for acct, rows, last in runs:
        signals, alerts = score_account(acct, rows, model, fleet(0, last), "acme")
        assert {s.band for s in signals} <= set(BANDS)
        assert {a.severity for a in alerts} <= set(SEVERITIES) and {a.band for a in alerts} <= set(BANDS)
        kinds |= {a.kind for a in alerts}
        stages |= {s.stage for s in signals}
    assert kinds == set(ALERT_KINDS)
    assert stages <= set(STAGES) and {"onboarding", "mature", "at_risk", "churned"} <= stages


# ---- the playbook config takes the vocabulary's words and refuses any other -----------------------


def playbook_with(severity: str, bands: str, stages: str) -> str:
    return f"""
    - name: pb
      step: Call the customer.
      severity: {severity}
      trigger: {{type: band, bands: {bands}}}
      filters: {{stages: {stages}}}
      actions: [{{kind: notify_csm}}]
    """


def test_the_playbook_config_takes_every_word_of_the_vocabulary() -> None:
    for severity in SEVERITIES:
        pb = book(playbook_with(severity, f"[{', '.join(BANDS)}]", f"[{', '.join(STAGES)}]")).playbooks[0]
        assert pb.severity == severity
        assert pb.trigger.bands == BANDS and pb.filters.stages == STAGES


@pytest.mark.parametrize(
    ("severity", "bands", "stages", "key", "word"),
    [
        ("urgent", "[red]", "[mature]", "playbooks[pb].severity", "urgent"),
        ("warning", "[red, amber]", "[mature]", "playbooks[pb].trigger.bands[1]", "amber"),
        ("warning", "[red]", "[mature, renewal]", "playbooks[pb].filters.stages[1]", "renewal"),
    ],
)
def test_the_playbook_config_refuses_words_outside_the_vocabulary(severity: str, bands: str, stages: str,
                                                                  key: str, word: str) -> None:
    with pytest.raises(ConfigError) as caught:
        book(playbook_with(severity, bands, stages))
    assert caught.value.key == key and repr(word) in caught.value.problem


@pytest.mark.parametrize(
    ("trigger", "actions", "key"),
    [
        ("{type: band_worsened}", "[{kind: notify_csm}]", "playbooks[pb].trigger.type"),
        ("{type: band}", "[{kind: usage_drop}]", "playbooks[pb].actions[0].kind"),
    ],
)
def test_alert_kinds_are_not_playbook_words(trigger: str, actions: str, key: str) -> None:
    """Trigger types and action kinds are the playbook file's own words: an alert kind is neither."""
    with pytest.raises(ConfigError) as caught:
        one(trigger, actions=actions)
    assert caught.value.key == key


def test_the_health_model_weighs_only_stages_known_before_the_score(tmp_path: Path) -> None:
    base = (ROOT / "pipeline" / "health" / "default_health.yaml").read_text(encoding="utf-8")
    for stage in PROFILE_STAGES:
        path = tmp_path / f"{stage}.yaml"
        path.write_text(_with_stage_profile(base, stage), encoding="utf-8")
        assert load_health_model(path).weights_for("smb", stage)["adoption"] == 7
    path = tmp_path / "at_risk.yaml"
    path.write_text(_with_stage_profile(base, "at_risk"), encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_health_model(path)
    assert "at_risk" in str(caught.value)


def _with_stage_profile(base: str, stage: str) -> str:
    import yaml

    model = yaml.safe_load(base)
    model["stages"] = {stage: {"weights": {"adoption": 7}}}
    return yaml.safe_dump(model)

