"""The central broker's ACL, generated from the gateways' collector configs.

    fleetpulse gateway acl /etc/fleetpulse/gateways/*.toml > /etc/mosquitto/acl

Each gateway gets a Mosquitto ``user`` block that lets it write exactly its
own two topics (``.../customers/<c>/sites/<s>/gateways/<g>/batches`` and
``.../status``), with the customer and site spelled out. A ``pattern`` rule
with ``%u`` would only pin the gateway level, so a gateway could publish under
any other customer's id: with one block per gateway it cannot. The readers
(the lander, the streaming ingest) may read every gateway's topics and write
none.

The username is ``upstream.username``, or the gateway id when it is empty (a
gateway authenticated by its client certificate alone, with Mosquitto's
``use_identity_as_username true``, must then have the gateway id as the
certificate's CN). The central broker binds client ids to usernames
(``use_username_as_clientid true`` in ``deploy/central/mosquitto.conf``), so a
username here is also the one session its owner may have: no two gateways or
readers share one, and a reader that connects several times (the streaming
job's readers) needs one user per connection, each passed as ``--reader``.
Configs are validated as the collector would validate them, but without the
environment and without reading any secret: generating an ACL needs neither
the gateways' passwords nor their keys.

Standard library only.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from fleetpulse.errors import ConfigError
from fleetpulse.schemas import load_contract

from .config import CollectorConfig, parse_config, read_toml

#: Who reads the gateways' topics when no --reader is given (pipeline/lake/lander.py's user).
DEFAULT_READERS: tuple[str, ...] = ("fleetpulse-lander",)
_USERNAME_RE = re.compile(r"[^\s#]\S*")  # Mosquitto's ACL lines split on whitespace


@dataclass(frozen=True)
class GatewayGrant:
    """What one gateway may write on the central broker, and where that came from."""

    username: str
    customer_id: str
    site_id: str
    gateway_id: str
    source: str

    def topics(self) -> tuple[str, str]:
        """The gateway's batch and status topics (the only ones it may write)."""
        contract = load_contract()
        ids = {"customer_id": self.customer_id, "site_id": self.site_id, "gateway_id": self.gateway_id}
        return contract.topic("gateway_batches", **ids), contract.topic("gateway_status", **ids)


def read_gateway_config(path: str | Path) -> CollectorConfig:
    """Validate a collector TOML file without the environment and without resolving secrets."""
    path = Path(path)
    source = str(path)
    raw = read_toml(path, missing_fix="pass the paths of existing gateway TOML files")
    # environ={}: the ACL is built on an admin machine from the files the
    # gateways run with; this machine's FLEETPULSE_GATEWAY__* must not leak in.
    return parse_config(raw, source=source, base_dir=path.resolve().parent, environ={})


def grant_for(config: CollectorConfig) -> GatewayGrant:
    """The grant for one validated collector config."""
    ids = config.gateway
    username = config.upstream.username or ids.gateway_id
    if not _USERNAME_RE.fullmatch(username):
        raise ConfigError(source=config.source, key="upstream.username",
                          problem=f"{username!r} cannot be written in a Mosquitto ACL",
                          fix="use a username without spaces that does not start with '#'")
    return GatewayGrant(username, ids.customer_id, ids.site_id, ids.gateway_id, config.source)


def grants_from_files(paths: Iterable[str | Path]) -> list[GatewayGrant]:
    """One grant per config file; two gateways sharing a username or a gateway id are refused."""
    grants: list[GatewayGrant] = []
    by_user: dict[str, GatewayGrant] = {}
    by_gateway: dict[tuple[str, str, str], GatewayGrant] = {}
    for path in paths:
        grant = grant_for(read_gateway_config(path))
        ids = (grant.customer_id, grant.site_id, grant.gateway_id)
        if grant.username in by_user:
            raise ConfigError(source=grant.source, key="upstream.username",
                              problem=f"{grant.username!r} is also the username of {by_user[grant.username].source}",
                              fix="give every gateway its own central-broker username")
        if ids in by_gateway:
            raise ConfigError(source=grant.source, key="gateway.gateway_id",
                              problem=f"{grant.gateway_id!r} at {grant.customer_id}/{grant.site_id} "
                                      f"is also configured in {by_gateway[ids].source}",
                              fix="pass each gateway's config once; give every gateway its own id")
        by_user[grant.username] = grant
        by_gateway[ids] = grant
        grants.append(grant)
    return grants


def render_acl(grants: Sequence[GatewayGrant], readers: Sequence[str] = DEFAULT_READERS) -> str:
    """The Mosquitto ACL text: one block per gateway (sorted), then the readers' blocks."""
    contract = load_contract()
    for i, reader in enumerate(readers):
        if not _USERNAME_RE.fullmatch(reader):
            raise ConfigError(source="command line", key="--reader",
                              problem=f"{reader!r} cannot be written in a Mosquitto ACL",
                              fix="use a username without spaces that does not start with '#'")
        if reader in readers[:i]:
            raise ConfigError(source="command line", key="--reader",
                              problem=f"{reader!r} is given twice",
                              fix="give each reader connection its own username (it is its client id)")
    for grant in grants:
        if grant.username in readers:
            raise ConfigError(source=grant.source, key="upstream.username",
                              problem=f"{grant.username!r} is also a reader (--reader)",
                              fix="give the gateway its own username; readers may not write")
    lines = [
        "# Mosquitto ACL for the FleetPulse central broker, generated by",
        "#   fleetpulse gateway acl GATEWAY.toml [GATEWAY.toml ...] > acl",
        "# from the gateways' collector configs: regenerate it (and reload Mosquitto",
        "# with SIGHUP) whenever a gateway is added, moved or removed; don't edit it.",
        "# A gateway may write only its own customer's, site's and gateway's topics;",
        "# a user with no block here may do nothing. Each username is also its",
        "# client id (use_username_as_clientid): one connection, one session per user.",
    ]
    for grant in sorted(grants, key=lambda g: (g.customer_id, g.site_id, g.gateway_id)):
        batches, status = grant.topics()
        lines += [
            "",
            f"# gateway {grant.gateway_id} of customer {grant.customer_id}, site {grant.site_id}",
            f"user {grant.username}",
            f"topic write {batches}",
            f"topic write {status}",
        ]
    for reader in readers:
        lines += [
            "",
            "# reader: every gateway's batches and status (persistent session, QoS 1)",
            f"user {reader}",
            f"topic read {contract.subscription('gateway_batches')}",
            f"topic read {contract.subscription('gateway_status')}",
        ]
    return "\n".join(lines) + "\n"
