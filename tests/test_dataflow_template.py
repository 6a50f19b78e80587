"""The Dataflow Flex Template (deploy/dataflow/): metadata, entry point, image recipe.

No network and no Docker here: the metadata is checked against the entry
point's parser (which is derived from the two commands' parsers), the entry
point builds both pipelines on literal parameters and runs a backfill of a
date range on the local FnApiRunner, and the Dockerfile is checked for the
single Beam pin. What needs a GCP project is listed in deploy/dataflow/README.md.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import sys
import tomllib
from datetime import date
from pathlib import Path
from types import ModuleType

import apache_beam as beam
import pytest

from fleetpulse.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "dataflow"


def _load_main() -> ModuleType:
    # deploy/ is not a package: load the entry point from its file, as the launcher runs it.
    spec = importlib.util.spec_from_file_location("fleetpulse_dataflow_main", TEMPLATE / "main.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file executes
    spec.loader.exec_module(module)
    return module


main = _load_main()
METADATA = json.loads((TEMPLATE / "metadata.json").read_text(encoding="utf-8"))
PARAMS = {p["name"]: p for p in METADATA["parameters"]}

HEADER = "customer_id,name,segment,engagement_model,arr_usd,contract_start,renewal_date,entitled_devices,csm_owner,nps\n"
ACCOUNTS = HEADER + "c-0001,Acme,smb,digital,12000,2026-01-01,2027-01-01,5,,\n"

#: an obviously wrong value per parameter, that its regexes must refuse
BAD = {
    "job": "stream",
    "protocol": "4",
    "score_every_s": "-1",
    "lake": "/data/lake",
    "out": "s3://bucket/out",
    "accounts": "accounts.csv",
    "health_model": "gs://",
    "from": "2026-13-01",
    "to": "20260831",
    "history_days": "-1",
    "hour_shards": "0",
    "broker": "mqtt.example.com",
    "tls": "yes",
    "ca_file": "ca.pem",
    "username": "two words",
    "password_env": "mqtt-password",
    "password_secret": "mqtt-ingest",
    "share_group": "a/b",
    "client_id_prefix": "a+b",
    "readers": "0",
    "allowed_lateness_s": "-1",
    "dedupe_ttl_s": "1d",
    "watermark_lag_ms": "5m",
    "idle_watermark": "clock",
    "max_messages_per_bundle": "0",
    "max_messages": "many",
    "idle_stop_ms": "0",
    "stop_file": "stop",
    "no_land": "1",
    "influx_env": "INFLUX_URL=http://x;HOME=/root",
    "secret_env": "INFLUX_TOKEN=s3cr3t",
}


def example(name: str) -> str:
    """The example value a parameter's help text documents (``… Example: <value>``)."""
    found = re.search(r"Example: (\S+)$", PARAMS[name]["helpText"])
    assert found, f"{name}: helpText must end with 'Example: <value>'"
    return found.group(1)


def argv_for(job: str, **values: str) -> list[str]:
    return [f"--job={job}", *(f"--{k}={v}" for k, v in values.items())]


# --- metadata.json ----------------------------------------------------------------------------


def test_metadata_has_the_fields_dataflow_requires():
    assert METADATA["name"] and METADATA["description"]
    names = [p["name"] for p in METADATA["parameters"]]
    assert len(names) == len(set(names)), "parameter names must be unique"
    for param in METADATA["parameters"]:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", param["name"]), param["name"]
        assert param["label"] and param["helpText"], param["name"]
        assert isinstance(param["isOptional"], bool), param["name"]
        assert param["regexes"] and all(isinstance(r, str) for r in param["regexes"]), param["name"]
    required = {p["name"] for p in METADATA["parameters"] if not p["isOptional"]}
    assert required == {"job", "lake", "out"}  # accounts is required by backfill only: main.py checks


def test_metadata_and_the_entry_point_accept_the_same_parameters():
    parser = main.template_parser()
    accepted = {a.dest for a in parser._actions if a.option_strings and a.dest != "help"}
    assert set(PARAMS) == accepted


