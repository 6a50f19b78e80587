"""Digital-first playbooks: alerts to CSMs and digital touches to customers, each exactly once.

    config.py    the YAML model CS Ops edit (validated once; errors name file, playbook, key)
    history.py   an account's daily signals, registry row and gateway sightings
    triggers.py  pure evaluation of a condition over the ordered signals (met / clear / held)
    episodes.py  the episode state machine (open, update, re-notify, resolve; snooze, cap)
    ledger.py    the durable SQLite ledger and outbox
    render.py    what every alert carries, as template variables and JSON
    channels.py  Slack-compatible webhook, webhook, SMTP, MQTT, file
    delivery.py  the outbox worker (retries with capped exponential backoff)
    engine.py    run_playbooks(): judge new days, record, deliver; dry_run() for `playbooks check`
    (the commands: pipeline/cli/playbooks.py `fleetpulse playbooks check|run`, pipeline/cli/alerts.py `fleetpulse alerts`)

docs/PLAYBOOKS.md explains how to write a playbook; deploy/playbooks/lifecycle.yaml is the sample set.
"""
