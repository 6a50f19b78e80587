"""``python -m fleetpulse.pipeline.ingest …``: the ingest command without the main dispatcher.

The same arguments and exit codes as ``fleetpulse ingest`` (tests run it as a
process they can kill).
"""

from __future__ import annotations

import argparse
import logging
import sys

from fleetpulse.errors import ConfigError

from . import cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetpulse ingest", description=cli.__doc__.splitlines()[0])
    cli.add_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return cli.run(args)
    except ConfigError as exc:
        print(f"fleetpulse ingest: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
