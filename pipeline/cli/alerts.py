"""``fleetpulse alerts``: the episodes playbooks opened and resolved, and deliveries that failed.

    fleetpulse alerts --state ./playbook-state                      # every episode, newest last
    fleetpulse alerts --state ./playbook-state --open --account c-0007
    fleetpulse alerts --state ./playbook-state --failed             # messages that could not be delivered
    fleetpulse alerts --state ./playbook-state --retry-failed       # queue them again (next `playbooks run`)
    fleetpulse alerts --state ./playbook-state --snooze adoption-drop --account c-0007 --until 2026-10-01 \\
        --reason "site closed for refit"                            # '*' snoozes every playbook
    fleetpulse alerts --state ./playbook-state --unsnooze adoption-drop --account c-0007

Reads the ledger ``fleetpulse playbooks run`` writes; ``--json`` prints one JSON object per line.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from fleetpulse.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state", required=True, help="the folder given to `fleetpulse playbooks run --state`")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--open", action="store_true", help="only open episodes")
    which.add_argument("--resolved", action="store_true", help="only resolved episodes")
    which.add_argument("--failed", action="store_true", help="messages that failed or could not be addressed")
    which.add_argument("--retry-failed", action="store_true", help="queue failed messages again")
    which.add_argument("--snooze", metavar="PLAYBOOK", help="no notifications of PLAYBOOK ('*': all) for --account")
    which.add_argument("--unsnooze", metavar="PLAYBOOK", help="end a snooze")
    parser.add_argument("--account", help="only this customer_id (required with --snooze/--unsnooze)")
    parser.add_argument("--until", help="last snoozed day, YYYY-MM-DD (with --snooze)")
    parser.add_argument("--reason", default="", help="why (with --snooze), kept in the ledger")
    parser.add_argument("--json", action="store_true", help="one JSON object per line")


def _state(path: str) -> Path:
    from fleetpulse.pipeline.playbooks.ledger import LEDGER_FILE

    folder = Path(path)
    if not (folder / LEDGER_FILE).exists():
        raise ConfigError("command line", "--state", f"no ledger in {folder}",
                          "pass the folder given to `fleetpulse playbooks run --state`")
    return folder


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from fleetpulse.clock import wall_clock_ms
    from fleetpulse.pipeline.playbooks.ledger import FAILED, SENT, Ledger, OutboxRow

    folder = _state(args.state)
    if args.snooze or args.unsnooze:
        if not args.account:
            raise ConfigError("command line", "--account", "is missing", "name the customer_id to snooze")
        with Ledger.open(folder, exclusive=False) as ledger:
            if args.unsnooze:
                done = ledger.unsnooze(args.account, args.unsnooze)
                print(f"{'ended' if done else 'no'} snooze of {args.unsnooze} for {args.account}")
                return 0
            try:
                until = date.fromisoformat(args.until or "")
            except ValueError:
                raise ConfigError("command line", "--until", f"{args.until!r} is not a date",
                                  "write the last snoozed day as YYYY-MM-DD") from None
            ledger.snooze(args.account, args.snooze, until.isoformat(), args.reason, wall_clock_ms())
            print(f"snoozed {args.snooze} for {args.account} up to and including {until}")
        return 0
    with Ledger.open(folder, exclusive=False) as ledger:
        if args.retry_failed:
            print(f"{ledger.retry_failed(wall_clock_ms(), args.account)} failed messages queued again; "
                  "they go out on the next `fleetpulse playbooks run`")
            return 0
        if args.failed:
            rows = ledger.outbox(status=FAILED, customer_id=args.account)
            for r in rows:
                if args.json:
                    print(json.dumps({k: v for k, v in dataclasses.asdict(r).items() if k != "message"}, sort_keys=True))
                else:
                    print(f"{r.day}  {r.customer_id:<10} {r.playbook:<20} {r.action:<18} {r.notification:<8} "
                          f"-> {r.channel} ({r.recipient or 'channel default'}): {r.attempts} attempts: "
                          f"{r.last_error}")
            if not args.json:
                print(f"{len(rows)} failed messages" + (" (--retry-failed queues them again)" if rows else ""))
            return 0
        status = "open" if args.open else "resolved" if args.resolved else None
        episodes = ledger.episodes(status=status, customer_id=args.account)
        messages: dict[str, list[OutboxRow]] = {}
        for row in ledger.outbox(customer_id=args.account):
            messages.setdefault(row.episode_id, []).append(row)
        if args.json:
            for e in episodes:
                listed = [dataclasses.asdict(m) | {"message": None} for m in messages.get(e.episode_id, [])]
                print(json.dumps(dataclasses.asdict(e) | {"messages": listed}, sort_keys=True))
            return 0
        print(f"{'status':<9}{'opened':<11} {'last':<11} {'account':<10} {'playbook':<20} {'severity':<9} "
              f"{'sent':>5}  what changed")
        for e in episodes:
            mine = messages.get(e.episode_id, [])
            sent = sum(1 for r in mine if r.status == SENT)
            failed = sum(1 for r in mine if r.status == FAILED)
            mark = f"!{failed}" if failed else ""
            print(f"{e.status:<9}{e.opened_day:<11} {e.last_day:<11} {e.customer_id:<10} {e.playbook:<20} "
                  f"{e.severity:<9} {f'{sent}/{len(mine)}':>5}{mark:<3}{_cut(e.what_changed, 90)}")
        counts = ledger.counts()
        print(f"{len(episodes)} episodes; outbox: " + ", ".join(
            f"{k.removeprefix('outbox_')} {v}" for k, v in sorted(counts.items()) if k.startswith("outbox_")))
        snoozes = [s for s in ledger.snoozes() if args.account in (None, s["customer_id"])]
        for s in snoozes:
            print(f"snoozed: {s['customer_id']} {s['playbook']} until {s['until_day']} {s['reason']}")
    return 0
