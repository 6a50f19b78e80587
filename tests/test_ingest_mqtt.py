"""ReadFromMqtt against a real Mosquitto, run by Beam's FnApiRunner (the local runner that
executes unbounded splittable DoFns with bundle finalization; docs/STREAMING.md).

Each test first creates the readers' persistent sessions and shared subscription, as a
deployed job would have them, so the messages published afterwards wait in the broker."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.util import assert_that, equal_to

from fleetpulse.pipeline.jobs.ingest import local_beam_args
from fleetpulse.pipeline.sources.mqtt import MqttSourceConfig, ReadFromMqtt

from .servers import Server
from .test_ingest_support import T0, create_session, publish, topic

pytestmark = pytest.mark.integration

TOPIC = topic("c1", "c1-s1", "c1-gw1")


def numbered(n: int, start: int = 0) -> list[tuple[str, bytes]]:
    return [
        (TOPIC, json.dumps({"n": i, "records": [{"ts_ms": T0 + i * 1000}]}).encode())
        for i in range(start, start + n)
    ]


def options() -> PipelineOptions:
    opts = PipelineOptions(local_beam_args())
    opts.view_as(StandardOptions).streaming = True
    return opts


def config(broker: Server, **overrides: Any) -> MqttSourceConfig:
    settings: dict[str, Any] = dict(
        port=broker.port, client_id_prefix="it-reader", share_group="it", idle_stop_ms=800
    )
    settings.update(overrides)
    return MqttSourceConfig(**settings)


def number(row: dict[str, Any]) -> int:
    return int(json.loads(row["payload"])["n"])


def read_numbers(cfg: MqttSourceConfig, expected: list[int]) -> None:
    with beam.Pipeline(options=options()) as p:
        got = p | ReadFromMqtt(cfg) | beam.Map(number)
        assert_that(got, equal_to(expected))


class FailAt(beam.DoFn):
    """Fails the bundle that holds message ``n`` (a crash after some bundles committed)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def process(self, row: dict[str, Any]) -> Any:
        if number(row) == self.n:
            raise RuntimeError(f"planted failure at message {self.n}")
        yield row


def test_reads_exactly_what_was_published_and_a_restart_gets_nothing_again(mosquitto: Server) -> None:
    create_session(mosquitto.port, config(mosquitto))
    publish(mosquitto.port, numbered(450))
    read_numbers(config(mosquitto, max_messages=450), list(range(450)))
    # Same client id, persistent session: everything was acknowledged, nothing comes back.
    read_numbers(config(mosquitto), [])


def test_only_messages_of_finalized_bundles_are_acknowledged(mosquitto: Server) -> None:
    # Bundles hold at most 100 messages (the broker's in-flight window for the reader),
    # so a failure at message 150 comes after the bundle of 0..99 was committed.
    cfg = config(mosquitto, max_messages_per_bundle=100, receive_maximum=100, max_bundle_ms=2000)
    create_session(mosquitto.port, cfg)
    publish(mosquitto.port, numbered(300))
    with pytest.raises(Exception, match="planted failure at message 150"):
        with beam.Pipeline(options=options()) as p:
            _ = p | ReadFromMqtt(cfg) | beam.ParDo(FailAt(150))
    # The failed bundle (100..199) was never finalized: its messages, and the ones after,
    # come again. The committed bundle's were acknowledged in order, so what comes again
    # is a suffix; it may start before 100 because the failed run's connection is cut by
    # the restart's session takeover before the broker read all of its PUBACKs (the
    # FnApiRunner does not tear a failed pipeline's DoFns down) — a duplicate, never a loss.
    with beam.Pipeline(options=options()) as p:
        again = p | ReadFromMqtt(cfg) | beam.Map(number)
        assert_that(again, lambda got: check_suffix(sorted(got), first_at_most=100, end=300))


def check_suffix(numbers: list[int], *, first_at_most: int, end: int) -> None:
    assert numbers, "the unfinalized messages were not redelivered"
    assert numbers == list(range(numbers[0], end)), "a gap or a duplicate in the redelivery"
    assert numbers[0] <= first_at_most


def test_readers_split_a_shared_subscription_without_doubling(mosquitto: Server) -> None:
    cfg = config(mosquitto, readers=2)
    create_session(mosquitto.port, cfg)
    publish(mosquitto.port, numbered(400))
    read_numbers(cfg, list(range(400)))


def test_elements_carry_the_batch_event_time(mosquitto: Server) -> None:
    cfg = config(mosquitto)
    create_session(mosquitto.port, cfg)
    publish(mosquitto.port, numbered(5))
    with beam.Pipeline(options=options()) as p:
        stamped = p | ReadFromMqtt(cfg) | beam.Map(
            lambda row, ts=beam.DoFn.TimestampParam: (number(row), ts.micros // 1000)
        )
        assert_that(stamped, equal_to([(i, T0 + i * 1000) for i in range(5)]))


def test_mqtt_3_1_1_reads_everything_once_on_a_persistent_session(mosquitto: Server) -> None:
    # Brokers without MQTT 5 (the demo's amqtt): one reader, no shared subscription,
    # clean_session=False keeps the session and its unacknowledged messages.
    cfg = config(mosquitto, protocol="3.1.1", share_group=None, client_id_prefix="ingest-v311")
    create_session(mosquitto.port, cfg)
    publish(mosquitto.port, numbered(250))
    read_numbers(replace(cfg, max_messages=250), list(range(250)))
    read_numbers(cfg, [])
    with pytest.raises(ValueError, match="share_group"):
        replace(cfg, share_group="g")
