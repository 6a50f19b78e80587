"""Customer scoring in a stream that never ends (``--score-every-s``), on the streaming DirectRunner.

The ingest job scores each customer's whole history in the global window.
Without an early trigger that happens only when the input ends; with
``scoring_trigger(n)`` the window fires every n seconds of processing time
after new days, accumulating: each firing scores every day seen so far, and
the last firing is the end of the input. Time comes from the TestStream's
watermark and processing-time advances, not sleeps.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream as BeamTestStream  # not collected
from apache_beam.testing.util import assert_that
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.windowed_value import PaneInfoTiming

from fleetpulse.pipeline.health.config import load_health_model
from fleetpulse.pipeline.health.score import score_account
from fleetpulse.pipeline.jobs.ingest import ProcessTelemetry, scoring_trigger
from fleetpulse.pipeline.transforms import SIGNALS, FleetContextFrom, ScoreAccounts
from fleetpulse.schemas.accounts import Account

from .test_ingest_support import T0, H, topic
from .test_ingest_windows import at, usage

DAY = 24 * H
ACCOUNT = Account(customer_id="c1", name="Acme", segment="smb", engagement_model="digital", arr_usd=12000,
                  contract_start=date(2024, 1, 1), renewal_date=date(2025, 1, 1), entitled_devices=1,
                  csm_owner=None, nps=None)


def batch(n: int, received_ms: int, *records: dict[str, Any]) -> TimestampedValue:
    """A gateway batch as ReadFromMqtt emits it (stamped with its earliest record)."""
    envelope = {"v": 1, "customer_id": "c1", "site_id": "c1-s1", "gateway_id": "c1-gw1",
                "batch_seq": n, "sent_ms": received_ms, "records": list(records)}
    row = {"topic": topic("c1", "c1-s1", "c1-gw1"), "payload": json.dumps(envelope).encode(),
           "received_ms": received_ms}
    return TimestampedValue(row, at(min(r["ts_ms"] for r in records)))


class Firing(beam.DoFn):
    """Each fired pane of signals as (pane index, timing, the days it scored)."""

    def process(self, signal: Any, pane: Any = beam.DoFn.PaneInfoParam) -> Any:
        yield (pane.index, pane.timing, signal.day)


def test_an_early_trigger_scores_the_history_so_far_and_again_at_the_end() -> None:
    stream = (
        BeamTestStream()
        .advance_watermark_to(at(T0))
        .add_elements([batch(1, T0 + 6 * H, usage(0, T0 + 2 * H, 600.0), usage(1, T0 + 5 * H, 900.0))])
        .advance_watermark_to(at(T0 + DAY + H))  # day 1 complete: its CustomerDay fires
        .advance_processing_time(61)  # the early firing: day 1 scored
        .add_elements([batch(2, T0 + DAY + 4 * H, usage(2, T0 + DAY + 3 * H, 300.0))])
        .advance_watermark_to(at(T0 + 2 * DAY + H))  # day 2 complete
        .advance_processing_time(61)  # day 1 and day 2 scored
        .advance_watermark_to_infinity()  # the end: scored once more, on time
    )
    options = PipelineOptions([])
    options.view_as(StandardOptions).streaming = True
    trigger = scoring_trigger(60)
    with beam.Pipeline(options=options) as pipeline:
        days = (pipeline | stream | ProcessTelemetry(allowed_lateness_s=0))["days"]
        fleet = days | FleetContextFrom(trigger=trigger)
        scored = days | ScoreAccounts({"c1": ACCOUNT}, load_health_model(None), score_account,
                                      fleet=fleet, trigger=trigger)
        assert_that(scored[SIGNALS] | beam.ParDo(Firing()), firings_are_complete)


def firings_are_complete(signals: list[tuple[int, PaneInfoTiming, str]]) -> None:
    """Early panes before the end (how many, and whether the fleet context of
    the newest day was already in the side input, depends on the runner's
    scheduling); the last pane on time, scoring every day."""
    by_pane: dict[int, tuple[set[PaneInfoTiming], set[str]]] = {}
    for index, timing, day in signals:
        timings, days = by_pane.setdefault(index, (set(), set()))
        timings.add(timing)
        days.add(day)
    panes = [by_pane[i] for i in sorted(by_pane)]
    assert len(panes) >= 2, panes
    assert all(timings == {PaneInfoTiming.EARLY} for timings, _ in panes[:-1]), panes
    assert "2024-03-04" in panes[0][1], panes
    assert panes[-1] == ({PaneInfoTiming.ON_TIME}, {"2024-03-04", "2024-03-05"}), panes