def test_every_command_flag_is_a_template_parameter():
    # Derived from the commands' parsers, so a new flag there shows up here and
    # (by the test above) must be documented in metadata.json.
    params = main.template_params()
    for job in main.COMMAND_MODULES:
        flags = {
            s for a in main.command_parser(job)._actions for s in a.option_strings if s.startswith("--")
        } - main.LOCAL_ONLY_FLAGS
        assert flags == {p.flag for p in params.values() if job in p.jobs}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_each_regex_accepts_the_documented_example_and_refuses_a_bad_value(name):
    regexes = [re.compile(r) for r in PARAMS[name]["regexes"]]
    good = example(name)
    assert all(r.fullmatch(good) for r in regexes), f"{name}: example {good!r} refused"
    assert not all(r.fullmatch(BAD[name]) for r in regexes), f"{name}: {BAD[name]!r} accepted"


@pytest.mark.parametrize("name", ["from", "to"])
def test_day_regexes_agree_with_the_backfill_command(name):
    from fleetpulse.pipeline.cli.backfill import parse_day

    (regex,) = PARAMS[name]["regexes"]
    for value in ("2026-08-01", "2026-02-28", "2026-12-31"):
        assert re.fullmatch(regex, value) and parse_day("--from", value) == date.fromisoformat(value)
    for value in ("2026-8-1", "2026-W31-1", "20260801"):
        assert not re.fullmatch(regex, value)


@pytest.mark.parametrize("job", ["ingest", "backfill"])
def test_a_full_set_of_examples_parses_into_the_commands_flags(job):
    params = main.template_params()
    values = {n: example(n) for n, p in params.items() if job in p.jobs}
    launch = main.parse(argv_for(job, **values, influx_env=example("influx_env")) + ["--runner=FnApiRunner"])
    assert launch.job == job and launch.beam_args == ["--runner=FnApiRunner"]
    assert launch.influx_env == example("influx_env")
    args = main.command_parser(job).parse_args(launch.command_argv())
    for name, value in values.items():
        param = params[name]
        parsed = getattr(args, main.command_parser(job)._option_string_actions[param.flag].dest)
        if param.switch:
            assert parsed is (value == "true"), name
        elif name == "broker":
            assert parsed == ("mqtt.example.com", 8883)
        else:
            assert str(parsed) == value, name


# --- main.py: parameters ------------------------------------------------------------------------


def test_a_parameter_of_the_other_job_is_refused_by_name():
    with pytest.raises(ConfigError) as err:
        main.parse(argv_for("ingest", lake="/l", out="/o", **{"from": "2026-08-01"}))
    assert err.value.key == "from" and "backfill" in err.value.problem


def test_switches_take_true_or_false():
    assert "--tls" in main.parse(argv_for("ingest", lake="/l", out="/o", tls="true")).cli_argv
    assert "--tls" not in main.parse(argv_for("ingest", lake="/l", out="/o", tls="false")).cli_argv
    with pytest.raises(ConfigError) as err:
        main.parse(argv_for("ingest", lake="/l", out="/o", tls="yes"))
    assert err.value.key == "tls"


def test_unknown_job_and_missing_job_are_config_errors():
    with pytest.raises(ConfigError, match="invalid choice"):
        main.parse(["--job=stream"])
    with pytest.raises(ConfigError, match="--job"):
        main.parse(["--lake=gs://b/l"])


def test_beam_options_pass_through_untouched_even_when_they_resemble_ours():
    beam_args = ["--runner=DataflowRunner", "--job_name=fp-backfill", "--region=europe-west1",
                 "--temp_location=gs://b/tmp", "--sdk_container_image=europe-docker.pkg.dev/p/r/fp:1"]
    launch = main.parse(argv_for("backfill", lake="gs://b/l", out="gs://b/o") + beam_args)
    assert launch.beam_args == beam_args
    assert not main.is_local(launch.beam_args)
    assert main.is_local([]) and main.is_local(["--runner=FnApiRunner"])


