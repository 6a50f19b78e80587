"""Where the jobs' messages come from.

    mqtt.py  ReadFromMqtt: the central broker, live (splittable DoFn, shared
             subscription, acknowledgements in the bundle finalizer)
    mqtt_config.py, mqtt_session.py  its settings and checks; one reader's connection
    lake.py  ReadLanding / ReadLandingTables: the lake's landing zones (the
             backfill); ReplayLanding: what a killed streaming run left pending
"""
