"""The episode state machine of one (account, playbook): open, update, re-notify, resolve.

Pure: :func:`step` takes the state after the previous day, the day's
:class:`~.triggers.Verdict`, the episode rules and whether the day is snoozed,
and returns the new state and the decisions of the day. The ledger stores the
state between runs, so a run continues exactly where the last one stopped.

Rules (docs/PLAYBOOKS.md says the same for CS Ops):

* An episode **opens** on the day the condition has been met on ``for_days``
  evaluable days in a row (held days neither count nor break the run). Its id
  is derived from (account, playbook, opened day), so a replay finds it again.
* While it holds, the episode is **updated** (its latest explanation kept), never duplicated.
* The first notification of an episode is ``open``; while the condition still
  holds it is sent again (``renotify``) once ``renotify_after_days`` have
  passed since the last one (never when that is null).
* A notification that is **snoozed** (per account and playbook) or over the
  **cap** (at most ``max`` notifications of this playbook to this account per
  ``per_days``) is suppressed; an episode whose open notice was suppressed
  sends it on the first later day that allows it, if it still holds.
* **Held** days (low data coverage, or not measurable) change nothing.
* The episode **resolves** after ``resolve_after_days`` clear days in a row; a
  ``resolve`` notification goes out only if its ``open`` did.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, replace
from datetime import date
from typing import Any

from .config import EpisodeRules
from .triggers import CLEAR, HELD, MET, Verdict

OPENED, UPDATED, RESOLVED, HELD_EVENT, NOTIFY, SUPPRESSED = (
    "opened", "updated", "resolved", "held", "notify", "suppressed")


def episode_id(customer_id: str, playbook: str, opened_day: str) -> str:
    """Deterministic: the same account, playbook and opening day give the same id on every run."""
    digest = hashlib.sha256(f"{customer_id}\x1f{playbook}\x1f{opened_day}".encode()).hexdigest()
    return f"ep-{digest[:20]}"


@dataclass(frozen=True)
class OpenEpisode:
    episode_id: str
    opened_day: str
    what: str  # the latest "what changed"
    last_met_day: str
    last_notified_day: str | None = None
    notifications: int = 0  # open + renotify sent
    clear_days: int = 0  # clear days in a row
    suppressed: int = 0


@dataclass(frozen=True)
class EpisodeState:
    """Everything one (account, playbook) carries from day to day; JSON round-trips via as_json/from_json."""

    last_day: str | None = None
    streak: int = 0  # evaluable met days in a row (for for_days)
    episode: OpenEpisode | None = None
    notified_days: tuple[str, ...] = ()  # open/renotify days inside the cap window

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EpisodeState:
        ep = data.get("episode")
        return cls(
            last_day=data.get("last_day"), streak=int(data.get("streak", 0)),
            episode=OpenEpisode(**ep) if ep else None,
            notified_days=tuple(data.get("notified_days", ())),
        )


@dataclass(frozen=True)
class Decision:
    kind: str  # opened / updated / resolved / held / notify / suppressed
    day: str
    episode_id: str | None
    what: str
    #: notify / suppressed: which notification (open / renotify / resolve)
    notification: str | None = None
    reason: str = ""  # suppressed: snoozed / cap
    opened_day: str | None = None


def _days_between(a: str, b: str) -> int:
    return (date.fromisoformat(b) - date.fromisoformat(a)).days


def step(state: EpisodeState, verdict: Verdict, rules: EpisodeRules, for_days: int, customer_id: str,
         playbook: str, snoozed: bool = False) -> tuple[EpisodeState, list[Decision]]:
    """Advance one day; see the module docstring for the rules."""
    day = verdict.day
    if state.last_day is not None and day <= state.last_day:
        return state, []  # already judged: a replayed day changes nothing
    decisions: list[Decision] = []
    ep = state.episode
    streak = state.streak
    notified = state.notified_days
    if rules.cap is not None:
        notified = tuple(d for d in notified if _days_between(d, day) < rules.cap.per_days)

    if verdict.state == HELD:
        decisions.append(Decision(HELD_EVENT, day, ep.episode_id if ep else None, verdict.what))
    elif verdict.state == CLEAR:
        streak = 0
        if ep is not None:
            ep = replace(ep, clear_days=ep.clear_days + 1)
            if ep.clear_days >= rules.resolve_after_days:
                decisions.append(Decision(RESOLVED, day, ep.episode_id, verdict.what, opened_day=ep.opened_day))
                if ep.notifications > 0:
                    if snoozed:
                        decisions.append(Decision(SUPPRESSED, day, ep.episode_id, verdict.what, "resolve",
                                                      "snoozed", ep.opened_day))
                    else:
                        decisions.append(Decision(NOTIFY, day, ep.episode_id, verdict.what, "resolve",
                                                      opened_day=ep.opened_day))
                ep = None
    else:
        assert verdict.state == MET, verdict.state
        streak += 1
        if ep is None and streak >= for_days:
            ep = OpenEpisode(episode_id(customer_id, playbook, day), day, verdict.what, day)
            decisions.append(Decision(OPENED, day, ep.episode_id, verdict.what, opened_day=day))
        elif ep is not None:
            ep = replace(ep, what=verdict.what, last_met_day=day, clear_days=0)
            decisions.append(Decision(UPDATED, day, ep.episode_id, verdict.what, opened_day=ep.opened_day))
        if ep is not None:
            due: str | None = None
            if ep.notifications == 0:
                due = "open"
            elif rules.renotify_after_days is not None and ep.last_notified_day is not None \
                    and _days_between(ep.last_notified_day, day) >= rules.renotify_after_days:
                due = "renotify"
            if due is not None:
                reason = "snoozed" if snoozed else (
                    "cap" if rules.cap is not None and len(notified) >= rules.cap.max_notifications else "")
                if reason:
                    ep = replace(ep, suppressed=ep.suppressed + 1)
                    decisions.append(Decision(SUPPRESSED, day, ep.episode_id, verdict.what, due, reason,
                                                  ep.opened_day))
                else:
                    ep = replace(ep, notifications=ep.notifications + 1, last_notified_day=day)
                    # Only a cap needs the days of past notifications; without one the state stays small.
                    notified = (*notified, day) if rules.cap is not None else ()
                    decisions.append(Decision(NOTIFY, day, ep.episode_id, verdict.what, due,
                                                  opened_day=ep.opened_day))
    return EpisodeState(last_day=day, streak=streak, episode=ep, notified_days=notified), decisions
