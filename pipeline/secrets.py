"""Secret references: read where the secret is used, never carried in a pipeline graph.

A Beam job's DoFns are pickled and staged (for Dataflow, into
``--staging_location``); a password in their config would be staged with them.
Configs therefore hold a :class:`SecretRef` — Beam's own
``apache_beam.utils.secret.GcpSecret`` for a Secret Manager version — and the
DoFn reads it in ``setup``, on the worker. Used by the MQTT source
(``--password-secret``) and the InfluxDB sink (``INFLUX_TOKEN_SECRET``,
``INFLUX_PASSWORD_SECRET``).
"""

from __future__ import annotations

from typing import Protocol

from fleetpulse.errors import TerminalError


class SecretRef(Protocol):
    """A reference to a secret (Beam's ``apache_beam.utils.secret.Secret``); ``get_str()`` reads it."""

    def get_str(self) -> str: ...


def gcp_secret(version_name: str) -> SecretRef:
    """A reference to a Secret Manager version (``projects/<p>/secrets/<s>/versions/<v>``).

    Beam's ``GcpSecret``: nothing is read until ``get_str()``, which needs
    ``google-cloud-secret-manager`` (in ``apache-beam[gcp]``, i.e. the Dataflow image).
    """
    from apache_beam.utils.secret import GcpSecret

    return GcpSecret(version_name)


def is_secret_version(value: str) -> bool:
    """Whether ``value`` reads ``projects/<p>/secrets/<name>/versions/<version>``."""
    parts = value.split("/")
    return (
        len(parts) == 6
        and (parts[0], parts[2], parts[4]) == ("projects", "secrets", "versions")
        and all(parts)
    )


def read_secret(ref: SecretRef, what: str) -> str:
    """``ref``'s value; a TerminalError naming ``what`` and the likely fix when it cannot be read."""
    try:
        return ref.get_str()
    except RuntimeError as exc:  # Beam's GcpSecret wraps every client error in RuntimeError
        raise TerminalError(
            f"{what} cannot be read from its secret ({exc}); check the secret version and that the "
            "workers' service account has roles/secretmanager.secretAccessor on it"
        ) from None
