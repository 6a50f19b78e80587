"""The spool's quarantine: directory entries the spool did not write, moved aside and bounded.

:meth:`Spool.open <.fifo.Spool.open>` moves every directory entry that is not
a segment the spool wrote into ``quarantine/``, with one warning each,
counted in :attr:`Spool.quarantined_files <.fifo.Spool.quarantined_files>`:
other names; segment names with an index the spool never writes; directories,
symlinks and other non-regular files; files larger than any segment;
unreadable files; segment files whose first frame that checks out cannot be
there (garbage, a segment damaged past recognition, a copy or a swap under
another name: the records the name stands for are then counted as lost);
segment files past the commit point that do not start where the segment
before them ends (:mod:`.recovery` decides which). A lock or cursor that is
not a regular file is moved aside too and made afresh.

The quarantine is bounded: it keeps the newest 16 entries within an eighth of
``quota_bytes`` (on top of the quota) and deletes the oldest first, so an
entry larger than that bound is deleted right after its warning.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
from pathlib import Path

log = logging.getLogger(__name__)

QUARANTINE = "quarantine"
_ASIDE = ".quarantine.aside"  # where an impostor holding that name waits to be filed
_ENTRIES = 16
_SEQ = re.compile(r"([0-9]+)-")


def kind(mode: int) -> str:
    """What a directory entry is, for a warning ("directory", "symlink", "file", ...)."""
    for test, name in ((stat.S_ISDIR, "directory"), (stat.S_ISLNK, "symlink"), (stat.S_ISFIFO, "fifo"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device")):
        if test(mode):
            return name
    return "file"


def _entry_bytes(path: Path) -> int:
    """Bytes an entry holds on disk, a directory's whole tree included (links not followed)."""
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        return info.st_size
    total = info.st_size
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class Quarantine:
    """``quarantine/`` in a spool directory, holding at most ``bound_bytes`` (and 16 entries)."""

    def __init__(self, directory: Path, bound_bytes: int) -> None:
        self.directory = directory
        self.bound_bytes = bound_bytes
        #: entries moved aside (or that could not be) since this object was made
        self.moved = 0

    def move_aside(self, name: str, why: str) -> None:
        """Move a directory entry the spool did not write into quarantine/ (one warning, counted)."""
        self.moved += 1
        try:
            quarantine = self.ensure()
            seq = 1 + max((self._seq(e) for e in os.listdir(quarantine)), default=0)
            target = quarantine / os.fsdecode(b"%06d-" % seq + os.fsencode(name)[:200])
            os.rename(self.directory / name, target)
        except OSError as exc:
            log.warning("spool %s: %r is %s; it cannot be moved aside (%s) and is ignored",
                        self.directory, name, why, exc)
            return
        log.warning("spool %s: %r is %s: moved aside to %s", self.directory, name, why, target)
        self._prune(quarantine)

    def ensure(self) -> Path:
        """The quarantine directory, made if missing (an impostor holding its name is filed in it)."""
        path = self.directory / QUARANTINE
        try:
            mode = os.lstat(path).st_mode
        except FileNotFoundError:
            os.mkdir(path, 0o700)
            return path
        if not stat.S_ISDIR(mode):
            os.rename(path, self.directory / _ASIDE)
            os.mkdir(path, 0o700)
            self.move_aside(_ASIDE, f"a {kind(mode)} where the quarantine directory goes")
        return path

    @staticmethod
    def _seq(name: str) -> int:
        match = _SEQ.match(name)
        return int(match.group(1)) if match else 0

    def _prune(self, quarantine: Path) -> None:
        """Keep the newest entries within the bounds (the module docstring says which)."""
        entries = []
        for name in os.listdir(quarantine):
            try:
                entries.append((self._seq(name), name, _entry_bytes(quarantine / name)))
            except OSError:
                continue
        entries.sort()
        total = sum(size for _, _, size in entries)
        bound = self.bound_bytes
        while entries and (len(entries) > _ENTRIES or total > bound):
            _, name, size = entries.pop(0)
            path = quarantine / name
            try:
                if stat.S_ISDIR(os.lstat(path).st_mode):
                    shutil.rmtree(path)
                else:
                    path.unlink()
            except OSError as exc:
                log.warning("spool %s: cannot delete %s from the quarantine: %s", self.directory, path, exc)
            else:
                log.warning("spool %s: deleted %s (%d bytes) from the quarantine, which keeps the newest "
                            "%d entries within %d bytes", self.directory, name, size, _ENTRIES, bound)
            total -= size
