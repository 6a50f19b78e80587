"""The jobs, each a plan over the shared parts, and the functions that run them.

    backfill.py  the batch job over the lake: JobConfig, build_pipeline, run
    ingest.py    the streaming job from the central broker: IngestConfig, build_pipeline, run
    follow.py    ``fleetpulse ingest --follow``: streaming rounds, each restated by the backfill
    metrics.py   the counters of a finished run

Both jobs read as: a source → DecodeBatches → dedupe → DeviceHourlyRollups →
CustomerDailyUsage → ScoreCustomers → PublishResults. Only the source and the
window/trigger policy differ. A job imports its parts; no part imports a job,
and no job imports a command module (:mod:`fleetpulse.pipeline.cli`).
"""
