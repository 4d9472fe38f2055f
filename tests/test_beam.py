"""prepare and export on Apache Beam's DirectRunner give the in-process outputs: the same data/ files
byte for byte (rows, vocabulary, stats) and byte-identical shards. Skipped without apache-beam
(the `sbrjob[beam]` extra; `make test-beam` runs these in a venv that has it)."""

import filecmp
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("apache_beam")

from conftest import cli, shared_path  # noqa: E402
from sbrjob import stages  # noqa: E402
from sbrjob.config import config_from_dict, load_config  # noqa: E402
from sbrjob.errors import SbrjobError  # noqa: E402
from sbrjob.runs import PREPARED_FILES, SPLITS, Run  # noqa: E402

# one worker, few buckets: the DirectRunner's start-up per pipeline dominates at this size (worker
# processes, multi_processing, cost seconds per pipeline: benchmarks/bench_beam.py checks that mode)
FAST = ["beam.direct_running_mode=in_memory", "beam.direct_num_workers=1", "beam.buckets=8"]


def _both(make, tmp_path, export=True):
    """Run prepare (and export) in-process and on Beam with the same config; returns the two run dirs."""
    dirs = {}
    for runner in ("inprocess", "beam"):
        cfg = make(tmp_path / runner)
        run = Run(cfg.output_dir)
        data = stages.ensure_prepared(run, cfg, runner=runner)
        if export:
            stages.ensure_exported(run, cfg, data, runner=runner)
        dirs[runner] = run
    return dirs["inprocess"], dirs["beam"]


def _stats(run):
    with open(f"{run.data_dir}/stats.json") as fh:
        stats = json.load(fh)
    stats.pop("seconds")
    return stats


def assert_same_outputs(a, b, export=True):
    for name in (*PREPARED_FILES, "manifest.json"):
        assert filecmp.cmp(f"{a.data_dir}/{name}", f"{b.data_dir}/{name}", shallow=False), name
    assert _stats(a) == _stats(b)
    if not export:
        return
    for split in SPLITS:
        ma, mb = (json.loads(Path(f"{r.split_dir(split)}/manifest.json").read_text()) for r in (a, b))
        assert ma == mb, split
        for shard in ma["files"]:
            assert filecmp.cmp(f"{a.split_dir(split)}/{shard}", f"{b.split_dir(split)}/{shard}", shallow=False)


def test_tiny_cli_export_on_beam_is_identical(tmp_path):
    """`sbrjob export --runner beam` (prepare first, then the shards) against the in-process stages."""
    cfg = load_config("tiny", [f"output_dir={tmp_path / 'inprocess'}"])
    stages.export_stage(cfg)
    sets = [x for kv in [f"output_dir={tmp_path / 'beam'}", *FAST] for x in ("--set", kv)]
    res = cli("export", "--config", "tiny", *sets, "--runner", "beam")
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["train"]["shards"] == 2
    assert_same_outputs(Run(str(tmp_path / "inprocess")), Run(str(tmp_path / "beam")))


def test_ml1m_identical(tmp_path):
    base = shared_path("ml-1m")
    a, b = _both(lambda d: load_config("movielens", [
        f"data.path={base / 'ratings.dat.gz'}", f"data.items_path={base / 'movies.dat'}", f"output_dir={d}",
        "export.shards=4", *FAST]), tmp_path)
    assert_same_outputs(a, b)
    assert _stats(b)["input"]["rows"] == 487_650


def test_yoochoose_chunked_identical_and_given_scheme(tmp_path):
    """The raw YOOCHOOSE subset read in ~0.5 MB chunks (7 parsers), and its GRU4Rec TSVs as given splits."""
    raw = shared_path("yoochoose-100k", "yoochoose-clicks-100k_filtered_isotime.dat")
    a, b = _both(lambda d: load_config("yoochoose", [f"data.path={raw}", f"output_dir={d}", "beam.chunk_mb=0.5",
                                                     *FAST]), tmp_path / "raw")
    assert_same_outputs(a, b)
    assert _stats(b)["filter_rounds"] >= 3  # items and sessions fall in turn; the last round removes nothing
    base = raw.parent
    a, b = _both(lambda d: load_config("yoochoose", [
        "data.format=gru4rec", f"data.path={base / 'yoochoose-clicks-100k_train_full.txt'}",
        f"data.test_path={base / 'yoochoose-clicks-100k_test.txt'}", "data.time_offset=7200", "split.scheme=given",
        "beam.chunk_mb=0.5", f"output_dir={d}", *FAST]), tmp_path / "given", export=False)
    assert_same_outputs(a, b, export=False)


