"""WriteToInflux, the Beam composite around the InfluxDB sink: how it batches.

Run: .venv/bin/pytest tests/test_influx_write.py
Unit tests only: the pipeline is built, not run (the sink's writes are tested
against real servers in test_influx_sink.py and test_influx_batching.py).
"""

from __future__ import annotations

from typing import Any

import apache_beam as beam
import pytest

from fleetpulse.pipeline.outputs.influx import InfluxConfig, WriteToInflux


def v2_config(**overrides: Any) -> InfluxConfig:
    return InfluxConfig(url="http://influx:8086", org="acme", bucket="fleet", token="t", **overrides)


def batching_of(config: InfluxConfig, monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The arguments WriteToInflux(config) gives BatchElements when applied."""
    seen: list[dict[str, Any]] = []
    real = beam.BatchElements

    def recording(**kwargs: Any) -> beam.BatchElements:
        seen.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(beam, "BatchElements", recording)
    pipeline = beam.Pipeline()
    _ = pipeline | beam.Create([{"measurement": "m"}]) | WriteToInflux(config)
    return seen


@pytest.mark.parametrize(("batch_size", "smallest"), [(7, 7), (5000, 500), (20_000, 500)])
def test_the_lists_the_sink_gets_are_capped_at_the_configs_batch_size(
    batch_size: int, smallest: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # INFLUX_BATCH_SIZE is the one batch setting: a list longer than it would only be cut
    # into requests of that size again, and a composite cap below it would overrule it.
    assert batching_of(v2_config(batch_size=batch_size), monkeypatch) == [
        {"min_batch_size": smallest, "max_batch_size": batch_size}
    ]


def test_there_is_no_second_batch_size() -> None:
    with pytest.raises(TypeError):
        WriteToInflux(v2_config(), batch_size=100)
