"""data.since / data.until: validation, the daily pattern's dates, and the events prepare keeps."""

import json
from datetime import datetime, timezone

import pytest

from sbrjob import runs
from sbrjob.config import load_config, window_bounds
from sbrjob.errors import SbrjobError
from sbrjob.stages import prepare_stage


def utc(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()


def test_a_date_is_a_whole_day_and_a_time_an_instant():
    cfg = load_config("tiny", ["data.since=2014-09-01", "data.until=2014-09-29"])  # YAML reads these as dates
    assert (cfg.data.since, cfg.data.until) == ("2014-09-01", "2014-09-29")
    assert window_bounds(cfg.data) == (utc("2014-09-01T00:00:00"), utc("2014-09-30T00:00:00"))
    cfg = load_config("tiny", ["data.until=2014-09-29T12:30:00Z", "data.since='2014-09-29T08:00:00+02:00'"])
    assert window_bounds(cfg.data) == (utc("2014-09-29T06:00:00"), utc("2014-09-29T12:30:00"))
    assert window_bounds(load_config("tiny").data) == (None, None)


@pytest.mark.parametrize("overrides, message", [
    (["data.until=2014-13-01"], "data.until: '2014-13-01' is not an ISO date or time"),
    (["data.since=yesterday"], "data.since: 'yesterday' is not an ISO date or time"),
    (["data.since=2014-09-29", "data.until=2014-09-28"], "data.until: must be after data.since"),
    (["data.until=1960-01-01"], "data.until: '1960-01-01' is outside 1970..2099"),
])
def test_bad_bounds_are_one_line_naming_the_key(overrides, message):
    with pytest.raises(SbrjobError) as err:
        load_config("tiny", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_prepare_keeps_only_the_events_inside_the_window(tmp_path):
    everything, _ = prepare_stage(load_config("tiny", [f"output_dir={tmp_path / 'all'}"]))
    cfg = load_config("tiny", [f"output_dir={tmp_path / 'w'}", "data.since=2000-06-01", "data.until=2001-12-31"])
    data, _ = prepare_stage(cfg)
    stats = json.loads((tmp_path / "w/data/stats.json").read_text())
    lo, hi = window_bounds(cfg.data)
    assert min(stats[s]["time_min"] for s in runs.SPLITS) >= lo
    assert max(stats[s]["time_max"] for s in runs.SPLITS) < hi
    full = json.loads((tmp_path / "all/data/stats.json").read_text())
    assert full["train"]["time_min"] < lo and max(full[s]["time_max"] for s in runs.SPLITS) >= hi  # it did cut
    assert stats["removed"]["since_until"]["events"] > 0
    assert data.manifest["fingerprint"] != everything.manifest["fingerprint"]  # a window is other data


def test_a_window_without_events_is_refused(tmp_path):
    cfg = load_config("tiny", [f"output_dir={tmp_path}", "data.since=2010-01-01"])
    with pytest.raises(SbrjobError, match=r"data.since=2010-01-01 / data.until=None: no event of .* falls in that "
                                          r"window \(its events span 2000-"):
        prepare_stage(cfg)
    assert not (tmp_path / "data").exists()


def test_unset_bounds_leave_the_data_fingerprint_of_older_runs_unchanged():
    from sbrjob.config import ADDED_KEYS

    cfg = load_config("tiny")
    raw = cfg.to_dict()
    for section, key in ADDED_KEYS:  # as sbrjob saw the config before these keys (split.drop_test too)
        if raw[section][key] == ADDED_KEYS[section, key]:
            del raw[section][key]
    old = {k: v for k, v in raw["data"].items() if k not in runs.INPUT_KEYS}
    assert "since" not in old and "until" not in old
    assert runs.data_fingerprint(cfg) == runs._section_hash(
        {"data": old, **{s: raw[s] for s in ("sessions", "filter", "split")}})
    assert runs.data_fingerprint(load_config("tiny", ["data.until=2001-01-01"])) != runs.data_fingerprint(cfg)
