"""deploy/compose.yaml runs commands that exist, with flags they accept.

Docker is not available here, so the stack itself is not started; what can
drift silently is checked instead: every service built from our Dockerfile
runs a ``fleetpulse`` subcommand whose parser accepts its arguments, secrets
come from the environment (``${VAR:?…}``), never literal values, and every
named volume a service mounts is declared.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from fleetpulse.cli import build_parser

COMPOSE = Path(__file__).resolve().parents[1] / "deploy" / "compose.yaml"
SECRET = re.compile(r"(PASSWORD|TOKEN|SECRET)")


def _compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _ours() -> list[tuple[str, dict[str, Any]]]:
    return [(name, svc) for name, svc in _compose()["services"].items()
            if svc.get("build", {}).get("dockerfile") == "deploy/Dockerfile"]


def test_the_stack_runs_the_landers_the_streaming_job_and_the_backfill() -> None:
    assert {name for name, _ in _ours()} >= {"lander", "status-lander", "ingest", "backfill"}


@pytest.mark.parametrize("name", [name for name, _ in _ours()])
def test_each_service_command_parses(name: str) -> None:
    command = dict(_ours())[name]["command"]
    parser = build_parser(command[0])
    args = parser.parse_args(command)  # exits (SystemExit) on an unknown flag
    assert args.command == command[0]


def test_secrets_come_from_the_environment() -> None:
    for name, svc in _compose()["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET.search(key):
                assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(value)), f"{name}: {key} is not from .env"


def test_named_volumes_are_declared() -> None:
    compose = _compose()
    declared = set(compose["volumes"])
    for name, svc in compose["services"].items():
        for mount in svc.get("volumes", []):
            source = mount.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name} mounts undeclared volume {source}"
