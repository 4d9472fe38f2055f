"""prepare: sessions, filters, splits, vocabulary, the data/ contract; integration on the shared real data."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import shared_path
from sbrjob import cli
from sbrjob.cli import app
from sbrjob.config import config_from_dict, load_config
from sbrjob.errors import SbrjobError
from sbrjob.prepare import prepare

from conftest import load_items, load_split

DAY = 86400


def ml_file(tmp_path, rows, name="ratings.dat"):
    """rows: (user, item, rating, time) -> a MovieLens ratings.dat."""
    path = tmp_path / name
    path.write_text("".join(f"{u}::{i}::{r}::{t}\n" for u, i, r, t in rows))
    return str(path)


def yc_file(tmp_path, rows, name="clicks.dat"):
    """rows: (session, epoch seconds, item) -> a YOOCHOOSE clicks file (ISO times, Category column)."""
    path = tmp_path / name
    lines = []
    for s, t, i in rows:
        iso = pd.Timestamp(t, unit="s", tz="UTC").strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        lines.append(f"{s},{iso},{i},0\n")
    path.write_text("".join(lines))
    return str(path)


def job(tmp_path, data, **sections):
    raw = {"name": "t", "output_dir": str(tmp_path / "run"), "data": data,
           "filter": {"min_session_length": 2, "min_item_support": 1}}
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    return config_from_dict(raw)


def sessions_of(df, items):
    """Split DataFrame -> list of sessions as lists of original item ids."""
    ids = items["item_id"].to_numpy()
    return [ids[g["item"].to_numpy()].tolist() for _, g in df.groupby("session", sort=True)]


# ---------------------------------------------------------------- sessions


def test_gap_cuts_user_history_and_null_keeps_it_whole(tmp_path):
    # user 1: 3 events (two at the same second: ordered by item id), 2 days of silence, 2 more
    rows = [(1, 20, 5, 100), (1, 10, 5, 100), (1, 30, 5, 200), (1, 20, 5, 200 + 2 * DAY), (1, 30, 5, 300 + 2 * DAY),
            (2, 10, 5, 150), (2, 20, 5, 160)]
    data = {"format": "movielens", "path": ml_file(tmp_path, rows)}
    cfg = job(tmp_path, data, sessions={"gap": 3600}, split={"scheme": "fraction", "test_fraction": 0.34,
                                                              "valid_fraction": 0.0})
    prepare(cfg)
    items = load_items(cfg.data_dir)
    assert sessions_of(load_split(cfg.data_dir, "train"), items) == [["10", "20", "30"], ["10", "20"]]
    assert sessions_of(load_split(cfg.data_dir, "test"), items) == [["20", "30"]]
    cfg = job(tmp_path, data, sessions={"gap": None}, split={"scheme": "fraction", "test_fraction": 0.5,
                                                             "valid_fraction": 0.0})
    prepare(cfg)
    items = load_items(cfg.data_dir)
    assert sessions_of(load_split(cfg.data_dir, "train"), items) == [["10", "20"]]  # user 2 ends first
    # user 1's whole history; 30 never occurs in train, so it is removed from the test session
    assert sessions_of(load_split(cfg.data_dir, "test"), items) == [["10", "20", "20"]]


def test_min_rating_and_drop_repeats(tmp_path):
    rows = [(1, 10, 5, 1), (1, 10, 4, 2), (1, 11, 1, 3), (1, 10, 5, 4), (1, 12, 5, 5),
            (2, 10, 5, 10), (2, 12, 5, 11), (2, 12, 5, 12), (2, 11, 5, 13)]
    cfg = job(tmp_path, {"format": "movielens", "path": ml_file(tmp_path, rows)},
              sessions={"min_rating": 4, "drop_repeats": True},
              split={"scheme": "fraction", "test_fraction": 0.5, "valid_fraction": 0.0})
    stats = prepare(cfg)
    items = load_items(cfg.data_dir)
    train, test = (sessions_of(load_split(cfg.data_dir, s), items) for s in ("train", "test"))
    # user 1 without the 1-star rating: 10 10 10 12 -> repeats dropped -> 10 12 (the rating filter removed
    # what separated the repeats); user 2: 10 12 12 11 -> 10 12 11; 11 unknown to train is then removed
    assert train == [["10", "12"]] and test == [["10", "12"]]
    assert stats["removed"]["min_rating"] == {"events": 1, "sessions": 0, "items": 0}
    assert stats["removed"]["drop_repeats"]["events"] == 3
    assert stats["removed"]["unknown_items_test"]["events"] == 1


def test_filters_reach_a_fixed_point(tmp_path):
    # item 9 has support 2 (< 3): removing it shortens session 2 to one event, whose removal drops
    # item 8 below support 3, which then shortens session 3. One pass would keep session 3 and item 8.
    rows = [(1, 0, 1), (1, 10, 2), (1, 20, 1), (1, 30, 2), (1, 40, 1), (1, 50, 2),
            (2, 100, 9), (2, 110, 8),
            (3, 200, 9), (3, 210, 8), (3, 220, 1),
            (4, 300, 8), (4, 310, 2), (4, 320, 1), (4, 330, 2)]
    cfg = job(tmp_path, {"format": "yoochoose", "path": yc_file(tmp_path, [(s, 1e9 + t, i) for s, t, i in rows])},
              filter={"min_item_support": 3, "min_session_length": 2},
              split={"scheme": "fraction", "test_fraction": 0.3, "valid_fraction": 0.0})
    stats = prepare(cfg)
    train = load_split(cfg.data_dir, "train")
    test = load_split(cfg.data_dir, "test")
    items = load_items(cfg.data_dir)
    kept = sessions_of(train, items) + sessions_of(test, items)
    assert kept == [["1", "2", "1", "2", "1", "2"], ["2", "1", "2"]]
    removed = stats["removed"]
    assert removed["min_item_support"]["items"] == 2 and removed["min_session_length"]["sessions"] == 2
    assert sum(r["events"] for k, r in removed.items() if k.startswith("min_")) == 6
    support = dict(zip(items["item_id"], items["support"]))
    assert support == {"1": 3, "2": 3} or support == {"1": 5, "2": 4}  # train only: depends on the split


def test_last_days_keeps_whole_sessions_ending_in_the_window(tmp_path):
    t0 = 1_400_000_000
    rows = [(s, t0 + day * DAY + dt, i) for s, day in ((1, 0), (2, 8), (3, 9), (4, 9.9)) for dt, i in ((0, 1), (60, 2))]
    rows.append((5, t0 + 7.4 * DAY, 1))  # starts before the window, ends inside it: kept whole
    rows.append((5, t0 + 7.6 * DAY, 2))
    cfg = job(tmp_path, {"format": "yoochoose", "path": yc_file(tmp_path, rows)}, filter={"last_days": 2.5},
              split={"scheme": "fraction", "test_fraction": 0.25, "valid_fraction": 0.0})
    stats = prepare(cfg)
    assert stats["removed"]["last_days"] == {"events": 2, "sessions": 1, "items": 0}
    assert stats["train"]["sessions"] + stats["test"]["sessions"] == 4
    assert stats["train"]["time_min"] == t0 + 7.4 * DAY


# ---------------------------------------------------------------- splits


def test_days_split_and_vocabulary_from_train(tmp_path):
    t0 = 1_400_000_000
    rows = [(1, t0, 1), (1, t0 + 60, 2),  # day 0: train
            (2, t0 + DAY // 2, 2), (2, t0 + DAY // 2 + 60, 3),  # train: ends > 1 day before session 3
            (3, t0 + 2 * DAY + 10, 1), (3, t0 + 2 * DAY + 20, 3),  # day 2: valid
            (4, t0 + 3 * DAY + 5, 1), (4, t0 + 3 * DAY + 6, 7), (4, t0 + 3 * DAY + 7, 2),  # day 3: test, 7 unknown
            (5, t0 + 3 * DAY, 7), (5, t0 + 3 * DAY + 100, 1)]  # test; only 1 known -> dropped
    cfg = job(tmp_path, {"format": "yoochoose", "path": yc_file(tmp_path, rows)},
              split={"scheme": "days", "test_days": 1, "valid_days": 1})
    stats = prepare(cfg)
    items = load_items(cfg.data_dir)
    assert sorted(items["item_id"]) == ["1", "2", "3"]  # 7 only appears in test
    assert items["item_id"].tolist() == ["1", "2", "3"]  # first appearance in train
    assert sessions_of(load_split(cfg.data_dir, "train"), items) == [["1", "2"], ["2", "3"]]
    assert sessions_of(load_split(cfg.data_dir, "valid"), items) == [["1", "3"]]
    assert sessions_of(load_split(cfg.data_dir, "test"), items) == [["1", "2"]]
    assert stats["removed"]["unknown_items_test"] == {"events": 3, "sessions": 1, "items": 1}


def test_fraction_split_orders_by_end_time(tmp_path):
    # 10 sessions; session s ends at 1000 * (10 - s): the last to end are sessions 1 and 2
    rows = [(s, 1e9 + 1000 * (10 - s) - d, i) for s in range(1, 11) for d, i in ((50, 1), (0, 2))]
    cfg = job(tmp_path, {"format": "yoochoose", "path": yc_file(tmp_path, rows)},
              split={"scheme": "fraction", "test_fraction": 0.2, "valid_fraction": 0.1})
    prepare(cfg)
    ends = {s: load_split(cfg.data_dir, s).groupby("session")["time"].max() for s in ("train", "valid", "test")}
    assert [len(e) for e in ends.values()] == [7, 1, 2]
    assert ends["train"].max() < ends["valid"].min() <= ends["valid"].max() < ends["test"].min()


# ---------------------------------------------------------------- outputs and contract


def test_outputs_follow_the_contract(tmp_path):
    cfg = load_config("tiny", [f"output_dir={tmp_path / 'run'}"])
    stats = prepare(cfg)
    d = tmp_path / "run" / "data"
    assert sorted(p.name for p in d.iterdir()) == sorted(
        ["train.parquet", "valid.parquet", "test.parquet", "items.parquet", "stats.json", "data_report.png",
         "config.yaml", "manifest.json"])
    assert (d / "data_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    manifest = json.loads((d / "manifest.json").read_text())
    from sbrjob import runs

    assert manifest["fingerprint"] == runs.data_fingerprint(cfg)
    assert manifest["files"] == {n: runs._sha256_file(str(d / n)) for n in runs.PREPARED_FILES}
    assert [r["key"] for r in manifest["inputs"]] == ["data.path", "data.items_path"]
    items = load_items(str(d))
    assert manifest["n_items"] == len(items) == stats["n_items"]
    assert items["index"].dtype == np.int32 and items["index"].tolist() == list(range(len(items)))
    assert items["title"].notna().all() and items["title"].iloc[0].startswith("Synthetic Movie")
    assert items["support"].sum() == stats["train"]["events"]
    for split in ("train", "valid", "test"):
        df = load_split(str(d), split)
        assert [str(t) for t in df.dtypes] == ["int64", "int32", "float64", "category", "int64"]
        # lineage: the user-keyed sample keeps its user and "<user>#<n>" for the n-th session of that user
        assert list(df.columns) == ["session", "item", "time", "session_key", "user"]
        keys = df.groupby("session")[["session_key", "user"]].nunique()
        assert (keys == 1).all().all()  # one key and one user per session, and vice versa:
        assert df.groupby("session_key", observed=True)["session"].nunique().max() == 1
        assert (df["session_key"].astype(str) == df["user"].astype(str) + "#0").all()  # gap: null
        assert df.equals(df.sort_values(["session", "time", "item"], kind="stable").reset_index(drop=True))
        sess = df["session"].to_numpy()
        assert sess.min() == 0 and np.array_equal(np.unique(sess), np.arange(sess.max() + 1))
        first = df.groupby("session")["time"].min().to_numpy()
        assert (np.diff(first) >= 0).all()  # numbered in order of first event
        assert df.groupby("session").size().min() >= 2
        assert df["item"].between(0, len(items) - 1).all()
        assert len(df) == stats[split]["events"]
        q = stats[split]["session_length"]
        assert q["50%"] <= q["99%"] <= q["99.9%"] <= q["max"]
    saved = load_config(str(d / "config.yaml"))
    assert saved.to_dict() == cfg.to_dict()


def test_same_config_gives_identical_files(tmp_path):
    outs = []
    for run in ("a", "b"):
        cfg = load_config("tiny", [f"output_dir={tmp_path / run}"])
        prepare(cfg)
        outs.append([(tmp_path / run / "data" / f).read_bytes() for f in ("train.parquet", "test.parquet", "items.parquet")])
    assert outs[0] == outs[1]


def test_failed_run_keeps_previous_output_and_leaves_no_debris(tmp_path):
    cfg = load_config("tiny", [f"output_dir={tmp_path / 'run'}"])
    prepare(cfg)
    before = (tmp_path / "run" / "data" / "train.parquet").read_bytes()
    bad = load_config("tiny", [f"output_dir={tmp_path / 'run'}", "filter.min_item_support=100000"])
    with pytest.raises(SbrjobError, match="no sessions left after filter.min_session_length"):
        prepare(bad)
    assert (tmp_path / "run" / "data" / "train.parquet").read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["data"]
    with pytest.raises(SbrjobError, match="no prepared data"):
        load_split(str(tmp_path / "nothing"), "train")


def test_emptied_split_names_the_cause(tmp_path):
    rows = [(1, 1e9, 1), (1, 1e9 + 1, 2), (2, 1e9 + 5 * DAY, 8), (2, 1e9 + 5 * DAY + 1, 9)]
    cfg = job(tmp_path, {"format": "yoochoose", "path": yc_file(tmp_path, rows)},
              split={"scheme": "days", "test_days": 1, "valid_days": 0})
    with pytest.raises(SbrjobError, match="test split is empty: every session lost its items"):
        prepare(cfg)
    cfg = job(tmp_path, {"format": "yoochoose", "path": yc_file(tmp_path, rows[:2])},
              split={"scheme": "days", "test_days": 1, "valid_days": 0})
    with pytest.raises(SbrjobError, match="train split is empty"):
        prepare(cfg)
    ml = ml_file(tmp_path, [(1, 1, 2, 5), (1, 2, 1, 6)])
    cfg = job(tmp_path, {"format": "movielens", "path": ml}, sessions={"min_rating": 4})
    with pytest.raises(SbrjobError, match="sessions.min_rating=4.0 removed every event"):
        prepare(cfg)


def test_given_split_passes_files_through(tmp_path):
    head = "SessionId\tItemId\tTime\n"
    (tmp_path / "tr.txt").write_text(head + "1\t5\t10\n1\t6\t11\n2\t6\t12\n2\t7\t13\n3\t5\t14\n")
    (tmp_path / "te.txt").write_text(head + "9\t5\t20\n9\t6\t21\n9\t99\t22\n8\t99\t30\n8\t5\t31\n")
    cfg = job(tmp_path, {"format": "gru4rec", "path": str(tmp_path / "tr.txt"), "test_path": str(tmp_path / "te.txt")},
              split={"scheme": "given"}, filter={"min_item_support": 5})
    stats = prepare(cfg)
    items = load_items(cfg.data_dir)
    # no support filter for given files; session 3 (one event) dropped; 99 unknown to train removed
    assert sessions_of(load_split(cfg.data_dir, "train"), items) == [["5", "6"], ["6", "7"]]
    assert sessions_of(load_split(cfg.data_dir, "test"), items) == [["5", "6"]]
    assert stats["valid"]["events"] == 0 and len(load_split(cfg.data_dir, "valid")) == 0
    assert stats["removed"]["min_session_length"] == {"events": 1, "sessions": 1, "items": 0}


def test_cli_bad_line_exits_2_with_file_and_line_and_skip_counts(tmp_path, monkeypatch, capsys):
    path = tmp_path / "clicks.dat"
    path.write_text("1,2014-04-07T10:51:09.277Z,5,0\n1,2014-04-07T10:52:09.277Z,6,0\n"
                    "2;2014-04-07T10:53:09.277Z;5;0\n"
                    "3,2014-04-08T11:51:09.277Z,5,0\n3,2014-04-08T11:52:09.277Z,6,0\n")
    args = ["prepare", "--config", "yoochoose", "--set", f"data.path={path}", "--set", f"output_dir={tmp_path / 'run'}",
            "--set", "filter.min_item_support=1", "--set", "split.valid_days=0"]
    monkeypatch.setattr("sys.argv", ["sbrjob", *args])
    with pytest.raises(SystemExit) as exit_:
        cli.run(hard_exit=False)  # the console-script entry point (in a subprocess it leaves via os._exit)
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("prepare: ") and len(err) == 2  # the stage line, then the one error line
    assert err[1].startswith(f"error: {path}, line 3: expected 4 fields separated by ',', found 1")
    assert not (tmp_path / "run" / "data").exists()
    result = CliRunner().invoke(app, args + ["--on-bad-lines", "skip"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["bad_lines"] == 1
    stats = json.loads((tmp_path / "run" / "data" / "stats.json").read_text())
    assert stats["bad_lines"] == 1 and stats["train"]["events"] == 2 and stats["test"]["events"] == 2


# ---------------------------------------------------------------- the shared real data


def check_split_properties(data_dir):
    splits = {s: load_split(data_dir, s) for s in ("train", "valid", "test")}
    items = load_items(data_dir)
    train_items = set(splits["train"]["item"])
    assert train_items == set(range(len(items)))
    for name, df in splits.items():
        assert set(df["item"]) <= train_items
        # time order inside sessions, sessions numbered by first event
        same = df["session"].to_numpy()[1:] == df["session"].to_numpy()[:-1]
        assert (np.diff(df["time"].to_numpy())[same] >= 0).all()
        assert (np.diff(df.groupby("session")["time"].min().to_numpy()) >= 0).all()
    return splits, items


def test_movielens_shared_data(tmp_path):
    base = shared_path("ml-1m")
    cfg = load_config("movielens", [f"data.path={base / 'ratings.dat.gz'}", f"data.items_path={base / 'movies.dat'}",
                                    f"output_dir={tmp_path / 'ml'}"])
    stats = prepare(cfg)
    assert stats["input"]["rows"] == 487_650 and stats["bad_lines"] == 0  # users 1-2999 of ML-1M
    splits, items = check_split_properties(cfg.data_dir)
    kept = sum(stats[s]["events"] for s in ("train", "valid", "test"))
    removed = sum(r["events"] for r in stats["removed"].values())
    assert kept + removed == stats["input"]["rows"]
    assert items.loc[items["item_id"] == "1", "title"].item() == "Toy Story (1995)"
    # the fraction split cuts by session end time; only removing a valid/test session's last item
    # (unknown to train) can move its end earlier, which is rare
    ends = {s: df.groupby("session")["time"].max() for s, df in splits.items()}
    assert (ends["valid"] >= ends["train"].max()).mean() > 0.99
    assert (ends["test"] >= ends["valid"].max()).mean() > 0.99


def test_yoochoose_shared_raw_file_reproduces_the_gru4rec_split(tmp_path):
    """The raw-format file is train_full + test of session-rec's GRU4Rec preprocessing: with the same
    last-day rule our split must give back exactly their files' counts (PROVENANCE.md)."""
    raw = shared_path("yoochoose-100k", "yoochoose-clicks-100k_filtered_isotime.dat")
    cfg = load_config("yoochoose", [f"data.path={raw}", f"output_dir={tmp_path / 'yc'}", "split.valid_days=0",
                                    "filter.min_item_support=1"])
    stats = prepare(cfg)
    assert (stats["train"]["events"], stats["train"]["sessions"], stats["train"]["items"]) == (70_278, 17_794, 2_933)
    assert (stats["test"]["events"], stats["test"]["sessions"], stats["test"]["items"]) == (13_568, 3_416, 1_771)
    assert stats["test"]["time_range"] == ["2014-04-07T02:49:53Z", "2014-04-08T02:50:01Z"]
    splits, _ = check_split_properties(cfg.data_dir)
    assert splits["train"].groupby("session")["time"].max().max() < splits["test"].groupby("session")["time"].max().min()

    # the same files passed through as given (TSV time is naive CEST: +7200 s) give the same splits
    base = raw.parent
    given = load_config("yoochoose", [
        "data.format=gru4rec", f"data.path={base / 'yoochoose-clicks-100k_train_full.txt'}",
        f"data.test_path={base / 'yoochoose-clicks-100k_test.txt'}", "data.time_offset=7200",
        "split.scheme=given", f"output_dir={tmp_path / 'given'}"])
    g = prepare(given)
    for split in ("train", "test"):
        assert g[split]["events"] == stats[split]["events"] and g[split]["time_range"] == stats[split]["time_range"]
        a, b = load_split(cfg.data_dir, split), load_split(given.data_dir, split)
        assert np.allclose(a["time"], b["time"]) and a["session"].equals(b["session"])


