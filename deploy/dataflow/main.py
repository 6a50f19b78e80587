"""Entry point of the FleetPulse Dataflow Flex Template: one image, two jobs.

The Flex Template launcher runs this file (``FLEX_TEMPLATE_PYTHON_PY_FILE``)
with the template parameters as ``--name=value`` and Dataflow's own pipeline
options (``--runner``, ``--project``, ``--region``, ``--temp_location``,
``--sdk_container_image`` …) mixed in::

    python main.py --job=backfill --lake=gs://b/lake --accounts=gs://b/accounts.csv \\
        --out=gs://b/signals --from=2026-08-01 --to=2026-08-31 --runner=DataflowRunner …

``job`` picks ``ingest`` (``fleetpulse ingest``) or ``backfill``
(``fleetpulse backfill``). Every other template parameter is that command's
flag with ``_`` for ``-`` (``ca_file`` is ``--ca-file``; a switch such as
``tls`` takes ``true``/``false``): the parameters are *derived* from the two
commands' ``add_arguments``, their values are parsed by those parsers and
validated by their ``resolve``, and the pipeline is built by the same
``build_pipeline`` the commands use. Whatever this file does not know is a
Beam/Dataflow pipeline option and goes to ``PipelineOptions`` unchanged.

Two parameters exist only here, because Flex Template workers and launchers
get no environment of their own: ``influx_env`` (``INFLUX_URL=…;INFLUX_ORG=…``,
the non-secret ``INFLUX_*`` settings) and ``secret_env``
(``INFLUX_TOKEN=projects/p/secrets/s/versions/latest;…``: secrets in Secret
Manager). ``accounts`` and ``health_model`` may be ``gs://`` files; they are
copied to the launcher's disk before they are validated.

On a local runner (no ``--runner``, DirectRunner, FnApiRunner, Prism) this
runs the job exactly as the command would, and waits; ``secret_env`` is read
here, into this process's environment. On any other runner it builds,
submits and returns without waiting, as a Flex Template launcher must; no
secret is read at launch: ``INFLUX_TOKEN`` / ``INFLUX_PASSWORD`` become
references (``INFLUX_TOKEN_SECRET`` …) that the InfluxDB sink reads in its
``setup()`` on the workers, and the broker password is the
``password_secret`` parameter, read by the MQTT readers on the workers. The
pickled job graph staged in ``--staging_location`` holds only version names.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import IO, Any, NoReturn

from fleetpulse.errors import ConfigError
from fleetpulse.pipeline.secrets import is_secret_version

log = logging.getLogger("fleetpulse.dataflow")

SOURCE = "template parameters"

#: job name -> the module of its command (``add_arguments``, ``resolve``): the template's parameters
COMMAND_MODULES: dict[str, str] = {
    "ingest": "fleetpulse.pipeline.cli.ingest",
    "backfill": "fleetpulse.pipeline.cli.backfill",
}

#: job name -> the job itself (``build_pipeline``, ``run``, ``local_beam_args``)
JOB_MODULES: dict[str, str] = {
    "ingest": "fleetpulse.pipeline.jobs.ingest",
    "backfill": "fleetpulse.pipeline.jobs.backfill",
}

#: runners that execute in (or beside) this process, where local paths mean this machine's disk
LOCAL_RUNNERS = frozenset({
    "DirectRunner", "SwitchingDirectRunner", "BundleBasedDirectRunner",
    "FnApiRunner", "PrismRunner", "direct", "prism",
})

#: INFLUX_* variables that hold secrets: only through ``secret_env``, never as a visible parameter.
#: On a remote runner each is passed as ``<name>_SECRET=<version>``, read on the workers.
SECRET_INFLUX_KEYS = frozenset({"INFLUX_TOKEN", "INFLUX_PASSWORD"})

#: command flags that only make sense on a local runner: not template parameters
LOCAL_ONLY_FLAGS = frozenset({"--follow", "--round-s"})

#: template parameters that name a file the launcher reads while validating
LAUNCHER_FILES = ("accounts", "health_model")


@dataclass(frozen=True)
class Param:
    """One template parameter: the command flag it stands for, and whether it is a switch."""

    name: str
    flag: str
    switch: bool
    jobs: tuple[str, ...]


@dataclass(frozen=True)
class Launch:
    """A parsed launch: the job, its command's flags, the launch env inputs, Beam's options."""

    job: str
    #: the command's flags, translated from the parameters (files excepted)
    cli_argv: list[str]
    #: flag -> path of the files the launcher reads (``accounts``, ``health_model``); may be gs://
    files: dict[str, str]
    influx_env: str
    secret_env: str
    beam_args: list[str]

    def command_argv(self, staged: Mapping[str, str] | None = None) -> list[str]:
        """The command's argv, with each file replaced by its staged local copy when given."""
        staged = staged or {}
        return [*self.cli_argv, *(f"{flag}={staged.get(flag, path)}" for flag, path in self.files.items())]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are ConfigErrors (one line, no usage dump, no exit)."""

    def error(self, message: str) -> NoReturn:
        raise ConfigError(SOURCE, self.prog, message, "see deploy/dataflow/metadata.json for the parameters")


def command_module(job: str) -> ModuleType:
    """The command module of ``job`` (light to import: no Beam at its top)."""
    return importlib.import_module(COMMAND_MODULES[job])


def job_module(job: str) -> ModuleType:
    """The job ``job`` itself (imports Beam)."""
    return importlib.import_module(JOB_MODULES[job])


def command_parser(job: str) -> argparse.ArgumentParser:
    """The command's own parser (``fleetpulse <job>``), raising ConfigError instead of exiting."""
    parser = _Parser(prog=job, add_help=False, allow_abbrev=False)
    command_module(job).add_arguments(parser)
    return parser


