"""The runner choice, the Beam pipeline options and `--dry-run`, and the TFRecord framing that Beam
workers write without TensorFlow: none of this needs apache-beam installed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from sbrjob import beam_runner, tfrecord
from sbrjob.cli import app
from sbrjob.config import load_config
from sbrjob.errors import SbrjobError

REPO = Path(__file__).resolve().parents[1]
GS = ["--set", "output_dir=gs://b/run", "--set", "beam.project=proj", "--set", "beam.temp_location=gs://b/tmp",
      "--set", "beam.machine_type=n2-highmem-8", "--set", "beam.max_workers=25"]


def test_beam_modules_import_neither_tensorflow_nor_beam_at_import():
    """Beam workers never load TensorFlow; the CLI imports Apache Beam only when a pipeline runs."""
    code = ("import sys, sbrjob.beam_prepare, sbrjob.beam_export, sbrjob.beam_runner; "
            "print(sorted(m for m in ('tensorflow', 'apache_beam') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.stdout.strip() == "[]"


def test_tfrecord_framing_is_byte_identical_to_tensorflow(tmp_path):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    records = [b"", b"x", rng.bytes(1000), rng.bytes(70000)]
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as w:
        for r in records:
            w.write(r)
    with open(tmp_path / "plain.tfrecord", "wb") as fh:
        tfrecord.write_records(fh, records)
    assert (tmp_path / "plain.tfrecord").read_bytes() == (tmp_path / "tf.tfrecord").read_bytes()
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "plain.tfrecord"))] == records


def test_dataflow_dry_run_prints_the_options_from_the_config():
    res = CliRunner().invoke(app, ["prepare", "--config", "yoochoose", "--runner", "dataflow", "--dry-run", *GS,
                                   "--set", "data.path=gs://b/clicks.dat", "--set", "data.items_path=null"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    opts = out["pipeline_options"]
    assert out["runner"] == "dataflow" and opts["runner"] == "DataflowRunner"
    assert (opts["project"], opts["temp_location"], opts["machine_type"], opts["max_num_workers"]) == (
        "proj", "gs://b/tmp", "n2-highmem-8", 25)
    assert opts["job_name"] == "sbrjob-yoochoose-prepare"


def test_dataflow_refuses_local_paths_and_missing_project():
    cfg = load_config("tiny", ["beam.temp_location=gs://b/tmp"])
    with pytest.raises(SbrjobError) as err:
        beam_runner.pipeline_options(cfg, "dataflow", "export")
    assert "beam.project" in str(err.value) and "output_dir" in str(err.value)
    with pytest.raises(SbrjobError, match="beam.temp_location: must be a gs:// URL"):
        load_config("tiny", ["beam.temp_location=/tmp/x"])


def test_auto_uses_the_threshold_and_direct_runner_options():
    cfg = load_config("tiny", ["beam.auto_threshold_mb=10", "beam.direct_num_workers=3"])
    assert beam_runner.choose(cfg, "auto", 5_000_000) == "inprocess"
    big = beam_runner.choose(cfg, "auto", 50_000_000)
    assert big == ("beam" if beam_runner.beam_installed() else "inprocess")
    assert beam_runner.choose(cfg, None) == "inprocess"  # beam.runner's default
    assert beam_runner.pipeline_options(cfg, "beam", "prepare") == {
        "runner": "DirectRunner", "direct_num_workers": 3, "direct_running_mode": "multi_processing"}
    res = CliRunner().invoke(app, ["export", "--config", "tiny", "--runner", "auto", "--dry-run"])
    assert res.exit_code == 0 and json.loads(res.stdout)["runner"] == "inprocess"


@pytest.mark.skipif(beam_runner.beam_installed(), reason="apache-beam is installed here")
def test_beam_runner_without_beam_is_one_clear_error():
    with pytest.raises(SbrjobError, match=r"pip install 'sbrjob\[beam\]'"):
        beam_runner.choose(load_config("tiny"), "beam")


def test_a_time_window_is_refused_on_beam_rather_than_silently_ignored(tmp_path, monkeypatch):
    from sbrjob import beam_runner, stages
    from sbrjob.config import load_config
    from sbrjob.errors import SbrjobError
    from sbrjob.runs import Run

    monkeypatch.setattr(beam_runner, "require_beam", lambda runner: None)  # refused before Beam is needed
    cfg = load_config("tiny", [f"output_dir={tmp_path}", "data.until=2001-01-01"])
    with pytest.raises(SbrjobError, match="data.since / data.until: not applied by --runner beam"):
        stages.ensure_prepared(Run(cfg.output_dir), cfg, runner="beam")
    assert not (tmp_path / "data").exists()
