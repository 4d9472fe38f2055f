"""train.refit and the fidelity switches' defaults (issue #14): the final model trained on train +
valid for the epoch count chosen on valid; runs written before a changed default keep their values."""

from __future__ import annotations

import json

import pytest
import yaml

from sbrjob import stages
from sbrjob.config import load_config
from sbrjob.runs import Run

from conftest import cli


def test_refit_trains_the_best_epoch_count_on_train_plus_valid_and_is_added_to_a_finished_run(tmp_path):
    out = tmp_path / "run"
    base = ["-c", "tiny", "--set", f"output_dir={out}", "--set", "train.epochs=2"]
    first = cli("train", *base)
    assert first.exit_code == 0, first.output
    main = json.loads((out / "metrics.json").read_text())
    assert "refit" not in main and not (out / "refit").exists()
    checkpoints = sorted(p.name for p in (out / "checkpoints" / "last").iterdir())

    second = cli("train", *base, "--set", "train.refit=true")  # a resumable key: the run is not retrained
    assert second.exit_code == 0, second.output
    assert sorted(p.name for p in (out / "checkpoints" / "last").iterdir()) == checkpoints
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == main["epochs"]
    refit = metrics["refit"]
    assert refit["status"] == "done" and refit["epochs"] == main["best_epoch"]
    assert refit["run"] == str(out / "refit") and f"final model: {out / 'refit'}" in second.stdout

    refit_run = Run(str(out / "refit"))
    cfg = refit_run.saved_config()
    assert cfg.split.merge_valid and cfg.train.epochs == main["best_epoch"] and not cfg.train.refit
    shards = {s: json.loads((out / "refit" / "shards" / s / "manifest.json").read_text()) for s in ("train", "valid")}
    own = {s: json.loads((out / "shards" / s / "manifest.json").read_text()) for s in ("train", "valid")}
    assert shards["valid"]["pairs"] == 0  # the valid period is training data now
    assert shards["train"]["pairs"] == own["train"]["pairs"] + own["valid"]["pairs"]
    assert refit["train_events"] == shards["train"]["pairs"]
    refit_metrics = json.loads((out / "refit" / "metrics.json").read_text())
    assert all("valid" not in r for r in refit_metrics["epochs"])
    assert refit["test"]["mrr@20"] == refit_metrics["test"]["mrr@20"]
    # the test split is the same sessions; only targets unknown to the smaller vocabulary may differ
    assert refit["test"]["events"] >= main["test"]["events"]

    again = cli("train", *base, "--set", "train.refit=true")
    assert again.exit_code == 0 and "is complete" in again.output
    used = cli("evaluate", "--run", str(out / "refit"))
    assert used.exit_code == 0, used.output
    assert json.loads(used.stdout)["mrr@20"] == pytest.approx(refit["test"]["mrr@20"], abs=1e-6)


def test_refit_config_folds_valid_into_train_and_other_splits_are_accepted(tmp_path):
    assert load_config("tiny", ["train.refit=true", "split.valid_fraction=0"]).train.refit  # skipped, warned
    given = load_config("yoochoose", ["train.refit=true", "split.scheme=given", "data.format=gru4rec",
                                      "data.test_path=x.txt"])  # the given files are trained as they are
    assert given.train.refit  # train_stage skips the refit with a warning
    cfg = load_config("yoochoose", ["train.refit=true"])
    refit = stages.refit_config(cfg, 3)
    assert (refit.split.merge_valid, refit.train.epochs, refit.train.patience) == (True, 3, 0)
    assert refit.output_dir.endswith("/refit") and not cfg.split.merge_valid  # the original is untouched


def test_a_run_config_written_before_a_changed_default_keeps_the_old_behaviour(tmp_path):
    cfg = load_config("tiny", [f"output_dir={tmp_path}"])
    assert cfg.train.logq_form == "official" and cfg.model.carry_dropout is True
    raw = cfg.to_dict()
    del raw["train"]["logq_form"], raw["model"]["carry_dropout"]  # as a run trained before these keys
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(raw))
    old = Run(str(tmp_path)).saved_config()
    assert old.train.logq_form == "normalized" and old.model.carry_dropout is False