def _table(tmp_path, n_users=300, seed=0):
    """A user-keyed CSV with string ids (ordered as text, not numbers), ratings, repeats, duplicates
    and ties, over 40 days: every cleaning step and filter has something to do."""
    rng = np.random.default_rng(seed)
    lines = ["uid,iid,ts,stars\n"]
    for u in range(n_users):
        t = 1.4e9 + rng.integers(0, 40 * 86400)
        for _ in range(rng.integers(1, 30)):
            t += int(rng.choice([0, 30, 600, 7200, 200000]))
            item = f"i{int(rng.zipf(1.5)) % 400}"
            lines.append(f"u{u},{item},{t},{rng.integers(1, 6)}\n")
            if rng.random() < 0.05:  # an exact duplicate
                lines.append(lines[-1])
    path = tmp_path / "log.csv"
    path.write_text("".join(lines))
    return path


def test_table_with_every_cleaning_step_identical(tmp_path):
    path = _table(tmp_path)

    def make(d):
        return config_from_dict({
            "name": "t", "output_dir": str(d),
            "data": {"format": "table", "path": str(path), "columns": {"user": "uid", "item": "iid", "time": "ts",
                                                                        "rating": "stars"}},
            "sessions": {"gap": 3600, "min_rating": 2, "drop_duplicates": True, "drop_repeats": True},
            "filter": {"last_days": 30, "min_session_length": 3, "min_item_support": 3},
            "split": {"scheme": "days", "test_days": 3, "valid_days": 3},
            "export": {"batch_size": 8, "shards": 2, "block_steps": 4, "eval_batch_size": 8},
            "beam": {"chunk_mb": 0.01, "direct_running_mode": "in_memory", "direct_num_workers": 1,
                     "buckets": 8}})

    a, b = _both(make, tmp_path)
    assert_same_outputs(a, b)
    removed = _stats(b)["removed"]
    assert {"min_rating", "drop_duplicates", "drop_repeats", "last_days", "min_session_length",
            "min_item_support"} <= set(removed) and all(removed[k]["events"] > 0 for k in removed
                                                          if not k.startswith("unknown"))


def test_bad_line_named_with_its_file_and_line(tmp_path):
    """A bad line deep in a later chunk: the same message as in-process (file, line of the file);
    with on_bad_lines skip, the same bad-line count and outputs."""
    lines = [f"{s},2014-04-0{1 + s % 7}T10:00:{s % 60:02d}.000Z,{100 + s % 13},0\n" for s in range(4000)]
    lines = [x for s in range(2000) for x in (lines[2 * s], lines[2 * s + 1].replace(f"{2 * s + 1},", f"{2 * s},"))]
    lines[3001] = "1500,not-a-time,7,0\n"
    path = tmp_path / "clicks.dat"
    path.write_text("".join(lines))

    def make(d, skip=False):
        return load_config("yoochoose", [f"data.path={path}", f"output_dir={d}", "beam.chunk_mb=0.02",
                                         "filter.min_item_support=1", *FAST] + (["data.on_bad_lines=skip"] * skip))

    messages = []
    for runner in ("inprocess", "beam"):
        cfg = make(tmp_path / runner)
        with pytest.raises(SbrjobError) as err:
            stages.ensure_prepared(Run(cfg.output_dir), cfg, runner=runner)
        messages.append(str(err.value))
    assert messages[0] == messages[1] and f"{path}, line 3002:" in messages[1]
    a, b = _both(lambda d: make(d, skip=True), tmp_path / "skip", export=False)
    assert _stats(b)["bad_lines"] == 1
    assert_same_outputs(a, b, export=False)
