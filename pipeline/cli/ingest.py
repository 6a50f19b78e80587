"""``fleetpulse ingest``: the streaming job, from the central broker to the lake and InfluxDB.

    fleetpulse ingest --broker broker:8883 --tls --ca-file ca.pem --username ingest \\
        --lake ./lake --out ./signals [--accounts accounts.csv] [--readers 2] \\
        [--max-messages N | --idle-stop-ms MS | --stop-file PATH | --follow [--round-s 60]]
        [-- --runner=DataflowRunner …]

Configuration is validated before anything connects. InfluxDB comes from the
``INFLUX_*`` environment (as for ``backfill``; ``INFLUX_TOKEN_SECRET`` /
``INFLUX_PASSWORD_SECRET`` name Secret Manager versions read on the workers).
The broker password comes from ``--password-secret`` (a Secret Manager
version, read by each reader when it starts, on the worker) or else from the
variable named by ``--password-env`` (read by the reader, so it must be set
where the readers run: this process on a local runner). Neither is ever part
of the pipeline graph. Arguments after ``--`` go to Beam unchanged; without
them the job runs locally on Beam's FnApiRunner, which executes it as a
bounded run: it reads until a stop condition (``--max-messages`` per reader,
``--idle-stop-ms``, ``--stop-file``, or SIGINT/SIGTERM), then fires every
window and writes the results. See docs/STREAMING.md for why. ``--follow``
makes that a stream without end: rounds of ``--round-s`` seconds, each one's
days restated from the lake by the backfill (``pipeline/jobs/follow.py``).

``--lake`` and ``--out`` may be local folders or Beam file system URLs
(``gs://…``). On a local runner, landing files a previous run wrote but did
not finish (it was killed) are replayed first, and a run that finishes
cleanly clears them. On a runner that persists committed bundles (Dataflow)
there is nothing to replay and no such registry is kept: see
``pipeline/outputs/bundles.py``. The landing is written on every runner unless
``--no-land``: ``fleetpulse backfill`` reads it.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any

from fleetpulse.errors import ConfigError

log = logging.getLogger(__name__)

SOURCE = "command line"


def _broker(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{value!r} is not host:port")
    return host, int(port)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--broker", type=_broker, default=("127.0.0.1", 1883),
                        help="central broker host:port (default 127.0.0.1:1883)")
    parser.add_argument("--tls", action="store_true", help="connect with TLS")
    parser.add_argument("--ca-file", help="CA bundle for --tls (default: the system's)")
    parser.add_argument("--username", help="broker user name; \"{reader}\" in it is replaced by each "
                        "reader's number, for a broker that binds client ids to users "
                        "(deploy/central: --username 'fleetpulse-ingest-{reader}')")
    parser.add_argument("--password-env", default="FLEETPULSE_MQTT_PASSWORD",
                        help="environment variable holding the broker password (local runners)")
    parser.add_argument("--password-secret",
                        help="Secret Manager version holding the broker password, read on the workers: "
                             "projects/<p>/secrets/<name>/versions/<n or latest> (needed on Dataflow)")
    parser.add_argument("--share-group", default="fleetpulse-ingest",
                        help="shared-subscription group the readers split the load in")
    parser.add_argument("--client-id-prefix", default="fleetpulse-ingest",
                        help="readers connect as <prefix>-<n>; keep it fixed across restarts")
    parser.add_argument("--readers", type=int, default=1, help="reader connections (default 1)")
    parser.add_argument("--protocol", choices=("5", "3.1.1"), default="5",
                        help="MQTT version (default 5); 3.1.1 for brokers without v5: one reader, "
                             "no shared subscription")
    parser.add_argument("--lake", required=True, help="lake root: a local folder or gs://…")
    parser.add_argument("--out", required=True, help="folder for dead letters and alerts: local or gs://…")
    parser.add_argument("--accounts", help="accounts registry CSV: enables customer signals and alerts")
    parser.add_argument("--health-model", help="health model YAML (default: the packaged model)")
    parser.add_argument("--allowed-lateness-s", type=int, default=6 * 3600,
                        help="how late a record may come and still restate its hour (default 6 h)")
    parser.add_argument("--dedupe-ttl-s", type=int, default=86400,
                        help="how long (event time) a record id is remembered for dedupe (default 1 d)")
    parser.add_argument("--watermark-lag-ms", type=int, default=300_000,
                        help="the watermark trails the earliest recent event time by this (default 5 min)")
    parser.add_argument("--idle-watermark", choices=("hold", "wall_clock"), default="hold",
                        help="while no message arrives: hold the watermark, or follow the clock")
    parser.add_argument("--max-messages-per-bundle", type=int, default=100,
                        help="messages per bundle, at most the broker's in-flight window (default 100)")
    parser.add_argument("--max-messages", type=int, help="each reader stops after this many messages")
    parser.add_argument("--idle-stop-ms", type=int, help="stop after this long without a message")
    parser.add_argument("--stop-file", help="stop reading when this file exists (local runners; default "
                                             "<lake>/ingest/<prefix>/stop, or in the temp folder for a gs:// lake)")
    parser.add_argument("--score-every-s", type=int, default=0,
                        help="with --accounts: also score every N seconds of processing time (a stream "
                             "that never ends); 0 (default): once, when the input ends")
    parser.add_argument("--follow", action="store_true",
                        help="local runners: follow the broker without end, in rounds of --round-s, each "
                             "restated from the lake so hours, signals and alerts are exact (needs --accounts)")
    parser.add_argument("--round-s", type=float, default=60.0,
                        help="with --follow: seconds a round reads before it is restated (default 60)")
    parser.add_argument("--no-land", action="store_true",
                        help="do not write the raw messages to the landing zone before acking "
                             "(only safe on a runner that persists committed bundles)")
    parser.add_argument("beam_args", nargs="*", help="Beam pipeline options, after --")


def runner_of(beam_args: list[str]) -> str | None:
    """The runner the Beam arguments name (the local default when there are none)."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    from fleetpulse.pipeline.jobs.ingest import local_beam_args

    runner = PipelineOptions(beam_args or local_beam_args()).view_as(StandardOptions).runner
    return runner if isinstance(runner, str) or runner is None else type(runner).__name__


