"""The collector's dead-letter files: a byte quota, rotation, the newest kept, every lost row counted."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from fleetpulse.devices.collector.deadletters import (
    MIN_FILE_BYTES,
    MIN_QUOTA_BYTES,
    DeadLetterFiles,
)


def row(n: int, pad: int = 200) -> dict:
    return {"reason": "not_json", "n": n, "payload": "x" * pad}


def rows_on_disk(files: DeadLetterFiles) -> list[dict]:
    return [json.loads(line) for path in files.files() for line in path.read_text("utf-8").splitlines()]


def opened(path: Path, quota_bytes: int = 4 * MIN_FILE_BYTES, max_file_bytes: int = MIN_FILE_BYTES) -> DeadLetterFiles:
    files = DeadLetterFiles(path, quota_bytes=quota_bytes, max_file_bytes=max_file_bytes, fsync=False)
    files.open()
    return files


def test_rotation_keeps_the_newest_rows_within_the_quota_and_counts_the_rest(tmp_path: Path) -> None:
    files = opened(tmp_path / "dl" / "dead-letters.jsonl")
    for n in range(2000):  # ~470 KB of rows into a 64 KiB quota
        assert files.write([row(n)]) == 1
        assert files.disk_bytes <= files.quota_bytes
    files.close()
    names = sorted(p.name for p in (tmp_path / "dl").iterdir())
    assert names[-1] == "dead-letters.jsonl" and len(names) >= 3
    assert all(p.stat().st_size <= MIN_FILE_BYTES for p in (tmp_path / "dl").iterdir())
    assert sum(p.stat().st_size for p in (tmp_path / "dl").iterdir()) <= files.quota_bytes
    kept = [r["n"] for r in rows_on_disk(files)]
    assert kept == list(range(2000 - len(kept), 2000))  # the newest, in order, none missing
    assert files.written_rows == 2000
    assert files.dropped == {"quota": 2000 - len(kept)}
    assert stat.S_IMODE((tmp_path / "dl" / "dead-letters.jsonl").stat().st_mode) == 0o600


def seq(path: Path) -> int:
    return int(path.name.split(".")[1])


def test_a_restart_continues_the_numbering_and_a_lowered_quota_trims_the_oldest(tmp_path: Path) -> None:
    path = tmp_path / "dead-letters.jsonl"
    files = opened(path, quota_bytes=8 * MIN_FILE_BYTES)
    files.write([row(n) for n in range(400)])  # ~100 KB: rotated, nothing deleted
    files.close()
    before = files.files()
    assert len(before) >= 4 and files.dropped == {}

    again = opened(path, quota_bytes=MIN_QUOTA_BYTES)
    assert again.disk_bytes <= MIN_QUOTA_BYTES
    kept = [r["n"] for r in rows_on_disk(again)]
    assert kept == list(range(400 - len(kept), 400))
    assert again.dropped == {"quota": 400 - len(kept)}  # rows of an earlier run count too
    again.write([row(n) for n in range(400, 700)])
    again.close()
    kept = [r["n"] for r in rows_on_disk(again)]
    assert kept == list(range(700 - len(kept), 700))
    new = [seq(p) for p in again.files()[:-1] if p not in before]
    assert new and min(new) > max(seq(p) for p in before[:-1])  # a number is never reused


def test_a_line_cut_short_stays_one_bad_line(tmp_path: Path) -> None:
    path = tmp_path / "dead-letters.jsonl"
    path.write_text(json.dumps(row(0)) + "\n" + '{"reason": "not_js')  # a crash mid-write
    files = opened(path)
    files.write([row(1)])
    files.close()
    lines = path.read_text().splitlines()
    assert json.loads(lines[0])["n"] == 0 and json.loads(lines[2])["n"] == 1
    assert lines[1] == '{"reason": "not_js'


def test_any_content_is_written_as_one_utf8_json_line(tmp_path: Path) -> None:
    files = opened(tmp_path / "dead-letters.jsonl")
    hostile = {"reason": "not_json", "lone": "\ud800", "\udfff": 1, "nan": float("nan"), "set": {1, 2},
               "text": "naïve ☃"}
    cycle: dict = {"reason": "bad_enum"}
    cycle["self"] = cycle
    assert files.write([hostile, cycle]) == 2
    files.close()
    raw = (tmp_path / "dead-letters.jsonl").read_bytes()
    first, second = raw.decode("utf-8").splitlines()  # strict UTF-8
    assert json.loads(first)["text"] == "naïve ☃" and json.loads(first)["lone"] == "\ud800"
    assert json.loads(second)["reason"] == "'bad_enum'" and "not encodable" in json.loads(second)["detail"]


def test_a_row_larger_than_a_file_is_dropped_and_counted(tmp_path: Path) -> None:
    files = opened(tmp_path / "dead-letters.jsonl")
    assert files.write([row(0), row(1, pad=MIN_FILE_BYTES), row(2)]) == 2
    assert files.dropped == {"too_large": 1}
    files.close()
    assert [r["n"] for r in rows_on_disk(files)] == [0, 2]


def test_a_failing_disk_drops_and_counts_rows_and_is_retried(tmp_path: Path) -> None:
    path = tmp_path / "dead-letters.jsonl"
    path.symlink_to("/dev/full")  # every write: ENOSPC, a real "disk full"
    files = opened(path)
    assert files.write([row(0), row(1)]) == 0
    assert files.write([row(2)]) == 0
    assert files.dropped == {"write_error": 3} and files.errors >= 2
    files.sync()  # nothing to sync; never raises
    path.unlink()  # the disk is back (here: a real file where the full one was)
    assert files.write([row(3)]) == 1
    files.close()
    assert [r["n"] for r in rows_on_disk(files)] == [3]
    assert files.dropped == {"write_error": 3}


def test_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="quota_bytes"):
        DeadLetterFiles(Path("x"), quota_bytes=MIN_QUOTA_BYTES - 1, max_file_bytes=MIN_FILE_BYTES)
    with pytest.raises(ValueError, match="max_file_bytes"):
        DeadLetterFiles(Path("x"), quota_bytes=MIN_QUOTA_BYTES, max_file_bytes=MIN_QUOTA_BYTES)


def test_an_unwritable_location_raises_at_open(tmp_path: Path) -> None:
    (tmp_path / "dir.jsonl").mkdir()
    with pytest.raises(OSError):
        DeadLetterFiles(tmp_path / "dir.jsonl", quota_bytes=MIN_QUOTA_BYTES, max_file_bytes=MIN_FILE_BYTES).open()
    assert not os.path.exists(tmp_path / "dir.00000001.jsonl")
