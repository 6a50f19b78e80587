"""The gateway spool on its own: durability, order, recovery from damage, quota and TTL."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetpulse.devices.collector.spool import (
    FRAME_OVERHEAD,
    MIN_QUOTA_BYTES,
    Spool,
    SpoolLocked,
    encode_frame,
)


def record(i: int, size: int = 40) -> bytes:
    body = f'{{"device_id":"d{i % 7}","seq":{i}}}'.encode()
    return body + b" " * max(0, size - len(body))


def drain(spool: Spool, ack: bool = True) -> list[bytes]:
    out: list[bytes] = []
    while True:
        records, end = spool.read(100)
        if not records and spool.unread_records == 0:
            if ack:
                spool.acknowledge(end)
            return out
        out.extend(r.data for r in records)
        if ack:
            spool.acknowledge(end)


def crash(spool: Spool) -> None:
    """What kill -9 leaves: file descriptors closed, no commit, no final cursor write."""
    if spool._reader is not None:
        spool._reader.close()
    for fd in (spool._write_fd, spool._cursor_fd, spool._lock_fd):
        os.close(fd)  # type: ignore[arg-type]
    spool._write_fd = spool._cursor_fd = spool._lock_fd = spool._reader = None


_open_spools: list[Spool] = []


def opened(path: Path, **kw) -> Spool:
    kw.setdefault("quota_bytes", 1 << 20)
    spool = Spool(path, **kw)
    spool.open()
    _open_spools.append(spool)
    return spool


@pytest.fixture(autouse=True)
def _close_spools():
    yield
    while _open_spools:
        spool = _open_spools.pop()
        if spool._write_fd is not None and spool._lock_fd is not None:
            try:
                os.fstat(spool._lock_fd)
            except OSError:
                continue  # crashed on purpose
            spool.close()


def test_records_come_back_in_order_across_segments_and_are_released(tmp_path: Path) -> None:
    spool = opened(tmp_path, quota_bytes=MIN_QUOTA_BYTES * 5)  # 20 KiB segments
    expected = [record(i) for i in range(2000)]  # ~ 136 KB: many segments, within the quota
    for data in expected:
        assert spool.append(data, at_ms=1)
    assert spool.commit() == 2000
    assert len(list(tmp_path.glob("*.seg"))) > 3
    assert drain(spool) == expected
    assert spool.backlog_records == 0
    assert len(list(tmp_path.glob("*.seg"))) == 1  # released segments are deleted
    spool.close()


def test_unacknowledged_records_survive_a_restart_and_acknowledged_ones_do_not_return(tmp_path: Path) -> None:
    spool = opened(tmp_path, quota_bytes=MIN_QUOTA_BYTES * 4)
    for i in range(1000):
        spool.append(record(i), at_ms=1)
    spool.commit()
    first, end = spool.read(300)
    spool.acknowledge(end)
    second, _ = spool.read(200)  # read (in flight) but never acknowledged
    assert [r.data for r in first] == [record(i) for i in range(300)]
    assert [r.data for r in second] == [record(i) for i in range(300, 500)]
    crash(spool)
    again = opened(tmp_path, quota_bytes=MIN_QUOTA_BYTES * 4)
    assert again.backlog_records == 700
    assert drain(again) == [record(i) for i in range(300, 1000)]
    again.append(b"after", at_ms=1)
    again.commit()
    assert drain(again) == [b"after"]


def test_a_torn_tail_is_cut_and_appending_continues(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    for i in range(10):
        spool.append(record(i), at_ms=1)
    spool.close()
    (segment,) = tmp_path.glob("*.seg")
    whole = encode_frame(record(10), 1)
    with open(segment, "ab") as f:
        f.write(whole[: len(whole) // 2])  # the power went out mid-write
    again = Spool(tmp_path, quota_bytes=1 << 20)
    report = again.open()
    _open_spools.append(again)
    assert report.torn_bytes == len(whole) // 2
    assert report.backlog_records == 10
    again.append(record(11), at_ms=1)
    again.commit()
    assert drain(again) == [record(i) for i in range(10)] + [record(11)]
    assert again.dropped == {}


def test_corrupt_bytes_inside_a_segment_are_skipped_and_counted(tmp_path: Path) -> None:
    spool = opened(tmp_path, quota_bytes=MIN_QUOTA_BYTES * 4)
    for i in range(600):  # several segments
        spool.append(record(i), at_ms=1)
    spool.close()
    segments = sorted(tmp_path.glob("*.seg"))
    sealed = segments[0]
    frame = len(encode_frame(record(0), 1))
    raw = bytearray(sealed.read_bytes())
    raw[frame * 5 + 20] ^= 0xFF  # inside the 6th record's payload
    sealed.write_bytes(bytes(raw))
    active = segments[-1]
    raw = bytearray(active.read_bytes())
    raw[frame * 2 : frame * 2 + 3] = b"\x00\x00\x00"  # the 3rd frame's header, mid-file
    active.write_bytes(bytes(raw))
    again = Spool(tmp_path, quota_bytes=MIN_QUOTA_BYTES * 4)
    assert again.open().torn_bytes == 0  # valid frames follow: not a torn tail
    _open_spools.append(again)
    got = drain(again)
    first_active = int(active.name.split(".")[0])
    lost = {record(5), record(first_active + 2)}
    assert got == [record(i) for i in range(600) if record(i) not in lost]
    assert again.dropped == {"spool_corrupt": 2}
    assert again.corrupt_bytes >= 2 * frame - 10


def test_a_damaged_cursor_falls_back_to_resending_never_to_skipping(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    for i in range(50):
        spool.append(record(i), at_ms=1)
    spool.commit()
    _, end = spool.read(20)
    spool.acknowledge(end)
    spool.close()
    (tmp_path / "cursor").write_bytes(os.urandom(128))
    again = opened(tmp_path)
    assert drain(again) == [record(i) for i in range(50)]


def test_drop_oldest_keeps_the_newest_and_counts_exactly(tmp_path: Path) -> None:
    spool = opened(tmp_path, quota_bytes=MIN_QUOTA_BYTES)  # 4 KiB segments
    n = 3000
    for i in range(n):
        assert spool.append(record(i), at_ms=1)
    spool.commit()
    assert spool.disk_bytes <= MIN_QUOTA_BYTES
    got = drain(spool)
    assert got == [record(i) for i in range(n - len(got), n)]  # the newest, in order
    assert spool.dropped["spool_quota"] == n - len(got)


def test_drop_oldest_does_not_count_records_already_in_flight(tmp_path: Path) -> None:
    spool = opened(tmp_path, quota_bytes=MIN_QUOTA_BYTES)
    for i in range(100):
        spool.append(record(i), at_ms=1)
    spool.commit()
    in_flight, _ = spool.read(100)  # handed to the MQTT client, not acknowledged yet
    for i in range(100, 3000):
        spool.append(record(i), at_ms=1)
    spool.commit()
    rest = drain(spool)
    assert len(in_flight) + len(rest) + spool.dropped["spool_quota"] == 3000


def test_reject_new_refuses_when_full_and_accepts_again_after_release(tmp_path: Path) -> None:
    spool = opened(tmp_path, quota_bytes=MIN_QUOTA_BYTES, on_full="reject_new")
    accepted = sum(spool.append(record(i), at_ms=1) for i in range(3000))
    spool.commit()
    assert spool.dropped == {"spool_quota": 3000 - accepted}
    assert drain(spool) == [record(i) for i in range(accepted)]  # the oldest, complete
    assert spool.append(b"fresh", at_ms=1)
    spool.commit()
    assert drain(spool) == [b"fresh"]


def test_ttl_skips_and_counts_expired_records_and_releases_them(tmp_path: Path) -> None:
    now = [1_000_000]
    spool = opened(tmp_path, ttl_s=60, clock=lambda: now[0])
    for i in range(10):
        spool.append(record(i), at_ms=now[0] - 120_000 if i < 4 else now[0])
    spool.commit()
    assert drain(spool) == [record(i) for i in range(4, 10)]
    assert spool.dropped == {"spool_ttl": 4}
    assert spool.backlog_records == 0


def test_read_honours_the_byte_budget_and_loses_nothing(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    for i in range(10):
        spool.append(record(i, size=100), at_ms=1)
    spool.commit()
    first, _ = spool.read(10, max_bytes=350)
    assert len(first) == 3
    rest, _ = spool.read(10)
    assert [r.data for r in first + rest] == [record(i, size=100) for i in range(10)]


def test_uncommitted_records_are_not_read(tmp_path: Path) -> None:
    spool = opened(tmp_path)
    spool.append(b"a", at_ms=1)
    assert spool.read(10)[0] == []
    assert spool.peek_at_ms() is None
    spool.commit()
    assert spool.peek_at_ms() == 1
    assert [r.data for r in spool.read(10)[0]] == [b"a"]


def test_one_spool_one_owner_and_private_files(tmp_path: Path) -> None:
    spool = opened(tmp_path / "spool")
    spool.append(b"x", at_ms=1)
    spool.commit()
    with pytest.raises(SpoolLocked):
        Spool(tmp_path / "spool", quota_bytes=1 << 20).open()  # a second collector
    assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
    for f in (tmp_path / "spool").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    spool.close()
    opened(tmp_path / "spool")  # free again after close


def test_a_record_larger_than_the_quota_allows_is_refused_not_looping(tmp_path: Path) -> None:
    spool = opened(tmp_path, quota_bytes=MIN_QUOTA_BYTES)
    assert not spool.append(b"x" * MIN_QUOTA_BYTES, at_ms=1)
    assert spool.dropped == {"spool_quota": 1}
    assert FRAME_OVERHEAD == 28  # header with the record's index, CRC


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(["append", "append", "append", "commit", "read", "ack", "crash", "close"]),
                max_size=80))
def test_model_every_committed_record_is_delivered_in_order_at_least_once(tmp_path_factory, ops) -> None:
    """Whatever the interleaving of appends, commits, reads, acks and crashes:
    every committed record is delivered, first deliveries come in append order,
    and only records not yet acknowledged come twice."""
    path = tmp_path_factory.mktemp("spool")
    spool = opened(path, quota_bytes=1 << 20, segment_bytes=256)
    n = 0
    appended: list[int] = []  # since the last commit
    committed: list[int] = []
    delivered: list[int] = []
    acked: set[int] = set()
    in_flight: list[int] = []
    pending_end = None
    for op in ops:
        if op == "append":
            spool.append(str(n).encode(), at_ms=1)
            appended.append(n)
            n += 1
        elif op == "commit":
            spool.commit()
            committed += appended
            appended = []
        elif op == "read":
            records, pending_end = spool.read(3)
            values = [int(r.data) for r in records]
            delivered.extend(values)
            in_flight.extend(values)
        elif op == "ack" and pending_end is not None:
            spool.acknowledge(pending_end)
            acked.update(in_flight)
            in_flight = []
        elif op in ("crash", "close"):
            if op == "close":
                spool.close()
                committed += appended
            else:
                crash(spool)  # appends not committed may be lost: they were never acknowledged
            appended = []
            spool = opened(path, quota_bytes=1 << 20, segment_bytes=256)
            in_flight = []
            pending_end = None
            assert spool.backlog_records >= len(set(committed) - acked)
    spool.commit()
    committed += appended
    redelivered = [int(r) for r in drain(spool)]
    assert not acked & set(redelivered), "an acknowledged record came back after a restart"
    delivered.extend(redelivered)
    firsts = list(dict.fromkeys(delivered))
    assert set(committed) <= set(firsts)
    assert firsts == sorted(firsts)


def test_dropping_segments_before_the_first_commit_leaves_nothing_negative(tmp_path: Path) -> None:
    spool = opened(tmp_path, quota_bytes=MIN_QUOTA_BYTES)
    for i in range(3000):  # far past the quota, never committed
        spool.append(record(i), at_ms=1)
    assert spool.unread_records == 0 and spool.peek_at_ms() is None
    assert spool.read(10)[0] == []
    spool.commit()
    got = drain(spool)
    assert got and got[-1] == record(2999)
    assert len(got) + spool.dropped["spool_quota"] == 3000


def test_a_reader_that_keeps_up_reads_from_memory_and_matches_the_file(tmp_path: Path) -> None:
    spool = opened(tmp_path, quota_bytes=MIN_QUOTA_BYTES * 4)
    got_live = []
    for i in range(1500):  # across several segments, read as it is written
        spool.append(record(i), at_ms=i)
        if i % 7 == 0:
            spool.commit()
            records, _ = spool.read(5)
            got_live.extend(records)
    spool.commit()
    got_live.extend(spool.read(10_000)[0])
    assert [r.data for r in got_live] == [record(i) for i in range(1500)]
    assert [r.at_ms for r in got_live] == list(range(1500))
    spool.rewind()  # the same records from the file: identical, positions included
    from_file = spool.read(10_000)[0]
    assert from_file == got_live
