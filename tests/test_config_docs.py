"""docs/CONFIG.md names every flag of the long-running commands and jobs.

The reference is written by hand (it explains, not just lists), so a flag
added to a command without a line in the reference is caught here.
"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

CONFIG = (Path(__file__).resolve().parents[1] / "docs" / "CONFIG.md").read_text()

MODULES = {
    "land": "fleetpulse.pipeline.cli.land",
    "backfill": "fleetpulse.pipeline.cli.backfill",
    "ingest": "fleetpulse.pipeline.cli.ingest",
}


@pytest.mark.parametrize("command", sorted(MODULES))
def test_every_flag_is_in_the_configuration_reference(command: str) -> None:
    parser = argparse.ArgumentParser(add_help=False)
    importlib.import_module(MODULES[command]).add_arguments(parser)
    section = CONFIG[CONFIG.index(f"(`fleetpulse {command}`)"):]
    section = section[: section.find("\n## ")]
    documented = set(re.findall(r"--[a-z][a-z0-9-]*", section))
    flags = {s for a in parser._actions for s in a.option_strings if s.startswith("--")}
    assert flags <= documented, f"fleetpulse {command}: not in docs/CONFIG.md: {sorted(flags - documented)}"
