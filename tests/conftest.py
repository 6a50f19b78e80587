"""Shared fixtures. Integration fixtures start real servers (see servers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from . import servers


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[servers.Server]:
    """A fresh Mosquitto broker for one test."""
    server = servers.mosquitto(tmp_path / "mosquitto").start()
    yield server
    server.stop()


@pytest.fixture
def mosquitto_pair(tmp_path: Path) -> Iterator[tuple[servers.Server, servers.Server]]:
    """Two brokers: the gateway's local one and the central one."""
    local = servers.mosquitto(tmp_path / "local-broker").start()
    central = servers.mosquitto(tmp_path / "central-broker").start()
    yield local, central
    central.stop()
    local.stop()


@pytest.fixture
def influxdb_v1(tmp_path: Path) -> Iterator[servers.Server]:
    server = servers.influxdb_v1(tmp_path / "influxdb").start()
    yield server
    server.stop()


@pytest.fixture
def victoria_metrics(tmp_path: Path) -> Iterator[servers.Server]:
    server = servers.victoria_metrics(tmp_path / "vm").start()
    yield server
    server.stop()
