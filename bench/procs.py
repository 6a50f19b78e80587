"""Run a command and measure its whole process tree: wall time, CPU time, peak RSS summed.

A Beam job on the local runner is several processes (the runner and its SDK
workers), so the memory a user needs is the *sum* of their resident sets at
the worst moment, and its CPU is every process's. :func:`measure` samples
``/proc`` for the command and all its descendants every ``interval_s``:

- peak RSS: the largest sum over the tree at one sample;
- CPU: per process, the last ``utime + stime`` seen, summed (a process that
  ends between samples loses at most one interval; the children's rusage
  after the command exits covers what it waited for, and the larger of the
  two is kept).

Linux only (``/proc``), like the machines the benchmarks run on.
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Usage:
    wall_s: float
    cpu_s: float
    peak_rss_bytes: int
    processes: int  # distinct processes seen in the tree
    returncode: int

    @property
    def peak_rss_mb(self) -> float:
        return self.peak_rss_bytes / 2**20


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        tree.setdefault(int(fields[1]), []).append(int(entry.name))
    return tree


def _tree(root: int) -> list[int]:
    tree, out, todo = _children(), [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(tree.get(pid, ()))
    return out


def _sample(pid: int) -> tuple[int, float] | None:
    """(RSS bytes, CPU seconds) of one process, None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        statm = Path(f"/proc/{pid}/statm").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    cpu = (int(fields[11]) + int(fields[12])) / _TICK  # utime, stime
    return int(statm.split()[1]) * _PAGE, cpu


def measure(argv: list[str], *, interval_s: float = 0.2, log: Path | None = None,
            env: dict[str, str] | None = None) -> Usage:
    """Run ``argv`` to its end (output to ``log`` or discarded) and measure its process tree."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    sink = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
    start = time.perf_counter()
    try:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT, env=env)
        cpu: dict[int, float] = {}
        peak = 0
        while process.poll() is None:
            total = 0
            for pid in _tree(process.pid):
                sample = _sample(pid)
                if sample is not None:
                    total += sample[0]
                    cpu[pid] = max(cpu.get(pid, 0.0), sample[1])
            peak = max(peak, total)
            time.sleep(interval_s)
        wall = time.perf_counter() - start
    finally:
        if log:
            sink.close()  # type: ignore[union-attr]
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    waited = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Usage(wall, max(waited, sum(cpu.values())), peak, len(cpu), process.returncode)
