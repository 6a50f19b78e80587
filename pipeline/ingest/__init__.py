"""The streaming entry point: MQTT → the shared transforms → lake, InfluxDB, alerts.

    mqtt.py      ReadFromMqtt, the Beam source (splittable DoFn, shared subscription,
                 acknowledgements in the bundle finalizer)
    sinks.py     per-bundle atomic file sinks: write-ahead landing, raw archive panes,
                 JSON-lines dead letters and alerts
    job.py       IngestConfig and build_pipeline (the plan, as a value)
    cli.py       ``fleetpulse ingest``

Nothing heavy is imported here, so ``fleetpulse ingest --help`` starts fast;
see ``docs/STREAMING.md`` for what runs on which runner and what is guaranteed.
"""