def _positive(value: int | None, key: str, fix: str) -> None:
    if value is not None and value <= 0:
        raise ConfigError(SOURCE, key, f"{value} is not positive", fix)


def resolve(args: argparse.Namespace) -> Any:  # -> IngestConfig
    """Validate every input without connecting; ConfigError names what is wrong."""
    from fleetpulse.pipeline.health.config import load_health_model
    from fleetpulse.pipeline.jobs.ingest import IngestConfig
    from fleetpulse.pipeline.outputs.bundles import (
        is_remote,
        keeps_bundles_in_memory,
        pending_landing_files,
    )
    from fleetpulse.pipeline.outputs.influx import InfluxConfig
    from fleetpulse.pipeline.secrets import gcp_secret, is_secret_version
    from fleetpulse.pipeline.sources.mqtt import MqttSourceConfig
    from fleetpulse.schemas.accounts import load_accounts

    _positive(args.readers, "--readers", "give at least 1")
    _positive(args.max_messages_per_bundle, "--max-messages-per-bundle", "give 1..100")
    if args.max_messages is not None and args.max_messages < 0:
        raise ConfigError(SOURCE, "--max-messages", f"{args.max_messages} is negative",
                          "leave it out to read until stopped")
    _positive(args.idle_stop_ms, "--idle-stop-ms", "leave it out to read until stopped")
    _positive(args.dedupe_ttl_s, "--dedupe-ttl-s", "give seconds, e.g. 86400")
    if args.score_every_s < 0:
        raise ConfigError(SOURCE, "--score-every-s", f"{args.score_every_s} is negative",
                          "give 0 (score when the input ends) or seconds, e.g. 3600")
    if args.allowed_lateness_s < 0:
        raise ConfigError(SOURCE, "--allowed-lateness-s", f"{args.allowed_lateness_s} is negative",
                          "give 0 or more seconds")
    runner = runner_of(args.beam_args)
    in_memory = keeps_bundles_in_memory(runner)
    if args.username:
        if args.password_secret:
            if not is_secret_version(args.password_secret):
                raise ConfigError(SOURCE, "--password-secret", f"{args.password_secret!r} is not a secret version",
                                  "write projects/<project>/secrets/<name>/versions/<n or latest>")
        elif not in_memory:
            raise ConfigError(SOURCE, "--password-secret", f"is not set but --username is, and on {runner} "
                              f"the readers run on workers that have no {args.password_env}",
                              "pass --password-secret projects/<p>/secrets/<name>/versions/latest")
        elif not os.environ.get(args.password_env):
            raise ConfigError("environment", args.password_env, "is not set but --username is",
                              f"export {args.password_env}=<the broker password>, or pass --password-secret")
    elif args.password_secret:
        raise ConfigError(SOURCE, "--password-secret", "is set but --username is not",
                          "pass --username too, or leave --password-secret out")
    if args.follow:
        if not in_memory:
            raise ConfigError(SOURCE, "--follow", f"is for local runners; on {runner} the job streams without end",
                              "leave --follow out (and stop the job with the runner)")
        if not args.accounts:
            raise ConfigError(SOURCE, "--follow", "needs --accounts: each round's restatement scores customers",
                              "add --accounts accounts.csv")
        if args.no_land:
            raise ConfigError(SOURCE, "--follow", "restates from the landing zone, which --no-land turns off",
                              "leave --no-land out")
        for flag, value in (("--max-messages", args.max_messages), ("--idle-stop-ms", args.idle_stop_ms)):
            if value is not None:
                raise ConfigError(SOURCE, flag, "ends the run, but --follow runs until stopped",
                                  f"leave {flag} out (SIGTERM stops a follower)")
        if not args.round_s > 0:
            raise ConfigError(SOURCE, "--round-s", f"{args.round_s} is not positive", "give seconds, e.g. 60")
    host, port = args.broker
    if not in_memory and args.stop_file:
        raise ConfigError(SOURCE, "--stop-file", f"is checked on each worker's own disk on {runner}",
                          "leave it out; stop the job with the runner (Dataflow: drain)")
    if not in_memory:
        stop_file = None  # nothing on the launcher's disk reaches the workers
    elif args.stop_file:
        stop_file = args.stop_file
    elif is_remote(args.lake):
        # The readers check a local path; keep the default stop request beside this process.
        stop_file = os.path.join(tempfile.gettempdir(), f"fleetpulse-ingest-{args.client_id_prefix}.stop")
    else:
        stop_file = str(Path(args.lake) / "ingest" / args.client_id_prefix / "stop")
    password_secret = gcp_secret(args.password_secret) if args.username and args.password_secret else None
    try:
        source = MqttSourceConfig(
            host=host, port=port, tls=args.tls, ca_file=args.ca_file,
            username=args.username, password_env=args.password_env if args.username else None,
            password_secret=password_secret,
            share_group=None if args.protocol == "3.1.1" else args.share_group,
            protocol=args.protocol, client_id_prefix=args.client_id_prefix,
            readers=args.readers, watermark_lag_ms=args.watermark_lag_ms,
            idle_watermark=args.idle_watermark, max_messages=args.max_messages,
            idle_stop_ms=args.idle_stop_ms, stop_file=stop_file,
            max_messages_per_bundle=args.max_messages_per_bundle,
        )
    except ValueError as exc:
        raise ConfigError(SOURCE, "broker options", str(exc), "see fleetpulse ingest --help") from None
    land = not args.no_land
    # Replay only where the registry is kept: a runner that holds committed bundles in memory
    # (pipeline/outputs/bundles.py). On Dataflow a committed bundle is never lost: nothing to replay.
    replay = tuple(pending_landing_files(args.lake, args.client_id_prefix)) if land and in_memory else ()
    accounts = load_accounts(args.accounts) if args.accounts else None
    return IngestConfig(
        source=source,
        lake=args.lake,
        out=args.out,
        influx=InfluxConfig.from_env(os.environ),
        accounts=accounts,
        model=load_health_model(args.health_model) if accounts is not None else None,
        allowed_lateness_s=args.allowed_lateness_s,
        dedupe_ttl_s=args.dedupe_ttl_s,
        land=land,
        replay=replay,
        score_every_s=args.score_every_s,
    )