def test_launch_env_for_a_remote_runner_passes_references_and_reads_nothing():
    def read_secret(version: str) -> str:
        raise AssertionError("a remote launch must not read any secret")

    env = main.launch_env(
        "INFLUX_URL=https://influx:8086;INFLUX_ORG=acme;INFLUX_BUCKET=fp",
        "INFLUX_TOKEN=projects/p/secrets/influx-token/versions/latest", read_secret, remote=True,
    )
    assert env["INFLUX_TOKEN_SECRET"] == "projects/p/secrets/influx-token/versions/latest"
    assert "INFLUX_TOKEN" not in env
    with pytest.raises(ConfigError) as err:
        main.launch_env("", "FLEETPULSE_MQTT_PASSWORD=projects/p/secrets/mqtt/versions/1", read_secret, remote=True)
    assert err.value.key == "secret_env" and "password_secret" in err.value.fix


def test_launch_env_reads_settings_and_secrets():
    asked: list[str] = []

    def read_secret(version: str) -> str:
        asked.append(version)
        return "tok-123"

    env = main.launch_env(
        "INFLUX_URL=https://influx:8086;INFLUX_ORG=acme;INFLUX_BUCKET=fp",
        "INFLUX_TOKEN=projects/p/secrets/influx-token/versions/latest",
        read_secret,
    )
    assert env == {"INFLUX_URL": "https://influx:8086", "INFLUX_ORG": "acme",
                   "INFLUX_BUCKET": "fp", "INFLUX_TOKEN": "tok-123"}
    assert asked == ["projects/p/secrets/influx-token/versions/latest"]


@pytest.mark.parametrize(
    ("influx_env", "secret_env", "key", "words"),
    [
        ("INFLUX_TOKEN=abc", "", "influx_env", "is a secret"),
        ("HOME=/root", "", "influx_env", "not an INFLUX_"),
        ("INFLUX_URL", "", "influx_env", "not NAME=value"),
        ("", "INFLUX_TOKEN=abc", "secret_env", "not a secret version"),
        ("", "influx-token=projects/p/secrets/s/versions/1", "secret_env", "not an environment variable"),
    ],
)
def test_launch_env_refuses_secrets_in_the_open_and_malformed_entries(influx_env, secret_env, key, words):
    def read_secret(version: str) -> str:
        raise AssertionError("nothing may be read from Secret Manager for a refused entry")

    with pytest.raises(ConfigError) as err:
        main.launch_env(influx_env, secret_env, read_secret)
    assert err.value.key == key and words in err.value.problem


def test_gs_files_are_staged_locally_before_validation(tmp_path):
    opened: list[str] = []

    def opener(path: str) -> io.BytesIO:
        opened.append(path)
        return io.BytesIO(ACCOUNTS.encode())

    local = main.stage_file("gs://acme/config/accounts.csv", tmp_path, opener)
    assert opened == ["gs://acme/config/accounts.csv"]
    assert Path(local).read_text(encoding="utf-8") == ACCOUNTS and Path(local).parent == tmp_path
    assert main.stage_file("/etc/accounts.csv", tmp_path, opener) == "/etc/accounts.csv"

    def unreadable(path: str) -> io.BytesIO:
        raise FileNotFoundError(2, "No such object", path)

    with pytest.raises(ConfigError, match="cannot be read at launch"):
        main.stage_file("gs://acme/missing.csv", tmp_path, unreadable)


# --- main.py: remote runs are checked before anything is built ------------------------------------


DATAFLOW = ["--runner=DataflowRunner", "--project=acme-data", "--region=europe-west1",
            "--temp_location=gs://acme-fleetpulse/tmp", "--sdk_container_image=europe-docker.pkg.dev/acme-data/fp/img:1"]


