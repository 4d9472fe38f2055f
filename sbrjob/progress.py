"""Progress of the long steps (reading inputs, training epochs, export per split, evaluation, baselines).

The one place that knows about terminals: on a TTY a one-line bar redrawn in place, with an ETA;
otherwise (CI, `docker run`, a log file) a plain log line every `interval` seconds (30, or
SBRJOB_PROGRESS_INTERVAL) and none at the end (the step's own closing line says it), never
control characters.
"""

from __future__ import annotations

import logging
import os
import sys
import time

log = logging.getLogger("sbrjob.progress")

BYTES = "bytes"  # the unit that is shown as MB/GB


def _interval() -> float:
    """Seconds between the plain lines without a TTY: 30 unless SBRJOB_PROGRESS_INTERVAL says otherwise."""
    try:
        return max(float(os.environ.get("SBRJOB_PROGRESS_INTERVAL", "30")), 0.0)
    except ValueError:
        return 30.0


def _size(n: float) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e9 else f"{n / 1e6:,.1f} MB"


class Bar:
    """`update(done, note)` as work advances, `close()` at the end (clears the bar on a TTY).

    `redraw`: the least seconds between two redraws on a TTY (the last step is always drawn), for
    steps that report far more often than a person can read.
    """

    def __init__(self, label: str, total: int, unit: str = "", enabled: bool = True, interval: float | None = None,
                 redraw: float = 0.0):
        self.label, self.total, self.unit = label, max(int(total), 1), unit
        self.enabled, self.interval, self.redraw = enabled, _interval() if interval is None else interval, redraw
        self.tty = sys.stderr.isatty()
        self.start = self.last = time.monotonic()
        self.drawn = False

    def _text(self, done: int, note: str) -> str:
        elapsed = time.monotonic() - self.start
        eta = f", ETA {elapsed * (self.total - done) / done:.0f} s" if 0 < done < self.total else ""
        if self.unit == BYTES:
            d, t = _size(done), _size(self.total)
            amount = f"{d.split()[0]}/{t}" if d.split()[1] == t.split()[1] else f"{d}/{t}"  # 12.3/45.6 MB
        else:
            amount = f"{done:,}/{self.total:,}" + (f" {self.unit}" if self.unit else "")
        return f"{amount} ({100 * done / self.total:.0f}%){eta}" + (f"  {note}" if note else "")

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        if self.tty:
            now = time.monotonic()
            if self.drawn and now - self.last < self.redraw and done < self.total:
                return
            self.last = now
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


class Steps:
    """The `progress(step, done, total)` callback that library code reports to (e.g. `readers`):
    one Bar per step, the previous one closed when the next starts. Use it as a context manager so
    the last bar is cleared before the caller's next line."""

    def __init__(self, unit: str = "", redraw: float = 0.1):
        self.unit, self.redraw = unit, redraw
        self.bar: Bar | None = None
        self.closed = False

    def __call__(self, step: str, done: int, total: int) -> None:
        if self.closed:  # a late report from a reader thread after the step ended
            return
        if self.bar is None or self.bar.label != step:
            self._end_bar()
            self.bar = Bar(step, total, self.unit, redraw=self.redraw)
        self.bar.update(done)

    def _end_bar(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self._end_bar()
        self.closed = True

    def __enter__(self) -> Steps:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
