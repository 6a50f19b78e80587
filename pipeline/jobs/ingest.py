"""The streaming job: MQTT → records, rollups, signals → the lake, InfluxDB, alerts.

The plan, one named composite per step: the batch job's plan
(:mod:`fleetpulse.pipeline.jobs.backfill`) over another source, with
event-time windows and a trigger; only the source, the dedupe and the
triggering differ::

    ReadFromMqtt (batches and status) ─▶ LandMessages (write-ahead landing, each
                 message in its zone; the source acks after it)
    [ReplayLanding: files a previous run landed but did not finish] ─┐
                 → SplitStatus ◀───────────────────────────────────────┘
    batches      → ProcessTelemetry: DecodeBatches ─▶ dead letters
                     WithEventTime → StatefulDedupe (device, boot, seq; bounded state) ─▶ records
                     DeviceHourlyRollups (event time, allowed lateness: a late record
                       restates its hour) ─▶ hours → CustomerDailyUsage
    status       → DecodeGatewayStatus (minute windows at arrival) ─▶ status
    [accounts]   days → ScoreCustomers ◀─ status (when the scoring trigger fires) ─▶ signals, alerts
    records, hours, signals, alerts, status, dead letters
                 → PublishResults: archive panes, per-bundle Parquet and JSON-lines
                   parts, InfluxDB (a restated hour overwrites its point)

``build_pipeline`` returns the unrun pipeline; :func:`run` runs it (``fleetpulse
ingest`` validates its configuration in :mod:`fleetpulse.pipeline.cli.ingest`).
Which runner executes it how — and what is guaranteed where — is in
``docs/STREAMING.md``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.transforms.trigger import AfterCount, AfterProcessingTime, AfterWatermark

from fleetpulse.pipeline.health.config import HealthModel
from fleetpulse.pipeline.health.score import score_account
from fleetpulse.pipeline.outputs.bundles import (
    LandMessages,
    clear_pending,
    keeps_bundles_in_memory,
    rollback_unfinished_outputs,
)
from fleetpulse.pipeline.outputs.influx import InfluxConfig
from fleetpulse.pipeline.outputs.publish import BundleFiles, PublishResults
from fleetpulse.pipeline.outputs.tables import write_health_model
from fleetpulse.pipeline.sources.lake import ReplayLanding
from fleetpulse.pipeline.sources.mqtt import MqttSourceConfig, ReadFromMqtt
from fleetpulse.pipeline.transforms import (
    ALERTS,
    DEAD_LETTERS,
    SIGNALS,
    CustomerDailyUsage,
    DecodeBatches,
    DeviceHourlyRollups,
    ScoreCustomers,
    WithEventTime,
)
from fleetpulse.pipeline.transforms.stateful_dedupe import StatefulDedupe
from fleetpulse.pipeline.transforms.status import DEAD_LETTERS as STATUS_DEAD_LETTERS
from fleetpulse.pipeline.transforms.status import DecodeGatewayStatus, SplitStatus
from fleetpulse.schemas.accounts import Account

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    """Everything the streaming job needs, resolved and validated before it is built."""

    source: MqttSourceConfig
    lake: str
    out: str
    influx: InfluxConfig | None = None
    accounts: dict[str, Account] | None = None
    model: HealthModel | None = None
    allowed_lateness_s: int = 6 * 3600
    dedupe_ttl_s: int = 86400
    dedupe_max_pairs_per_device: int = 200_000
    land: bool = True
    replay: tuple[str, ...] = field(default=())
    #: customer signals: 0 scores once, when the input ends (bounded runs);
    #: n > 0 also every n seconds of processing time (a stream that never ends)
    score_every_s: int = 0

    @property
    def writer(self) -> str:
        """Names this job's landing files and pending markers: one per client id prefix."""
        return self.source.client_id_prefix


class ProcessTelemetry(beam.PTransform):
    """Landing rows → ``{"records", "hours", "days", "dead_letters"}``.

    The streaming job's middle, shared with its TestStream tests: decode and
    validate, dedupe with bounded state, hourly and daily rollups in event
    time. A record later than the watermark but within ``allowed_lateness_s``
    fires its hour (and day) again; the panes accumulate, so the new pane
    restates the whole hour and overwrites the earlier point downstream.
    """

    def __init__(
        self,
        *,
        allowed_lateness_s: int = 6 * 3600,
        dedupe_ttl_s: int = 86400,
        dedupe_max_pairs_per_device: int = 200_000,
        label: str | None = None,
    ) -> None:
        super().__init__(label)
        self.allowed_lateness_s = allowed_lateness_s
        self.dedupe_ttl_s, self.dedupe_max_pairs_per_device = dedupe_ttl_s, dedupe_max_pairs_per_device

    def expand(self, messages: beam.PCollection) -> dict[str, beam.PCollection]:
        decoded = messages | "DecodeBatches" >> DecodeBatches()
        records = (
            decoded.main
            | "EventTime" >> WithEventTime()
            | "StatefulDedupe" >> StatefulDedupe(
                ttl_s=self.dedupe_ttl_s, max_pairs_per_device=self.dedupe_max_pairs_per_device)
        )
        policy: dict[str, Any] = dict(
            window_mode="event_time",
            allowed_lateness_s=self.allowed_lateness_s,
            trigger=AfterWatermark(late=AfterCount(1)),
        )
        hours = records | "DeviceHourlyRollups" >> DeviceHourlyRollups(**policy)
        days = hours | "CustomerDailyUsage" >> CustomerDailyUsage(**policy)
        return {"records": records, "hours": hours, "days": days, "dead_letters": decoded[DEAD_LETTERS]}


