"""`sbrjob backtest`: N windows, each its own run, warm-started from the previous one; table, JSON, plot."""

import json
from datetime import date, datetime, timedelta, timezone

import numpy as np

from sbrjob.backtest import window_days
from tests.conftest import cli
from tests.test_warmstart import write_config


def test_window_days_end_at_the_last_day_step_apart():
    assert window_days(date(2014, 4, 7), 3, 2) == [date(2014, 4, 3), date(2014, 4, 5), date(2014, 4, 7)]


def warm_backtest(tmp_path, *sets: str, options=()):
    """Two warm windows, two days apart, of one epoch each, split by day; the result and its root."""
    config = write_config(tmp_path)
    out = tmp_path / "bt"
    args = [f"output_dir={out}", "train.epochs=1", "split.scheme=days", "split.test_days=1", "split.valid_days=1",
            "train.checkpoint_every_steps=0", *sets]
    r = cli("backtest", "--config", config, "--windows", 2, "--step-days", 2, "--until", "2020-01-10", "--warm",
            *options, *[x for a in args for x in ("--set", a)])
    assert r.exit_code == 0, r.output
    return r, out / "backtest" / "warm"


def test_backtest_trains_each_window_warm_from_the_previous_and_reports(tmp_path):
    r, root = warm_backtest(tmp_path, "filter.last_days=3")  # a sliding window of 3 days: the catalogue drifts
    result = json.loads((root / "backtest.json").read_text())
    rows = result["windows"]
    assert [w["until"] for w in rows] == ["2020-01-08", "2020-01-10"]
    assert [w["start"] for w in rows] == ["cold", "warm from w00"]
    for w in rows:
        run = root / f"w{w['window']:02d}_{w['until']}"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["status"] == "done" and metrics["config"]["data"]["until"] == w["until"]
        assert w["mrr@20"] == metrics["test"]["mrr@20"] and w["epochs"] == 1
        end = datetime.combine(date.fromisoformat(w["until"]) + timedelta(days=1), datetime.min.time(), timezone.utc)
        last_test = datetime.fromisoformat(w["test_range"][1].replace("Z", "+00:00"))
        assert end - timedelta(days=1) <= last_test < end  # tested on the window's own last day
    warm = json.loads((root / "w01_2020-01-10" / "metrics.json").read_text())["init_from"]
    assert warm["run"] == str(root / "w00_2020-01-08") and rows[1]["items"] == warm["items"]
    assert warm["items"]["new"] > 0 and warm["items"]["dropped"] > 0  # the catalogue drifted between the windows
    assert result["mean"]["mrr@20"] == np.mean([w["mrr@20"] for w in rows])
    table = (root / "backtest.md").read_text()
    assert "| w00 | 2020-01-08 | cold |" in table and "| w01 | 2020-01-10 | warm from w00 |" in table
    assert f"**{result['mean']['recall@20']:.4f}**" in table and table in r.stdout
    assert (root / "backtest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_backtest_refuses_bad_windows(tmp_path):
    r = cli("backtest", "--config", "tiny", "--windows", 0, "--set", f"output_dir={tmp_path}")
    assert r.exit_code == 2 and "--windows 0 --step-days 1: both must be >= 1" in r.error
    r = cli("backtest", "--config", "tiny", "--warm-epochs", 2, "--set", f"output_dir={tmp_path}")
    assert r.exit_code == 2 and "--warm-epochs 2: needs --warm" in r.error
    assert not any(tmp_path.iterdir())


def test_warm_epochs_sets_the_epochs_of_the_warm_windows_only(tmp_path):
    _, root = warm_backtest(tmp_path, "train.epochs=2", options=("--warm-epochs", 1))
    rows = json.loads((root / "backtest.json").read_text())["windows"]
    assert [w["epochs"] for w in rows] == [2, 1] and rows[1]["start"] == "warm from w00"
    assert json.loads((root / "w01_2020-01-10" / "metrics.json").read_text())["config"]["train"]["epochs"] == 1


def test_under_refit_each_window_starts_from_the_previous_final_model_and_reports_its_own(tmp_path):
    _, root = warm_backtest(tmp_path, "train.refit=true")
    rows = json.loads((root / "backtest.json").read_text())["windows"]
    w00, w01 = root / "w00_2020-01-08", root / "w01_2020-01-10"
    for w, run in zip(rows, (w00, w01)):
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["refit"]["status"] == "done" and w["refit_epochs"] == metrics["best_epoch"] == 1
        assert w["mrr@20"] == metrics["refit"]["test"]["mrr@20"] != metrics["test"]["mrr@20"]  # the final model's
    # yesterday's shipped model is w00's refit; w01's own refit starts from that same model, not cold
    started = json.loads((w01 / "metrics.json").read_text())["init_from"]
    assert started["run"] == str(w00 / "refit")
    assert json.loads((w01 / "refit" / "init_from.json").read_text())["run"] == str(w00 / "refit")
    assert not (w00 / "refit" / "init_from.json").exists()  # the first window and its refit are cold
    assert "| 1+1 |" in (root / "backtest.md").read_text()
