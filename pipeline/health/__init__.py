"""The customer health model: configuration (weights, bands, lifecycle) and daily scoring.

``load_health_model`` reads and validates the YAML model; ``score_account``
turns one customer's daily telemetry into DailySignal rows and first-cut Alerts.
"""

from .config import HealthModel, load_health_model
from .score import FleetContext, score_account

__all__ = ["FleetContext", "HealthModel", "load_health_model", "score_account"]
