"""No element of the backfill grows with the lake's length (issue 16: one element was 1 GB).

A Dataflow or Flink worker ships elements between processes and machines, so
an element that holds a shard's or the fleet's whole history fails there and
holds the local runner's memory hostage. Every PCollection of the backfill
gets a ParDo beside its consumers that encodes each element with the
PCollection's own coder (what a runner sends) and records the byte size in a
distribution; the job runs over seeded lakes of the same fleet over D and 2·D
days, and the largest element of each step must not grow with the days.

Grouped values (the ``(key, iterable)`` a GroupByKey emits) are measured too:
the FnApiRunner materialises them, so the hour groups of the columnar dedupe
must stay an hour of the fleet. Three steps are windows by design and are
bounded by their window instead (:data:`WINDOWED`): the scoring join gathers
one customer's calendar of CustomerDays (a small row per day: linear in the
customer's days, never in records); a customer-day's combine holds that
customer's DeviceHours of one day; the device_hourly writer's row groups stop
at :data:`~fleetpulse.pipeline.outputs.files.ROW_GROUP_BYTES`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.pipeline import PipelineVisitor

from bench.lakes import write_lake
from fleetpulse.pipeline.health.config import load_health_model
from fleetpulse.pipeline.jobs.backfill import JobConfig, build_pipeline
from fleetpulse.pipeline.outputs.files import ROW_GROUP_BYTES
from fleetpulse.schemas.accounts import load_accounts

NAMESPACE = "test.element_bytes"
CUSTOMERS = 3
DAYS = 8
#: steps bounded by a window of their own, not by the lake's length (see the module docstring)
HISTORY, CUSTOMER_DAY, ROW_GROUP = "ScoreCustomers/ScoreAccounts/Join/", "CustomerDailyUsage/Combine/", "RowGroups"
WINDOWED = (HISTORY, CUSTOMER_DAY, ROW_GROUP)
#: Not probed: the grouping inside a CombinePerKey (the runner lifts it into a partial combine, and
#: a second consumer would undo that; the combine's output is probed) and Beam's own file sinks
#: (their bookkeeping carries file names, not data)
SKIP = ("Combine/GroupByKey", "CombinePerKey/GroupByKey", "WriteToParquet/", "WriteToText/")
#: an absolute ceiling for any element of these small lakes: an hour of 3 customers' fleet is a few KB
LARGEST_BYTES = 2_000_000


class _SizeFn(beam.DoFn):
    def __init__(self, label: str, coder: beam.coders.Coder) -> None:
        self._label, self._coder = label, coder

    def setup(self) -> None:
        self._sizes = Metrics.distribution(NAMESPACE, self._label)

    def process(self, element: Any) -> None:
        self._sizes.update(len(self._coder.encode(element)))


class _Outputs(PipelineVisitor):
    def __init__(self) -> None:
        self.found: list[tuple[str, beam.PCollection]] = []

    def visit_transform(self, node: Any) -> None:
        if any(part in node.full_label for part in SKIP):
            return
        for tag, pcoll in node.outputs.items():
            if isinstance(pcoll, beam.PCollection):
                self.found.append((f"{node.full_label}[{tag}]", pcoll))


def measure_elements(pipeline: beam.Pipeline) -> None:
    """Add a size probe to every PCollection of ``pipeline`` (before it runs)."""
    outputs = _Outputs()
    pipeline.visit(outputs)
    for n, (label, pcoll) in enumerate(outputs.found):
        coder = beam.coders.registry.get_coder(pcoll.element_type)
        _ = pcoll | f"ElementBytes{n}" >> beam.ParDo(_SizeFn(label, coder))


def largest_elements(lake: Path, out: Path) -> dict[str, int]:
    """The largest encoded element of every step of the backfill over ``lake``, by label."""
    config = JobConfig(lake=str(lake), out=str(out), accounts=load_accounts(lake / "accounts.csv"),
                       model=load_health_model(None))
    pipeline = build_pipeline(PipelineOptions(["--runner=FnApiRunner"]), config)
    measure_elements(pipeline)
    result = pipeline.run()
    result.wait_until_finish()
    found = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["distributions"]
    return {d.key.metric.name: d.committed.max for d in found if d.committed and d.committed.count}


Sizes = tuple[dict[str, int], dict[str, int], int]  # largest per step, short and long lake; devices


@pytest.fixture(scope="module")
def sizes(tmp_path_factory: pytest.TempPathFactory) -> Sizes:
    root = tmp_path_factory.mktemp("sizes")
    short = write_lake(root / "short", CUSTOMERS, DAYS)
    long = write_lake(root / "long", CUSTOMERS, 2 * DAYS)
    assert long.records > 1.7 * short.records  # the same fleet, twice the days
    return (largest_elements(short.root, root / "out-short"), largest_elements(long.root, root / "out-long"),
            long.devices)


def test_every_step_is_measured(sizes: Sizes) -> None:
    short, long, _ = sizes
    assert set(short) <= set(long)  # the short lake may raise no alert yet
    for step in ("DedupeRecords/GroupHour", "DeviceHourlyRollups", *WINDOWED, "ScoreCustomers/ScoreAccounts/Score"):
        assert any(step in label for label in short), f"no probe on {step}"


def test_no_element_grows_with_the_days(sizes: Sizes) -> None:
    short, long, _ = sizes
    grew = {
        label: (short[label], long[label])
        for label in short
        if not any(part in label for part in WINDOWED) and long[label] > 1.4 * short[label] + 4096
    }
    assert not grew, f"largest element (bytes, {DAYS} days → {2 * DAYS} days) grew with the lake: {grew}"
    biggest = max(long.items(), key=lambda item: item[1])
    assert biggest[1] < LARGEST_BYTES, f"{biggest[0]}: an element of {biggest[1]} bytes"


def test_windowed_steps_stay_within_their_window(sizes: Sizes) -> None:
    _, long, devices = sizes

    def largest(fragment: str) -> int:
        return max(size for label, size in long.items() if fragment in label)

    # One customer's calendar: a CustomerDay of a few KB per day, never its records.
    assert largest(HISTORY) < 2 * DAYS * 16_384
    # One customer's day: at most 24 DeviceHours (≈ 1 KB each) per device.
    assert largest(CUSTOMER_DAY) < 24 * devices * 1024
    assert largest(ROW_GROUP) < 2 * ROW_GROUP_BYTES