def test_yoochoose_default_config_valid_split(tmp_path):
    raw = shared_path("yoochoose-100k", "yoochoose-clicks-100k_filtered_isotime.dat")
    cfg = load_config("yoochoose", [f"data.path={raw}", f"output_dir={tmp_path / 'yc'}"])
    stats = prepare(cfg)
    splits, _ = check_split_properties(cfg.data_dir)
    kept = sum(stats[s]["events"] for s in ("train", "valid", "test"))
    assert kept + sum(r["events"] for r in stats["removed"].values()) == 83_846
    # the filters' fixed point, computed independently with a plain pandas loop
    df = pd.read_csv(raw, header=None, names=["s", "t", "i"])
    while True:
        n = len(df)
        df = df[df.groupby("s")["s"].transform("size") >= 2]
        df = df[df.groupby("i")["i"].transform("size") >= 5]
        if len(df) == n:
            break
    unknown = stats["removed"]["unknown_items_valid"]["events"] + stats["removed"]["unknown_items_test"]["events"]
    assert kept + unknown == len(df)
    assert sum(stats[s]["sessions"] for s in ("train", "valid", "test")) + sum(
        stats["removed"][f"unknown_items_{s}"]["sessions"] for s in ("valid", "test")) == df["s"].nunique()
    ends = {s: df.groupby("session")["time"].max() for s, df in splits.items()}
    assert ends["train"].max() < ends["valid"].min() and ends["valid"].max() < ends["test"].min()
    assert min(stats[s]["sessions"] for s in ("train", "valid", "test")) > 3000