def test_ingest_on_dataflow_passes_the_remote_checks():
    launch = main.parse(argv_for("ingest", lake="gs://b/lake", out="gs://b/out") + DATAFLOW)
    main.check_remote(launch)
    main.check_remote(main.parse(argv_for("ingest", lake="gs://b/lake", out="gs://b/out",
                                          accounts="gs://b/a.csv", score_every_s="3600") + DATAFLOW))


@pytest.mark.parametrize(
    ("values", "key", "words"),
    [
        ({"lake": "/data/lake", "out": "gs://b/out"}, "lake", "each worker's own disk"),
        ({"lake": "gs://b/lake", "out": "./out"}, "out", "each worker's own disk"),
        ({"lake": "gs://b/lake", "out": "gs://b/out", "accounts": "gs://b/a.csv"}, "score_every_s", "drained"),
    ],
)
def test_ingest_on_dataflow_refuses_what_would_not_work_there(values, key, words):
    with pytest.raises(ConfigError) as err:
        main.check_remote(main.parse(argv_for("ingest", **values) + DATAFLOW))
    assert err.value.key == key and words in err.value.problem


def test_backfill_on_dataflow_needs_the_fleetpulse_worker_image():
    args = argv_for("backfill", lake="gs://b/lake", out="gs://b/out", accounts="gs://b/a.csv")
    with pytest.raises(ConfigError) as err:
        main.check_remote(main.parse(args + ["--runner=DataflowRunner"]))
    assert err.value.key == "sdk_container_image"
    main.check_remote(main.parse(args + ["--runner=DataflowRunner", "--sdk_container_image=img"]))


