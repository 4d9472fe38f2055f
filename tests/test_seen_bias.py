"""eval.seen_bias (issue #14): a score for the items a session already holds, chosen on valid
under `auto`, and the same rule in the test metrics, the refit, `evaluate`, `recommend` and the
exported SavedModel."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from sbrjob.config import load_config
from sbrjob.evaluate import SEEN_BIAS_GRID
from sbrjob.recommend import session_scores
from sbrjob.runs import Run, load_trained, seen_bias

from conftest import cli


def test_auto_is_chosen_on_valid_and_carried_to_every_use_of_the_run(tmp_path):
    out = tmp_path / "run"
    base = ["-c", "tiny", "--set", f"output_dir={out}", "--set", "train.epochs=1", "--set", "eval.seen_bias=auto"]
    trained = cli("train", *base, "--set", "train.refit=true")
    assert trained.exit_code == 0, trained.output
    metrics = json.loads((out / "metrics.json").read_text())
    choice = metrics["test"]["seen_bias_choice"]
    assert metrics["test"]["seen_bias"] == choice["value"] and choice["split"] == "valid"
    tried = {float(b): v for b, v in choice["tried"].items()}
    assert set(SEEN_BIAS_GRID) <= set(tried)
    assert float(choice["value"]) == max(tried, key=lambda b: (tried[b], -abs(b)))
    bias = float(choice["value"])
    assert "seen_bias" in trained.stdout  # the summary says the test was scored with it
    assert seen_bias(Run(str(out)), Run(str(out)).saved_config()) == (bias or None)

    # evaluate chooses again on valid for the same checkpoint: the same bias and numbers
    again = cli("evaluate", "--run", str(out))
    assert again.exit_code == 0, again.output
    result = json.loads(again.stdout)
    assert result["seen_bias"] == choice["value"]
    assert result["mrr@20"] == pytest.approx(metrics["test"]["mrr@20"], abs=1e-6)
    plain = json.loads(cli("evaluate", "--run", str(out), "--set", "eval.seen_bias=0").stdout)
    assert "seen_bias" not in plain

    # the refit has no valid: it takes the run's choice as a number
    refit_cfg = Run(str(out / "refit")).saved_config()
    assert refit_cfg.eval.seen_bias == bias
    assert metrics["refit"]["test"]["seen_bias"] == choice["value"]
    refused = cli("evaluate", "--run", str(out / "refit"), "--set", "eval.seen_bias=auto")
    assert refused.exit_code == 2 and "has none" in refused.output and refused.output.count("\n") == 1

    # recommend applies the run's bias to the session's items (by default), export-model records it
    model = load_trained(str(out))
    ids = model.items["item_id"].astype(str).tolist()
    session = [ids[3], ids[7], ids[3]]
    shown = json.loads(cli("recommend", "--run", str(out), "--items", ",".join(session), "-k", "300", "--json").stdout)
    scores = session_scores(model.model, [3, 7, 3])
    scores[[3, 7]] += bias
    want = [ids[i] for i in np.argsort(-scores, kind="stable") if np.isfinite(scores[i])][:300]
    assert [r["item_id"] for r in shown["recommendations"]] == want
    raw = json.loads(cli("recommend", "--run", str(out), "--items", ",".join(session), "-k", "300", "--json",
                         "--include-seen").stdout)
    assert {r["item_id"] for r in raw["recommendations"]} >= {ids[3], ids[7]}
    exported = cli("export-model", "--run", str(out))
    assert exported.exit_code == 0, exported.output
    card = json.loads((out / "saved_model" / "model_card.json").read_text())
    assert card["seen_bias"] == choice["value"]


def test_seen_bias_values_and_conflicts_are_checked():
    assert load_config("tiny", ["eval.seen_bias=-inf"]).eval.seen_bias == -math.inf
    assert load_config("tiny", ["eval.seen_bias=2.5"]).eval.seen_bias == 2.5
    assert load_config("tiny", ["eval.seen_bias=auto"]).eval.seen_bias == "auto"
    for sets, key in ((["eval.seen_bias=nan"], "eval.seen_bias"), (["eval.seen_bias=inf"], "eval.seen_bias"),
                      (["eval.seen_bias=often"], "eval.seen_bias"),
                      (["eval.seen_bias=-1", "eval.exclude_seen=true"], "eval.exclude_seen")):
        with pytest.raises(Exception, match=key):
            load_config("tiny", sets)
