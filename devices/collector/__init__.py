"""The gateway collector: device messages on the local broker → validated, stamped batches upstream.

``config`` (TOML → typed, validated config), ``batching`` (envelopes by count,
time and size), ``collector`` (the lifecycle: start, stop/drain, counters),
``cli`` (``fleetpulse gateway run|check``). Standard library + paho-mqtt only.
"""