# ---------------------------------------------------------------- lineage and duplicates


def assert_no_key_in_two_splits(data_dir):
    """Every split carries the original key; a session has one key and no key is in two splits."""
    seen = {}
    for split in ("train", "valid", "test"):
        df = load_split(data_dir, split)
        assert "session_key" in df.columns, df.columns
        keys = df["session_key"].astype(str)
        per_session = keys.groupby(df["session"]).nunique()
        assert (per_session == 1).all()
        assert keys.groupby(keys).size().index.size == df["session"].nunique()  # and one session per key
        for other, known in seen.items():
            both = known & set(keys)
            assert not both, f"{len(both)} keys in both {other} and {split}, e.g. {sorted(both)[:3]}"
        seen[split] = set(keys)
    return seen


def test_lineage_movielens_shared_data_traces_sessions_back_to_users(tmp_path):
    base = shared_path("ml-1m")
    cfg = load_config("movielens", [f"data.path={base / 'ratings.dat.gz'}", f"data.items_path={base / 'movies.dat'}",
                                    f"output_dir={tmp_path / 'ml'}", "sessions.gap=3600"])
    prepare(cfg)
    assert_no_key_in_two_splits(cfg.data_dir)
    raw = pd.read_csv(base / "ratings.dat.gz", sep="::", engine="python", names=["user", "item", "rating", "time"])
    items = load_items(cfg.data_dir)["item_id"].to_numpy()
    test = load_split(cfg.data_dir, "test")
    assert test["user"].dtype == np.int64
    # with gap 3600 a user has several sessions, possibly in several splits: the key tells them apart
    users = {s: set(load_split(cfg.data_dir, s)["user"]) for s in ("train", "test")}
    assert users["train"] & users["test"]
    for _, session in list(test.groupby("session"))[:20]:
        user = int(session["user"].iloc[0])
        assert session["session_key"].iloc[0].startswith(f"{user}#")
        mine = raw[raw["user"] == user]
        got = set(zip(items[session["item"].to_numpy()].astype(int), session["time"].astype(int)))
        assert got <= set(zip(mine["item"], mine["time"]))  # every event is one of that user's ratings


