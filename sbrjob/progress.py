"""Progress of the long steps (training epochs, export per split, evaluation, baselines).

The one place that knows about terminals: on a TTY a one-line bar redrawn in place, with an ETA;
otherwise (CI, `docker run`, a log file) a plain log line every `interval` seconds and none at
the end (the step's own closing line says it), never control characters.
"""

from __future__ import annotations

import logging
import sys
import time

log = logging.getLogger("sbrjob.progress")


class Bar:
    """`update(done, note)` as work advances, `close()` at the end (clears the bar on a TTY)."""

    def __init__(self, label: str, total: int, unit: str = "", enabled: bool = True, interval: float = 30.0):
        self.label, self.total, self.unit = label, max(int(total), 1), unit
        self.enabled, self.interval = enabled, interval
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        self.drawn = False

    def _text(self, done: int, note: str) -> str:
        elapsed = time.monotonic() - self.start
        eta = f", ETA {elapsed * (self.total - done) / done:.0f} s" if 0 < done < self.total else ""
        unit = f" {self.unit}" if self.unit else ""
        return f"{done:,}/{self.total:,}{unit} ({100 * done / self.total:.0f}%){eta}" + (f"  {note}" if note else "")

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        if self.tty:
            filled = int(30 * min(done, self.total) / self.total)
            sys.stderr.write(f"\r\x1b[K{self.label} [{'#' * filled}{'.' * (30 - filled)}] {self._text(done, note)}")
            sys.stderr.flush()
            self.drawn = True
        elif time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            log.info("%s: %s", self.label, self._text(done, note))

    def close(self) -> None:
        if self.drawn:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self.drawn = False
