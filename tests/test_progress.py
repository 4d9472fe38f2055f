"""Progress while `prepare` parses a raw input: bytes of the file on disk read so far, as a bar on a
TTY and as plain lines (SBRJOB_PROGRESS_INTERVAL apart) without one; results unchanged."""

import gzip
import io
import logging
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cli

from sbrjob.config import DataConfig
from sbrjob.progress import BYTES, Bar, Steps
from sbrjob.readers import read_events

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "movielens.yaml"  # this checkout's, not an install's
N_LINES = 150_000  # > 2 x 64Ki lines (the line scan's report period); ~0.5 MB gzip = several 64 KiB blocks


def ml_text(n: int = N_LINES, bad_at: int | None = None) -> bytes:
    rng = np.random.default_rng(0)
    users, items = rng.integers(1, 1500, n), rng.integers(1, 400, n)
    lines = [f"{u}::{i}::{1 + k % 5}::{978300000 + 7 * k}" for k, (u, i) in enumerate(zip(users, items))]
    if bad_at is not None:
        lines[bad_at] = "12::x::3::978300000"
    return ("\n".join(lines) + "\n").encode()


@pytest.fixture(scope="module")
def ratings(tmp_path_factory):
    path = tmp_path_factory.mktemp("progress") / "ratings.dat.gz"
    path.write_bytes(gzip.compress(ml_text(), compresslevel=1))
    return path


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


PLAIN = re.compile(r"read ratings\.dat\.gz: [\d.]+/[\d.]+ MB \((\d+)%\)(, ETA \d+ s)?")


def test_non_tty_prepare_prints_plain_reading_lines_with_eta(ratings, tmp_path, monkeypatch):
    monkeypatch.setenv("SBRJOB_PROGRESS_INTERVAL", "0")  # a line per report instead of one per 30 s
    result = cli("prepare", "--config", CONFIG, "--set", f"data.path={ratings}", "--set", "data.items_path=null",
                 "--set", f"output_dir={tmp_path / 'run'}")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", result.output)  # no \r, no escapes
    progress = [(i, int(m.group(1)), m.group(2)) for i, x in enumerate(lines) if (m := PLAIN.fullmatch(x))]
    assert len(progress) >= 4, lines
    percents = [p for _, p, _ in progress]
    assert percents == sorted(percents) and percents[-1] == 100 and percents[0] < 50
    assert any(eta for _, _, eta in progress)
    read_line = next(i for i, x in enumerate(lines) if x.startswith(f"prepare: read {N_LINES:,} events from"))
    assert progress[-1][0] < read_line  # the bar is about the reading, before its closing line


def test_without_the_interval_set_a_quick_read_prints_no_progress_line(ratings, monkeypatch, caplog):
    monkeypatch.delenv("SBRJOB_PROGRESS_INTERVAL", raising=False)
    with caplog.at_level(logging.INFO, logger="sbrjob"), Steps(BYTES) as progress:
        read_events(DataConfig(format="movielens", path=str(ratings)), progress=progress)
    assert not [r for r in caplog.records if r.name == "sbrjob.progress"]


def test_tty_bar_redraws_in_place_and_is_cleared(ratings, monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    with Steps(BYTES, redraw=0) as progress:
        ev = read_events(DataConfig(format="movielens", path=str(ratings)), progress=progress)
    out = tty.getvalue()
    draws = re.findall(r"\r\x1b\[Kread ratings\.dat\.gz \[[#.]{30}\] [\d.]+/[\d.]+ MB \((\d+)%\)", out)
    assert len(set(draws)) >= 3 and draws[-1] == "100"
    assert "ETA" in out and out.endswith("\r\x1b[K") and "\n" not in out
    assert len(ev) == N_LINES


def test_tty_redraws_are_throttled_but_the_last_step_is_drawn(monkeypatch):
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    bar = Bar("step", 10, "blocks", redraw=60)
    for done in range(1, 11):
        bar.update(done)
    assert re.findall(r"\((\d+)%\)", tty.getvalue()) == ["10", "100"]


@pytest.mark.parametrize("mode", ["error", "skip"])
def test_line_scan_after_a_bad_line_reports_too_and_results_are_unchanged(tmp_path, mode):
    path = tmp_path / "ratings.dat.gz"
    path.write_bytes(gzip.compress(ml_text(bad_at=140_000), compresslevel=1))
    reports = []
    cfg = DataConfig(format="movielens", path=str(path), on_bad_lines=mode)
    if mode == "error":
        with pytest.raises(Exception, match=r"ratings\.dat\.gz, line 140001: column 'item' should be an integer"):
            read_events(cfg, progress=lambda *r: reports.append(r))
    else:
        ev = read_events(cfg, progress=lambda *r: reports.append(r))
        plain = read_events(DataConfig(format="movielens", path=str(path), on_bad_lines=mode))
        assert ev.bad_lines == plain.bad_lines == 1 and len(ev) == N_LINES - 1
        assert np.array_equal(ev.item_ids[ev.item], plain.item_ids[plain.item]) and np.array_equal(ev.time, plain.time)
    steps = list(dict.fromkeys(step for step, _, _ in reports))
    scan = "find the bad line in ratings.dat.gz" if mode == "error" else "skip the bad lines of ratings.dat.gz"
    assert steps == ["read ratings.dat.gz", scan] + (["read ratings.dat.gz (cleaned)"] if mode == "skip" else [])
    size = path.stat().st_size
    for step in steps:
        done = [d for s, d, _ in reports if s == step]
        assert done == sorted(done) and {t for s, _, t in reports if s == step} == ({size} if "cleaned" not in step
                                                                                    else {done[-1]})
    scanned = [d for s, d, _ in reports if s == scan]
    assert len(scanned) >= 2 and scanned[0] < size  # during the scan, not only at its end
    if mode == "skip":
        assert scanned[-1] == size


def test_pyarrow_threads_do_not_touch_the_counted_file_after_the_read(ratings, monkeypatch):
    """Python calls from pyarrow's I/O thread after read_csv returned can come during interpreter
    exit and abort the process ('terminate called without an active exception', exit 134)."""
    import threading
    import time

    from sbrjob import readers

    late, returned = [], threading.Event()
    close = readers._Counted.close

    def watched_close(self):
        if returned.is_set():
            late.append(threading.current_thread().name)
        close(self)

    monkeypatch.setattr(readers._Counted, "close", watched_close)
    layout = readers.Layout("::", {"user": "int", "item": "int", "rating": "float", "time": "float"},
                            names=("user", "item", "rating", "time"))
    for _ in range(10):
        returned.clear()
        table, _ = readers._arrow_read(str(ratings), layout, skip=False, report=lambda done, total: None)
        returned.set()
        del table
        time.sleep(0.05)
    assert late == []
