"""Files the simulator writes beside the telemetry: accounts registry, truth, gateway configs.

* ``accounts.csv`` — the CRM export the pipeline joins as a side input
  (``schemas/accounts.py`` defines and reads it). Header :data:`~fleetpulse.schemas.accounts.COLUMNS`; dates
  ISO ``YYYY-MM-DD``; ``arr_usd`` an integer; ``csm_owner`` and ``nps`` empty
  when unknown. It does NOT say which pattern an account was given.
  Routing columns for playbooks: ``contact_email`` is a made-up address per
  customer (``it-admin@<customer_id>.example``); ``csm_channel`` is
  :data:`HIGH_TOUCH_CSM_CHANNEL` for high-touch accounts with a CSM (their CSMs
  want a chat ping) and empty otherwise (the playbooks' default routing).
* ``truth.json`` — the planted ground truth (:meth:`~.fleet.Fleet.truth`).
* ``gateways/<gateway_id>.toml`` — one collector config per simulated gateway,
  in the layout ``fleetpulse gateway`` reads.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

from fleetpulse.schemas.accounts import COLUMNS, Account

from .fleet import Fleet, Gateway
from .generate import topic_prefix

#: the channel the simulated CRM names for high-touch accounts' CSMs (the demo playbooks define it)
HIGH_TOUCH_CSM_CHANNEL = "csm-chat"


def contact_email(account: Account) -> str:
    """The customer contact the registry lists: the account's own, else a reserved-domain stand-in."""
    return account.contact_email or f"it-admin@{account.customer_id}.example"


def csm_channel(account: Account) -> str:
    if account.csm_channel:
        return account.csm_channel
    return HIGH_TOUCH_CSM_CHANNEL if account.csm_owner and account.engagement_model == "high_touch" else ""


@dataclass(frozen=True)
class BrokerSettings:
    """Where the simulated gateways' local and upstream brokers are (both the same one here)."""

    host: str = "127.0.0.1"
    port: int = 1883
    protocol: str = "5"  # the MQTT version the collectors speak to it ("5" or "3.1.1")


def accounts_csv(accounts: tuple[Account, ...]) -> str:
    """The accounts registry as CSV text (``\\n`` line ends, so bytes are reproducible)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for a in accounts:
        writer.writerow(
            [
                a.customer_id,
                a.name,
                a.segment,
                a.engagement_model,
                a.arr_usd,
                a.contract_start.isoformat(),
                a.renewal_date.isoformat(),
                a.entitled_devices,
                a.csm_owner or "",
                "" if a.nps is None else a.nps,
                csm_channel(a),
                contact_email(a),
            ]
        )
    return out.getvalue()


def _toml_str(value: str) -> str:
    # A JSON string of printable text is a valid TOML basic string.
    return json.dumps(value)


def gateway_config(gateway: Gateway, broker: BrokerSettings) -> str:
    """The collector config (TOML) of one simulated gateway."""
    gid = gateway.gateway_id
    lines = [
        "# Collector config of a simulated gateway, written by `fleetpulse simulate`.",
        "[gateway]",
        f"customer_id = {_toml_str(gateway.customer_id)}",
        f"site_id = {_toml_str(gateway.site_id)}",
        f"gateway_id = {_toml_str(gid)}",
        "[local]",
        f"host = {_toml_str(broker.host)}",
        f"port = {broker.port}",
        f"topic_prefix = {_toml_str(topic_prefix(gid))}",
        f"client_id = {_toml_str(f'fleetpulse-gw-{gid}-local')}",
        f"protocol = {_toml_str(broker.protocol)}",
        "[upstream]",
        f"host = {_toml_str(broker.host)}",
        f"port = {broker.port}",
        f"client_id = {_toml_str(f'fleetpulse-gw-{gid}')}",
        f"protocol = {_toml_str(broker.protocol)}",
        "tls = false",
        "[batch]",
        "max_records = 500",
        "max_interval_ms = 1000",
        "[dead_letters]",
        f"path = {_toml_str(f'dead-letters/{gid}.jsonl')}",
    ]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class OutputPaths:
    accounts: Path
    truth: Path
    gateway_configs: tuple[Path, ...]


def write_outputs(fleet: Fleet, out_dir: Path | str, broker: BrokerSettings | None = None) -> OutputPaths:
    """Write accounts.csv, truth.json and gateways/*.toml under ``out_dir``.

    Stale ``gateways/*.toml`` from an earlier, larger run are removed so that
    nothing starts a collector for a gateway this fleet does not have.
    """
    broker = broker or BrokerSettings()
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    accounts = root / "accounts.csv"
    accounts.write_text(accounts_csv(fleet.accounts), encoding="utf-8", newline="")
    truth = root / "truth.json"
    truth.write_text(json.dumps(fleet.truth(), indent=2) + "\n", encoding="utf-8")
    gateways_dir = root / "gateways"
    gateways_dir.mkdir(exist_ok=True)
    wanted = {f"{g.gateway_id}.toml" for g in fleet.gateways}
    for old in gateways_dir.glob("*.toml"):
        if old.name not in wanted:
            old.unlink()
    configs = []
    for gateway in fleet.gateways:
        path = gateways_dir / f"{gateway.gateway_id}.toml"
        path.write_text(gateway_config(gateway, broker), encoding="utf-8")
        configs.append(path)
    return OutputPaths(accounts, truth, tuple(configs))