def follow(config: Any, args: argparse.Namespace, stop: threading.Event) -> int:
    """``--follow``: rounds and restatements until ``stop`` (pipeline/jobs/follow.py)."""
    from fleetpulse.pipeline.jobs.backfill import local_beam_args as backfill_beam_args
    from fleetpulse.pipeline.jobs.follow import FollowConfig, Follower

    follower = Follower(config, FollowConfig(round_s=args.round_s), ingest_args=list(args.beam_args),
                        backfill_args=backfill_beam_args(), stop=stop)
    rounds = follower.run()
    log.info("stopped after %d rounds and %d restatements", rounds, follower.restatements)
    return 0


def run(args: argparse.Namespace) -> int:
    from fleetpulse.pipeline.jobs import ingest
    from fleetpulse.pipeline.jobs.metrics import counters
    from fleetpulse.pipeline.outputs.bundles import keeps_bundles_in_memory
    from fleetpulse.pipeline.sources.mqtt_config import check_broker

    config = resolve(args)
    stop_file = config.source.stop_file
    stop = threading.Event()

    def request_stop(signum: int, frame: Any) -> None:
        # The source sees the file, stops reading, and the run drains and ends cleanly.
        log.info("signal %d: stopping the readers and draining", signum)
        stop.set()
        Path(stop_file).parent.mkdir(parents=True, exist_ok=True)
        Path(stop_file).touch()

    # No stop file on a remote runner: the workers could not see it; a signal ends this process.
    signals = (signal.SIGINT, signal.SIGTERM) if stop_file else ()
    previous = {sig: signal.signal(sig, request_stop) for sig in signals}
    try:
        # A certificate that does not verify stops here with one line (TlsRefused, exit 1);
        # locally, an unreachable broker is waited for (a signal ends the wait).
        if not check_broker(config.source, stop, wait=keeps_bundles_in_memory(runner_of(args.beam_args))):
            return 0
        if args.follow:
            return follow(config, args, stop)
        result = ingest.run(config, list(args.beam_args))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    for key, value in counters(result).items():
        log.info("counter %s = %d", key, value)
    return 0
