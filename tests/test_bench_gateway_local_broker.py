"""Smoke tests for bench/bench_gateway.py's local-broker option and its queue measurement.

Tiny sizes: they check that the measurements run against the gateway's broker as
installed (``--local-conf``) and give consistent figures, not what the figures
are (docs/BENCHMARKS.md, "Local broker persistence").
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.bench_gateway import forward_rate, main, queue_rate

SHIPPED = Path(__file__).resolve().parents[1] / "deploy" / "gateway" / "mosquitto.conf"


@pytest.mark.integration
def test_forward_and_queue_run_on_the_installed_gateway_broker(tmp_path: Path) -> None:
    forward = forward_rate(tmp_path / "forward", records=300, repeats=1, local_conf=SHIPPED)
    assert forward.baseline.items == forward.candidate.items == 300  # raises unless all arrive
    assert f"local: {SHIPPED}" in forward.line()
    queue = queue_rate(tmp_path / "queue", records=300, local_conf=SHIPPED)
    assert (queue.records, queue.messages) == (300, 30)
    assert queue.queue_s > 0 and queue.drain_s > 0
    assert queue.db_bytes > 0  # the shipped file saved the queued messages at once
    assert "30 device messages (300 records) acknowledged" in queue.line()


@pytest.mark.integration
def test_queue_on_the_plain_test_broker_saves_nothing_meanwhile(tmp_path: Path) -> None:
    queue = queue_rate(tmp_path, records=300)
    assert queue.db_bytes == 0 and queue.broker.startswith("test broker")


def test_a_missing_local_conf_is_refused_naming_the_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--only", "queue", "--local-conf", "/nonexistent/mosquitto.conf"])
    assert info.value.code == 2
    assert "--local-conf /nonexistent/mosquitto.conf: no such file" in capsys.readouterr().err