def test_main_prints_one_line_and_exits_2_on_a_config_error(capsys):
    code = main.main(argv_for("ingest", lake="/l", out="gs://b/o") + ["--runner=DataflowRunner"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "lake: /l is a local path" in err


# --- main.py builds both pipelines with the commands' own builders ------------------------------


@pytest.fixture
def no_influx():
    """No InfluxDB settings; whatever a launch sets in os.environ is removed after the test.

    (monkeypatch.delenv of an unset name records nothing, so it would not undo a
    variable the launch adds, and later tests would inherit it.)
    """
    saved = {n: v for n, v in os.environ.items() if n.startswith("INFLUX_")}
    for name in saved:
        del os.environ[name]
    yield
    for name in [n for n in os.environ if n.startswith("INFLUX_")]:
        del os.environ[name]
    os.environ.update(saved)


def tiny_lake(root: Path) -> Path:
    from fleetpulse.pipeline.lake.landing import LandingWriter

    writer = LandingWriter(root / "lake")
    writer.add("fleetpulse/v1/customers/c-0001/sites/s-1/gateways/g-1/batches", b"{}", 1_790_000_000_000)
    writer.commit()
    return root / "lake"


def step_labels(pipeline: beam.Pipeline) -> set[str]:
    """The full labels of the plan's steps and of the steps one level inside them."""
    top = pipeline.transforms_stack[0].parts
    return {t.full_label for t in top} | {inner.full_label for t in top for inner in t.parts}


def test_backfill_is_built_by_its_own_builder(tmp_path, no_influx):
    lake = tiny_lake(tmp_path)
    (tmp_path / "accounts.csv").write_text(ACCOUNTS, encoding="utf-8")
    launch = main.parse(argv_for("backfill", lake=str(lake), out=str(tmp_path / "out"),
                                 accounts=str(tmp_path / "accounts.csv"), to="2026-08-31")
                        + ["--runner=FnApiRunner"])
    config = main.resolve(launch, tmp_path)
    assert config.lake == str(lake) and config.to_day == date(2026, 8, 31) and config.influx is None
    pipeline = main.build(launch, config)
    assert isinstance(pipeline, beam.Pipeline)
    labels = step_labels(pipeline)
    assert {"ReadLanding", "PublishResults/WriteSignals", "PublishResults/WriteDeadLetters"} <= labels


def test_ingest_is_built_by_its_own_builder_in_streaming_mode(tmp_path, no_influx):
    from apache_beam.options.pipeline_options import StandardOptions

    launch = main.parse(argv_for("ingest", lake=str(tmp_path / "lake"), out=str(tmp_path / "out"),
                                 broker="127.0.0.1:1883", readers="2", idle_stop_ms="1000", no_land="true"))
    config = main.resolve(launch, tmp_path)
    assert config.source.readers == 2 and config.land is False
    pipeline = main.build(launch, config)
    assert isinstance(pipeline, beam.Pipeline)
    assert pipeline.options.view_as(StandardOptions).streaming is True
    labels = step_labels(pipeline)
    assert {"ReadFromMqtt", "ProcessTelemetry", "PublishResults/WriteRawArchive"} <= labels
    assert "LandMessages" not in labels


def staged_pickles(pipeline: beam.Pipeline) -> bytes:
    """Every DoFn of the pipeline proto (what the runner stages), unwrapped to raw pickle bytes."""
    import base64
    import bz2
    import zlib

    from apache_beam.portability import common_urns
    from apache_beam.portability.api import beam_runner_api_pb2

    chunks = []
    for transform in pipeline.to_runner_api().components.transforms.values():
        if transform.spec.urn == common_urns.primitives.PAR_DO.urn:
            fn = beam_runner_api_pb2.ParDoPayload.FromString(transform.spec.payload).do_fn.payload
            raw = base64.b64decode(fn)
            chunks.append(bz2.decompress(raw) if raw.startswith(b"BZh") else zlib.decompress(raw))
    assert chunks
    return b"".join(chunks)


INFLUX_ENV = "INFLUX_URL=https://influx.example.com:8086;INFLUX_ORG=acme;INFLUX_BUCKET=fleetpulse"
TOKEN_VERSION = "projects/acme-data/secrets/influx-token/versions/latest"
MQTT_VERSION = "projects/acme-data/secrets/mqtt-ingest/versions/3"


def test_ingest_is_built_for_dataflow_with_secret_references_only(tmp_path, no_influx, monkeypatch):
    from apache_beam.options.pipeline_options import StandardOptions

    # Even a password in the launcher's own environment must not reach the graph.
    monkeypatch.setenv("FLEETPULSE_MQTT_PASSWORD", "launcher-env-password")
    launch = main.parse(argv_for(
        "ingest", lake="gs://acme-fleetpulse/lake", out="gs://acme-fleetpulse/ingest-out",
        broker="mqtt.example.com:8883", tls="true", username="fleetpulse-ingest", readers="2",
        password_secret=MQTT_VERSION, influx_env=INFLUX_ENV, secret_env=f"INFLUX_TOKEN={TOKEN_VERSION}",
    ) + DATAFLOW)
    main.check_remote(launch)

    def read_secret(version: str) -> str:
        raise AssertionError("a Dataflow launch must not read secrets")

    config = main.resolve(launch, tmp_path, read_secret=read_secret)
    assert config.land and config.replay == () and config.source.stop_file is None
    assert config.influx is not None and config.influx.token is None
    pipeline = main.build(launch, config)  # built, never submitted
    assert type(pipeline.runner).__name__ == "DataflowRunner"
    assert pipeline.options.view_as(StandardOptions).streaming is True
    labels = step_labels(pipeline)
    assert {"ReadFromMqtt", "LandMessages", "ProcessTelemetry", "PublishResults/WriteRawArchive",
            "PublishResults/WriteInfluxDevice"} <= labels
    staged = staged_pickles(pipeline)
    assert TOKEN_VERSION.encode() in staged and MQTT_VERSION.encode() in staged
    assert b"launcher-env-password" not in staged


def test_a_local_launch_reads_secrets_into_the_graph_which_is_why_remote_ones_do_not(tmp_path, no_influx):
    # The contrast to the test above (and proof that its search can find a value).
    launch = main.parse(argv_for("ingest", lake=str(tmp_path / "lake"), out=str(tmp_path / "out"),
                                 influx_env=INFLUX_ENV, secret_env=f"INFLUX_TOKEN={TOKEN_VERSION}")
                        + ["--runner=FnApiRunner"])
    config = main.resolve(launch, tmp_path, read_secret=lambda version: "tok-read-at-launch")
    assert b"tok-read-at-launch" in staged_pickles(main.build(launch, config))


def test_resolve_puts_the_launch_env_where_the_commands_read_it(tmp_path, no_influx):
    lake = tiny_lake(tmp_path)
    (tmp_path / "accounts.csv").write_text(ACCOUNTS, encoding="utf-8")
    launch = main.parse(argv_for(
        "backfill", lake=str(lake), out=str(tmp_path / "out"), accounts=str(tmp_path / "accounts.csv"),
        influx_env="INFLUX_URL=http://127.0.0.1:8086;INFLUX_DB=fleetpulse",
        secret_env="INFLUX_PASSWORD=projects/p/secrets/pw/versions/2;INFLUX_USERNAME=projects/p/secrets/u/versions/1",
    ))
    config = main.resolve(launch, tmp_path, read_secret=lambda version: version.split("/")[3])
    assert os.environ["INFLUX_PASSWORD"] == "pw" and os.environ["INFLUX_USERNAME"] == "u"
    assert config.influx is not None and config.influx.api_version == 1
    assert (config.influx.database, config.influx.username) == ("fleetpulse", "u")


# --- a local run through the template's entry point ------------------------------------------------


def land_small_fleet(root: Path) -> Path:
    """Two customers, three days, landed as gateways would send them; returns accounts.csv."""
    from fleetpulse.devices.simulator.simulation import SimulationConfig

    from .test_jobs import land_fleet

    return land_fleet(root, SimulationConfig(seed=5, customers=2, days=3), status=False)


def test_a_local_backfill_of_a_date_range_through_the_entry_point(tmp_path, no_influx):
    from fleetpulse.pipeline.outputs import tables as outputs
    from fleetpulse.schemas.accounts import load_accounts

    accounts = land_small_fleet(tmp_path)
    out = tmp_path / "signals"
    code = main.main(argv_for(
        "backfill", lake=str(tmp_path / "lake"), out=str(out), accounts=str(accounts),
        **{"from": "2026-08-02", "to": "2026-08-02"},
    ) + ["--runner=FnApiRunner", "--direct_running_mode=in_memory"])
    assert code == 0
    signals = outputs.read_signals(out)
    assert signals and {s.day for s in signals} == {"2026-08-02"}
    assert {s.customer_id for s in signals} == set(load_accounts(accounts))


# --- the image recipe ---------------------------------------------------------------------------------


def beam_pin() -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    pins = [d for d in pyproject["project"]["optional-dependencies"]["pipeline"] if d.startswith("apache-beam")]
    assert len(pins) == 1 and "==" in pins[0], pins
    return pins[0].split("==", 1)[1]


def test_the_image_installs_the_pipeline_extra_and_pins_beam_once():
    text = (TEMPLATE / "Dockerfile").read_text(encoding="utf-8")
    instructions = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "'.[pipeline]'" in instructions or '".[pipeline]"' in instructions
    pin = "=="  # (split so the one-pin check in test_packaging does not count this file)
    assert "apache-beam" + pin not in text and "apache_beam" + pin not in text
    sdk = re.findall(r"^FROM apache/beam_python(\d)\.(\d+)_sdk:(\S+)\s*$", instructions, re.M)
    assert sdk == [(*sdk[0][:2], beam_pin())], "the SDK image tag must equal the Beam pin in pyproject.toml"
    launcher = re.search(r"python(\d)(\d+)-template-launcher-base", instructions)
    assert launcher and launcher.groups() == sdk[0][:2], "launcher and SDK image must share a Python version"
    assert "FLEX_TEMPLATE_PYTHON_PY_FILE=/template/main.py" in instructions
    assert "COPY deploy/dataflow/main.py /template/main.py" in instructions
    assert "/opt/google/dataflow/python_template_launcher" in instructions
