"""The central-side lander against a real Mosquitto: everything lands, nothing twice
while up, and a kill -9 loses nothing (the broker redelivers what was not committed)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from fleetpulse.pipeline.lake.lander import Lander, LanderConfig
from fleetpulse.pipeline.lake.landing import iter_landing_rows, landing_files
from fleetpulse.schemas import load_contract

from .servers import wait_until

pytestmark = pytest.mark.integration

CONTRACT = load_contract()


def batch_topic(i: int) -> str:
    return CONTRACT.topic("gateway_batches", customer_id=f"c-{i % 3}", site_id="s1", gateway_id=f"gw-{i % 3}")


def publish(port: int, payloads: list[tuple[str, bytes]], client_id: str = "test-pub") -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(topic, payload, qos=1) for topic, payload in payloads]
    for info in infos:
        info.wait_for_publish(timeout=30)
        assert info.is_published()
    client.disconnect()
    client.loop_stop()


def landed(lake: Path, zone: str = "landing") -> list[bytes]:
    return [row["payload"] for f in landing_files(lake, zone) for row in iter_landing_rows(f)]


def test_lands_every_batch_and_status_once(mosquitto, tmp_path):
    lake = tmp_path / "lake"
    lander = Lander(LanderConfig(lake=lake, port=mosquitto.port, commit_interval_ms=50))
    lander.start()
    batches = [(batch_topic(i), json.dumps({"n": i}).encode()) for i in range(500)]
    status_topic = CONTRACT.topic("gateway_status", customer_id="c-0", site_id="s1", gateway_id="gw-0")
    publish(mosquitto.port, [*batches, (status_topic, b'{"state":"online"}')])
    wait_until(lambda: lander.snapshot()["committed_messages"] == 501, what="all messages committed")
    lander.stop()

    assert sorted(landed(lake)) == sorted(p for _, p in batches)
    assert landed(lake, "status") == [b'{"state":"online"}']
    assert not list(lake.rglob("*.tmp")), "no temporary file may stay visible"


def test_kill_9_loses_nothing(mosquitto, tmp_path):
    """Messages received but not yet committed are not acked, so the broker redelivers them."""
    lake = tmp_path / "lake"
    cmd = [sys.executable, "-m", "fleetpulse", "land", "--broker", f"127.0.0.1:{mosquitto.port}",
           "--lake", str(lake), "--commit-interval-ms", "200", "--commit-max-messages", "50"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    try:
        # The subscription must exist before we publish (persistent session from then on).
        tail = StderrTail(proc)
        wait_until(lambda: b"connected" in tail.read(), what="lander connected")
        batches = [(batch_topic(i), json.dumps({"n": i}).encode()) for i in range(2000)]
        publish(mosquitto.port, batches[:1000], client_id="pub-a")
        wait_until(lambda: len(landed(lake)) > 0, what="first files landed")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        publish(mosquitto.port, batches[1000:], client_id="pub-b")  # lander is down
        proc = subprocess.Popen(cmd, stderr=subprocess.DEVNULL)
        expected = {p for _, p in batches}
        wait_until(lambda: set(landed(lake)) == expected, timeout_s=60, what="every message landed")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    payloads = landed(lake)
    assert set(payloads) == expected
    # Duplicates can only be messages that were landed but not yet acked at the kill.
    assert len(payloads) - len(expected) <= 200


class StderrTail:
    """What a child process has written to its stderr pipe so far, read without blocking."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stderr is not None
        self._stream = proc.stderr
        os.set_blocking(self._stream.fileno(), False)
        self.text = b""

    def read(self) -> bytes:
        self.text += self._stream.read() or b""
        return self.text


def test_a_full_disk_acknowledges_nothing_until_the_files_commit(mosquitto, tmp_path, caplog):
    """ENOSPC on commit: the messages stay buffered and unacknowledged (the broker keeps them),
    the error is counted, and once the disk takes files again everything lands once."""
    import errno

    lake = tmp_path / "lake"
    lander = Lander(LanderConfig(lake=lake, port=mosquitto.port, commit_interval_ms=50))
    writer = lander._writers["landing"]
    real_commit = writer.commit
    full = True

    def commit():
        if full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_commit()

    writer.commit = commit
    lander.start()
    try:
        batches = [(batch_topic(i), json.dumps({"n": i}).encode()) for i in range(300)]
        publish(mosquitto.port, batches)
        # The broker stops sending at its in-flight window: the rest waits there.
        wait_until(lambda: lander.snapshot()["errors"] >= 3, what="commits refused by the full disk")
        assert lander.snapshot()["received_messages"] > 0
        assert lander.snapshot()["committed_messages"] == 0 and landed(lake) == []
        full = False
        wait_until(lambda: lander.snapshot()["committed_messages"] == 300, what="the backlog committed")
    finally:
        lander.stop()
    assert sorted(landed(lake)) == sorted(p for _, p in batches)
    refusals = [r for r in caplog.records if "landing commit" in r.getMessage() and r.levelname == "ERROR"]
    assert len(refusals) == 1, "one line per failure episode, not one per retry"


def test_a_topic_that_is_not_utf8_lands_escaped_instead_of_stopping_the_lander(tmp_path):
    """paho's message.topic raises on bytes that are not UTF-8, inside its network thread."""

    class Message:
        mid, qos, payload = 1, 0, b"{}"

        @property
        def topic(self):
            raise UnicodeDecodeError("utf-8", b"fleetpulse/\xff/batches", 11, 12, "invalid start byte")

    lake = tmp_path / "lake"
    lander = Lander(LanderConfig(lake=lake))
    lander._on_message(lander._client, None, Message())
    assert lander.commit(ack=False)
    rows = [row for f in landing_files(lake) for row in iter_landing_rows(f)]
    assert [(row["topic"], row["payload"]) for row in rows] == [("fleetpulse/\\xff/batches", b"{}")]
