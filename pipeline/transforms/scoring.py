"""ScoreAccounts: every account of the registry, with its telemetry history, scored.

The join starts from the accounts registry, not from the telemetry: an
account with no telemetry at all is still scored (no data is not no
customer — a customer who never switched anything on is the most at risk).
Telemetry of a customer missing from the registry is scored too, with
``account=None``, so the scorer can report it instead of it vanishing.

The scoring itself is injected: ``score_fn(account_or_None, days, model,
fleet, customer_id) -> (signals, alerts)`` where ``days`` is the customer's
CustomerDay history sorted by day (one per day) and ``fleet`` the fleet
context side input (:class:`~.fleet.FleetContextFrom`). The pipeline passes
``fleetpulse.pipeline.health.score.score_account``; tests pass a fake.

The calendar to score comes from the fleet context (its ``first_day`` ..
``last_day``); when no customer sent any telemetry at all there is no calendar,
and nothing is scored (counted as ``skipped_no_fleet_telemetry`` per customer).

Counters (namespace :data:`METRICS_NAMESPACE`): ``received`` customers joined,
``sent`` signals + alerts, ``accounts_without_telemetry``,
``telemetry_without_account``, ``skipped_no_fleet_telemetry``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics import Metrics
from apache_beam.transforms.trigger import AccumulationMode
from apache_beam.transforms.window import GlobalWindows

from fleetpulse.pipeline.model import Alert, CustomerDay, DailySignal, one_per_day
from fleetpulse.schemas.accounts import Account

from .fleet import FleetContextFrom
from .status import OfflineReports, mark_offline

METRICS_NAMESPACE = "fleetpulse.pipeline.score"
SIGNALS = "signals"
ALERTS = "alerts"

ScoreFn = Callable[
    [Account | None, list[CustomerDay], Any, Any, str],
    tuple[list[DailySignal], list[Alert]],
]


def _has_calendar(fleet: Any) -> bool:
    first = fleet.get("first_day") if isinstance(fleet, Mapping) else getattr(fleet, "first_day", None)
    return first is not None


class _ScoreFn(beam.DoFn):
    def __init__(self, model: Any, score_fn: ScoreFn) -> None:
        self._model = model
        self._score_fn = score_fn
        self._received = Metrics.counter(METRICS_NAMESPACE, "received")
        self._sent = Metrics.counter(METRICS_NAMESPACE, "sent")
        self._no_telemetry = Metrics.counter(METRICS_NAMESPACE, "accounts_without_telemetry")
        self._no_account = Metrics.counter(METRICS_NAMESPACE, "telemetry_without_account")
        self._skipped = Metrics.counter(METRICS_NAMESPACE, "skipped_no_fleet_telemetry")

    def process(self, joined: tuple[str, Mapping[str, Any]], fleets: Any) -> Any:
        customer_id, groups = joined
        self._received.inc()
        fleet = latest_fleet(fleets)
        accounts = list(groups["account"])
        account = accounts[0] if accounts else None
        days = mark_offline(one_per_day(groups["days"]), groups.get("offline", ()))
        if account is None:
            self._no_account.inc()
        elif not days:
            self._no_telemetry.inc()
        if fleet is None or not _has_calendar(fleet):
            # No telemetry from any customer: no day to score (see the module docstring).
            self._skipped.inc()
            return
        signals, alerts = self._score_fn(account, days, self._model, fleet, customer_id)
        self._sent.inc(len(signals) + len(alerts))
        for signal in signals:
            yield pvalue.TaggedOutput(SIGNALS, signal)
        for alert in alerts:
            yield pvalue.TaggedOutput(ALERTS, alert)


class _StampPane(beam.DoFn):
    """A fleet context with the index of the pane that carried it."""

    def process(self, fleet: Any, pane: Any = beam.DoFn.PaneInfoParam) -> Any:
        yield pane.index, fleet


def latest_fleet(stamped: Any) -> Any:
    """The fleet context of the latest pane (None before the first).

    With an early trigger the fleet context fires again and again, each pane
    accumulating the one before; a runner may keep every fired pane in the
    side input's view (the DirectRunner does: a singleton view then fails), so
    the view is a list and the latest pane wins.
    """
    latest = max(stamped, key=lambda item: item[0], default=None)
    return None if latest is None else latest[1]


def all_history(trigger: Any = None) -> beam.WindowInto:
    """Into the global window; with a trigger (streaming), accumulating panes."""
    if trigger is None:
        return beam.WindowInto(GlobalWindows())
    return beam.WindowInto(GlobalWindows(), trigger=trigger, accumulation_mode=AccumulationMode.ACCUMULATING)


class ScoreAccounts(beam.PTransform):
    """CustomerDay → tagged ``signals`` (DailySignal) and ``alerts`` (Alert).

    ``fleet`` is a PCollection holding one fleet context (the output of
    :class:`~.fleet.FleetContextFrom`); when omitted it is derived from the
    input with FleetContextFrom's defaults. ``status``: the gateways' status
    rows (:class:`~.status.DecodeGatewayStatus`); a gateway that said offline
    marks its customer's day (:func:`~.status.mark_offline`).
    """

    def __init__(
        self,
        accounts: Mapping[str, Account],
        model: Any,
        score_fn: ScoreFn,
        *,
        fleet: beam.PCollection | None = None,
        status: beam.PCollection | None = None,
        trigger: Any = None,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        self._accounts = dict(accounts)
        self._model = model
        self._score_fn = score_fn
        self._fleet = fleet
        self._status = status
        #: streaming: when to score the whole history (e.g. ``AfterWatermark()``:
        #: at the end of a bounded run; with ``early=AfterProcessingTime(n)``
        #: every n seconds too). Panes accumulate; ``model.one_per_day`` keeps the
        #: latest version of each day. None (batch): once, at the end.
        self._trigger = trigger

    def expand(self, days: beam.PCollection) -> pvalue.DoOutputsTuple:
        fleet = (self._fleet if self._fleet is not None
                 else days | "Fleet" >> FleetContextFrom(trigger=self._trigger))
        accounts = (
            days.pipeline
            | "Registry" >> beam.Create(sorted(self._accounts.items()))
            | "RegistryWindow" >> all_history(self._trigger)
        )
        history = (
            days
            # A customer is judged on its whole history, not one window of it.
            | "AllHistory" >> all_history(self._trigger)
            | "KeyByCustomer" >> beam.Map(lambda day: (day.customer_id, day))
        )
        joined: dict[str, beam.PCollection] = {"account": accounts, "days": history}
        if self._status is not None:
            joined["offline"] = (
                self._status
                | "OfflineReports" >> OfflineReports()
                | "OfflineHistory" >> all_history(self._trigger)
            )
        return (
            joined
            | "Join" >> beam.CoGroupByKey()
            | "Score"
            >> beam.ParDo(_ScoreFn(self._model, self._score_fn),
                          pvalue.AsList(fleet | "StampFleetPane" >> beam.ParDo(_StampPane())))
            .with_outputs(SIGNALS, ALERTS)
        )


class ScoreCustomers(beam.PTransform):
    """CustomerDay (+ gateway status) → tagged ``signals`` and ``alerts``: the scoring both jobs share.

    The fleet context (:class:`~.fleet.FleetContextFrom`, a side input) and
    every account of the registry scored on its whole history
    (:class:`ScoreAccounts`), each day marked with the gateways that reported
    themselves offline. ``trigger`` is the job's scoring policy: None in batch
    (once, at the end); in streaming e.g. ``AfterWatermark()`` or with early
    firings (see :func:`fleetpulse.pipeline.jobs.ingest.scoring_trigger`).
    """

    def __init__(
        self,
        accounts: Mapping[str, Account],
        model: Any,
        score_fn: ScoreFn,
        *,
        status: beam.PCollection | None = None,
        trigger: Any = None,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        self._accounts, self._model, self._score_fn = accounts, model, score_fn
        self._status, self._trigger = status, trigger

    def expand(self, days: beam.PCollection) -> pvalue.DoOutputsTuple:
        fleet = days | "FleetContext" >> FleetContextFrom(trigger=self._trigger)
        return days | "ScoreAccounts" >> ScoreAccounts(
            self._accounts, self._model, self._score_fn, fleet=fleet, status=self._status, trigger=self._trigger
        )
