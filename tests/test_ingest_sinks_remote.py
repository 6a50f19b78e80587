"""The streaming sinks on an object store, and secrets that stay out of the job graph.

``memfs://`` is a test-only Beam FileSystem backed by a dict, registered by
subclassing ``apache_beam.io.filesystem.FileSystem`` (Beam finds file systems
by their scheme among the subclasses). Like an object store it has no folders,
an object written with ``create`` exists only once its writer is closed, and
``rename`` is copy + delete. It logs every operation, so the tests can check
*how* a sink committed, not only what is there at the end.

Secrets: a ``SecretRef`` whose value sits in a file (the path is in the
pickled graph, the value is not), so the tests can show that the graph holds
the reference only and that the worker side (``setup``) reads the value.
"""

from __future__ import annotations

import base64
import bz2
import io
import json
import logging
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.internal import pickler
from apache_beam.io.filesystem import BeamIOError, CompressionTypes, FileMetadata, FileSystem
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.pipeline import PipelineVisitor
from apache_beam.testing.util import assert_that, equal_to

from fleetpulse.errors import TerminalError, TransientError
from fleetpulse.pipeline.jobs.ingest import local_beam_args
from fleetpulse.pipeline.outputs import bundles as sinks
from fleetpulse.pipeline.outputs.influx import InfluxConfig
from fleetpulse.pipeline.outputs.influx.write import _WriteInfluxFn
from fleetpulse.pipeline.sources.lake import ReplayLanding
from fleetpulse.pipeline.sources.mqtt import (
    MqttSourceConfig,
    ReaderSession,
    ReadFromMqtt,
    broker_password,
)

from . import servers
from .test_ingest_support import T0, create_session, publish, topic

TOKEN = "tok-5ecret-value-0042"
PASSWORD = "mqtt-5ecret-pw-0017"


# --- a test-only object store ------------------------------------------------------------------


class _Upload(io.BytesIO):
    """A write channel: the object appears only when it is closed, whole (as on GCS)."""

    def __init__(self, store: MemFileSystem, path: str) -> None:
        super().__init__()
        self._store, self._path = store, path

    def close(self) -> None:
        if not self.closed:
            self._store.put(self._path, self.getvalue())
        super().close()


