"""The collector's dead letters: what it refused, kept on the gateway within a byte quota.

One JSON line per rejected record or payload (the row
:func:`fleetpulse.schemas.dead_letter` builds, with a truncated sample of the
payload), appended to ``dead_letters.path``. A gateway's storage is often an
SD card and hostile or broken devices can send without end, so the files are
bounded the way the spool is: the active file is rotated once it reaches
``max_file_bytes``, and the oldest rotated file is deleted whenever the files
together would exceed ``quota_bytes``, so the newest dead letters are kept.
Every row lost (deleted for the quota, refused by a failing disk, or larger
than a whole file) is counted in :attr:`DeadLetterFiles.dropped`, by reason.

Layout, for ``path = /var/lib/fleetpulse/dead-letters.jsonl``::

    dead-letters.jsonl              the active file (``tail -f`` it)
    dead-letters.00000041.jsonl     rotated files, numbered in the order they
    dead-letters.00000042.jsonl     were rotated: the highest is the newest

New files are created ``0600`` (rows quote device data). Writing never raises
and never depends on content: a row is encoded with every string made valid
UTF-8, and a disk that fails is retried at the next write (a line the failure
cut short is ended first, so it stays one unreadable line). Standard library
only; one thread (the collector's worker) calls it. Lifecycle:
:meth:`open` → :meth:`write` / :meth:`sync` → :meth:`close`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fleetpulse.errors import quote

log = logging.getLogger(__name__)

#: Smallest rotated file: room for a row holding a large sample (see MIN_QUOTA_BYTES).
MIN_FILE_BYTES = 16 << 10
#: The quota holds at least two files, so a rotation never deletes the only full one.
MIN_QUOTA_BYTES = 2 * MIN_FILE_BYTES
#: JSON escaping can make a payload sample up to 6x longer (a control byte is
#: ``\\u00XX``): ``sample_bytes`` is at most ``max_file_bytes // SAMPLE_GROWTH`` so a row fits a file.
SAMPLE_GROWTH = 8

#: Reasons in :attr:`DeadLetterFiles.dropped`.
DROP_REASONS = ("quota", "write_error", "too_large")


@dataclass
class _Rotated:
    seq: int
    path: Path
    size: int


@dataclass
class DeadLetterFiles:
    """Bounded, rotated JSON-lines files of dead letters (see the module docstring)."""

    path: Path
    quota_bytes: int
    max_file_bytes: int
    fsync: bool = True  # off only in tests and benchmarks that measure something else
    #: rows lost since open(), by reason (DROP_REASONS)
    dropped: dict[str, int] = field(default_factory=dict)
    written_rows: int = 0
    #: write, sync and delete failures (each one, not each row)
    errors: int = 0

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if self.quota_bytes < MIN_QUOTA_BYTES:
            raise ValueError(f"quota_bytes must be at least {MIN_QUOTA_BYTES}")
        if not MIN_FILE_BYTES <= self.max_file_bytes <= self.quota_bytes // 2:
            raise ValueError(f"max_file_bytes must be within [{MIN_FILE_BYTES}, quota_bytes / 2]")
        stem, suffix = self.path.stem, self.path.suffix
        self._rotated_re = re.compile(re.escape(stem) + r"\.(\d{8,})" + re.escape(suffix))
        self._rotated_name = f"{stem}.{{:08d}}{suffix}"
        self._rotated: deque[_Rotated] = deque()  # oldest first
        self._rotated_bytes = 0
        self._fd: int | None = None
        self._active_bytes = 0
        self._dirty = False  # rows written since the last fsync
        self._dir_dirty = False
        self._failing: str | None = None  # the error of the current failure episode
        self._failing_drops = 0
        self._opened = False

    # ---------------------------------------------------------------- lifecycle
    def open(self) -> None:
        """Create the directory if needed, find rotated files, enforce the quota.

        Raises OSError when the active file cannot be opened for appending
        (the collector reports it as a configuration error at start).
        """
        directory = self.path.parent
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        found = []
        for entry in directory.iterdir():
            match = self._rotated_re.fullmatch(entry.name)
            if match and entry.is_file():
                found.append(_Rotated(int(match.group(1)), entry, entry.stat().st_size))
        self._rotated = deque(sorted(found, key=lambda r: r.seq))
        self._rotated_bytes = sum(r.size for r in found)
        self._open_active()
        self._opened = True
        if self._active_bytes >= self.max_file_bytes:  # written under a larger max_file_bytes
            self._rotate()
        self._make_room(0)

    def close(self) -> None:
        """Sync and close the active file; the files stay on disk."""
        if not self._opened:
            return
        self.sync()
        self._close_fd()
        self._opened = False

    # ------------------------------------------------------------------ state
    @property
    def disk_bytes(self) -> int:
        """Bytes of dead-letter files on disk (what the quota bounds)."""
        return self._active_bytes + self._rotated_bytes

    @property
    def dropped_rows(self) -> int:
        return sum(self.dropped.values())

    def files(self) -> list[Path]:
        """The dead-letter files, oldest first (the active one last)."""
        return [r.path for r in self._rotated] + [self.path]

    # ---------------------------------------------------------------- writing
    def write(self, rows: Sequence[Mapping[str, Any]]) -> int:
        """Append ``rows`` (not yet durable: see :meth:`sync`); return how many were written.

        Never raises: a row the files cannot take is counted in ``dropped``.
        """
        assert self._opened, "open() the dead-letter files first"
        if not rows:
            return 0
        if self._fd is None and not self._reopen():
            self._drop("write_error", len(rows))
            self._failing_drops += len(rows)
            return 0
        pending: list[bytes] = []
        pending_bytes = written = too_large = 0
        try:
            for row in rows:
                line = _line(row)
                size = len(line)
                if size > self.max_file_bytes:
                    too_large += 1
                    self._drop("too_large", 1)
                    log.error("a dead letter of %d bytes is larger than dead_letters.max_file_bytes (%d): "
                              "dropped (reason %s)", size, self.max_file_bytes, quote(row.get("reason")))
                    continue
                if self._active_bytes + pending_bytes + size > self.max_file_bytes:
                    written += self._append(pending)
                    pending, pending_bytes = [], 0
                    self._rotate()
                self._make_room(pending_bytes + size)
                pending.append(line)
                pending_bytes += size
            written += self._append(pending)
        except _WriteFailed as failed:
            written += failed.rows
            cause = failed.cause
        except OSError as exc:  # rotating or deleting for the quota failed
            cause = exc
        else:
            if self._failing is not None:
                log.warning("dead-letter files %s writable again; %d rows were dropped meanwhile",
                            self.path, self._failing_drops)
                self._failing = None
            return written
        self._failed(cause, len(rows) - written - too_large, rows)
        return written

    def sync(self) -> None:
        """Make the rows written so far durable (fsync). Never raises; a failure is counted."""
        if not self.fsync or self._fd is None:
            self._dirty = self._dir_dirty = False
            return
        try:
            if self._dirty:
                os.fsync(self._fd)
            if self._dir_dirty:
                fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            self.errors += 1
            log.error("cannot sync the dead-letter files %s: %s; rows written since the last sync "
                      "may be lost", self.path, exc.strerror or exc)
            self._close_fd()
        self._dirty = self._dir_dirty = False

    # -------------------------------------------------------------- internals
    def _open_active(self) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            # A line cut short (a crash or a failing disk mid-write) is ended
            # here, so the next row starts on a line of its own.
            if size and _last_byte(self.path, size) != b"\n":
                os.write(fd, b"\n")
                size += 1
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._active_bytes = size

    def _reopen(self) -> bool:
        try:
            self._open_active()
        except OSError as exc:
            self.errors += 1
            self._note_failure(exc)
            return False
        return True

    def _append(self, lines: list[bytes]) -> int:
        """Write ``lines`` in one go; the rows wholly written, or _WriteFailed."""
        if not lines:
            return 0
        assert self._fd is not None
        data = memoryview(b"".join(lines))
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except OSError as exc:
            rows = 0
            end = 0
            for line in lines:
                end += len(line)
                if end > done:
                    break
                rows += 1
            self._account(rows, done)
            raise _WriteFailed(exc, rows) from None
        self._account(len(lines), done)
        return len(lines)

    def _account(self, rows: int, nbytes: int) -> None:
        self._active_bytes += nbytes
        self.written_rows += rows
        if nbytes:
            self._dirty = True

    def _rotate(self) -> None:
        """The active file becomes the newest rotated one; a new active file is started."""
        seq = self._rotated[-1].seq + 1 if self._rotated else 1
        target = self.path.with_name(self._rotated_name.format(seq))
        if self._fd is not None and self.fsync and self._dirty:
            os.fsync(self._fd)  # a rotated file is complete on disk
        self._dirty = False
        self._close_fd()
        os.rename(self.path, target)
        self._rotated.append(_Rotated(seq, target, self._active_bytes))
        self._rotated_bytes += self._active_bytes
        self._dir_dirty = True
        self._open_active()

    def _make_room(self, incoming: int) -> None:
        """Delete the oldest rotated files until ``incoming`` more bytes fit the quota."""
        while self._rotated and self.disk_bytes + incoming > self.quota_bytes:
            oldest = self._rotated[0]
            rows = _count_rows(oldest.path)
            try:
                oldest.path.unlink()
            except FileNotFoundError:
                pass  # removed by hand: its rows are gone either way
            self._rotated.popleft()
            self._rotated_bytes -= oldest.size
            self._dir_dirty = True
            if rows:
                self._drop("quota", rows)
            log.warning("dead letters over dead_letters.quota_bytes (%d bytes): deleted the oldest file "
                        "%s (%d rows)", self.quota_bytes, oldest.path.name, rows)

    def _drop(self, reason: str, n: int) -> None:
        self.dropped[reason] = self.dropped.get(reason, 0) + n

    def _failed(self, exc: OSError, lost: int, rows: Sequence[Mapping[str, Any]]) -> None:
        self.errors += 1
        self._note_failure(exc, rows)
        if lost:
            self._drop("write_error", lost)
            self._failing_drops += lost
        # Reopened at the next write: a file that was deleted or remounted meanwhile is found again.
        self._close_fd()

    def _note_failure(self, exc: OSError, rows: Sequence[Mapping[str, Any]] = ()) -> None:
        text = exc.strerror or str(exc)
        if self._failing is None:
            reasons = sorted({str(r.get("reason")) for r in rows})
            log.error("cannot write the dead-letter files %s: %s; dropping dead letters (counted in "
                      "dead_letters_dropped) until the disk takes them again; reasons now: %s",
                      self.path, text, ", ".join(reasons) or "-")
            self._failing_drops = 0
        self._failing = text

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass  # a failing disk may refuse even this; the descriptor is gone anyway
            self._fd = None


class _WriteFailed(Exception):
    """An append failed after ``rows`` whole rows were written."""

    def __init__(self, cause: OSError, rows: int) -> None:
        super().__init__(str(cause))
        self.cause, self.rows = cause, rows


def _line(row: Mapping[str, Any]) -> bytes:
    """One row as a JSON line; whatever the row holds, this returns bytes."""
    try:
        text = json.dumps(row, ensure_ascii=False, separators=(",", ":"), default=repr)
    except (ValueError, RecursionError) as exc:  # a cycle or absurd nesting: not from dead_letter()
        text = json.dumps({"reason": quote(row.get("reason")), "detail": f"dead letter not encodable: {exc}",
                           "row": quote(row, 240)}, ensure_ascii=False)
    try:
        return (text + "\n").encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate (dead_letter() rows have none): as a JSON escape
        return (json.dumps(json.loads(text), ensure_ascii=True, separators=(",", ":")) + "\n").encode("ascii")


def _last_byte(path: Path, size: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, 1, size - 1)
    finally:
        os.close(fd)


def _count_rows(path: Path) -> int:
    """Lines in a dead-letter file (a last line without its newline counts too)."""
    rows = 0
    last = b"\n"
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 16):
                rows += chunk.count(b"\n")
                last = chunk[-1:]
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            log.warning("cannot count the rows of %s before deleting it: %s", path, exc.strerror or exc)
        return rows
    return rows + (last != b"\n")
