"""FleetContextFrom and ScoreAccounts on handwritten CustomerDay rows."""

from __future__ import annotations

import json
from datetime import date
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline  # not collected
from apache_beam.testing.util import assert_that, equal_to

from fleetpulse.pipeline.health.config import load_health_model
from fleetpulse.pipeline.health.score import FleetContext, score_account
from fleetpulse.pipeline.model import CustomerDay
from fleetpulse.pipeline.transforms import (
    ALERTS,
    SIGNALS,
    CustomerDailyUsage,
    DecodeBatches,
    DedupeRecords,
    DeviceHourlyRollups,
    FleetContextFrom,
    ScoreAccounts,
)
from fleetpulse.pipeline.transforms import scoring as score_module
from fleetpulse.pipeline.transforms.fleet import FleetContextFn, firmware_key
from fleetpulse.schemas.accounts import Account


def cday(customer: str, day: str, device_fw: dict[str, str], error_fw: dict[str, int] | None = None,
         features: dict[str, int] | None = None, heartbeats: int = 10) -> CustomerDay:
    error_fw = error_fw or {}
    return CustomerDay(
        customer_id=customer, day=day, reporting_devices=tuple(sorted(device_fw)),
        active_devices=(), gateways=("g1",), heartbeats=heartbeats, expected_heartbeats=1440.0,
        heartbeat_interval_s=60, usage={}, features=features or {},
        errors=sum(error_fw.values()), critical_errors=0, error_fw=error_fw, device_fw=device_fw,
    )


def the_day(n: int) -> str:
    return f"2024-03-0{n}"


def fleet_days() -> list[CustomerDay]:
    """Five days of a small fleet, then a gap, then one more day.

    3.9.2 runs at c1..c3 (2 devices each) with one error per customer a day,
    then five each on day 5: a fleet-wide spike. c4 alone runs 3.10.0 and
    bursts on day 5 (one customer: not a product issue). 2.0.0 at c5/c6 bursts
    on day 5 at only two customers.
    """
    rows = []
    for n in range(1, 6):
        burst = n == 5
        for c in ("c1", "c2", "c3"):
            rows.append(cday(c, the_day(n), {f"{c}-a": "3.9.2", f"{c}-b": "3.9.2"},
                             {"3.9.2": 5 if burst else 1}, features={"scan": 1}))
        if n >= 3:
            rows.append(cday("c4", the_day(n), {"c4-a": "3.10.0"}, {"3.10.0": 40 if burst else 0}))
        for c in ("c5", "c6"):
            rows.append(cday(c, the_day(n), {f"{c}-a": "2.0.0"}, {"2.0.0": 9} if burst else {},
                             features={"copy": 2}))
    rows.append(cday("c1", the_day(7), {"c1-a": "3.9.2"}, features={"fax": 1}))
    return rows


EXPECTED_LATEST = {
    the_day(1): "3.9.2", the_day(2): "3.9.2", the_day(3): "3.10.0", the_day(4): "3.10.0",
    the_day(5): "3.10.0", the_day(6): "3.10.0", the_day(7): "3.10.0",
}


def combine(fn: FleetContextFn, rows: list[CustomerDay], parts: int = 1) -> Any:
    accumulators = []
    for i in range(parts):
        acc = fn.create_accumulator()
        for row in rows[i::parts]:
            acc = fn.add_input(acc, row)
        accumulators.append(acc)
    return fn.extract_output(fn.merge_accumulators(accumulators))


def test_firmware_versions_compare_numerically() -> None:
    ordered = ["garbage", "1.2", "3.9.2", "3.10.0-rc1", "3.10.0", "3.10.0+b7", "3.10.1", "10.0.0"]
    assert sorted(reversed(ordered), key=firmware_key) == ordered
    assert firmware_key("3.10") == firmware_key("3.10.0.0")


def test_fleet_context_flags_only_fleet_wide_spikes() -> None:
    context = combine(FleetContextFn(spike_factor=3.0, min_customers=3), fleet_days())
    assert context == FleetContext(
        first_day=the_day(1),
        last_day=the_day(7),
        latest_fw_by_day=EXPECTED_LATEST,
        feature_catalog=frozenset({"scan", "copy", "fax"}),
        # day 1 has no baseline; days 2-4 are at the baseline; c4 and c5/c6 are too few customers
        product_issue_fw_by_day={the_day(5): frozenset({"3.9.2"})},
    )
    # Two customers are enough when the threshold says so; a single one never is.
    two = combine(FleetContextFn(min_customers=2), fleet_days())
    assert two.product_issue_fw_by_day == {the_day(5): frozenset({"3.9.2", "2.0.0"})}
    # Split and merged in any way, the answer is the same.
    assert combine(FleetContextFn(), fleet_days(), parts=4) == context
    # The threshold is inclusive: 3 errors per customer on day 5 is 9 / 6 devices
    # = 1.5 per device, exactly 3x the median 0.5; 2 each (1.0 per device) is not a spike.
    for per_customer, flagged in ((3, {the_day(5): frozenset({"3.9.2"})}), (2, {})):
        rows = [
            cday(r.customer_id, r.day, r.device_fw, {"3.9.2": per_customer})
            if r.day == the_day(5) and r.customer_id in ("c1", "c2", "c3") else r
            for r in fleet_days()
        ]
        assert combine(FleetContextFn(), rows).product_issue_fw_by_day == flagged