def scoring_trigger(score_every_s: int) -> Any:
    """When customers are scored: at the end of the input; with ``score_every_s`` also early,
    every that many seconds of processing time after new days arrived (a stream that never ends).
    The global window's panes accumulate, so each firing scores the whole history."""
    if score_every_s:
        return AfterWatermark(early=AfterProcessingTime(score_every_s))
    return AfterWatermark()


def build_pipeline(
    options: PipelineOptions,
    config: IngestConfig,
    *,
    source: beam.PTransform | None = None,
) -> beam.Pipeline:
    """The unrun streaming pipeline for ``config``; ``source`` replaces ReadFromMqtt in tests."""
    p = beam.Pipeline(options=options)

    messages = p | "ReadFromMqtt" >> (source or ReadFromMqtt(config.source))
    if config.land:
        messages = messages | "LandMessages" >> LandMessages(config.lake, config.writer)
    if config.replay:
        replayed = p | "ReplayLanding" >> ReplayLanding(config.replay)
        messages = (messages, replayed) | "WithReplay" >> beam.Flatten()

    batches, status_messages = messages | "SplitStatus" >> SplitStatus()
    processed = batches | "ProcessTelemetry" >> ProcessTelemetry(
        allowed_lateness_s=config.allowed_lateness_s,
        dedupe_ttl_s=config.dedupe_ttl_s,
        dedupe_max_pairs_per_device=config.dedupe_max_pairs_per_device,
    )
    status = status_messages | "DecodeGatewayStatus" >> DecodeGatewayStatus(
        window_mode="event_time", allowed_lateness_s=config.allowed_lateness_s,
        trigger=AfterWatermark(late=AfterCount(1)),
    )
    results: dict[str, beam.PCollection] = {
        "records": processed["records"], "hours": processed["hours"], "status": status["main"],
        "dead_letters": processed["dead_letters"], "status_dead_letters": status[STATUS_DEAD_LETTERS],
    }
    if config.accounts is not None and config.model is not None:
        scored = processed["days"] | "ScoreCustomers" >> ScoreCustomers(
            config.accounts, config.model, score_account, status=status["main"],
            trigger=scoring_trigger(config.score_every_s),
        )
        results.update(signals=scored[SIGNALS], alerts=scored[ALERTS])
    # Outputs are registered for rollback only when their inputs were landed (and so can be replayed).
    files = BundleFiles(config.lake, config.out, config.writer if config.land else None)
    _ = results | "PublishResults" >> PublishResults(files, config.influx)
    return p


def local_beam_args() -> list[str]:
    """The local default: FnApiRunner in this process, named so Prism is never downloaded.

    The only local runner here that executes an unbounded splittable DoFn with
    bundle finalization; in-process, so the source's connections and the
    finalizer that acknowledges live in one process (docs/STREAMING.md).
    """
    return ["--runner=FnApiRunner", "--direct_running_mode=in_memory",
            "--default_sdk_harness_log_level=WARNING"]


def run(config: IngestConfig, beam_args: list[str]) -> Any:  # -> PipelineResult
    """Run the job to its end; on a clean end, clear the replay registry.

    The registry (pending landing files, registered outputs) is kept only on a
    runner that holds committed bundles in memory, as the sinks decide it from
    the same pipeline (``sinks.keeps_bundles_in_memory``).
    """
    stop_file = config.source.stop_file
    if stop_file:
        Path(stop_file).unlink(missing_ok=True)  # a stale stop request from an earlier run
    if config.model is not None:
        write_health_model(config.out, config.model)  # the signals travel with the model that scored them
    options = PipelineOptions(beam_args or local_beam_args())
    options.view_as(StandardOptions).streaming = True
    pipeline = build_pipeline(options, config)
    registry = config.land and keeps_bundles_in_memory(pipeline.runner)
    if registry:
        # What an unfinished run derived is rebuilt from its replayed inputs, once.
        removed = rollback_unfinished_outputs(config.lake, config.writer)
        if removed or config.replay:
            log.info("unfinished run: removed %d of its outputs, replaying %d landing files",
                     removed, len(config.replay))
    result = pipeline.run()
    result.wait_until_finish()
    if registry:
        clear_pending(config.lake, config.writer)
    return result
