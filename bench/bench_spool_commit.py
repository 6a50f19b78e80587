"""What the spool's commit point costs a group commit (issue 12), fsync on, in ``$TMPDIR``.

Run from the repository root (``nice`` it on a shared machine)::

    python -m bench.bench_spool_commit            # 5 alternating trials per shape and group size
    python -m bench.bench_spool_commit --quick    # smoke run

Before issue 12 a commit fsynced the segment, and the cursor too when
acknowledgements had moved it. Now it also writes the commit point into a
cursor slot and fdatasyncs it, and a released segment is deleted only after
the cursor and the lock file's watermark are durable past it. Both are timed
alternately in the same run on the same records:

* the candidate is :class:`~fleetpulse.devices.collector.spool.Spool` as it is;
* the baseline is the same class with that I/O done the old way
  (:class:`CommitBefore`): no commit point, the cursor fsynced only when
  acknowledgements dirtied it, a released segment unlinked at once (and the
  directory fsynced with the next commit). Everything else is shared.

Two shapes, at a few group sizes (records per commit):

* **uplink down**: append and commit only, as while the central broker is
  unreachable; the old commit had one fsync, the new one two (the worst case);
* **uplink up**: each commit is followed by reading and acknowledging what it
  made durable, as the collector does when the uplink keeps up; the old commit
  fsynced the acknowledged cursor too.

``run(quick)`` returns the comparisons for ``python -m bench``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from fleetpulse.devices.collector.batching import encode_record
from fleetpulse.devices.collector.spool import Segment, Spool

from .bench_gateway import device_record
from .harness import Comparison, Measurement

GROUPS = (1, 10, 256)  # 1: a commit per record; 10: one device message; 256: a busy gateway
SHAPES = ("uplink down", "uplink up")


class CommitBefore(Spool):
    """The spool with its durability I/O as before issue 12 (the baseline; see the module docstring)."""

    def _persist_commit_point(self) -> None:
        if self._cursor_dirty and self._cursor_fd is not None:
            if self.fsync:
                os.fsync(self._cursor_fd)
            self._cursor_dirty = False

    def _release_files(self, gone: list[Segment]) -> None:
        self._write_cursor()
        for segment in gone:
            self._unlink(segment)
            self._dir_dirty = True


def _trial(cls: type[Spool], folder: Path, data: list[bytes], group: int, shape: str) -> float:
    # Uplink up releases as it goes: small segments, so segments are released during the trial too.
    quota = 2 << 20 if shape == "uplink up" else 1 << 30
    spool = cls(folder, quota_bytes=quota, fsync=True)
    spool.open()
    try:
        started = time.perf_counter()
        for i, item in enumerate(data, 1):
            spool.append(item, 1)
            if i % group == 0 or i == len(data):
                spool.commit()
                if shape == "uplink up":
                    _, end = spool.read(group)
                    spool.acknowledge(end)
        elapsed = time.perf_counter() - started
        expected = 0 if shape == "uplink up" else len(data)
        if spool.backlog_records != expected or spool.dropped:
            raise AssertionError(f"{spool.backlog_records} records left ({spool.dropped}), expected {expected}")
    finally:
        spool.close()
        shutil.rmtree(folder)
    return elapsed


def commit_point_cost(workdir: Path, shape: str, group: int, records: int, repeats: int) -> Comparison:
    """The spool's commit against the old one, alternately, best of ``repeats`` each."""
    ts_ms = time.time_ns() // 1_000_000
    data = [encode_record(device_record(f"dev-{i % 100:03d}", i, ts_ms)) for i in range(records)]
    best = {"before": float("inf"), "now": float("inf")}
    for n in range(repeats):
        best["before"] = min(best["before"], _trial(CommitBefore, workdir / f"before-{n}", data, group, shape))
        best["now"] = min(best["now"], _trial(Spool, workdir / f"now-{n}", data, group, shape))
    return Comparison(
        f"spool commit point, {shape}, {group} records a commit ({records:,} records in {workdir})",
        Measurement("commit before issue 12 (no commit point)", records, best["before"]),
        Measurement("commit with the commit point", records, best["now"]),
    )


def run(quick: bool = False) -> list[Comparison]:
    repeats = 1 if quick else 5
    results = []
    with tempfile.TemporaryDirectory(prefix="fp-bench-spool-") as tmp:
        for shape in SHAPES:
            for group in GROUPS:
                # Enough commits to measure, without a commit-per-record run taking minutes.
                records = min(20_000, (200 if quick else 2_000) * group)
                results.append(commit_point_cost(Path(tmp), shape, group, records, repeats))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_spool_commit", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, one trial, for a smoke run")
    args = parser.parse_args(argv)
    for result in run(args.quick):
        print(result.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
