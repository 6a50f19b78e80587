"""The InfluxDB sink's environment: every INFLUX_* variable it reads is documented, and only those.

Run: .venv/bin/pytest tests/test_influx_config.py
Unit tests, no server: the set read is what ``InfluxConfig.from_env`` asks
a recording environment for; the set documented is the README's InfluxDB
table (section "The streaming job and the backfill").
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from fleetpulse.pipeline.outputs.influx import InfluxConfig

ROOT = Path(__file__).resolve().parent.parent
NAME = re.compile(r"\bINFLUX_[A-Z0-9_]+\b(?!\.md)")  # not schemas/INFLUX_V1.md


class RecordingEnviron(Mapping[str, str]):
    """An environment that remembers every variable looked up in it."""

    def __init__(self, values: Mapping[str, str]) -> None:
        self._values = dict(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> str:
        self.read.add(key)
        return self._values[key]

    def __contains__(self, key: object) -> bool:
        if isinstance(key, str):
            self.read.add(key)
        return key in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def keys_read() -> set[str]:
    """Every INFLUX_* variable from_env looks up, over a v2 and a v1 configuration."""
    read: set[str] = set()
    for values in (
        {"INFLUX_URL": "http://influx:8086", "INFLUX_ORG": "o", "INFLUX_BUCKET": "b",
         "INFLUX_TOKEN": "t"},
        {"INFLUX_URL": "http://influx:8086", "INFLUX_DB": "fleetpulse"},
    ):
        environ = RecordingEnviron(values)
        assert InfluxConfig.from_env(environ) is not None
        read |= environ.read
    return {key for key in read if key.startswith("INFLUX_")}


def documented_in_readme(doc: str = "README.md") -> set[str]:
    """The variables in the first column of ``doc``'s INFLUX_* table (the README's by default)."""
    lines = (ROOT / doc).read_text("utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| `INFLUX_URL`"))
    while lines[start - 1].startswith("|"):
        start -= 1
    names: set[str] = set()
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        names |= set(NAME.findall(line.split("|")[1]))
    return names


@pytest.mark.parametrize("doc", ["README.md", "docs/CONFIG.md"])
def test_every_variable_read_is_in_the_table_and_nothing_else(doc: str) -> None:
    read, documented = keys_read(), documented_in_readme(doc)
    assert read - documented == set(), f"read by InfluxConfig.from_env but not in {doc}'s table"
    assert documented - read == set(), f"in {doc}'s table but not read by InfluxConfig.from_env"


@pytest.mark.parametrize("doc", ["deploy/influxdb/README.md", "docs/CONFIG.md"])
def test_other_docs_name_only_variables_that_are_read(doc: str) -> None:
    named = set(NAME.findall((ROOT / doc).read_text("utf-8")))
    assert named - keys_read() == set()

