"""The demo: every FleetPulse part on embedded defaults, for ``make demo`` (``fleetpulse demo``).

    broker.py       the two MQTT brokers (Debian's Mosquitto, else amqtt in process)
    orchestrate.py  simulator → collectors → ingest + lander → backfill → playbooks → report
    progress.py     the progress display
"""
