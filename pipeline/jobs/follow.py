"""``fleetpulse ingest --follow``: a stream that never ends, on a local runner.

A streaming runner (Dataflow, Flink, Prism) keeps every window's state for
the life of the job, so an hour that receives records over many minutes is
rolled up whole. The local FnApiRunner runs the streaming job as a *bounded*
run (docs/STREAMING.md): its windows fire when the run ends, with only that
run's records. Following a broker locally is therefore done in rounds, each
one made exact by a restatement from the lake:

1. **Round.** The streaming job reads the broker for ``round_s`` seconds
   (then its stop file is touched and it drains): landing first, then decode,
   dedupe, the raw archive panes, hourly rollups to InfluxDB. Acks follow the
   landing, as always.
2. **Restatement.** The event days the round touched (the archive partitions
   it wrote panes into) are recomputed by the backfill job from the landing
   zone, reading ``history_days`` before them for scoring: whole hours, whole
   days, customer signals and alerts — the numbers of a run over the whole
   lake (``tests/test_ingest_follow.py``). Its InfluxDB points overwrite the
   round's (same series, same timestamps); its archive files supersede the
   round's panes. The backfill's files of the latest restatement are in
   ``<out>/restated/``.

The days to restate are written to ``<lake>/ingest/<writer>/restate.json``
before the restatement starts and removed when it has finished, so a process
killed in between restates them when it starts again.

Latency: hourly points within a round; exact points and customer signals
``round_s`` plus one restatement (seconds to a minute on a small lake) after
the data arrived.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import date
from pathlib import Path
from typing import Any

from . import backfill
from . import ingest as ingest_job

log = logging.getLogger(__name__)

#: what a round runs: (ingest config, beam args) -> PipelineResult
RunRound = Callable[[Any, list[str]], Any]
#: what a restatement runs: (backfill JobConfig, beam args) -> PipelineResult
RunRestatement = Callable[[Any, list[str]], Any]


@dataclass(frozen=True)
class FollowConfig:
    """How the rounds go (see the module docstring)."""

    #: how long a round reads the broker before it drains and the touched days are restated
    round_s: float = 60.0
    #: history read before the restated days for scoring (default: the health model's warmup)
    history_days: int | None = None

    def __post_init__(self) -> None:
        if self.round_s <= 0:
            raise ValueError(f"round_s {self.round_s} is not positive")


def _panes(lake: str) -> set[Path]:
    return set((Path(lake) / "records").glob("dt=*/hour=*/part-s-*.parquet"))


def touched_days(before: set[Path], after: set[Path]) -> list[date]:
    """Event days of the archive panes that appeared between two listings, sorted."""
    days = {date.fromisoformat(p.parent.parent.name.removeprefix("dt=")) for p in after - before}
    return sorted(days)


def marker_path(lake: str, writer: str) -> Path:
    return Path(lake) / "ingest" / writer / "restate.json"


def _write_marker(path: Path, first: date, last: date) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps({"from": first.isoformat(), "to": last.isoformat()}))
    os.replace(tmp, path)


def _read_marker(path: Path) -> tuple[date, date] | None:
    if not path.exists():
        return None
    try:
        body = json.loads(path.read_text())
        return date.fromisoformat(body["from"]), date.fromisoformat(body["to"])
    except (ValueError, KeyError, TypeError):
        # Written atomically by us, so this is damage: restating too much is
        # cheap, silently restating nothing is not. The whole lake it is.
        log.warning("%s is unreadable: restating every day of the lake", path)
        return date.min, date.max


class Follower:
    """Runs rounds and restatements until ``stop`` is set (SIGINT/SIGTERM in the command)."""

    def __init__(
        self,
        ingest: Any,  # IngestConfig, with accounts and a model
        follow: FollowConfig,
        *,
        ingest_args: list[str],
        backfill_args: list[str],
        stop: threading.Event,
        run_round: RunRound | None = None,
        run_restatement: RunRestatement | None = None,
        on_round: Callable[[int, list[date]], None] | None = None,
    ) -> None:
        if ingest.accounts is None or ingest.model is None:
            raise ValueError("following needs the accounts and the health model: the restatement scores customers")
        if not ingest.source.stop_file:
            raise ValueError("following needs the source's stop file: it ends each round")
        self.ingest = ingest
        # The rounds only roll up hours; customers are scored by the restatement,
        # which sees every day whole.
        self.round_config = replace(ingest, accounts=None, model=None, score_every_s=0)
        self.follow = follow
        self.ingest_args, self.backfill_args = ingest_args, backfill_args
        self.stop = stop
        self.run_round = run_round or ingest_job.run
        self.run_restatement = run_restatement or backfill.run
        self.on_round = on_round
        self.marker = marker_path(ingest.lake, ingest.writer)
        self.rounds = 0
        self.restatements = 0

    def restate(self, first: date, last: date) -> None:
        """Recompute ``first``..``last`` from the lake (the marker survives a kill until it is done)."""
        _write_marker(self.marker, first, last)
        model = self.ingest.model
        history = self.follow.history_days if self.follow.history_days is not None else model.warmup_days
        job = backfill.JobConfig(
            lake=self.ingest.lake,
            out=str(Path(self.ingest.out) / "restated"),
            accounts=self.ingest.accounts,
            model=model,
            influx=self.ingest.influx,
            from_day=None if first == date.min else first,
            to_day=None if last == date.max else last,
            history_days=history,
        )
        log.info("restating %s..%s from the lake", first, last)
        self.run_restatement(job, list(self.backfill_args))
        self.marker.unlink()
        self.restatements += 1

    def _one_round(self) -> list[date]:
        stop_file = Path(self.round_config.source.stop_file)

        def end_round() -> None:
            stop_file.parent.mkdir(parents=True, exist_ok=True)
            stop_file.touch()

        before = _panes(self.ingest.lake)
        timer = threading.Timer(self.follow.round_s, end_round)
        timer.daemon = True
        timer.start()
        try:
            self.run_round(self.round_config, list(self.ingest_args))
        finally:
            timer.cancel()
        # What a killed run left to replay was taken by the first round, which
        # ended cleanly: later rounds must not replay it again.
        self.round_config = replace(self.round_config, replay=())
        return touched_days(before, _panes(self.ingest.lake))

    def run(self) -> int:
        """Rounds until stopped; returns how many rounds ran."""
        unfinished = _read_marker(self.marker)
        if unfinished is not None:
            log.info("a restatement did not finish: restating %s..%s first", *unfinished)
            self.restate(*unfinished)
        while not self.stop.is_set():
            days = self._one_round()
            self.rounds += 1
            if days:
                self.restate(days[0], days[-1])
            if self.on_round is not None:
                self.on_round(self.rounds, days)
        return self.rounds
