"""``python -m bench [--quick] [NAME ...]``: run the benchmarks and print their ratios.

Exit status 1 if a benchmark with a target ratio misses it. Record the figures
and the command in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys

BENCHMARKS = {
    "validation": "bench.bench_validation",
    "line_protocol": "bench.bench_line_protocol",
    "rollups": "bench.bench_rollups",
    "influx_sink": "bench.bench_influx_sink",
    "backfill_columnar": "bench.bench_backfill_columnar",
    "gateway": "bench.bench_gateway",
    "spool_commit": "bench.bench_spool_commit",
    "ingest": "bench.bench_ingest",
    "scale": "bench.bench_scale",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help="small data, for a smoke run")
    parser.add_argument("--records", type=int, help="input size, for the benchmarks that take one "
                        "(backfill_columnar)")
    args = parser.parse_args(argv)
    sized = {"backfill_columnar"}
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; known: {', '.join(BENCHMARKS)}")
    print(f"# python {platform.python_version()} on {platform.machine()}, {platform.node()}")
    failed = False
    names = args.names or list(BENCHMARKS)
    if args.records is not None:
        if args.records < 1:
            parser.error(f"--records must be at least 1, got {args.records}")
        if not set(names) <= sized:
            parser.error(f"--records applies only to {', '.join(sorted(sized))}; name it alone")
    for name in names:
        options = {"records": args.records} if name in sized else {}
        for comparison in importlib.import_module(BENCHMARKS[name]).run(quick=args.quick, **options):
            print(comparison.line(), flush=True)
            failed |= not comparison.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
