"""A small progress display for the demo: numbered steps and a bar, on stderr.

On a terminal the bar redraws in place; otherwise (CI logs, pipes) each step
prints one line when it finishes, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, steps: int, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.steps = steps
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.live = enabled and self.stream.isatty()
        self._step = 0
        self._title = ""
        self._started = time.monotonic()

    def step(self, title: str) -> None:
        self._step += 1
        self._title = title
        self._started = time.monotonic()
        if self.enabled and not self.live:
            self._write(f"[{self._step}/{self.steps}] {title} …\n")

    def bar(self, done: int, total: int, detail: str = "") -> None:
        if not self.live:
            return
        width = 30
        filled = int(width * done / total) if total else width
        line = f"[{self._step}/{self.steps}] {self._title:<34} {'█' * filled}{'░' * (width - filled)} {done}/{total} {detail}"
        self._write("\r" + line[:150].ljust(150))

    def done(self, detail: str = "") -> None:
        elapsed = time.monotonic() - self._started
        if not self.enabled:
            return
        text = f"[{self._step}/{self.steps}] {self._title}: {detail} ({elapsed:.1f}s)"
        self._write(("\r" + text.ljust(150) if self.live else text) + "\n")

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
