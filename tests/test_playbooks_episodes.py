"""The episode rules on literal verdicts: open, update, re-notify, resolve, snooze, cap, coverage hold."""

from __future__ import annotations

from collections.abc import Iterable

from fleetpulse.pipeline.playbooks.config import Cap, EpisodeRules
from fleetpulse.pipeline.playbooks.episodes import (
    HELD_EVENT,
    NOTIFY,
    OPENED,
    RESOLVED,
    SUPPRESSED,
    UPDATED,
    Decision,
    EpisodeState,
    episode_id,
    step,
)
from fleetpulse.pipeline.playbooks.triggers import CLEAR, HELD, MET, Verdict

from .test_playbooks_support import iso

CODES = {"m": MET, "c": CLEAR, "h": HELD}


def run(pattern: str, rules: EpisodeRules, for_days: int = 1, snoozed_days: Iterable[int] = (),
        state: EpisodeState | None = None, start: int = 0) -> tuple[EpisodeState, list[Decision]]:
    """Feed one verdict per character (m = met, c = clear, h = held) from day ``start``."""
    state = state or EpisodeState()
    out: list[Decision] = []
    snoozed = set(snoozed_days)
    for i, code in enumerate(pattern, start=start):
        state, decisions = step(state, Verdict(iso(i), CODES[code], f"day {i}"), rules, for_days, "acme", "pb",
                                snoozed=i in snoozed)
        out.extend(decisions)
    return state, out


def notes(decisions: list[Decision]) -> list[tuple[str, str]]:
    """(day, notification) of every notification sent."""
    return [(d.day, d.notification or "") for d in decisions if d.kind == NOTIFY]


def test_opens_once_updates_while_it_holds_and_resolves_when_clear() -> None:
    state, decisions = run("cmmmcm", EpisodeRules(renotify_after_days=None, resolve_after_days=1))
    kinds = [(d.day, d.kind) for d in decisions]
    assert kinds == [
        (iso(1), OPENED), (iso(1), NOTIFY), (iso(2), UPDATED), (iso(3), UPDATED),
        (iso(4), RESOLVED), (iso(4), NOTIFY), (iso(5), OPENED), (iso(5), NOTIFY),
    ]
    assert [d.notification for d in decisions if d.kind == NOTIFY] == ["open", "resolve", "open"]
    first = decisions[0].episode_id
    assert first == episode_id("acme", "pb", iso(1)) and decisions[-1].episode_id == episode_id("acme", "pb", iso(5))
    assert first != decisions[-1].episode_id
    assert state.episode is not None and state.episode.opened_day == iso(5)


def test_resolve_needs_clear_days_in_a_row_and_notifies_only_if_open_was_sent() -> None:
    rules = EpisodeRules(renotify_after_days=None, resolve_after_days=3)
    _, decisions = run("mccmccc", rules)
    assert [(d.day, d.kind) for d in decisions if d.kind in (OPENED, RESOLVED)] == [(iso(0), OPENED), (iso(6), RESOLVED)]
    assert notes(decisions) == [(iso(0), "open"), (iso(6), "resolve")]
    # snoozed for the whole episode: neither its open nor its resolve is sent
    _, quiet = run("mc", EpisodeRules(renotify_after_days=None), snoozed_days={0, 1})
    assert notes(quiet) == [] and [d.kind for d in quiet] == [OPENED, SUPPRESSED, RESOLVED]


def test_renotifies_after_the_cooldown_only_while_it_holds() -> None:
    _, decisions = run("mmmmmmmm", EpisodeRules(renotify_after_days=3))
    assert notes(decisions) == [(iso(0), "open"), (iso(3), "renotify"), (iso(6), "renotify")]
    # a clear day in between (not enough to resolve) delays nothing but is no reason to notify
    _, decisions = run("mmmcmm", EpisodeRules(renotify_after_days=3, resolve_after_days=2))
    assert notes(decisions) == [(iso(0), "open"), (iso(4), "renotify")]


def test_for_days_needs_that_many_met_days_in_a_row_and_held_days_do_not_break_it() -> None:
    _, decisions = run("mmcmhm", EpisodeRules(), for_days=3)
    assert [d for d in decisions if d.kind == OPENED] == []
    _, decisions = run("mmcmhmm", EpisodeRules(), for_days=3)
    assert [(d.day, d.kind) for d in decisions if d.kind == OPENED] == [(iso(6), OPENED)]


def test_low_coverage_holds_change_nothing() -> None:
    rules = EpisodeRules(renotify_after_days=2, resolve_after_days=1)
    _, decisions = run("mhhhhm", rules)
    assert [d.kind for d in decisions] == [OPENED, NOTIFY, HELD_EVENT, HELD_EVENT, HELD_EVENT, HELD_EVENT, UPDATED,
                                           NOTIFY]
    # an episode is neither opened nor resolved on held days
    _, decisions = run("hhh", rules)
    assert {d.kind for d in decisions} == {HELD_EVENT}
    state, decisions = run("mhhh", rules)
    assert state.episode is not None and RESOLVED not in {d.kind for d in decisions}


def test_snooze_defers_the_open_notice_until_it_ends() -> None:
    _, decisions = run("mmmmm", EpisodeRules(renotify_after_days=None), snoozed_days={0, 1, 2})
    assert [(d.day, d.reason) for d in decisions if d.kind == SUPPRESSED] == [
        (iso(0), "snoozed"), (iso(1), "snoozed"), (iso(2), "snoozed")]
    assert notes(decisions) == [(iso(3), "open")]
    # if the condition clears during the snooze, nothing is ever sent
    _, decisions = run("mmc", EpisodeRules(renotify_after_days=None), snoozed_days={0, 1, 2})
    assert notes(decisions) == []


def test_cap_limits_notifications_per_window_across_episodes() -> None:
    rules = EpisodeRules(renotify_after_days=1, resolve_after_days=1, cap=Cap(max_notifications=2, per_days=5))
    _, decisions = run("mmmmmmm", rules)
    # open d0, renotify d1; capped d2-d4; d0 leaves the 5-day window on d5, d1 on d6
    assert notes(decisions) == [(iso(0), "open"), (iso(1), "renotify"), (iso(5), "renotify"), (iso(6), "renotify")]
    assert [d.day for d in decisions if d.kind == SUPPRESSED] == [iso(2), iso(3), iso(4)]
    assert all(d.reason == "cap" for d in decisions if d.kind == SUPPRESSED)
    # a new episode shares the account's cap
    _, decisions = run("mcmcmc", EpisodeRules(renotify_after_days=None, cap=Cap(2, 30)))
    assert notes(decisions) == [(iso(0), "open"), (iso(1), "resolve"), (iso(2), "open"), (iso(3), "resolve")]


def test_a_replayed_day_changes_nothing_and_state_round_trips_through_json() -> None:
    rules = EpisodeRules(renotify_after_days=2, cap=Cap(3, 10))
    state, first = run("mmm", rules)
    again, replayed = run("mmm", rules, state=state)  # the same three days again
    assert replayed == [] and again == state
    assert EpisodeState.from_json(state.as_json()) == state
    # continuing from a stored state equals one uninterrupted run
    _, whole = run("mmmmcm", rules)
    _, rest = run("mcm", rules, state=EpisodeState.from_json(state.as_json()), start=3)
    assert first + rest == whole
