"""The spool on a damaged disk: every committed record is delivered or counted, and strays are moved aside.

Each test builds a spool of small segments, damages it at rest the way a
failing SD card, a power cut or a person can, reopens it and drains it. The
invariant (issue 12, items 6 and 7): records delivered + ``spool_corrupt``
== records committed and not released, exactly; only bytes past the last
commit go uncounted; anything in the directory the spool did not write is
moved into ``quarantine/`` with one warning and counted, and the rest flows.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import shutil
import struct
import zlib
from pathlib import Path

import pytest

from fleetpulse.devices.collector.spool import Spool, encode_frame
from fleetpulse.devices.collector.spool import (
    segments as spool_module,  # where segment files are opened
)

from .test_collector_spool import crash, drain, record

SEGMENT_BYTES = 2048  # ~30 records of 40 bytes a segment
QUOTA = 1 << 20

_open: list[Spool] = []


@pytest.fixture(autouse=True)
def _close_spools():
    yield
    while _open:
        spool = _open.pop()
        if spool._lock_fd is not None:
            spool.close()


def reopen(path: Path, **kw) -> Spool:
    spool = Spool(path, quota_bytes=kw.pop("quota_bytes", QUOTA), segment_bytes=SEGMENT_BYTES, **kw)
    spool.report = spool.open()  # type: ignore[attr-defined]
    _open.append(spool)
    return spool


def fill(path: Path, n: int = 300, acked: int = 0, group: int = 7) -> list[bytes]:
    """Commit ``n`` records in groups, release the first ``acked``, close; the records not released."""
    spool = reopen(path)
    for i in range(n):
        spool.append(record(i), at_ms=1)
        if i % group == group - 1:
            spool.commit()
    spool.commit()
    if acked:  # in two steps, so that the cursor's two slots differ
        for step in (acked - acked // 10, acked // 10):
            got, end = spool.read(step)
            assert len(got) == step
            spool.acknowledge(end)
    spool.close()
    return [record(i) for i in range(acked, n)]


def segments(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def assert_exact(spool: Spool, got: list[bytes], committed: list[bytes]) -> None:
    """Delivered in order, each once, and delivered + counted lost == committed."""
    places = [committed.index(data) for data in got]
    assert places == sorted(set(places)), "out of order or twice"
    assert set(spool.dropped) <= {"spool_corrupt"}, spool.dropped
    assert len(got) + spool.dropped.get("spool_corrupt", 0) == len(committed), (len(got), spool.dropped)
    assert spool.backlog_records == 0


FRAME = len(encode_frame(record(0), 1))  # every test record makes a frame this long


def held(segs: list[Path], k: int, n: int = 300) -> int:
    """How many records segment ``k`` holds, by the names (a segment runs up to the next one's)."""
    k %= len(segs)
    nxt = int(segs[k + 1].stem) if k + 1 < len(segs) else n
    return nxt - int(segs[k].stem)


def frames_touched(start: int, end: int) -> int:
    """Frames with a byte in [start, end) of a segment."""
    return (end - 1) // FRAME - start // FRAME + 1


def damage_and_drain(tmp_path: Path, damage, lost, n: int = 300, acked: int = 40) -> tuple[Spool, list[bytes]]:
    """Fill, damage at rest, reopen, drain: exactly ``lost(segments)`` committed records counted lost."""
    committed = fill(tmp_path, n, acked)
    segs = segments(tmp_path)
    expected_lost = lost(segs)
    assert expected_lost > 0
    damage(segs)
    spool = reopen(tmp_path)
    got = drain(spool)
    assert_exact(spool, got, committed)
    assert spool.dropped.get("spool_corrupt", 0) == expected_lost
    # And it keeps working: a new record after the damage arrives.
    spool.append(b"after", at_ms=1)
    spool.commit()
    assert drain(spool) == [b"after"]
    return spool, got


def zero(path: Path, start: int = 0, end: int | None = None) -> None:
    raw = bytearray(path.read_bytes())
    end = len(raw) if end is None else end
    raw[start:end] = bytes(end - start)
    path.write_bytes(bytes(raw))


def truncate(path: Path, nbytes: int) -> None:
    os.truncate(path, max(0, path.stat().st_size - nbytes))


# ------------------------------------------------------------------ damage
def test_a_zeroed_active_segment_is_counted_not_cut_as_a_torn_tail(tmp_path: Path) -> None:
    spool, _ = damage_and_drain(tmp_path, lambda segs: zero(segs[-1]), lambda segs: held(segs, -1))
    assert spool.report.torn_bytes == 0  # type: ignore[attr-defined]


def test_zeroing_the_end_of_the_active_segment_is_counted(tmp_path: Path) -> None:
    def half(segs: list[Path]) -> int:
        return segs[-1].stat().st_size // 2

    damage_and_drain(tmp_path, lambda segs: zero(segs[-1], half(segs)),
                     lambda segs: frames_touched(half(segs), segs[-1].stat().st_size))


def test_a_zeroed_sealed_segment_is_counted(tmp_path: Path) -> None:
    damage_and_drain(tmp_path, lambda segs: zero(segs[3]), lambda segs: held(segs, 3))


def test_every_segment_zeroed_counts_every_committed_record(tmp_path: Path) -> None:
    def zero_all(segs: list[Path]) -> None:
        for seg in segs:
            zero(seg)

    _, got = damage_and_drain(tmp_path, zero_all, lambda segs: 260)
    assert got == []


@pytest.mark.parametrize("nbytes", [1, 37, 500])
def test_a_truncated_active_segment_is_counted(tmp_path: Path, nbytes: int) -> None:
    damage_and_drain(tmp_path, lambda segs: truncate(segs[-1], nbytes), lambda segs: -(-nbytes // FRAME))


def test_an_active_segment_truncated_to_nothing_is_counted(tmp_path: Path) -> None:
    damage_and_drain(tmp_path, lambda segs: os.truncate(segs[-1], 0), lambda segs: held(segs, -1))


def test_a_truncated_sealed_segment_is_counted(tmp_path: Path) -> None:
    damage_and_drain(tmp_path, lambda segs: truncate(segs[4], 300), lambda segs: -(-300 // FRAME))


@pytest.mark.parametrize("seed", range(6))
def test_bit_flips_anywhere_are_counted_exactly(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    hit: set[tuple[str, int]] = set()

    def flip(segs: list[Path]) -> None:
        for seg in [segs[-1], *rng.sample(segs[1:-1], 3)]:  # the active one always
            raw = bytearray(seg.read_bytes())
            places = [len(raw) - 1] if seg == segs[-1] else []  # its last committed byte
            places += rng.sample(range(len(raw)), 2)
            for place in places:
                raw[place] ^= 1 << rng.randrange(8)
                hit.add((seg.name, place // FRAME))
            seg.write_bytes(bytes(raw))

    committed = fill(tmp_path, 300, 40)
    flip(segments(tmp_path))
    spool = reopen(tmp_path)
    assert_exact(spool, drain(spool), committed)
    assert spool.dropped["spool_corrupt"] == len(hit)  # (a CRC catches every one-bit error)


@pytest.mark.parametrize("which", ["head", "middle", "active", "all"])
def test_deleted_segments_are_counted(tmp_path: Path, which: str) -> None:
    def chosen(segs: list[Path]) -> list[int]:
        return {"head": [0], "middle": [4, 5], "active": [len(segs) - 1], "all": list(range(len(segs)))}[which]

    def lost(segs: list[Path]) -> int:
        released_in_head = 40 - int(segs[0].stem)  # the first segment holds the released position
        return sum(held(segs, k) for k in chosen(segs)) - (released_in_head if 0 in chosen(segs) else 0)

    def delete(segs: list[Path]) -> None:
        for k in chosen(segs):
            segs[k].unlink()

    damage_and_drain(tmp_path, delete, lost)


@pytest.mark.parametrize("pair", [(2, 5), (3, -1)])
def test_swapped_segments_deliver_in_order_and_count_the_rest(tmp_path: Path, pair: tuple[int, int]) -> None:
    def swap(segs: list[Path]) -> None:
        a, b = segs[pair[0]], segs[pair[1]]
        raw_a, raw_b = a.read_bytes(), b.read_bytes()
        a.write_bytes(raw_b)
        b.write_bytes(raw_a)

    # Each file's frames are out of place in the other: both ranges are lost, nothing else.
    damage_and_drain(tmp_path, swap, lambda segs: held(segs, pair[0]) + held(segs, pair[1]))


def test_a_frame_copied_twice_is_delivered_once(tmp_path: Path) -> None:
    committed = fill(tmp_path, 300, 40)
    seg = segments(tmp_path)[3]
    raw = seg.read_bytes()
    seg.write_bytes(raw[: 2 * FRAME] + raw[FRAME : 2 * FRAME] + raw[2 * FRAME :])
    spool = reopen(tmp_path)
    got = drain(spool)
    assert got == committed and spool.dropped == {}
    assert spool.corrupt_bytes == FRAME


def test_several_segments_damaged_at_once(tmp_path: Path) -> None:
    def wreck(segs: list[Path]) -> None:
        zero(segs[1])
        truncate(segs[3], 100)
        segs[5].unlink()
        zero(segs[7], 200, 300)
        zero(segs[-1], 100)

    def lost(segs: list[Path]) -> int:
        return (held(segs, 1) + -(-100 // FRAME) + held(segs, 5) + frames_touched(200, 300)
                + frames_touched(100, segs[-1].stat().st_size))

    damage_and_drain(tmp_path, wreck, lost)


def test_a_damaged_segment_found_while_running_is_counted_not_looped_on(tmp_path: Path) -> None:
    committed = fill(tmp_path)
    spool = reopen(tmp_path)
    segs = segments(tmp_path)
    zero(segs[2])
    segs[4].unlink()
    segs[6].unlink()
    segs[6].mkdir()  # and a directory where a segment was
    got = drain(spool)
    assert_exact(spool, got, committed)
    assert spool.dropped["spool_corrupt"] == held(segs, 2) + held(segs, 4) + held(segs, 6)


def test_damage_read_twice_after_a_rewind_is_counted_once(tmp_path: Path) -> None:
    committed = fill(tmp_path)
    zero(segments(tmp_path)[2])
    spool = reopen(tmp_path)
    first = drain(spool, ack=False)
    lost = spool.dropped["spool_corrupt"]
    assert lost == held(segments(tmp_path), 2)
    spool.rewind()
    assert drain(spool) == first
    assert spool.dropped["spool_corrupt"] == lost
    assert len(first) + lost == len(committed)


# ------------------------------------------------------------------ the cursor
def _flip_slot(slot: int):
    def damage(cursor: Path) -> None:
        raw = bytearray(cursor.read_bytes())
        raw[slot * 4096 + 20] ^= 0x10
        cursor.write_bytes(bytes(raw))
    return damage


def _newest_slot(cursor: Path) -> int:
    raw = cursor.read_bytes()
    return max(range(2), key=lambda n: int.from_bytes(raw[n * 4096 + 4 : n * 4096 + 12], "little"))


@pytest.mark.parametrize("how", ["zeroed", "truncated", "deleted", "random", "newest slot", "older slot"])
def test_a_damaged_cursor_resends_and_never_counts_what_is_on_disk(tmp_path: Path, how: str) -> None:
    committed = fill(tmp_path, acked=100)  # the acknowledgement deleted segments
    cursor = tmp_path / "cursor"
    newest = _newest_slot(cursor)
    {
        "zeroed": lambda p: p.write_bytes(bytes(p.stat().st_size)),
        "truncated": lambda p: os.truncate(p, 30),
        "deleted": lambda p: p.unlink(),
        "random": lambda p: p.write_bytes(random.Random(3).randbytes(8192)),
        "newest slot": _flip_slot(newest),
        "older slot": _flip_slot(1 - newest),
    }[how](cursor)
    spool = reopen(tmp_path)
    got = drain(spool)
    assert spool.dropped == {}
    assert got[len(got) - len(committed) :] == committed  # every unreleased one, after some resent
    assert got == [record(i) for i in range(300 - len(got), 300)]
    assert spool.report.cursor_lost == (how not in ("newest slot", "older slot"))  # type: ignore[attr-defined]


def test_a_damaged_cursor_slot_and_a_damaged_active_segment_still_count(tmp_path: Path) -> None:
    committed = fill(tmp_path, acked=40)
    _flip_slot(1 - _newest_slot(tmp_path / "cursor"))(tmp_path / "cursor")
    segs = segments(tmp_path)
    zero(segs[-1])
    spool = reopen(tmp_path)
    assert_exact(spool, drain(spool), committed)
    assert spool.dropped["spool_corrupt"] == held(segs, -1)


def test_a_cursor_rolled_back_to_an_older_copy_counts_nothing_that_was_released(tmp_path: Path) -> None:
    """An SD card can hand back an old version of a block: the cursor then lags, whole."""
    spool = reopen(tmp_path)
    for i in range(100):
        spool.append(record(i), at_ms=1)
    spool.commit()
    old_cursor = (tmp_path / "cursor").read_bytes()
    _, end = spool.read(80)
    spool.acknowledge(end)  # deletes segments the old cursor still points into
    for i in range(100, 300):
        spool.append(record(i), at_ms=1)
        if i % 7 == 0:
            spool.commit()
    spool.commit()
    _, end = spool.read(50)
    spool.acknowledge(end)
    spool.close()
    (tmp_path / "cursor").write_bytes(old_cursor)
    again = reopen(tmp_path)
    got = drain(again)
    assert again.dropped == {} and again.quarantined_files == 0
    assert got == [record(i) for i in range(300 - len(got), 300)] and len(got) >= 170


# ------------------------------------------------------------------ torn writes and power cuts
def test_an_honest_torn_tail_after_the_last_commit_is_dropped_silently(tmp_path: Path) -> None:
    spool = reopen(tmp_path)
    for i in range(50):
        spool.append(record(i), at_ms=1)
    spool.commit()
    for i in range(50, 55):
        spool.append(record(i), at_ms=1)
    spool._flush()  # written, never committed: the devices were not told
    crash(spool)
    active = segments(tmp_path)[-1]
    frame = encode_frame(record(55), 1)
    with open(active, "ab") as f:
        f.write(frame[:25])  # and the power went out mid-write
    again = reopen(tmp_path)
    assert again.report.torn_bytes == 25  # type: ignore[attr-defined]
    got = drain(again)
    assert got == [record(i) for i in range(55)]  # the whole uncommitted frames are kept
    assert again.dropped == {} and again.quarantined_files == 0


def test_a_power_cut_at_any_byte_of_a_commit_loses_and_counts_nothing(tmp_path: Path) -> None:
    """The commit protocol's states: the frames durable up to any byte (or with a page lost in
    the middle: writeback has no order) while the cursor is the previous one, and then the
    cursor's new slot written up to any byte."""
    base = tmp_path / "base"
    fill(base, n=40, group=40)
    spool = reopen(base)
    before = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}  # what is durable
    active = segments(base)[-1].name
    for i in range(40, 44):
        spool.append(record(i), at_ms=1)
    spool._flush()
    spool.commit()
    after = {p.name: p.read_bytes() for p in base.iterdir() if p.is_file()}
    spool.close()
    old, new = before[active], after[active]
    assert new.startswith(old) and len(new) > len(old)
    cut_states = [(new[:n], before["cursor"]) for n in range(len(old), len(new) + 1)]
    for k in range(4):  # one of the new frames never reached the disk, the ones after it did
        at = len(old) + k * FRAME
        cut_states.append((new[:at] + bytes(FRAME) + new[at + FRAME :], before["cursor"]))
    new_slot = next(n for n in range(2) if after["cursor"][n * 4096 : n * 4096 + 64]
                    != before["cursor"][n * 4096 : n * 4096 + 64])
    for n in range(65):  # the new slot written up to byte n
        cursor = bytearray(before["cursor"])
        at = new_slot * 4096
        cursor[at : at + n] = after["cursor"][at : at + n]
        cut_states.append((new, bytes(cursor)))
    for k, (segment, cursor_bytes) in enumerate(cut_states):
        state = tmp_path / f"cut-{k}"
        state.mkdir()
        for name, data in before.items():
            (state / name).write_bytes(data)
        (state / active).write_bytes(segment)
        (state / "cursor").write_bytes(cursor_bytes)
        again = reopen(state)
        got = drain(again)
        assert again.dropped == {}, k
        assert got[:40] == [record(i) for i in range(40)], k  # every committed one
        places = [int(data.split(b'"seq":')[1].split(b"}")[0]) for data in got]
        assert places == sorted(set(places)) and places[-1] < 44, k  # whole frames after them, in order
        again.close()
        shutil.rmtree(state)


# ------------------------------------------------------------------ strays in the directory
def _strays(path: Path) -> int:
    """Put one of each kind of thing the spool never writes into its directory; how many."""
    segs = segments(path)
    (path / "99999999999999999999.seg").write_bytes(encode_frame(b"x", 1))  # beyond u64
    (path / "00000000000000000100.seg").mkdir()  # a directory named like a segment
    (path / "00000000000000000100.seg" / "inner").write_bytes(b"x")
    (path / "00000000000000000250.seg").symlink_to(segs[-1])  # a symlink named like a segment
    (path / "notes.txt").write_text("hello")
    (path / "7.seg").write_bytes(b"")  # the wrong width
    (path / ("\u0660" * 20 + ".seg")).write_bytes(b"")  # digits, but not ASCII ones
    os.mkfifo(path / "00000000000000000260.seg")
    (path / "00000000000000000120.seg").write_bytes(b"{not a segment}" * 10)  # garbage with a good name
    (path / "00000000000000000130.seg").write_bytes(b"")  # empty, inside the committed range
    (path / "00000000000012345678.seg").write_bytes(encode_frame(b"x", 1, 12345678))  # far past the commit
    (path / "00000000000000000035.seg").write_bytes(segs[2].read_bytes())  # a copy, misnamed
    return 11


def test_strays_are_moved_aside_once_each_and_the_spool_flows(tmp_path: Path, caplog) -> None:
    committed = fill(tmp_path, acked=40)
    strays = _strays(tmp_path)
    caplog.set_level(logging.WARNING, logger="fleetpulse.devices.collector.spool")
    spool = reopen(tmp_path)
    moved = [r for r in caplog.records if "moved aside" in r.getMessage()]
    assert len(moved) == strays and spool.quarantined_files == strays
    assert spool.report.quarantined_files == strays  # type: ignore[attr-defined]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".seg")) == [
        "cursor", "lock", "quarantine"]
    assert len(list((tmp_path / "quarantine").iterdir())) == strays
    got = drain(spool)  # acknowledging writes the cursor (a stray index must not reach it)
    assert got == committed and spool.dropped == {}
    spool.append(b"after", at_ms=1)
    spool.commit()
    assert drain(spool) == [b"after"]
    spool.close()
    assert reopen(tmp_path).quarantined_files == 0  # nothing left to move


def test_a_lock_and_cursor_that_are_not_files_are_moved_aside(tmp_path: Path) -> None:
    committed = fill(tmp_path)
    (tmp_path / "lock").unlink()
    (tmp_path / "lock").mkdir()
    (tmp_path / "cursor").unlink()
    (tmp_path / "cursor").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "quarantine").write_text("a file where the quarantine goes")
    spool = reopen(tmp_path)
    assert spool.quarantined_files == 3
    assert drain(spool) == committed and spool.dropped == {}


def test_the_quarantine_is_bounded(tmp_path: Path) -> None:
    fill(tmp_path, n=30)
    for i in range(40):
        (tmp_path / f"stray-{i:02d}").write_bytes(b"x" * 1000)
    (tmp_path / "huge").write_bytes(b"x" * (QUOTA // 8 + 1))
    spool = reopen(tmp_path)
    assert spool.quarantined_files == 41
    kept = list((tmp_path / "quarantine").iterdir())
    assert len(kept) <= 16
    assert sum(p.stat().st_size for p in kept) <= QUOTA // 8
    assert "huge" not in {p.name.split("-", 1)[1] for p in kept}  # larger than the bound alone
    assert drain(spool) == [record(i) for i in range(30)]


def test_a_file_appearing_where_the_next_segment_goes_is_moved_aside(tmp_path: Path) -> None:
    spool = reopen(tmp_path)
    spool.append(record(0), at_ms=1)
    spool.commit()
    rotates_at = -(-SEGMENT_BYTES // len(encode_frame(record(0), 1)))  # the index that starts segment 2
    (tmp_path / f"{rotates_at:020d}.seg").write_bytes(b"someone else's")
    for i in range(1, 100):  # past a segment boundary
        spool.append(record(i), at_ms=1)
    spool.commit()
    assert spool.quarantined_files == 1
    assert drain(spool) == [record(i) for i in range(100)]


def test_an_unreadable_segment_is_moved_aside_and_its_records_counted(tmp_path: Path, monkeypatch) -> None:
    committed = fill(tmp_path)
    segs = segments(tmp_path)
    real_open = spool_module._open_nofollow

    def refuse(path: str, flags: int) -> int:  # (the tests run as root, for whom no mode is unreadable)
        if os.path.basename(path) == segs[3].name:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags)

    monkeypatch.setattr(spool_module, "_open_nofollow", refuse)
    spool = reopen(tmp_path)
    assert spool.quarantined_files == 1
    assert_exact(spool, drain(spool), committed)
    assert spool.dropped["spool_corrupt"] == held(segs, 3)


def test_a_spool_written_before_the_record_index_opens_without_loss(tmp_path: Path) -> None:
    """Version-1 frames (no index) and a version-1 cursor, as the spool wrote them before issue 12."""
    def v1_frame(data: bytes) -> bytes:
        header = struct.pack("<2sBBIQ", b"FP", 1, 0, len(data), 1)
        return header + data + struct.pack("<I", zlib.crc32(data, zlib.crc32(header)))

    (tmp_path / f"{0:020d}.seg").write_bytes(b"".join(v1_frame(record(i)) for i in range(30)))
    (tmp_path / f"{30:020d}.seg").write_bytes(b"".join(v1_frame(record(i)) for i in range(30, 60)))
    body = struct.pack("<4sQQQQ", b"FPC1", 7, 0, 10 * len(v1_frame(record(0))), 10)  # released up to 10
    (tmp_path / "cursor").write_bytes(bytes(64) + body + struct.pack("<I", zlib.crc32(body)))
    spool = reopen(tmp_path)
    assert drain(spool) == [record(i) for i in range(10, 60)] and spool.dropped == {}
    spool.append(record(60), at_ms=1)  # a version-2 frame after version-1 ones
    spool.close()
    again = reopen(tmp_path)
    assert drain(again) == [record(60)] and again.dropped == {}