def test_lineage_yoochoose_shared_data_keeps_session_ids(tmp_path):
    raw_path = shared_path("yoochoose-100k", "yoochoose-clicks-100k_filtered_isotime.dat")
    cfg = load_config("yoochoose", [f"data.path={raw_path}", f"output_dir={tmp_path / 'yc'}"])
    prepare(cfg)
    keys = assert_no_key_in_two_splits(cfg.data_dir)
    raw = pd.read_csv(raw_path, header=None, names=["s", "t", "i"])
    assert set().union(*keys.values()) <= set(raw["s"].astype(str))
    test = load_split(cfg.data_dir, "test")
    assert test["session_key"].dtype == np.int64
    items = load_items(cfg.data_dir)["item_id"].to_numpy()
    sid, group = next(iter(test.groupby("session_key")))
    clicks = raw[raw["s"] == sid]
    assert set(items[group["item"].to_numpy()].astype(int)) <= set(clicks["i"])


def test_string_session_ids_are_kept_and_given_files_may_not_share_them(tmp_path):
    path = tmp_path / "log.csv"
    path.write_text("sid,item,ts\n" + "".join(f"s-{s},{i},{1e9 + 100 * s + i}\n" for s in range(10) for i in range(3)))
    cfg = job(tmp_path, {"format": "table", "path": str(path), "columns": {"session": "sid", "item": "item", "time": "ts"}},
              split={"scheme": "fraction", "test_fraction": 0.2, "valid_fraction": 0.2})
    prepare(cfg)
    keys = assert_no_key_in_two_splits(cfg.data_dir)
    assert set().union(*keys.values()) == {f"s-{s}" for s in range(10)}
    assert keys["test"] == {"s-8", "s-9"}  # the last to end


