"""`kill -9` in the middle of an epoch, re-run the same command: same final metrics as an uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from sbrjob.config import load_config
from sbrjob.errors import SbrjobError
from sbrjob.runs import load_trained
from sbrjob.stages import train_stage

from conftest import kill_9_when, slow_cli

REPO = Path(__file__).resolve().parents[1]
SETTINGS = ["train.checkpoint_every_steps=8", "train.epochs=2", "train.keep_checkpoints=2"]
SLOW_CLI = slow_cli(0.05)


def cli_args(out):
    args = ["train", "--config", "tiny", "--json", "--set", f"output_dir={out}"]
    for s in SETTINGS:
        args += ["--set", s]
    return args


def checkpoint_steps(out: Path) -> list[int]:
    return sorted(int(p.name[len("ckpt-"):-len(".index")]) for p in (out / "checkpoints/last").glob("ckpt-*.index"))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("resume") / "whole"
    cfg = load_config("tiny", [f"output_dir={out}"] + SETTINGS)
    return out, train_stage(cfg)[0]


def test_kill_9_mid_epoch_and_rerun_gives_the_same_metrics(uninterrupted, tmp_path):
    whole, want = uninterrupted
    out = tmp_path / "killed"
    out.mkdir()
    for stage in ("data", "shards"):  # reuse the prepared data and shards: identical bytes, less waiting
        shutil.copytree(whole / stage, out / stage)
    steps_per_epoch = json.loads((whole / "shards/train/manifest.json").read_text())["steps"]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")

    def in_epoch_2() -> bool:
        done = checkpoint_steps(out) if (out / "checkpoints/last").is_dir() else []
        return bool(done) and steps_per_epoch + 40 <= done[-1] < 2 * steps_per_epoch - 40

    kill_9_when(SLOW_CLI, cli_args(out), env, in_epoch_2)
    partial = json.loads((out / "metrics.json").read_text())
    assert partial["status"] == "training" and len(partial["epochs"]) == 1  # killed in epoch 2
    # the last checkpoint the manager committed (its `checkpoint` file): a kill while the next one was
    # being written leaves newer ckpt files that must not be trusted
    killed_at = int(tf.train.latest_checkpoint(str(out / "checkpoints/last")).rsplit("-", 1)[1])
    assert steps_per_epoch < killed_at < 2 * steps_per_epoch

    rerun = subprocess.run([sys.executable, "-m", "sbrjob"] + cli_args(out), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"resuming from {out}/checkpoints/last/ckpt-{killed_at}" in rerun.stderr
    got = json.loads((out / "metrics.json").read_text())
    assert got["status"] == "done" and json.loads(rerun.stdout)["test"] == got["test"]
    for a, b in zip(got["epochs"], want["epochs"]):
        assert (a["epoch"], a["train_events"], a["valid"]) == (b["epoch"], b["train_events"], b["valid"])
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9)
    assert got["test"] == want["test"] and got["best_epoch"] == want["best_epoch"]


def test_load_trained_restores_best_and_last(uninterrupted):
    whole, metrics = uninterrupted
    best = load_trained(str(whole), "best")
    cfg, model, items = best.cfg, best.model, best.items
    assert cfg.name == "tiny" and model.n_items == len(items)
    last = load_trained(str(whole), "last").model
    path = tf.train.latest_checkpoint(str(whole / "checkpoints/last"))
    by_path = load_trained(str(whole), path).model
    np.testing.assert_array_equal(by_path.Wy.numpy(), last.Wy.numpy())
    h = tf.random.normal([2, cfg.model.layers[-1]], seed=1)
    assert model.item_scores(h).shape == (2, len(items))
    with pytest.raises(SbrjobError, match="not found"):
        load_trained(str(whole / "nothing-here"), "best")


KILL_AFTER_BEST = r"""
import os, signal, sys
from sbrjob import train
target = int(sys.argv[1])
save = train.Checkpoints.save
def save_then_die(self, which, step):
    save(self, which, step)
    if which == "best" and step == target:  # killed between the best and the last save of that epoch
        os.kill(os.getpid(), signal.SIGKILL)
train.Checkpoints.save = save_then_die
from sbrjob.cli import run
sys.argv = ["sbrjob"] + sys.argv[2:]
run()
"""


def test_kill_9_between_the_best_and_the_last_save_keeps_best_and_metrics_consistent(uninterrupted, tmp_path):
    whole, want = uninterrupted
    out = tmp_path / "killed"
    out.mkdir()
    for stage in ("data", "shards"):
        shutil.copytree(whole / stage, out / stage)
    steps_per_epoch = json.loads((whole / "shards/train/manifest.json").read_text())["steps"]
    best_step = want["best_epoch"] * steps_per_epoch  # the save of an improving epoch's end
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    killed = subprocess.run([sys.executable, "-c", KILL_AFTER_BEST, str(best_step)] + cli_args(out), cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(out / "checkpoints/last")))
    best = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(out / "checkpoints/best")))
    epochs_done = lambda r: int(r.get_tensor("progress/epoch/.ATTRIBUTES/VARIABLE_VALUE"))  # noqa: E731
    assert epochs_done(last) == want["best_epoch"] - 1 and epochs_done(best) == want["best_epoch"]

    rerun = subprocess.run([sys.executable, "-m", "sbrjob"] + cli_args(out), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    got = json.loads((out / "metrics.json").read_text())
    assert got["best_epoch"] == want["best_epoch"] and got["test"] == want["test"]  # the best epoch's weights


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_an_unreadable_newest_checkpoint_falls_back_to_the_previous_one(uninterrupted, tmp_path, damage):
    from sbrjob import runs

    whole, want = uninterrupted
    out = tmp_path / "run"
    shutil.copytree(whole, out, ignore=shutil.ignore_patterns(".lock"))
    newest = tf.train.latest_checkpoint(str(out / "checkpoints/last"))
    (data,) = Path(out / "checkpoints/last").glob(Path(newest).name + ".data-*")
    blob = bytearray(data.read_bytes())
    if damage == "truncate":
        data.write_bytes(bytes(blob[: len(blob) // 2]))
    else:
        blob[len(blob) // 3] ^= 0xFF
        data.write_bytes(bytes(blob))
    assert runs.readable(newest) is not None
    previous = runs.find_checkpoint(runs.Run(str(out)), "last")
    assert previous != newest and runs.readable(previous) is None
    # a resumed run (one epoch more) restores the previous checkpoint and trains on from there
    cfg = load_config("tiny", [f"output_dir={out}"] + SETTINGS + ["train.epochs=3"])
    got, complete = train_stage(cfg)
    assert not complete and [e["epoch"] for e in got["epochs"]] == [1, 2, 3]
    for a, b in zip(got["epochs"][:2], want["epochs"]):  # the redone part of epoch 2 matches exactly
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-9) and a["valid"] == b["valid"]
