"""What a person watching `sbrjob train` without a terminal sees: stage lines, one line per epoch,
a closing summary, no control characters and no TensorFlow start-up noise; the curves image."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from sbrjob.config import explain
from sbrjob.errors import SbrjobError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("watch") / "run"
    # what a user's shell has: neither of the variables the CLI sets for TensorFlow
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    proc = subprocess.run([sys.executable, "-m", "sbrjob", "train", "-c", "tiny", "--set", f"output_dir={out}",
                           "--set", "train.epochs=3"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout, proc.stderr


def test_non_tty_train_prints_stage_lines_epoch_lines_and_a_summary(trained):
    out, stdout, stderr = trained
    lines = stderr.strip().splitlines()
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", stdout + stderr)  # no \r bars, no colours
    # no oneDNN / absl / cpu_feature_guard chatter from TensorFlow's C++ start-up
    assert not [x for x in lines if re.search(r"oneDNN|absl|cpu_feature_guard|^[IWE]\d{4} ", x)], lines
    assert lines[0].startswith("prepare: ") and f"-> {out}/data" in lines[0]
    assert any(x.startswith("export: ") and "pairs on" in x for x in lines)
    assert any(x.startswith(f"train: {out}/shards/train -> {out}/checkpoints") for x in lines)
    epochs = [x for x in lines if re.match(r"epoch \d+/\d+  ", x)]  # not a slow epoch's "epoch 1/3: " progress line
    assert len(epochs) == 3 and all(re.search(r"valid mrr@20 0\.\d{4} \((best|best 0\.\d{4} at epoch \d)\)", x)
                                    for x in epochs), epochs
    assert "ETA" in epochs[0] and "ETA" not in epochs[-1]
    metrics = json.loads((out / "metrics.json").read_text())
    summary = stdout.strip().splitlines()
    assert summary[0].startswith(f"best epoch {metrics['best_epoch']} of 3: valid mrr@20 ")
    assert f"mrr@20 {metrics['test']['mrr@20']:.4f}" in summary[1]
    assert summary[2].startswith(f"run: {out}") and summary[3].startswith("next: sbrjob evaluate --run")


def test_throughput_is_steady_state_with_tracing_reported_apart(trained):
    out, _, _ = trained
    epochs = json.loads((out / "metrics.json").read_text())["epochs"]
    first = epochs[0]
    assert first["first_block_seconds"] > 0 and all("first_block_seconds" not in e for e in epochs[1:])
    overall = first["train_events"] / first["train_seconds"]  # what the first epoch's figure used to be
    assert first["train_events_per_s"] > overall


def test_training_curves_image_is_written_and_not_trivial(trained, tmp_path):
    out, _, _ = trained
    png = (out / "training_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import matplotlib.image

    pixels = matplotlib.image.imread(out / "training_curves.png")
    assert pixels.shape[0] > 200 and pixels.shape[1] > 600
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 20  # lines, bars, text: not blank


def test_config_explain_prints_the_schema_comment():
    text = explain("train.patience")
    assert text.startswith("train.patience: int = 0") and "early stopping" in text
    assert explain("data.format").startswith("data.format: one of movielens|yoochoose|gru4rec|table|sample")
    assert explain("sessions.gap").startswith("sessions.gap: float or null = None")
    with pytest.raises(SbrjobError, match=r"train\.lrr: unknown key \(did you mean 'train\.lr'\?\)"):
        explain("train.lrr")


def test_verbose_keeps_tensorflow_and_debug_logs(monkeypatch):
    import logging

    import tensorflow as tf
    from typer.testing import CliRunner

    from sbrjob.cli import app

    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")  # what the CLI sets by default
    assert CliRunner().invoke(app, ["config", "--explain", "seed"]).exit_code == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "2" and logging.getLogger("sbrjob").level == logging.INFO
    assert not tf.get_logger().isEnabledFor(logging.WARNING)  # e.g. "triggered tf.function retracing"
    assert CliRunner().invoke(app, ["--verbose", "config", "--explain", "seed"]).exit_code == 0
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0" and logging.getLogger("sbrjob").level == logging.DEBUG
    assert tf.get_logger().isEnabledFor(logging.WARNING)
    logging.getLogger("sbrjob").setLevel(logging.INFO)
    tf.get_logger().setLevel(logging.NOTSET)
