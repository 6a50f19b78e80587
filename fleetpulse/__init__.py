"""FleetPulse: device telemetry to customer-success signals.

The code lives in three packages named for the architecture's folders:
``fleetpulse.schemas`` (schemas/), ``fleetpulse.devices`` (devices/) and
``fleetpulse.pipeline`` (pipeline/). This package holds only the command
dispatcher and the shared error types.
"""

__version__ = "0.1.0"
