"""``make fuzz``: the hostile-input properties of ``tests/hostile.py`` with a budget of minutes.

    make fuzz                                   # FUZZ_SECONDS=600
    .venv/bin/python -m tests.fuzz --seconds 60 --examples 200

The targets take turns until the time is up; each turn is one Hypothesis run
of ``--examples`` examples from a fresh seed (no example database, so every
turn explores anew):

* ``validator`` — any bytes, hostile records and arrays of them as a device
  message through the shared Validator, and the gateway's dead letters;
* ``landing_decoder`` — any landing row (any topic, any payload, any
  ``received_ms``, not even a dict) through LandingDecoder;
* ``arrow_decoder`` — chunks of landing rows through the ArrowDecoder,
  compared with LandingDecoder;
* ``records`` — valid envelopes holding any records, both decoders compared
  (reasons and details too);
* ``landing_reader`` — MQTT messages with any topic bytes → landing rows → a
  landing file → read back → both decoders;
* ``status`` — the gateway status decoder.

Every output goes through the checks of the property tests: the Beam coder of
its PCollection, the lake's Arrow schema, IPC and Parquet, strict JSON lines.
Prints a line per turn and a table at the end; stops at the first finding,
prints Hypothesis's (shrunk) falsifying example and exits 1. The property
tests (``tests/test_hostile_decode.py``) run the same bodies with a CI budget.
"""

from __future__ import annotations

import argparse
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from tests import hostile

DEVICE_MESSAGES = st.tuples(
    st.one_of(
        hostile.payloads(),
        hostile.records().map(lambda r: hostile.to_bytes(hostile.dumps(r))),
        st.tuples(st.lists(hostile.records(), max_size=5), st.booleans()).map(
            lambda drawn: hostile.to_bytes(hostile.dumps(drawn[0], ascii_only=drawn[1]))),
    ),
    st.sampled_from([None, "d1", "d2"]),
)

#: name -> (what to draw, the property that must hold for it)
TARGETS: dict[str, tuple[st.SearchStrategy[Any], Callable[..., None]]] = {
    "validator": (DEVICE_MESSAGES, hostile.validate_as_the_gateway_does),
    "landing_decoder": (hostile.LANDING_CHUNKS, hostile.decode_landing_rows),
    "arrow_decoder": (hostile.LANDING_CHUNKS, hostile.compare_decoders),
    "records": (st.tuples(hostile.RECORD_SETS, st.booleans()), hostile.compare_on_records),
    "landing_reader": (hostile.MQTT_MESSAGES, hostile.land_mqtt_messages),
    "status": (st.tuples(hostile.TOPICS, hostile.payloads()), hostile.decode_status),
}


def turn(name: str, examples: int, seed_value: int, counts: Counter[str]) -> None:
    """One Hypothesis run of target ``name``; raises (after shrinking) on a finding."""
    strategy, prop = TARGETS[name]

    @settings(max_examples=examples, deadline=None, database=None, print_blob=True,
              phases=(Phase.generate, Phase.shrink), suppress_health_check=list(HealthCheck))
    @seed(seed_value)
    @given(strategy)
    def run(drawn: Any) -> None:
        counts[name] += 1
        if isinstance(drawn, tuple) and name != "landing_reader":
            prop(*drawn)
        else:
            prop(drawn)

    run()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.fuzz", description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=600.0, help="time budget (default 600)")
    parser.add_argument("--examples", type=int, default=200, help="examples per turn (default 200)")
    parser.add_argument("--targets", nargs="*", choices=sorted(TARGETS), default=sorted(TARGETS))
    parser.add_argument("--seed", type=int, help="seed of the seeds (default: random)")
    args = parser.parse_args(argv)
    seeds = random.Random(args.seed)
    # A topic outside the subscription is logged as the reader ignores it: expected here, thousands of times.
    logging.getLogger("fleetpulse.pipeline.sources.mqtt").setLevel(logging.ERROR)
    hostile.coders()  # build the pipeline whose coders are checked once, outside the clock
    counts: Counter[str] = Counter()
    spent: Counter[str] = Counter()
    start = time.monotonic()
    turns = 0
    while time.monotonic() - start < args.seconds:
        name = args.targets[turns % len(args.targets)]
        turns += 1
        seed_value = seeds.getrandbits(64)
        began = time.monotonic()
        try:
            turn(name, args.examples, seed_value, counts)
        except Exception as exc:  # noqa: BLE001 - a finding: reported, then the run fails
            print(f"FINDING in {name} (turn {turns}, seed {seed_value}): {type(exc).__name__}: {exc}",
                  file=sys.stderr)
            report(counts, spent, time.monotonic() - start, findings=1)
            return 1
        spent[name] += time.monotonic() - began
        print(f"{time.monotonic() - start:7.0f}s  {name:<16} {counts[name]:>9,} examples", flush=True)
    report(counts, spent, time.monotonic() - start, findings=0)
    return 0


def report(counts: Counter[str], spent: Counter[str], elapsed: float, *, findings: int) -> None:
    print(f"\n{'target':<16} {'examples':>10} {'seconds':>8} {'per s':>7}")
    for name in sorted(counts):
        rate = counts[name] / spent[name] if spent[name] else 0.0
        print(f"{name:<16} {counts[name]:>10,} {spent[name]:>8.0f} {rate:>7.1f}")
    print(f"{'total':<16} {sum(counts.values()):>10,} {elapsed:>8.0f}   findings: {findings}")


if __name__ == "__main__":
    sys.exit(main())