def test_fleet_context_of_no_telemetry_has_no_calendar() -> None:
    context = combine(FleetContextFn(make_context=dict), [])
    assert context == {"first_day": None, "last_day": None, "latest_fw_by_day": {},
                       "feature_catalog": frozenset(), "product_issue_fw_by_day": {}}
    with pytest.raises(ValueError, match="min_customers"):
        FleetContextFn(min_customers=0)


def account(customer_id: str) -> Account:
    return Account(
        customer_id=customer_id, name=customer_id.upper(), segment="smb", engagement_model="digital",
        arr_usd=1000, contract_start=date(2024, 1, 1), renewal_date=date(2025, 1, 1),
        entitled_devices=2, csm_owner=None, nps=None,
    )


def fake_score(account: Account | None, days: list[CustomerDay], model: Any, fleet: Any,
               customer_id: str) -> tuple[list[Any], list[Any]]:
    """Echoes what the transform handed over, so the test can check it."""
    signal = (customer_id, account.name if account else None, model,
              tuple((d.day, d.heartbeats) for d in days), fleet.first_day, fleet.last_day)
    alerts = [(customer_id, "no telemetry")] if not days else []
    return [signal], alerts


def test_score_accounts_joins_every_account_with_its_history_and_the_fleet() -> None:
    accounts = {"c1": account("c1"), "quiet": account("quiet")}
    days = [
        cday("c1", the_day(2), {"d": "1.0"}),
        cday("c1", the_day(1), {"d": "1.0"}, heartbeats=3),
        cday("c1", the_day(1), {"d": "1.0"}, heartbeats=7),  # a restated (later, larger) pane
        cday("stranger", the_day(2), {"x": "1.0"}),
    ]
    pipeline = BeamTestPipeline()
    rows = pipeline | "Days" >> beam.Create(days)
    fleet = rows | FleetContextFrom()
    assert_that(
        fleet,
        equal_to([FleetContext(the_day(1), the_day(2), {the_day(1): "1.0", the_day(2): "1.0"},
                               frozenset(), {})]),
        label="fleet",
    )
    scored = rows | ScoreAccounts(accounts, "MODEL", fake_score, fleet=fleet)
    assert_that(
        scored[SIGNALS],
        equal_to([
            ("c1", "C1", "MODEL", ((the_day(1), 7), (the_day(2), 10)), the_day(1), the_day(2)),
            ("quiet", "QUIET", "MODEL", (), the_day(1), the_day(2)),
            ("stranger", None, "MODEL", ((the_day(2), 10),), the_day(1), the_day(2)),
        ]),
        label="signals",
    )
    assert_that(scored[ALERTS], equal_to([("quiet", "no telemetry")]), label="alerts")

    # Nobody sent anything: no calendar, nothing scored, and it is counted.
    empty = pipeline | "No days" >> beam.Create([], reshuffle=False)
    unscored = empty | "Unscored" >> ScoreAccounts(accounts, "MODEL", fake_score)
    assert_that(unscored[SIGNALS], equal_to([]), label="no signals")

    result = pipeline.run()
    result.wait_until_finish()
    query = result.metrics().query(MetricsFilter().with_namespace(score_module.METRICS_NAMESPACE))
    totals: dict[str, int] = {}
    for counter in query["counters"]:
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + counter.committed
    assert totals == {
        "received": 5,
        "sent": 4,
        "accounts_without_telemetry": 3,
        "telemetry_without_account": 1,
        "skipped_no_fleet_telemetry": 2,
    }


def test_the_transforms_chain_from_landing_rows_to_the_real_scorer() -> None:
    """Decode → dedupe → hours → days → score with the real health scorer and model."""
    t0 = 1_709_510_400_000  # 2024-03-04T00:00:00Z
    day_ms = 86_400_000

    def landing(seq: int, ts_ms: int) -> dict[str, Any]:
        records = [
            {"device_id": "d1", "ts_ms": ts_ms, "boot": 0, "seq": seq, "kind": "heartbeat",
             "fw": "3.1.0", "interval_s": 3600},
            {"device_id": "d1", "ts_ms": ts_ms + 1, "boot": 0, "seq": seq + 1, "kind": "usage",
             "fw": "3.1.0", "period_s": 60,
             "quantities": [{"name": "pages", "value": 5, "unit": "pages"}]},
        ]
        payload = json.dumps({"v": 1, "customer_id": "c1", "site_id": "s1", "gateway_id": "g1",
                              "batch_seq": seq, "sent_ms": ts_ms + 10, "records": records})
        topic = "fleetpulse/v1/customers/c1/sites/s1/gateways/g1/batches"
        return {"topic": topic, "payload": payload.encode(), "received_ms": ts_ms + 20}

    batches = [landing(0, t0 + 3_600_000), landing(0, t0 + 3_600_000),  # resent batch
               landing(2, t0 + day_ms + 7_200_000)]
    accounts = {"c1": account("c1"), "quiet": account("quiet")}
    with BeamTestPipeline() as pipeline:
        signals = (
            pipeline
            | beam.Create(batches)
            | DecodeBatches()
        ).main | DedupeRecords() | DeviceHourlyRollups() | CustomerDailyUsage() | ScoreAccounts(
            accounts, load_health_model(None), score_account
        )
        assert_that(
            signals[SIGNALS] | beam.Map(lambda s: (s.customer_id, s.day, s.active_devices)),
            equal_to([("c1", "2024-03-04", 1), ("c1", "2024-03-05", 1),
                      ("quiet", "2024-03-04", 0), ("quiet", "2024-03-05", 0)]),
        )
