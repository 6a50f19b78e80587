"""``fleetpulse playbooks``: validate, dry-run and run playbooks.

    fleetpulse playbooks check deploy/playbooks/lifecycle.yaml
    fleetpulse playbooks check FILE --history ./signals --accounts accounts.csv   # + what it would have raised
    fleetpulse playbooks run --config FILE --signals ./signals --accounts accounts.csv --state ./playbook-state \\
        [--no-deliver] [--max-wait-s 60]

``check`` validates without I/O besides reading files and says which secret
environment variables are missing here. ``run`` judges the days not judged yet,
records decisions in the ledger under ``--state`` and delivers the outbox;
running it again (or after a crash) sends nothing twice. See docs/PLAYBOOKS.md.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from fleetpulse.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    check = sub.add_parser("check", help="validate a playbooks file; with --history, dry-run it")
    check.add_argument("file", help="the playbooks YAML")
    check.add_argument("--history", help="a batch job's output folder (fleetpulse backfill --out) to dry-run over")
    check.add_argument("--accounts", help="accounts registry CSV (required with --history)")
    run = sub.add_parser("run", help="judge new days, record them in the ledger, deliver the outbox")
    run.add_argument("--config", required=True, help="the playbooks YAML")
    run.add_argument("--signals", required=True, help="a batch job's output folder (fleetpulse backfill --out)")
    run.add_argument("--accounts", required=True, help="accounts registry CSV (CRM export)")
    run.add_argument("--state", required=True, help="folder of the ledger and outbox (kept between runs)")
    run.add_argument("--no-deliver", action="store_true", help="record decisions only; deliver on a later run")
    run.add_argument("--max-wait-s", type=float, default=60.0,
                     help="how long to wait for retries before leaving them for the next run (default 60)")


def _signals_folder(path: str, key: str) -> Path:
    folder = Path(path)
    if not any((folder / "signals").glob("part-*.parquet")):
        raise ConfigError("command line", key, f"no signals under {folder / 'signals'}",
                          "pass the folder `fleetpulse backfill --out` wrote")
    return folder


def stats_table(run) -> str:  # run: PlaybookRun
    header = f"{'playbook':<24} {'accounts':>8} {'opened':>7} {'resolved':>8} {'notices':>7} " \
             f"{'suppressed':>10} {'messages':>8} {'held days':>9}"
    lines = [header, "-" * len(header)]
    for name, s in run.per_playbook.items():
        lines.append(f"{name:<24} {len(s.accounts):>8} {s.opened:>7} {s.resolved:>8} {s.notified:>7} "
                     f"{s.suppressed:>10} {s.messages:>8} {s.held:>9}")
    return "\n".join(lines)


def check(args: argparse.Namespace) -> int:
    from fleetpulse.pipeline.playbooks.config import load_playbooks
    from fleetpulse.pipeline.playbooks.engine import check_routing, dry_run
    from fleetpulse.pipeline.playbooks.history import load_histories
    from fleetpulse.schemas.accounts import load_accounts

    book = load_playbooks(args.file)
    enabled = [p for p in book.playbooks if p.enabled]
    print(f"{args.file}: valid - {len(book.playbooks)} playbooks ({len(enabled)} enabled), "
          f"{len(book.channels)} channels")
    for p in book.playbooks:
        actions = ", ".join(f"{a.kind}->{a.channel or 'routed'}" for a in p.actions)
        print(f"  {p.name:<24} {p.trigger.type:<19} {p.severity:<8} {actions}{'' if p.enabled else '  (disabled)'}")
    needed = sorted({v for c in book.channels.values()
                     for v in (c.url_env, c.secret_env, c.username_env, c.password_env) if v})
    missing = [v for v in needed if not os.environ.get(v)]
    if missing:
        print(f"note: not set in this environment (needed by `playbooks run`): {', '.join(missing)}")
    if args.history:
        if not args.accounts:
            raise ConfigError("command line", "--accounts", "a dry run needs the accounts registry",
                              "pass --accounts with the CRM export CSV")
        accounts = load_accounts(args.accounts)
        check_routing(book, accounts)
        histories = load_histories(_signals_folder(args.history, "--history"), accounts)
        days = sorted({s.day for h in histories for s in h.signals})
        run = dry_run(book, histories)
        span = f"{days[0]} to {days[-1]}" if days else "no days"
        print(f"\nDry run over {len(histories)} accounts, {span} (nothing sent, no ledger written):")
        print(stats_table(run))
    return 0


def run_command(args: argparse.Namespace) -> int:
    import logging

    from fleetpulse.pipeline.playbooks.engine import run_playbooks
    from fleetpulse.schemas.accounts import load_accounts

    accounts = load_accounts(args.accounts)
    run = run_playbooks(_signals_folder(args.signals, "--signals"), args.config, accounts, args.state,
                        deliver=not args.no_deliver, max_wait_ms=int(args.max_wait_s * 1000))
    print(stats_table(run))
    counters = run.counters()
    print("counters: " + ", ".join(f"{k}={v}" for k, v in counters.items()))
    logging.getLogger(__name__).info("playbooks run: %s", counters)
    if counters["failed"] or counters["unroutable"]:
        print(f"some messages failed: fleetpulse alerts --state {args.state} --failed")
    return 0


def run(args: argparse.Namespace) -> int:
    return check(args) if args.action == "check" else run_command(args)