def test_exact_duplicates_are_counted_warned_and_dropped(tmp_path, caplog):
    rows = [(s, 1e9 + 1000 * s + 10 * j, i) for s in range(1, 11) for j, i in enumerate((1, 2, 1, 3))]
    path = yc_file(tmp_path, rows + rows)  # every line twice
    data = {"format": "yoochoose", "path": path}
    split = {"scheme": "fraction", "test_fraction": 0.2, "valid_fraction": 0.0}
    stats = prepare(job(tmp_path, data, split=split))
    assert stats["duplicates"] == {"events": 40, "fraction": 0.5, "dropped": False}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "40 of 80 events (50.0%) are exact duplicates" in warnings[0]
    assert "sessions.drop_duplicates" in warnings[0]
    caplog.clear()
    assert stats["train"]["events"] == 64  # left in: every event twice
    stats = prepare(job(tmp_path, data, split=split, sessions={"drop_duplicates": True}))
    assert stats["duplicates"]["dropped"] and stats["removed"]["drop_duplicates"]["events"] == 40
    assert stats["train"]["events"] == 32  # genuine repeats (1 ... 1) stay
    # drop_repeats removes every exact duplicate too, and the genuine repeat only when consecutive
    stats = prepare(job(tmp_path, data, split=split, sessions={"drop_duplicates": True, "drop_repeats": True}))
    assert stats["removed"]["drop_duplicates"]["events"] == 40 and stats["removed"]["drop_repeats"]["events"] == 0
    stats = prepare(job(tmp_path, data, split=split, sessions={"drop_repeats": True}))
    assert stats["removed"]["drop_repeats"]["events"] == 40 and stats["duplicates"]["dropped"]
    # a few duplicates: counted, not warned about
    many = [(s, 1e9 + 1000 * s + 10 * j, i) for s in range(1, 101) for j, i in enumerate((1, 2, 1, 3))]
    stats = prepare(job(tmp_path, {"format": "yoochoose", "path": yc_file(tmp_path, many + many[:1], "few.dat")},
                        split=split))
    assert stats["duplicates"]["events"] == 1
    assert not [r for r in caplog.records if r.levelname == "WARNING"]  # after drop_* runs and here: none
