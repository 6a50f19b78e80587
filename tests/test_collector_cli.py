"""``fleetpulse gateway run|check``: a bad config is one line on stderr and a non-zero exit."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetpulse.cli import main

from .test_collector_support import config_text, write_config


@pytest.mark.parametrize(
    ("change", "key"),
    [
        (lambda t: t.replace('customer_id = "c-0001"\n', ""), "gateway.customer_id"),
        (lambda t: t.replace("max_interval_ms = 1000", 'max_interval_ms = "1s"'), "batch.max_interval_ms"),
    ],
)
def test_bad_config_exits_non_zero_with_one_line_naming_file_and_key(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], change, key: str,
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("FLEETPULSE_GATEWAY__")]:
        monkeypatch.delenv(name)
    path = tmp_path / "gateway.toml"
    path.write_text(change(config_text()))
    assert main(["gateway", "run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert str(path) in lines[0] and key in lines[0] and "fix:" in lines[0]


def test_check_prints_the_resolved_config_with_the_password_masked(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_config(tmp_path, extra_upstream='password_env = "FLEETPULSE_TEST_UPSTREAM_PW"\n')
    path.write_text(path.read_text().replace('username = ""', 'username = "gw1"'))
    monkeypatch.setenv("FLEETPULSE_TEST_UPSTREAM_PW", "do-not-print")
    monkeypatch.setenv("FLEETPULSE_GATEWAY__UPSTREAM__HOST", "central.example.com")
    assert main(["gateway", "check", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert 'host = "central.example.com"' in out
    assert "do-not-print" not in out and '"***"' in out


def test_run_requires_config(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["gateway", "run"])
    assert info.value.code == 2
    assert "--config" in capsys.readouterr().err