def template_params() -> dict[str, Param]:
    """Every command flag of both jobs as a template parameter, by name."""
    params: dict[str, Param] = {}
    for job in COMMAND_MODULES:
        # argparse keeps its actions in a private list; it is the only way to
        # enumerate a parser's options, and this keeps the commands the one source of truth.
        for action in command_parser(job)._actions:
            longs = [s for s in action.option_strings if s.startswith("--")]
            if not longs or longs[0] in LOCAL_ONLY_FLAGS:
                continue  # the positional beam_args; flags of local runs only
            flag = longs[0]
            name = flag[2:].replace("-", "_")
            previous = params.get(name)
            jobs = (*previous.jobs, job) if previous else (job,)
            params[name] = Param(name=name, flag=flag, switch=action.nargs == 0, jobs=jobs)
    return params


def template_parser(params: Mapping[str, Param] | None = None) -> argparse.ArgumentParser:
    """The launcher's parser: ``--job``, ``--influx_env``, ``--secret_env`` and every command flag."""
    params = template_params() if params is None else params
    # allow_abbrev=False: Beam's options (``--job_name``, ``--region``) must never be
    # taken for an abbreviation of ours.
    parser = _Parser(prog="fleetpulse-dataflow", allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--job", required=True, choices=tuple(COMMAND_MODULES))
    parser.add_argument("--influx_env", help="non-secret INFLUX_* settings: NAME=value;NAME=value")
    parser.add_argument("--secret_env", help="NAME=projects/…/secrets/…/versions/…;…: read at launch on a "
                                             "local runner, passed as references to remote workers")
    for param in params.values():
        parser.add_argument(f"--{param.name}", help=f"{'/'.join(param.jobs)}: {param.flag}")
    return parser


def _pairs(text: str, key: str) -> list[tuple[str, str]]:
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise ConfigError(SOURCE, key, f"{item!r} is not NAME=value", "separate entries with ';'")
        pairs.append((name.strip(), value.strip()))
    return pairs


def read_gcp_secret(version_name: str) -> str:
    """A Secret Manager secret version's value (``google-cloud-secret-manager``, in Beam's gcp extra)."""
    from fleetpulse.pipeline.secrets import gcp_secret

    return gcp_secret(version_name).get_str()


def launch_env(
    influx_env: str | None,
    secret_env: str | None,
    read_secret: Callable[[str], str] = read_gcp_secret,
    *,
    remote: bool = False,
) -> dict[str, str]:
    """The environment the job's ``resolve`` reads: INFLUX_* settings, then secrets.

    Locally each ``secret_env`` entry is read now (the run happens in this
    process). With ``remote``, nothing is read: ``INFLUX_TOKEN`` /
    ``INFLUX_PASSWORD`` become ``INFLUX_TOKEN_SECRET`` / ``INFLUX_PASSWORD_SECRET``
    (the version name; the InfluxDB sink reads it on the workers), and any other
    name is refused, since a value read here would travel in the job graph.
    """
    env: dict[str, str] = {}
    for name, value in _pairs(influx_env or "", "influx_env"):
        if not name.startswith("INFLUX_"):
            raise ConfigError(SOURCE, "influx_env", f"{name} is not an INFLUX_* setting",
                              "give INFLUX_URL, INFLUX_ORG, INFLUX_BUCKET, INFLUX_DB, …")
        if name in SECRET_INFLUX_KEYS:
            # Parameters are shown in the console and the job's metadata; secrets are not parameters.
            raise ConfigError(SOURCE, "influx_env", f"{name} is a secret",
                              f"store it in Secret Manager and pass secret_env={name}=projects/…/versions/latest")
        env[name] = value
    for name, version in _pairs(secret_env or "", "secret_env"):
        if not name.replace("_", "").isalnum() or not name[0].isalpha() or not name.isupper():
            raise ConfigError(SOURCE, "secret_env", f"{name!r} is not an environment variable name",
                              "use upper-case letters, digits and _")
        if not is_secret_version(version):
            raise ConfigError(SOURCE, "secret_env", f"{version!r} is not a secret version",
                              "write projects/<project>/secrets/<name>/versions/<n or latest>")
        if not remote:
            env[name] = read_secret(version)
        elif name in SECRET_INFLUX_KEYS:
            env[f"{name}_SECRET"] = version
        else:
            raise ConfigError(
                SOURCE, "secret_env", f"{name} would be read at launch and travel in the job graph: "
                "the workers do not see the launcher's environment",
                "pass the broker password as password_secret=projects/…/versions/latest; on a remote "
                "runner secret_env takes only INFLUX_TOKEN and INFLUX_PASSWORD",
            )
    return env


def parse(argv: Sequence[str], params: Mapping[str, Param] | None = None) -> Launch:
    """Split argv into the job, its command's argv, the launch env inputs and Beam's options."""
    params = template_params() if params is None else params
    known, beam_args = template_parser(params).parse_known_args(list(argv))
    job: str = known.job
    cli_argv: list[str] = []
    files: dict[str, str] = {}
    for param in params.values():
        value = getattr(known, param.name)
        if value is None:
            continue
        if job not in param.jobs:
            other = " and ".join(param.jobs)
            raise ConfigError(SOURCE, param.name, f"is a parameter of {other}, not of {job}",
                              f"remove {param.name}, or launch job={other}")
        if param.switch:
            if value not in ("true", "false"):
                raise ConfigError(SOURCE, param.name, f"{value!r} is not true or false", "write true or false")
            if value == "true":
                cli_argv.append(param.flag)
            continue
        if param.name in LAUNCHER_FILES:
            files[param.flag] = value
        else:
            # flag=value keeps a value that begins with '-' a value
            cli_argv.append(f"{param.flag}={value}")
    return Launch(
        job=job,
        cli_argv=cli_argv,
        files=files,
        influx_env=known.influx_env or "",
        secret_env=known.secret_env or "",
        beam_args=list(beam_args),
    )


def runner_of(beam_args: Sequence[str]) -> str | None:
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    runner = PipelineOptions(list(beam_args)).view_as(StandardOptions).runner
    return runner if isinstance(runner, str) or runner is None else type(runner).__name__


def is_local(beam_args: Sequence[str]) -> bool:
    """True when the job runs here: no runner named (the commands' local default) or a local one."""
    runner = runner_of(beam_args)
    return runner is None or runner.rsplit(".", 1)[-1] in LOCAL_RUNNERS


def stage_file(path: str, workdir: Path, opener: Callable[[str], IO[bytes]] | None = None) -> str:
    """A local copy of ``path`` when it is in an object store (gs://), else ``path`` itself.

    The accounts registry and the health model are read and validated at
    launch and travel to the workers inside the pipeline, so only the
    launcher needs them on disk.
    """
    if "://" not in path:
        return path
    if opener is None:
        from apache_beam.io.filesystems import FileSystems

        opener = FileSystems.open
    local = workdir / Path(path.rstrip("/")).name
    try:
        with opener(path) as source:
            local.write_bytes(source.read())
    except OSError as exc:
        raise ConfigError(SOURCE, path, f"cannot be read at launch ({exc})",
                          "check the path and that the launcher's service account may read it") from None
    return str(local)


def check_remote(launch: Launch) -> None:
    """What can be checked here about a run on a remote runner (Dataflow), before building."""
    from apache_beam.options.pipeline_options import PipelineOptions, WorkerOptions

    runner = runner_of(launch.beam_args) or ""
    args = command_parser(launch.job).parse_args(launch.command_argv())
    for name in ("lake", "out"):
        if "://" not in getattr(args, name):
            # A local path on a remote runner is each worker's own disk, lost with the worker.
            raise ConfigError(SOURCE, name, f"{getattr(args, name)} is a local path, which on {runner} "
                              "would be each worker's own disk", f"give a gs:// folder for {name}")
    if launch.job == "ingest" and args.accounts and not args.score_every_s:
        # docs/STREAMING.md: customer scoring joins the whole history in the global window,
        # which a stream only closes when it is drained.
        raise ConfigError(SOURCE, "score_every_s", f"is 0, so on {runner} customer signals and alerts "
                          "would only be computed when the job is drained",
                          "pass score_every_s=<seconds, e.g. 3600>, or leave accounts out")
    options = PipelineOptions(list(launch.beam_args))
    if runner.endswith("DataflowRunner") and not options.view_as(WorkerOptions).sdk_container_image:
        raise ConfigError(
            SOURCE, "sdk_container_image", "is not set: the workers would run the stock Beam image, "
            "which has no fleetpulse", "pass sdk_container_image=<this template's image>",
        )


def resolve(launch: Launch, workdir: Path, read_secret: Callable[[str], str] = read_gcp_secret) -> Any:
    """The job's validated config (IngestConfig / JobConfig), via its command's ``resolve``.

    Sets the launch environment (``influx_env``, ``secret_env``) in this
    process's environment first: the commands read InfluxDB's settings (and,
    on a local runner, the broker password) from there (this process is the
    launcher, or the whole run on a local runner). On a remote runner the
    secrets stay references (see :func:`launch_env`).
    """
    remote = not is_local(launch.beam_args)
    os.environ.update(launch_env(launch.influx_env, launch.secret_env, read_secret, remote=remote))
    staged = {flag: stage_file(path, workdir) for flag, path in launch.files.items()}
    args = command_parser(launch.job).parse_args(launch.command_argv(staged))
    # The commands decide runner-dependent settings (the ingest replay registry) from these.
    args.beam_args = list(launch.beam_args)
    return command_module(launch.job).resolve(args)


def pipeline_options(launch: Launch) -> Any:
    """Beam options: the given ones, or the command's local default; streaming for ingest."""
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    options = PipelineOptions(launch.beam_args or job_module(launch.job).local_beam_args())
    if launch.job == "ingest":
        options.view_as(StandardOptions).streaming = True
    return options


def build(launch: Launch, config: Any) -> Any:
    """The unrun pipeline, from the job's own ``build_pipeline``."""
    return job_module(launch.job).build_pipeline(pipeline_options(launch), config)


def run(argv: Sequence[str], read_secret: Callable[[str], str] = read_gcp_secret) -> int:
    """Validate, build and run; wait only on a local runner."""
    launch = parse(argv)
    local = is_local(launch.beam_args)
    if not local:
        check_remote(launch)
    with tempfile.TemporaryDirectory(prefix="fleetpulse-launch-") as workdir:
        # Staged files are read while resolving; the config holds their contents.
        config = resolve(launch, Path(workdir), read_secret=read_secret)
    if local:
        from fleetpulse.pipeline.jobs.metrics import counters

        # Exactly what the command does, pre/post steps included (landing
        # replay and pending markers for ingest, output clearing for backfill), and a wait.
        result = job_module(launch.job).run(config, launch.beam_args)
        for key, value in counters(result).items():
            log.info("counter %s = %d", key, value)
        return 0
    # A Flex Template launcher must return once the job is submitted: no wait_until_finish.
    result = build(launch, config).run()
    job_id = getattr(result, "job_id", None)
    log.info("submitted %s as job %s", launch.job, job_id() if callable(job_id) else "?")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run(sys.argv[1:] if argv is None else argv)
    except ConfigError as exc:
        # One line naming the parameter and the fix; it is what the launcher's log shows.
        print(f"fleetpulse dataflow: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
