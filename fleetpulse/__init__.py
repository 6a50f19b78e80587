"""FleetPulse: device telemetry to customer-success signals.

The code lives in three packages named for the architecture's folders:
``fleetpulse.schemas`` (schemas/), ``fleetpulse.devices`` (devices/) and
``fleetpulse.pipeline`` (pipeline/). This package holds the command
dispatcher and what every part shares, importable on the gateway (paho-mqtt
and the standard library only): the error types (``errors``), the retry
back-off (``backoff``), the clocks (``clock``), and how MQTT clients are built
(``mqtt_client``) and tell a TLS refusal from an unreachable broker
(``mqtt_tls``).
"""

__version__ = "0.1.0"
