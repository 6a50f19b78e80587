"""Where the jobs' messages come from.

    mqtt.py  ReadFromMqtt: the central broker, live (splittable DoFn, shared
             subscription, acknowledgements in the bundle finalizer)
    lake.py  ReadLanding / ReadLandingTables: the lake's landing zones (the
             backfill); ReplayLanding: what a killed streaming run left pending
"""