class MemFileSystem(FileSystem):
    """``memfs://bucket/key``: objects in a dict shared by every instance (Beam makes its own)."""

    objects: ClassVar[dict[str, bytes]] = {}
    log: ClassVar[list[tuple[str, str]]] = []
    #: rename fails for destinations containing this text (a failed commit)
    fail_rename: ClassVar[str | None] = None

    @classmethod
    def scheme(cls) -> str:
        return "memfs"

    @classmethod
    def reset(cls) -> None:
        cls.objects.clear()
        cls.log.clear()
        cls.fail_rename = None

    def put(self, path: str, data: bytes) -> None:
        self.log.append(("put", path))
        self.objects[path] = data

    def join(self, basepath: str, *paths: str) -> str:
        return "/".join([basepath.rstrip("/"), *(p.strip("/") for p in paths)])

    def split(self, path: str) -> tuple[str, str]:
        head, _, tail = path.rstrip("/").rpartition("/")
        return head, tail

    def mkdirs(self, path: str) -> None:
        pass  # no folders in an object store

    def has_dirs(self) -> bool:
        return False

    def _list(self, dir_or_prefix: str) -> Iterator[FileMetadata]:
        for path, data in sorted(self.objects.items()):
            if path.startswith(dir_or_prefix):
                yield FileMetadata(path, len(data), 0.0)

    def create(self, path: str, mime_type: str = "application/octet-stream",
               compression_type: str = CompressionTypes.AUTO) -> Any:
        self.log.append(("create", path))
        return _Upload(self, path)

    def open(self, path: str, mime_type: str = "application/octet-stream",
             compression_type: str = CompressionTypes.AUTO) -> Any:
        if path not in self.objects:
            raise BeamIOError(f"no object {path}")
        return io.BytesIO(self.objects[path])

    def copy(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        for src, dst in zip(source_file_names, destination_file_names, strict=True):
            self.put(dst, self.objects[src])

    def rename(self, source_file_names: list[str], destination_file_names: list[str]) -> None:
        for src, dst in zip(source_file_names, destination_file_names, strict=True):
            if self.fail_rename and self.fail_rename in dst:
                raise BeamIOError("rename failed", {src: OSError("planted failure")})
            self.log.append(("rename", f"{src} -> {dst}"))
            self.copy([src], [dst])
            self.delete([src])

    def exists(self, path: str) -> bool:
        return path in self.objects

    def size(self, path: str) -> int:
        return len(self.objects[path])

    def last_updated(self, path: str) -> float:
        return 0.0

    def checksum(self, path: str) -> str:
        return str(len(self.objects[path]))

    def metadata(self, path: str) -> FileMetadata:
        return FileMetadata(path, len(self.objects[path]), 0.0)

    def delete(self, paths: list[str]) -> None:
        missing = [p for p in paths if p not in self.objects]
        if missing:
            raise BeamIOError("delete failed", {p: OSError("not found") for p in missing})
        for path in paths:
            self.log.append(("delete", path))
            del self.objects[path]


@pytest.fixture
def memfs() -> Iterator[type[MemFileSystem]]:
    MemFileSystem.reset()
    yield MemFileSystem
    MemFileSystem.reset()


LAKE = "memfs://bucket/lake"
OUT = "memfs://bucket/out"


def under(prefix: str, *, hidden: bool = False) -> dict[str, bytes]:
    return {p: d for p, d in MemFileSystem.objects.items()
            if p.startswith(prefix) and hidden == p.rsplit("/", 1)[1].startswith(".")}


def landing_row(n: int) -> dict[str, Any]:
    return {"topic": topic("c1", "c1-s1", "c1-gw1"), "payload": json.dumps({"n": n}).encode(),
            "received_ms": T0 + n}


def lake_row(n: int) -> dict[str, Any]:
    return {"customer_id": "c1", "site_id": "c1-s1", "gateway_id": "c1-gw1", "device_id": f"d{n % 3}",
            "ts_ms": T0 + n * 60_000, "boot": 1, "seq": n, "kind": "heartbeat", "fw": "2.4.1",
            "received_ms": T0 + n * 60_000 + 5, "payload_json": "{}"}


def dofns(p: beam.Pipeline) -> list[Any]:
    """The DoFns of every ParDo in ``p`` (built, not run)."""
    found: list[Any] = []

    class Visitor(PipelineVisitor):
        def visit_transform(self, applied: Any) -> None:
            if isinstance(applied.transform, beam.ParDo):
                found.append(applied.transform.fn)

    p.visit(Visitor())
    return found


def run_local(build: Any) -> None:
    """Build with ``build(p)`` and run on the in-process runner (which keeps bundles in memory)."""
    with beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"])) as p:
        build(p)


# --- commits through FileSystems ---------------------------------------------------------------


def test_a_commit_creates_a_hidden_temporary_and_renames_it_into_place(memfs: type[MemFileSystem]) -> None:
    final = "memfs://bucket/out/part-x.jsonl"
    sinks.commit_bytes(final, b"one\ntwo\n")
    assert memfs.objects == {final: b"one\ntwo\n"}
    (created,) = [path for op, path in memfs.log if op == "create"]
    folder, name = created.rsplit("/", 1)
    assert folder == "memfs://bucket/out" and name.startswith(".part-x.jsonl.") and name.endswith(".tmp")
    # The final name is never written to directly: it appears only by the rename, whole.
    assert [op for op, path in memfs.log if path == final] == ["put"]
    assert ("rename", f"{created} -> {final}") in memfs.log


def test_a_failed_rename_leaves_neither_the_final_object_nor_the_temporary(memfs: type[MemFileSystem]) -> None:
    memfs.fail_rename = "part-x"
    with pytest.raises(BeamIOError):
        sinks.commit_bytes("memfs://bucket/out/part-x.jsonl", b"data\n")
    assert memfs.objects == {}


def test_json_lines_parts_commit_and_a_retried_bundle_rewrites_the_same_object(memfs: type[MemFileSystem]) -> None:
    lines = ['{"a": 1}', '{"b": 2}']
    for _ in range(2):  # the second run is a retry of the same bundle
        run_local(lambda p: p | beam.Create(lines) | sinks.WriteJsonLinesParts(f"{OUT}/dead_letters"))
    (part,) = under(f"{OUT}/dead_letters")
    assert part.rsplit("/", 1)[1].startswith("part-") and not under(OUT, hidden=True)
    assert sorted(sinks.read_json_lines_parts(f"{OUT}/dead_letters")) == sorted(lines)
    assert [op for op, path in memfs.log if path == part] == ["put", "put"]  # replaced, never a copy beside it


def test_archive_panes_land_by_event_hour_as_whole_parquet_objects(memfs: type[MemFileSystem]) -> None:
    rows = [lake_row(n) for n in range(90)]  # 90 minutes: two event hours
    run_local(lambda p: p | beam.Create(rows) | sinks.WriteArchivePanes(LAKE))
    panes = under(f"{LAKE}/records")
    assert {p.split("/records/")[1].rsplit("/", 1)[0] for p in panes} == {"dt=2024-03-04/hour=00",
                                                                         "dt=2024-03-04/hour=01"}
    assert all(p.rsplit("/", 1)[1].startswith("part-s-") for p in panes)
    read = [r for data in panes.values() for r in pq.read_table(pa.BufferReader(data)).to_pylist()]
    assert sorted(r["seq"] for r in read) == list(range(90))
    assert not under(LAKE, hidden=True)


def test_landing_commits_each_bundle_and_marks_it_pending_then_replays_it(memfs: type[MemFileSystem]) -> None:
    rows = [landing_row(n) for n in range(5)]
    run_local(lambda p: p | beam.Create(rows) | sinks.LandMessages(LAKE, "ingest-a"))
    (landed,) = under(f"{LAKE}/landing")
    assert landed.startswith(f"{LAKE}/landing/dt=2024-03-04/part-{T0:013d}-ingest-a-")
    assert sinks.pending_landing_files(LAKE, "ingest-a") == [landed]
    assert not under(LAKE, hidden=True)

    def replay(p: beam.Pipeline) -> None:
        got = p | ReplayLanding([landed]) | beam.Map(lambda r: (r["topic"], r["payload"], r["received_ms"]))
        assert_that(got, equal_to([(r["topic"], r["payload"], r["received_ms"]) for r in rows]))

    run_local(replay)
    assert sinks.clear_pending(LAKE, "ingest-a") == 1
    assert sinks.pending_landing_files(LAKE, "ingest-a") == []
    assert list(under(f"{LAKE}/landing")) == [landed]  # clearing forgets the marker, never the data


def test_rollback_deletes_what_a_killed_run_registered_on_the_object_store(memfs: type[MemFileSystem]) -> None:
    def killed_run(p: beam.Pipeline) -> None:
        _ = p | "Rows" >> beam.Create([lake_row(1)]) | sinks.WriteArchivePanes(LAKE, "ingest-a")
        _ = p | "Lines" >> beam.Create(["x"]) | sinks.WriteJsonLinesParts(f"{OUT}/alerts", register=(LAKE, "ingest-a"))

    run_local(killed_run)  # ... and then it was killed: nothing cleared the registry
    outputs = [*under(f"{LAKE}/records"), *under(f"{OUT}/alerts")]
    assert len(outputs) == 2
    assert len(under(f"{LAKE}/ingest/ingest-a/outputs")) == 2
    assert sinks.rollback_unfinished_outputs(LAKE, "ingest-a") == 2
    assert not under(f"{LAKE}/records") and not under(f"{OUT}/alerts") and not under(f"{LAKE}/ingest")


def test_no_registry_is_kept_on_a_runner_that_persists_bundles(memfs: type[MemFileSystem]) -> None:
    local = beam.Pipeline(options=PipelineOptions(["--runner=FnApiRunner"]))
    _ = local | beam.Create([landing_row(1)]) | sinks.LandMessages(LAKE, "ingest-a")
    assert [fn._registry for fn in dofns(local) if isinstance(fn, sinks._LandFn)] == [True]

    options = PipelineOptions(["--runner=DataflowRunner", "--project=acme-data", "--region=europe-west1",
                               "--temp_location=gs://acme-fleetpulse/tmp", "--streaming"])
    p = beam.Pipeline(options=options)  # built, never run
    rows = p | "Rows" >> beam.Create([landing_row(1)])
    _ = rows | "Land" >> sinks.LandMessages(LAKE, "ingest-a")
    _ = rows | "Panes" >> sinks.WriteArchivePanes(LAKE, "ingest-a")
    _ = rows | "Lines" >> sinks.WriteJsonLinesParts(OUT, register=(LAKE, "ingest-a"))
    fns = dofns(p)
    (land,) = [fn for fn in fns if isinstance(fn, sinks._LandFn)]
    (panes,) = [fn for fn in fns if isinstance(fn, sinks._ArchivePaneFn)]
    (lines,) = [fn for fn in fns if isinstance(fn, sinks._JsonLinesFn)]
    assert land._registry is False and panes._writer is None and lines._register is None


@pytest.mark.parametrize(
    ("runner", "in_memory"),
    [(None, True), ("FnApiRunner", True), ("DirectRunner", True), ("direct", True), ("PrismRunner", True),
     ("DataflowRunner", False), ("apache_beam.runners.dataflow.dataflow_runner.DataflowRunner", False),
     ("FlinkRunner", False)],
)
def test_which_runners_keep_committed_bundles_in_memory(runner: str | None, in_memory: bool) -> None:
    assert sinks.keeps_bundles_in_memory(runner) is in_memory


def test_local_commits_keep_their_fsync_and_rename(tmp_path: Path) -> None:
    final = tmp_path / "a" / "part-1.jsonl"
    sinks.commit_bytes(str(final), b"x\n")
    sinks.commit_bytes(str(final), b"x\n")  # a retry replaces it
    assert final.read_bytes() == b"x\n" and [p.name for p in final.parent.iterdir()] == ["part-1.jsonl"]
    assert sinks.join("memfs://b/lake/", "landing", "dt=1") == "memfs://b/lake/landing/dt=1"
    assert sinks.join(tmp_path, "landing") == str(tmp_path / "landing")


# --- secrets: references in the graph, values on the worker -------------------------------------


class FileSecret:
    """A secret reference whose value is in a file: what is pickled is the path, never the value."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.reads = 0

    def get_str(self) -> str:
        self.reads += 1
        return Path(self.path).read_text(encoding="utf-8")


class BrokenSecret:
    def get_str(self) -> str:
        raise RuntimeError("Failed to retrieve secret bytes: 403 Permission denied")


def raw_pickle(obj: Any) -> bytes:
    """What Beam stages for ``obj``: its pickle, unwrapped from base64 and compression.

    (Beam compresses with bz2 by default, zlib on request: searching the staged
    bytes themselves for a secret would find nothing either way.)
    """
    raw = base64.b64decode(pickler.dumps(obj))
    return bz2.decompress(raw) if raw.startswith(b"BZh") else zlib.decompress(raw)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "influx-token"
    path.write_text(TOKEN, encoding="utf-8")
    return path


def test_the_influx_sink_fn_pickles_the_reference_and_reads_the_token_in_setup(token_file: Path) -> None:
    config = InfluxConfig(url="http://127.0.0.1:9", org="acme", bucket="fp", token_secret=FileSecret(token_file))
    staged = raw_pickle(_WriteInfluxFn(config))
    assert str(token_file).encode() in staged and TOKEN.encode() not in staged
    # The worker side: unpickle, setup() reads the secret and the sink holds the value.
    fn = pickler.loads(pickler.dumps(_WriteInfluxFn(config)))
    fn.setup()
    try:
        assert fn.sink is not None and fn.sink.config.token == TOKEN and fn.sink.config.token_secret is None
    finally:
        fn.teardown()
    # With a value instead of a reference the same check finds it: the check can fail.
    assert TOKEN.encode() in raw_pickle(_WriteInfluxFn(InfluxConfig(url="http://h:8086", org="a", bucket="b",
                                                                    token=TOKEN)))


def test_influx_secret_references_are_validated_like_the_values() -> None:
    from fleetpulse.errors import ConfigError

    ref = BrokenSecret()
    InfluxConfig(url="http://h:8086", org="a", bucket="b", token_secret=ref).validate()
    InfluxConfig(url="http://h:8086", api_version=1, database="d", username="u", password_secret=ref).validate()
    with pytest.raises(ConfigError) as err:
        InfluxConfig(url="http://h:8086", org="a", bucket="b", token="t", token_secret=ref).validate()
    assert err.value.key == "token_secret"
    with pytest.raises(ConfigError) as err:
        InfluxConfig(url="http://h:8086", api_version=1, database="d", token_secret=ref).validate()
    assert err.value.key == "token_secret"
    with pytest.raises(TerminalError, match="roles/secretmanager.secretAccessor"):
        InfluxConfig(url="http://h:8086", org="a", bucket="b", token_secret=ref).with_secrets()


def test_influx_secret_references_come_from_the_environment() -> None:
    from fleetpulse.errors import ConfigError

    version = "projects/acme-data/secrets/influx-token/versions/latest"
    config = InfluxConfig.from_env({"INFLUX_URL": "http://h:8086", "INFLUX_ORG": "a", "INFLUX_BUCKET": "b",
                                    "INFLUX_TOKEN_SECRET": version})
    assert config is not None and config.token is None and config.api_version == 2
    assert getattr(config.token_secret, "_version_name", None) == version  # Beam's GcpSecret, not yet read
    with pytest.raises(ConfigError) as err:
        InfluxConfig.from_env({"INFLUX_URL": "http://h:8086", "INFLUX_DB": "d", "INFLUX_USERNAME": "u",
                               "INFLUX_PASSWORD_SECRET": "influx-password"})
    assert err.value.key == "INFLUX_PASSWORD_SECRET"


class _FakeClient:
    """Records the credentials a reader gives paho; connects nowhere."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.credentials: tuple[str, str | None] | None = None

    def username_pw_set(self, username: str, password: str | None) -> None:
        self.credentials = (username, password)


def test_the_broker_password_is_read_from_its_secret_where_the_reader_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "mqtt-password"
    secret_file.write_text(PASSWORD, encoding="utf-8")
    monkeypatch.setenv("FLEETPULSE_MQTT_PASSWORD", "from-the-environment")
    config = MqttSourceConfig(username="ingest", password_env="FLEETPULSE_MQTT_PASSWORD",
                              password_secret=FileSecret(secret_file))
    assert broker_password(config) == PASSWORD  # the secret wins over the variable
    assert broker_password(MqttSourceConfig(username="ingest", password_env="FLEETPULSE_MQTT_PASSWORD")) \
        == "from-the-environment"
    session = ReaderSession(config, 0, client_factory=_FakeClient, password="given")
    assert session._client.credentials == ("ingest", "given")
    with pytest.raises(TerminalError, match="secretAccessor"):
        broker_password(MqttSourceConfig(username="ingest", password_secret=BrokenSecret()))

    p = beam.Pipeline()  # only to expand the source into its DoFn; never run
    _ = p | ReadFromMqtt(config)
    (fn,) = [fn for fn in dofns(p) if type(fn).__name__ == "_ReadMqttFn"]
    staged = raw_pickle(fn)
    assert str(secret_file).encode() in staged and PASSWORD.encode() not in staged
    worker = pickler.loads(pickler.dumps(fn))
    worker.setup()
    try:
        assert worker._password == PASSWORD
    finally:
        worker.teardown()


# --- the broker password from a secret, against a real Mosquitto -----------------------------------


@pytest.mark.integration
def test_readers_log_in_with_the_password_of_their_secret(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Two listeners on one broker: the test publishes (and creates the readers' session)
    # anonymously on one; the readers must log in on the other, with their secret's value.
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "ingest", PASSWORD], check=True)
    open_port, login_port = servers.free_port(), servers.free_port()
    broker = servers.mosquitto_with(tmp_path / "broker", "\n".join([
        "per_listener_settings true",
        f"listener {open_port} 127.0.0.1", "allow_anonymous true",
        f"listener {login_port} 127.0.0.1", "allow_anonymous false", f"password_file {passwd}",
    ]), login_port).start()
    try:
        secret_file = tmp_path / "mqtt-password"
        secret_file.write_text(PASSWORD, encoding="utf-8")
        config = MqttSourceConfig(port=login_port, username="ingest", password_secret=FileSecret(secret_file),
                                  client_id_prefix="it-secret", share_group="it", idle_stop_ms=800)
        create_session(open_port, config)
        publish(open_port, [(topic("c1", "c1-s1", "c1-gw1"),
                             json.dumps({"n": n, "records": [{"ts_ms": T0 + n}]}).encode()) for n in range(3)])
        opts = PipelineOptions(local_beam_args())
        opts.view_as(StandardOptions).streaming = True
        with beam.Pipeline(options=opts) as p:
            got = p | ReadFromMqtt(config) | beam.Map(lambda r: json.loads(r["payload"])["n"])
            assert_that(got, equal_to([0, 1, 2]))
        # The login listener refuses anyone else: the secret's value is what let the readers in.
        wrong = tmp_path / "wrong"
        wrong.write_text("not-the-password", encoding="utf-8")
        refused = replace(config, password_secret=FileSecret(wrong), connect_timeout_s=2.0)
        with caplog.at_level(logging.ERROR, logger="fleetpulse.pipeline.sources.mqtt"):
            with pytest.raises(TransientError, match="did not accept"):
                ReaderSession(refused, 0).start().stop()
        assert "Not authorized" in caplog.text
    finally:
        broker.stop()
