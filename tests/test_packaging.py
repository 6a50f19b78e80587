"""The gateway install: `pip install fleetpulse` brings paho-mqtt and nothing heavy,
the gateway commands work there, and a pipeline command says how to get the extra.

Builds a real, empty venv (no system site-packages) and installs the project
into it, so this needs pip to reach PyPI (or its cache) for paho-mqtt.
"""

from __future__ import annotations

import shutil
import subprocess
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def gateway_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("gateway-venv")
    # Install from a copy: pip builds in the source folder and would leave build/ there.
    source = tmp_path_factory.mktemp("source") / "fleetpulse"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__"))
    venv.EnvBuilder(with_pip=True).create(where)
    python = where / "bin" / "python"
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(source)],
        check=True,
        timeout=600,
    )
    return where


def run(venv_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv_dir / "bin" / "fleetpulse"), *args], capture_output=True, text=True, timeout=60
    )


def test_gateway_install_has_only_paho(gateway_venv: Path) -> None:
    listed = subprocess.run(
        [str(gateway_venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
        capture_output=True, text=True, check=True,
    ).stdout.lower()
    names = {line.split("==")[0] for line in listed.splitlines()}
    assert "paho-mqtt" in names and "fleetpulse" in names
    assert not names & {"apache-beam", "pyarrow", "influxdb-client", "pyyaml", "amqtt"}


def test_gateway_commands_work_without_the_pipeline_extra(gateway_venv: Path, tmp_path: Path) -> None:
    assert run(gateway_venv, "gateway", "run", "--help").returncode == 0
    sim = run(gateway_venv, "simulate", "--customers", "8", "--days", "2", "--to-files", "--out", str(tmp_path))
    assert sim.returncode == 0, sim.stderr
    assert (tmp_path / "accounts.csv").exists()
    only = run(gateway_venv, "simulate", "--customers", "8", "--registry-only", "--out", str(tmp_path / "reg"))
    assert only.returncode == 0, only.stderr
    assert (tmp_path / "reg" / "gateways").is_dir() and not (tmp_path / "reg" / "telemetry").exists()
    check = run(gateway_venv, "gateway", "check", "--config", str(next((tmp_path / "gateways").glob("*.toml"))))
    assert check.returncode == 0, check.stderr


@pytest.mark.parametrize("command", ["backfill", "land", "health", "demo"])
def test_pipeline_command_without_the_extra_exits_1_with_the_install_command(
    gateway_venv: Path, command: str
) -> None:
    result = run(gateway_venv, command, "--lake", "x")
    assert result.returncode == 1
    extras = "pipeline,demo" if command == "demo" else "pipeline"
    assert result.stderr.strip().endswith(f"pip install 'fleetpulse[{extras}]'")
    assert "Traceback" not in result.stderr


def test_apache_beam_is_pinned_in_one_place() -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    hits = [
        name
        for name in tracked.stdout.splitlines()
        if name != "tests/test_packaging.py"
        and (ROOT / name).is_file()
        and "apache-beam==" in (ROOT / name).read_text(errors="ignore")
    ]
    assert hits == ["pyproject.toml"]
