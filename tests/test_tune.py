"""`sbrjob tune`: the Optuna study, resuming, pruning, the space file, reports and the cloud spec.

Most tests drive the study with a small stand-in for `train` whose validation score is a known
function of the trial's values, so the study logic (what is optimised, what is counted, what is
written) is checked exactly and fast; `test_tiny_study_with_real_training` runs real training.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from typer.testing import CliRunner

from sbrjob import storage
from sbrjob import tune as T
from sbrjob import tune_vertex as V
from sbrjob.cli import app
from sbrjob.config import load_config
from sbrjob.errors import SbrjobError


def tiny(tmp_path: Path, *extra: str):
    return load_config("tiny", [f"output_dir={tmp_path / 'run'}", *extra])


class FakeTrain:
    """Stands in for `stages.train_stage` as tune calls it, `train_fn(cfg, on_epoch_end=hook)`:
    validation mrr@20 at epoch e is score(cfg) * (1 - 2**-e), test mrr@20 is 1 - score(cfg).
    Like the real loop it calls the hook after every epoch, stops when the hook says so, and
    writes metrics.json."""

    def __init__(self, score, interrupt_at: int | None = None):
        self.score, self.interrupt_at, self.calls = score, interrupt_at, []

    @property
    def trials(self):
        """The config of each trial, in the order the trials ran."""
        out = {}
        for c in self.calls:
            out[c.output_dir] = c
        return list(out.values())

    def __call__(self, cfg, on_epoch_end):
        self.calls.append(cfg)
        if self.interrupt_at is not None and len(self.trials) == self.interrupt_at:
            raise KeyboardInterrupt
        q, epochs = self.score(cfg), []
        for e in range(1, cfg.train.epochs + 1):
            valid = {"recall@20": min(1.0, 2 * q * (1 - 2 ** -e)), "mrr@20": q * (1 - 2 ** -e)}
            epochs.append({"epoch": e, "valid": valid, "train_events_per_s": 1000.0 * e})
            if on_epoch_end(e, epochs[-1]):
                break
        best = max(epochs, key=lambda r: r["valid"]["mrr@20"])
        metrics = {"epochs": epochs, "best_epoch": best["epoch"], "test": {"recall@20": 1 - q, "mrr@20": 1 - q}}
        storage.write_text(cfg.metrics_path, json.dumps(metrics))  # local or gs://
        return metrics


def lr_score(cfg):
    return cfg.train.lr  # higher learning rate = better validation (and worse test, by construction)


def write_space(tmp_path: Path, text: str) -> str:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return str(p)


def test_three_trial_study_reports_and_optimises_validation_only(tmp_path):
    cfg = tiny(tmp_path)
    fake = FakeTrain(lr_score)
    out = T.tune(cfg, trials=3, train_fn=fake, echo=lambda s: None)
    tune_dir = tmp_path / "run" / "tune"

    assert len(fake.trials) == 3 and out["finished"] == 3
    # one training call per trial, all its epochs in it
    assert [c.train.epochs for c in fake.calls] == [2] * 3
    dirs = sorted(Path(c.output_dir).name for c in fake.trials)
    assert dirs == ["trial-000", "trial-001", "trial-002"]
    assert all((tune_dir / d / "metrics.json").exists() for d in dirs)
    # each trial ran with the values the study suggested for it
    study = optuna.load_study(study_name=cfg.name, storage=f"sqlite:///{tune_dir / 'study.db'}")
    for t, c in zip(study.trials, fake.trials):
        assert c.train.lr == pytest.approx(t.params["train.lr"])
        assert c.model.layers == [t.params["model.layers"]]
        assert c.export.batch_size == t.params["export.batch_size"]
        assert "train.bpreg" not in t.params  # xe loss: bpreg is not part of its space
    # the best is chosen by validation (highest lr) although its test score is the lowest
    best_lr = max(c.train.lr for c in fake.trials)
    assert out["best"]["params"]["train.lr"] == pytest.approx(best_lr)
    assert out["best"]["test"]["mrr@20"] == pytest.approx(1 - best_lr)

    rows = list(csv.DictReader((tune_dir / "leaderboard.csv").open()))
    assert [float(r["valid_mrr@20"]) for r in rows] == pytest.approx(
        sorted((0.75 * c.train.lr for c in fake.trials), reverse=True))
    assert {"test_mrr@20", "test_recall@20", "valid_recall@20", "events_per_s", "train.lr"} <= set(rows[0])
    assert float(rows[0]["events_per_s"]) == pytest.approx(1500.0)  # mean over the 2 epochs
    assert json.loads((tune_dir / "leaderboard.json").read_text())[0]["trial"] == out["best"]["trial"]
    assert (tune_dir / "tune_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import matplotlib.image

    curves = matplotlib.image.imread(tune_dir / "tune_intermediate.png")  # optuna's per-epoch plot
    assert curves.shape[1] > 500 and len(np.unique(curves.reshape(-1, curves.shape[-1]), axis=0)) > 20

    best = load_config(str(tune_dir / "best.yaml"))
    assert best.train.lr == pytest.approx(best_lr)
    assert best.output_dir == str(tmp_path / "run" / "tuned")
    assert (best.data, best.split, best.eval) == (cfg.data, cfg.split, cfg.eval)


def test_the_configs_own_values_are_trial_zero_when_inside_the_space(tmp_path):
    cfg = tiny(tmp_path)  # tiny: layers [32], batch 16, lr 0.1, momentum 0.3, ...
    space = write_space(tmp_path, "model.layers: {low: 16, high: 64, step: 16}\n"
                                  "export.batch_size: {low: 16, high: 64, step: 16}\n")
    fake = FakeTrain(lr_score)
    out = T.tune(cfg, trials=2, space=space, train_fn=fake, echo=lambda s: None)
    first = fake.trials[0]
    assert (first.model, first.train, first.export) == (cfg.model, cfg.train, cfg.export)
    assert out["finished"] == 2 and fake.trials[1].train.lr != cfg.train.lr
    # outside the space (default layers 64-512): nothing to start from
    params, pinned = T.resolve_space(cfg)
    assert T.incumbent(cfg, params, pinned) is None


def test_resume_counts_finished_trials_and_reruns_the_interrupted_one(tmp_path):
    cfg = tiny(tmp_path)
    first = FakeTrain(lr_score, interrupt_at=3)
    with pytest.raises(KeyboardInterrupt):
        T.tune(cfg, trials=4, train_fn=first, echo=lambda s: None)
    assert len(first.trials) == 3
    interrupted_lr = first.trials[2].train.lr

    second = FakeTrain(lr_score)
    out = T.tune(cfg, trials=4, train_fn=second, echo=lambda s: None)
    # 2 finished before: 2 more run, the first of them with the interrupted trial's values
    assert len(second.trials) == 2 and out["finished"] == 4
    assert second.trials[0].train.lr == pytest.approx(interrupted_lr)

    third = FakeTrain(lr_score)
    T.tune(cfg, trials=4, train_fn=third, echo=lambda s: None)
    assert third.calls == []  # already done: only the reports are rewritten
    states = [r["state"] for r in json.loads((tmp_path / "run/tune/leaderboard.json").read_text())]
    assert states.count("complete") == 4 and states.count("fail") == 1


def test_clearly_bad_trial_is_pruned_after_its_first_epoch(tmp_path):
    cfg = tiny(tmp_path, "train.epochs=4")
    space = lr_only_study(tmp_path, cfg, (0.3, 0.25, 0.2, 0.011))
    fake = FakeTrain(lr_score)
    out = T.tune(cfg, trials=4, space=space, train_fn=fake, echo=lambda s: None)
    epochs_run = [len(json.loads((Path(c.output_dir) / "metrics.json").read_text())["epochs"]) for c in fake.trials]
    assert epochs_run == [4, 4, 4, 1]  # the 4th is below the lower quartile after epoch 1: stopped
    rows = {r["trial"]: r for r in out["leaderboard"]}
    assert [rows[i]["state"] for i in range(4)] == ["complete"] * 3 + ["pruned"]
    assert out["best"]["trial"] == 0


def test_study_with_output_dir_on_gs_resumes_from_the_bucket(gcs, tmp_path):
    cfg = load_config("tiny", [f"output_dir={gcs}/run"])
    first = FakeTrain(lr_score)
    T.tune(cfg, trials=2, train_fn=first, echo=lambda s: None)
    files = storage.list_files(f"{gcs}/run/tune")
    assert {"study.db", "leaderboard.csv", "leaderboard.json", "best.yaml", "tune_report.png",
            "trial-000/metrics.json", "trial-001/metrics.json"} <= set(files)
    second = FakeTrain(lr_score)
    out = T.tune(cfg, trials=3, train_fn=second, echo=lambda s: None)  # the study comes back from gs://
    assert len(second.trials) == 1 and out["finished"] == 3
    assert second.trials[0].output_dir == f"{gcs}/run/tune/trial-002"


def test_a_trial_is_never_pruned_after_its_last_epoch(tmp_path):
    cfg = tiny(tmp_path, "train.epochs=1")  # pruning could save nothing: the trial has finished
    space = lr_only_study(tmp_path, cfg, (0.3, 0.25, 0.2, 0.011))
    out = T.tune(cfg, trials=4, space=space, train_fn=FakeTrain(lr_score), echo=lambda s: None)
    assert [r["state"] for r in out["leaderboard"]] == ["complete"] * 4


def lr_only_study(tmp_path: Path, cfg, lrs) -> str:
    """A space that searches only train.lr, and a study whose next trials are the given lrs."""
    space = write_space(tmp_path, "train.lr: {low: 0.01, high: 0.5}\n" + "".join(
        f"{k}: null\n" for k in T.DEFAULT_SPACE if k != "train.lr"))
    study = optuna.create_study(study_name=cfg.name, direction="maximize",
                                storage=f"sqlite:///{_mk(tmp_path / 'run/tune')}/study.db")
    for lr in lrs:
        study.enqueue_trial({"train.lr": lr})
    return space


def _mk(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def test_space_file_overrides_default_key_by_key(tmp_path):
    cfg = tiny(tmp_path, "train.loss=bpr-max")
    params, pinned = T.resolve_space(cfg, write_space(tmp_path, (
        "train.lr: {low: 0.02, high: 0.08, log: true}\n"
        "model.dropout_embedding: 0.1\n"
        "train.momentum: null\n"
        "train.loss: {choices: [xe, bpr-max]}\n")))
    by_key = {p.key: p for p in params}
    assert (by_key["train.lr"].low, by_key["train.lr"].high, by_key["train.lr"].log) == (0.02, 0.08, True)
    assert "train.momentum" not in by_key and "model.dropout_embedding" not in by_key
    assert pinned == {"model.dropout_embedding": 0.1}
    assert by_key["model.layers"].kind == "int" and by_key["train.loss"].kind == "categorical"
    assert params[-1].when  # conditional parameters are suggested after the keys they depend on

    # defaults per loss: bpreg only for BPR-max, no sample_alpha for full softmax
    assert "train.bpreg" in {p.key for p in params if p.is_active(cfg.to_dict())}
    softmax = tiny(tmp_path, "train.loss=softmax").to_dict()
    active = {p.key for p in T.resolve_space(tiny(tmp_path, "train.loss=softmax"))[0] if p.is_active(softmax)}
    assert "train.sample_alpha" not in active and "train.bpreg" not in active and "train.lr" in active


def test_local_space_is_a_neighbourhood_of_the_config_that_holds_it_as_trial_zero(tmp_path):
    cfg = load_config("yoochoose", [f"output_dir={tmp_path / 'run'}", "model.layers=[128]", "export.batch_size=256",
                                    "train.lr=0.1055", "model.dropout_embedding=0.4191", "model.dropout_hidden=0.1092"])
    params, pinned = T.resolve_space(cfg, "local")
    by_key = {p.key: p for p in params}
    assert (by_key["model.layers"].low, by_key["model.layers"].high, by_key["model.layers"].step) == (96, 192, 32)
    assert (by_key["export.batch_size"].low, by_key["export.batch_size"].high) == (128, 256)  # 256: the default's top
    assert by_key["train.lr"].log and by_key["train.lr"].low == pytest.approx(0.1055 / 2)
    assert by_key["train.lr"].high == pytest.approx(0.211)
    assert by_key["model.dropout_hidden"].low == 0.0  # 0.1092 - 0.15, clipped
    assert by_key["model.dropout_embedding"].high == pytest.approx(0.4191 + 0.15)
    assert not pinned
    start = T.incumbent(cfg, params, pinned)  # the config itself lies on every grid: it is trial 000
    assert start["model.layers"] == 128 and start["export.batch_size"] == 256 and start["train.lr"] == 0.1055
    ml = load_config("movielens", [f"output_dir={tmp_path / 'ml'}", "model.layers=[224]", "export.batch_size=96"])
    ml_params = {p.key: p for p in T.resolve_space(ml, "local")[0]}
    assert (ml_params["model.layers"].low, ml_params["model.layers"].high) == (192, 320)
    assert (ml_params["export.batch_size"].low, ml_params["export.batch_size"].high) == (64, 96)
    assert T.incumbent(ml, list(ml_params.values()), {}) is not None


@pytest.mark.parametrize("text, expected", [
    ("train.lrate: {low: 0.01, high: 0.1}\n", "train.lrate: unknown key"),
    ("split.test_fraction: {low: 0.1, high: 0.2}\n", "split.test_fraction: unknown key"),
    ("train.lr: {low: 0.01, hi: 0.1}\n", "train.lr: unknown field(s) ['hi']"),
    ("train.lr: {low: 0.2, high: 0.1}\n", "train.lr: low (0.2) must be below high (0.1)"),
    ("model.dropout_hidden: {low: 0.0, high: 1.0}\n", "model.dropout_hidden"),
    ("export.batch_size: {low: 32, high: 100.5}\n", "integer setting"),
    ("train.loss: {low: 0, high: 1}\n", "choices"),
    ("train.bpreg: {low: 0, high: 2, when: {train.los: bpr-max}}\n", "train.los: unknown config key"),
    ("- train.lr\n", "mapping"),
    ("train.lr: [0.01\n", "not valid YAML"),
])
def test_space_file_errors_name_the_file_and_key(tmp_path, text, expected):
    path = write_space(tmp_path, text)
    with pytest.raises(SbrjobError) as err:
        T.resolve_space(tiny(tmp_path), path)
    assert str(path) in str(err.value) and expected in str(err.value)
    assert "\n" not in str(err.value)


def test_cloud_trial_writes_the_hypertune_metric_file(tmp_path, monkeypatch):
    metric_file = tmp_path / "hp" / "output.metrics"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(metric_file))
    monkeypatch.setenv("CLOUD_ML_TRIAL_ID", "7")
    fake = FakeTrain(lr_score)
    out = V.cloud_trial(["--config", "tiny", "--set", f"output_dir={tmp_path / 'run'}",
                         "--train.lr=0.05", "--model.layers", "96.0", "--train.loss=bpr-max",
                         "--train.deterministic=False"], train_fn=fake)
    (cfg,) = fake.trials
    assert (cfg.train.lr, cfg.model.layers, cfg.train.loss) == (0.05, [96], "bpr-max")
    assert cfg.train.deterministic is False
    assert cfg.output_dir == str(tmp_path / "run" / "tune" / "trial-007")
    lines = [json.loads(line) for line in metric_file.read_text().splitlines()]
    # one measurement per epoch, then the best validation value (what the service optimises)
    assert [line["global_step"] for line in lines] == ["1", "2", "2"]
    assert all(line["trial"] == "7" and set(line) == {"timestamp", "trial", "valid_mrr_at_20", "global_step",
                                                      "checkpoint_path"} for line in lines)
    assert float(lines[-1]["valid_mrr_at_20"]) == pytest.approx(0.05 * 0.75) == out["valid_mrr_at_20"]
    with pytest.raises(SbrjobError, match="--train.lrate: unknown option"):
        V.cloud_trial(["--config", "tiny", "--train.lrate=0.1"], train_fn=fake)


def test_hypertune_file_keeps_the_last_100_entries(tmp_path, monkeypatch):
    path = tmp_path / "m"
    monkeypatch.setenv("CLOUD_ML_HP_METRIC_FILE", str(path))
    for step in range(105):
        V.report_hypertune("valid_mrr_at_20", step / 1000, step)
    lines = path.read_text().splitlines()
    assert len(lines) == 100 and json.loads(lines[0])["global_step"] == "5"


def test_dry_run_prints_a_vertex_tuning_job(tmp_path):
    space = write_space(tmp_path, "train.loss: {choices: [xe, bpr-max]}\nmodel.dropout_embedding: 0.25\n")
    result = CliRunner().invoke(app, ["tune", "-c", "tiny", "--set", "output_dir=gs://bucket/runs/tiny",
                                      "--trials", "40", "--space", space, "--dry-run", "--image", "img:1",
                                      "--parallel", "4"])
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert (job["maxTrialCount"], job["parallelTrialCount"]) == (40, 4)
    study = job["studySpec"]
    assert study["metrics"] == [{"metricId": "valid_mrr_at_20", "goal": "MAXIMIZE"}]
    params = {p["parameterId"]: p for p in study["parameters"]}
    assert params["train.lr"]["doubleValueSpec"] == {"minValue": 0.01, "maxValue": 0.25}
    assert params["train.lr"]["scaleType"] == "UNIT_LOG_SCALE"
    assert params["export.batch_size"]["discreteValueSpec"]["values"][:3] == [32.0, 48.0, 64.0]
    # loss-specific parameters become conditional children of the loss
    children = {c["parameterSpec"]["parameterId"]: c for c in params["train.loss"]["conditionalParameterSpecs"]}
    assert set(children) == {"train.bpreg", "train.sample_alpha"}
    assert children["train.bpreg"]["parentCategoricalValues"] == {"values": ["bpr-max"]}
    assert children["train.sample_alpha"]["parentCategoricalValues"] == {"values": ["xe", "bpr-max", "top1-max"]}
    assert "train.bpreg" not in params and "model.dropout_embedding" not in params
    container = job["trialJobSpec"]["workerPoolSpecs"][0]["containerSpec"]
    assert container["imageUri"] == "img:1"
    assert container["command"] == ["python", "-m", "sbrjob.tune_vertex"]
    assert container["args"] == ["--config", "tiny", "--set", "output_dir=gs://bucket/runs/tiny",
                                 "--set", "model.dropout_embedding=0.25"]
    # what the service will append parses back into a trial
    config, overrides, values = V._parse_trial_args(container["args"] + ["--train.bpreg=1.5"])
    assert (config, values) == ("tiny", {"train.bpreg": "1.5"})


def test_dry_run_refuses_a_local_output_dir(tmp_path):
    result = CliRunner().invoke(app, ["tune", "-c", "tiny", "--set", f"output_dir={tmp_path}",
                                      "--dry-run", "--image", "img:1"])
    assert result.exit_code != 0 and "gs://" in str(result.exception)


def test_fixed_loss_decides_conditionals_in_the_vertex_spec(tmp_path):
    job, upload = V.vertex_tuning_job("tiny", 10, overrides=["output_dir=gs://b/r", "train.loss=bpr-max"], image="img")
    ids = [p["parameterId"] for p in job["studySpec"]["parameters"]]
    assert "train.bpreg" in ids and "train.sample_alpha" in ids and upload is None
    xe, _ = V.vertex_tuning_job("tiny", 10, overrides=["output_dir=gs://b/r"], image="img")
    assert "train.bpreg" not in [p["parameterId"] for p in xe["studySpec"]["parameters"]]


@pytest.mark.slow
def test_tiny_study_with_real_training_and_best_yaml_round_trip(tmp_path):
    from sbrjob.stages import train_stage

    cfg = tiny(tmp_path, "train.epochs=1", "train.refit=true")
    space = write_space(tmp_path, (  # small models and a fixed batch: trials share prepared data AND shards
        "model.layers: {low: 16, high: 48, step: 16}\n"
        "export.batch_size: null\n"))
    out = T.tune(cfg, trials=3, space=space, echo=lambda s: None)
    run = tmp_path / "run"
    trial_dirs = sorted((run / "tune").glob("trial-*"))
    assert [d.name for d in trial_dirs] == ["trial-000", "trial-001", "trial-002"]
    for d in trial_dirs:
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["status"] == "done" and metrics["test"]["events"] > 0
        assert (d / "data").resolve() == (run / "data").resolve()  # prepared once, in the parent
        assert "refit" not in metrics and not (d / "refit").exists()  # trials are judged on valid: no refit
    assert len({(d / "shards").resolve() for d in trial_dirs}) == 1  # exported once, then linked
    rows = out["leaderboard"]
    assert all(r["state"] == "complete" and r["events_per_s"] > 0 and 0 <= r["test_mrr@20"] <= 1 for r in rows)
    best_row = rows[0]
    assert best_row["valid_mrr@20"] == max(r["valid_mrr@20"] for r in rows)

    best = load_config(str(run / "tune" / "best.yaml"), [f"output_dir={tmp_path / 'retrain'}"])
    assert best.model.layers == [best_row["model.layers"]] and best.train.lr == pytest.approx(best_row["train.lr"])
    assert best.train.refit  # the winner is trained as the config says
    best.train.refit = False
    again, _ = train_stage(best)
    # same config + seed -> the same validation score as the trial that chose it
    assert again["epochs"][-1]["valid"]["mrr@20"] == pytest.approx(best_row["valid_mrr@20"], rel=1e-6)
