"""Warm start (`train --init-from`): a catalogue that gained and lost items, kill -9, refusals."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
import yaml

from sbrjob import warmstart
from sbrjob.config import load_config
from sbrjob.model import GRU4Rec
from sbrjob.runs import Prepared
from sbrjob.stages import train_stage
from tests.conftest import cli, kill_9_when, slow_cli

REPO = Path(__file__).resolve().parents[1]
DAY0 = pd.Timestamp("2020-01-01", tz="UTC").timestamp()
SOURCE_WINDOW = ["data.until=2020-01-06", "train.epochs=1"]  # days 0-5: items 100..139
TARGET_WINDOW = ["data.since=2020-01-04", "data.until=2020-01-10"]  # days 3-9: items 106..147


def drifting_log(path: Path) -> None:
    """10 days of sessions; day d walks a ring of the 30 items 100+2d .. 129+2d, so the catalogue drifts."""
    rng = np.random.default_rng(0)
    rows = []
    for day in range(10):
        for s in range(60):
            start, n = rng.integers(0, 30), rng.integers(3, 9)
            t0 = DAY0 + day * 86400 + s * 600
            rows += [(day * 100 + s, 100 + 2 * day + (start + p) % 30, t0 + 30 * p) for p in range(n)]
    pd.DataFrame(rows, columns=["SessionId", "ItemId", "Time"]).to_csv(path, sep="\t", index=False)


def write_config(tmp: Path) -> Path:
    drifting_log(tmp / "log.tsv")
    cfg = {"name": "drift", "data": {"format": "gru4rec", "path": str(tmp / "log.tsv")},
           "filter": {"min_session_length": 2, "min_item_support": 1},
           "split": {"scheme": "fraction", "test_fraction": 0.1, "valid_fraction": 0.1},
           "export": {"batch_size": 16, "block_steps": 8, "shards": 2, "eval_batch_size": 32, "eval_shards": 1},
           "model": {"layers": [16]},
           "train": {"n_sample": 16, "lr": 0.1, "momentum": 0.3, "epochs": 2, "checkpoint_every_steps": 8},
           "eval": {"cutoffs": [5, 20], "beyond_accuracy": False}}
    (tmp / "drift.yaml").write_text(yaml.safe_dump(cfg))
    return tmp / "drift.yaml"


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("warm")
    config = write_config(tmp)
    cfg = load_config(str(config), [f"output_dir={tmp / 'source'}"] + SOURCE_WINDOW)
    train_stage(cfg)
    return tmp, config, tmp / "source"


@pytest.fixture(scope="module")
def warm(source, monkeypatch_module):
    """The warm-started run, with the weights and slots it held right after the warm start (before any step)."""
    tmp, config, src = source
    seen = {}
    apply = warmstart.apply

    def spy(model, optimizer, *args, **kwargs):
        record = apply(model, optimizer, *args, **kwargs)
        seen["Wy"], seen["by"] = model.Wy.numpy(), model.by.numpy()
        seen["Wx"] = model.layers[0].Wx.numpy()
        i = [id(v) for v in optimizer.variables_].index(id(model.Wy))
        seen["acc"] = optimizer.slots["accumulator"][i].numpy()
        seen["step"] = int(optimizer.iterations.numpy())
        return record

    monkeypatch_module.setattr(warmstart, "apply", spy)
    cfg = load_config(str(config), [f"output_dir={tmp / 'warm'}"] + TARGET_WINDOW)
    metrics, _ = train_stage(cfg, init_from=str(src))
    return cfg, metrics, seen


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_kept_rows_are_bit_identical_new_rows_fresh_and_the_run_trains(source, warm):
    _, _, src = source
    cfg, metrics, seen = warm
    src_items = Prepared.open(str(src / "data")).load_items()["item_id"].tolist()
    new_items = Prepared.open(str(Path(cfg.output_dir) / "data")).load_items()["item_id"].tolist()
    kept = [i for i in new_items if i in src_items]
    assert 0 < len(kept) < len(new_items) and len(kept) < len(src_items)  # new and removed items both exist
    record = metrics["init_from"]
    assert record["items"] == {"kept": len(kept), "new": len(new_items) - len(kept),
                               "dropped": len(src_items) - len(kept)}
    assert record["run"] == str(src.resolve()) and record["checkpoint"] == "best"
    best = tf.train.latest_checkpoint(str(src / "checkpoints/best"))
    assert record["checkpoint_path"] == best
    reader = tf.train.load_checkpoint(best)
    assert record["fingerprint"] == reader.get_tensor("progress/fingerprint/.ATTRIBUTES/VARIABLE_VALUE").decode()
    get = lambda name: reader.get_tensor(f"{name}/.ATTRIBUTES/VARIABLE_VALUE")  # noqa: E731
    src_wy, src_by, src_acc = get("model/Wy"), get("model/by"), get("optimizer/slots/accumulator/0")
    assert src_acc.shape == src_wy.shape and src_acc.any()
    new_at = [new_items.index(i) for i in kept]
    src_at = [src_items.index(i) for i in kept]
    np.testing.assert_array_equal(seen["Wy"][new_at], src_wy[src_at])  # bit-identical, before the first step
    np.testing.assert_array_equal(seen["by"][new_at], src_by[src_at])
    np.testing.assert_array_equal(seen["acc"][new_at], src_acc[src_at])
    # non-item weights copied whole (the GRU's Wx is saved once, under the optimizer's variable list)
    wx = [k for k, shape in reader.get_variable_to_shape_map().items()
          if k.startswith("optimizer/variables_/") and shape == list(seen["Wx"].shape)]
    assert len(wx) == 1
    np.testing.assert_array_equal(seen["Wx"], reader.get_tensor(wx[0]))
    assert seen["step"] == int(get("optimizer/iterations"))
    fresh = GRU4Rec(cfg.model, len(new_items), seed=cfg.seed)  # new items: the model's own initializer
    new_only = [j for j, i in enumerate(new_items) if i not in src_items]
    np.testing.assert_array_equal(seen["Wy"][new_only], fresh.Wy.numpy()[new_only])
    assert not seen["by"][new_only].any() and not seen["acc"][new_only].any()
    # and it trains: both epochs, test evaluated, the carried rows moved
    assert metrics["status"] == "done" and len(metrics["epochs"]) == 2 and metrics["test"]["events"] > 0
    after = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(Path(cfg.output_dir) / "checkpoints/last")))
    assert not np.array_equal(after.get_tensor("model/Wy/.ATTRIBUTES/VARIABLE_VALUE"), seen["Wy"])


SLOW_CLI = slow_cli(0.1)


def test_a_warm_started_run_resumes_after_kill_9_like_any_other(source, warm, tmp_path):
    tmp, config, src = source
    cfg, want, _ = warm
    out = tmp_path / "killed"
    args = ["train", "--config", str(config), "--json", "--init-from", str(src), "--set", f"output_dir={out}"]
    for s in TARGET_WINDOW:
        args += ["--set", s]
    steps = json.loads((Path(cfg.output_dir) / "shards/train/manifest.json").read_text())["steps"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO))

    def mid_epoch() -> bool:
        done = sorted(int(p.name[5:-6]) for p in (out / "checkpoints/last").glob("ckpt-*.index"))
        return bool(done) and done[-1] >= 16 and done[-1] % steps != 0 and done[-1] < 2 * steps - 16

    kill_9_when(SLOW_CLI, args, env, mid_epoch)
    assert json.loads((out / "init_from.json").read_text())["items"] == want["init_from"]["items"]
    rerun = subprocess.run([sys.executable, "-m", "sbrjob"] + args, cwd=REPO, env=env, capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stderr and "warm start from" not in rerun.stderr  # its own checkpoint wins
    got = json.loads((out / "metrics.json").read_text())
    assert got["init_from"]["items"] == want["init_from"]["items"]
    assert [(e["epoch"], e["train_events"], e["valid"]) for e in got["epochs"]] == \
        [(e["epoch"], e["train_events"], e["valid"]) for e in want["epochs"]]
    assert got["test"] == want["test"]


def test_init_from_a_run_with_another_layer_size_is_refused_in_one_line(source, tmp_path):
    _, config, src = source
    r = cli("train", "--config", config, "--init-from", src, "--set", f"output_dir={tmp_path / 'x'}",
            "--set", "model.layers=[24]", *sum((["--set", s] for s in TARGET_WINDOW), []))
    assert r.exit_code == 2
    assert r.error.count("\n") == 0 and "cannot carry" in r.error and "[16] -> [24]" in r.error
    assert "source shape [" in r.error and ", 16]" in r.error and ", 24]" in r.error
    assert not (tmp_path / "x" / "checkpoints").exists()


def test_a_trained_run_refuses_another_start(source, warm):
    tmp, config, src = source
    cfg, _, _ = warm
    # the cold source cannot become warm-started afterwards
    r = cli("train", "--config", config, "--init-from", cfg.output_dir, "--set", f"output_dir={src}",
            *sum((["--set", s] for s in SOURCE_WINDOW), []))
    assert r.exit_code == 2 and "trained from scratch" in r.error
    # the warm run resumes as it started: another checkpoint of the source is refused, none given is fine
    args = ["train", "--config", config, "--set", f"output_dir={cfg.output_dir}",
            *sum((["--set", s] for s in TARGET_WINDOW), [])]
    r = cli(*args, "--init-from", src, "--init-checkpoint", "last")
    assert r.exit_code == 2 and "warm-started otherwise (checkpoint: 'best' -> 'last')" in r.error
    assert cli(*args).exit_code == 0  # complete: nothing to do


def test_vocabulary_map_counts():
    new_rows, src_rows, counts = warmstart.vocabulary_map(np.array(["a", "b", "c"]), np.array(["c", "d", "a"]))
    assert new_rows.tolist() == [0, 2] and src_rows.tolist() == [2, 0]
    assert counts == {"kept": 2, "new": 1, "dropped": 1}


def test_a_source_run_on_gcs_gives_the_same_warm_start(source, warm, gcs):
    """--init-from gs://...: the source's config, vocabulary and checkpoint read through storage.py."""
    from sbrjob import storage
    from sbrjob.optim import make_optimizer

    _, _, src = source
    cfg, _, seen = warm
    storage.sync_dir(src, f"{gcs}/source")
    remote = warmstart.open_source(f"{gcs}/source", "best")
    local = warmstart.open_source(str(src), "best")
    assert remote.item_ids.tolist() == local.item_ids.tolist() and remote.fingerprint == local.fingerprint
    new_ids = Prepared.open(str(Path(cfg.output_dir) / "data")).load_items()["item_id"].astype(str).to_numpy()
    want = seen["Wy"].copy()  # what the local warm start gave (before the spy sees this call too)
    model = GRU4Rec(cfg.model, len(new_ids), seed=cfg.seed)
    record = warmstart.apply(model, make_optimizer(cfg.train, model.trainable_variables), remote, new_ids)
    assert record["run"] == f"{gcs}/source"
    np.testing.assert_array_equal(model.Wy.numpy(), want)
