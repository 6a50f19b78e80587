"""One rule for restated days: of several versions of a customer's day, the scorer and the scoring join keep the same one."""

from __future__ import annotations

import dataclasses
import itertools

from fleetpulse.pipeline.health.config import load_health_model
from fleetpulse.pipeline.health.score import score_account
from fleetpulse.pipeline.model import CustomerDay, one_per_day, restatement_rank

from .test_health_score import account, cday, fleet


def panes_of_day_5() -> list[CustomerDay]:
    """Three restatements of day 5 as accumulating panes give them: each adds to the one before."""
    full = cday(5, errors=40, error_fw={"2.0.0": 40})
    early = dataclasses.replace(full, heartbeats=full.heartbeats // 2, errors=10, error_fw={"2.0.0": 10})
    # Late error records arrive after the last heartbeat: same heartbeats, devices and usage, more errors.
    middle = dataclasses.replace(full, errors=10, error_fw={"2.0.0": 10})
    return [early, middle, full]


def test_the_largest_restatement_wins_whatever_the_order() -> None:
    early, middle, full = panes_of_day_5()
    assert restatement_rank(early) < restatement_rank(middle) < restatement_rank(full)
    others = [cday(i) for i in range(5)]
    for order in itertools.permutations([early, middle, full]):
        assert one_per_day([*order, *reversed(others)]) == [*others, full]


def test_equal_sized_restatements_are_chosen_by_content_not_by_arrival() -> None:
    a = cday(3)
    b = dataclasses.replace(a, device_fw={**a.device_fw, "d1": "1.9.0"})  # same sizes, different content
    assert restatement_rank(a)[:4] == restatement_rank(b)[:4] and restatement_rank(a) != restatement_rank(b)
    assert one_per_day([a, b]) == one_per_day([b, a])


def test_the_scorer_keeps_the_restatement_the_scoring_join_keeps() -> None:
    model = load_health_model(None)
    days = [cday(i) for i in range(20) if i != 5]
    kept = score_account(account(), one_per_day([*days, *panes_of_day_5()]), model, fleet(0, 19), "acme")
    for order in itertools.permutations(panes_of_day_5()):
        assert score_account(account(), [*days, *order], model, fleet(0, 19), "acme") == kept
    # and the choice matters: the pane before the late errors scores day 5 differently
    early = score_account(account(), [*days, panes_of_day_5()[1]], model, fleet(0, 19), "acme")
    assert early != kept