@pytest.mark.parametrize("loss, want", [("bpr-max", "elu"), ("top1-max", "elu"), ("xe", "linear"),
                                        ("softmax", "linear")])
def test_final_activation_auto_is_the_official_elu_for_the_ranking_losses(loss, want):
    cfg = load_config("tiny", [f"train.loss={loss}"])
    assert cfg.model.final_activation == want and cfg.model.elu_param == 0.5
    assert load_config("tiny", [f"train.loss={loss}", "model.final_activation=linear"]).model.final_activation == "linear"


@pytest.mark.parametrize("scheme, sets", [("fraction", ["split.scheme=fraction"]),
                                          ("days", ["split.scheme=days", "split.test_days=2", "split.valid_days=2"])])
def test_drop_test_scores_on_the_valid_period_and_carves_a_new_valid_before_it(scheme, sets):
    import numpy as np

    from sbrjob.prepare import Log, assign_splits

    rng = np.random.default_rng(0)
    n = 400
    lengths = rng.integers(2, 6, n)
    start = np.sort(rng.uniform(0, 40 * 86400, n))
    t = np.concatenate([s + np.arange(k) * 60.0 for s, k in zip(start, lengths)])
    session = np.repeat(np.arange(n), lengths)
    log = Log(session, np.zeros(len(t), np.int32), np.arange(1), t, None)
    cfg = load_config("tiny", sets)
    normal = assign_splits(log, cfg.split)
    cfg.split.drop_test = True
    shifted = assign_splits(log, cfg.split)
    assert (shifted == 3).sum() == (normal == 2).sum() > 0  # the real test period is dropped whole
    np.testing.assert_array_equal(shifted == 3, normal == 2)
    np.testing.assert_array_equal(shifted == 2, normal == 1)  # the valid period is now scored as test
    assert (shifted == 1).sum() > 0 and not ((shifted == 1) & (normal != 0)).any()
    _, end = log.time[log.starts()], log.time[np.append(log.starts()[1:], len(log)) - 1]
    assert end[shifted == 1].max() <= end[shifted == 2].max() and end[shifted == 0].max() <= end[shifted == 2].max()
    cfg.split.merge_valid = True  # train.refit's run under drop_test: the same test, valid trained on
    merged = assign_splits(log, cfg.split)
    np.testing.assert_array_equal(merged == 2, shifted == 2)
    np.testing.assert_array_equal(merged == 0, (shifted == 0) | (shifted == 1))


def test_an_upgrade_leaves_runs_current_added_keys_count_only_off_their_old_value():
    from sbrjob import runs
    from sbrjob.config import ADDED_KEYS

    cfg = load_config("tiny", ["train.logq_form=normalized", "model.carry_dropout=false"])
    raw = cfg.to_dict()
    for section, key in ADDED_KEYS:  # the config as sbrjob saw it before these keys existed
        raw[section].pop(key, None)
    before = runs._section_hash({"data": {k: v for k, v in raw["data"].items() if k not in runs.INPUT_KEYS},
                                 **{s: raw[s] for s in ("sessions", "filter", "split")}})
    assert runs.data_fingerprint(cfg) == before
    manifest = {"data_digest": "d", "export_fingerprint": "e"}
    train = {k: v for k, v in raw["train"].items() if k not in runs.RESUMABLE_KEYS}
    assert runs.run_fingerprint(cfg, manifest) == runs._section_hash(
        {"model": raw["model"], "train": train, "seed": cfg.seed, "data": "d", "export": "e"})
    assert runs.data_fingerprint(load_config("tiny", ["split.drop_test=true"])) != before
    assert runs.run_fingerprint(load_config("tiny"), manifest) != runs.run_fingerprint(cfg, manifest)
