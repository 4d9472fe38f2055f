"""Evaluation over session-parallel blocks: state resets, padding, event counts, agreement with a
plain per-session loop."""

import numpy as np
import pytest
import tensorflow as tf

from sbrjob.config import config_from_dict
from sbrjob.evaluate import evaluate_blocks, evaluate_model
from sbrjob.metrics import RankingMetrics


class CountingModel(tf.Module):
    """A model whose prediction depends only on its state: after c events since the last reset it
    ranks item c first, then c±1, and so on. A missed reset (or a lost state) shifts the count."""

    n_items = 6

    def initial_state(self, batch):
        return [tf.zeros([batch, 1])]

    def step(self, items, state, training=False):
        c = state[0] + 1.0
        return c, [c]

    def item_scores(self, h):
        return -tf.abs(tf.range(self.n_items, dtype=tf.float32)[None, :] - h)


def _blocks(T, reset, target, weight):
    """Hand-made blocks: 2 lanes x 4 steps, cut into blocks of T steps."""
    arrays = {"input": np.zeros((2, 4), np.int32), "target": np.array(target, np.int32),
              "reset": np.array(reset, np.float32), "weight": np.array(weight, np.float32)}
    return [{k: tf.constant(v[:, s:s + T]) for k, v in arrays.items()} for s in range(0, 4, T)]


# lane 0: session A (steps 0-1), session B (steps 2-3); lane 1: session C (steps 0-2), padding at 3.
RESET = [[1, 0, 1, 0], [1, 0, 0, 0]]
WEIGHT = [[1, 1, 1, 1], [1, 1, 1, 0]]
# the target at each step is the number of events seen in its session: a correct evaluation ranks
# every one of them first
TARGET = [[1, 2, 1, 2], [1, 2, 3, 0]]


def _run(blocks, ties="conservative"):
    return evaluate_blocks(CountingModel(), blocks, RankingMetrics(6, (1, 5), ties)).result()


@pytest.mark.parametrize("T", [4, 2, 1])
def test_state_reset_and_carry_across_blocks(T):
    r = _run(_blocks(T, RESET, TARGET, WEIGHT))
    assert r["events"] == 7  # the padding step is not counted
    assert r["recall@1"] == 1.0 and r["mrr@5"] == 1.0


def test_skipping_the_reset_changes_the_result():
    no_reset = [[1, 0, 0, 0], [1, 0, 0, 0]]  # session B would continue A's state
    r = _run(_blocks(4, no_reset, TARGET, WEIGHT))
    # lane 0 steps 2-3 now count 3, 4. Target 1 at count 3: items 2, 3, 4 score higher and item 5
    # ties (conservative rank 5). Target 2 at count 4: items 3, 4, 5 score higher (rank 4).
    assert r["events"] == 7
    assert r["recall@1"] == pytest.approx(5 / 7)
    assert r["mrr@5"] == pytest.approx((5 + 1 / 5 + 1 / 4) / 7)


def test_padding_would_change_the_result_if_counted():
    r = _run(_blocks(4, RESET, TARGET, [[1, 1, 1, 1], [1, 1, 1, 1]]))
    assert r["events"] == 8 and r["recall@1"] == pytest.approx(7 / 8)


def test_kernel_and_tf_paths_each_get_their_own_compiled_runner():
    from sbrjob.evaluate import _RUNNERS

    model = CountingModel()
    results = [evaluate_blocks(model, _blocks(2, RESET, TARGET, WEIGHT),
                               RankingMetrics(6, (1, 5), cpu_kernel=cpu_kernel)).result() for cpu_kernel in (True, False)]
    assert len(_RUNNERS[model]) == 2  # the second metrics object did not reuse the first one's path
    assert results[0] == results[1]


# ---------------------------------------------------------------- real shards and the real model


def _cfg(tmp_path, **model):
    return config_from_dict({"output_dir": str(tmp_path / "run"),
                             "model": {"layers": [8], **model},
                             "eval": {"cutoffs": [1, 3, 10], "metric": "mrr@10"}})


def _sessions(rng, n_sessions, n_items):
    lengths = rng.integers(2, 9, size=n_sessions)
    session = np.repeat(np.arange(n_sessions), lengths)
    item = rng.integers(0, n_items, size=lengths.sum()).astype(np.int32)
    return session, item, lengths


def _reference(model, session, item, cutoffs, ties, seen_bias=0.0):
    """The protocol written plainly: one session at a time from a zero state, every position
    (`seen_bias` added once to each item fed so far; -inf leaves them out)."""
    m = RankingMetrics(model.n_items, cutoffs, ties)
    for s in np.unique(session):
        seq = item[session == s]
        state = model.initial_state(1)
        for t in range(len(seq) - 1):
            h, state = model.step(tf.constant(seq[t:t + 1]), state)
            scores = model.item_scores(h).numpy()
            scores[0, np.unique(seq[:t + 1])] += seen_bias
            m.add(scores, seq[t + 1:t + 2])
    return m.result()


@pytest.mark.parametrize("rows_per_slice, model_cfg", [
    (None, {}), (5, {}),  # default slices, and many small ones (rows queued across blocks)
    (None, {"input": "onehot"}), (None, {"input": "embedding", "embedding_dim": 5, "layers": [8, 6]}),
])
def test_evaluate_model_on_shards_matches_per_session_loop(tmp_path, monkeypatch, rows_per_slice, model_cfg):
    import sbrjob.evaluate
    from sbrjob.export import session_order, write_split
    from sbrjob.model import GRU4Rec

    if rows_per_slice:  # score a block's events in many small slices
        monkeypatch.setattr(sbrjob.evaluate, "SCORE_CELLS", 15 * rows_per_slice)

    cfg = _cfg(tmp_path, **model_cfg)
    rng = np.random.default_rng(3)
    n_items = 15
    session, item, lengths = _sessions(rng, 23, n_items)
    model = GRU4Rec(cfg.model, n_items, seed=1)
    support = np.bincount(item, minlength=n_items)
    want = _reference(model, session, item, cfg.eval.cutoffs, cfg.eval.ties)
    # sessions in lanes oldest first, and longest first (as `sbrjob export` lays out valid/test)
    for order in (None, session_order(cfg, "test", session)[1]):
        split_dir = tmp_path / f"test-{order is None}"
        manifest = write_split(session, item, split_dir, split="test", lanes=4, n_shards=2, block_steps=3,
                               order=order)
        assert manifest["pairs"] == int((lengths - 1).sum())
        got = evaluate_model(model, str(split_dir), cfg.eval, support=support)
        assert got["split"] == "test"
        assert got["events"] == int((lengths - 1).sum())  # every (input, target) pair, nothing else
        assert "popularity@10" in got and 0 < got["popularity@10"] <= 1
        for key, value in want.items():
            assert got[key] == pytest.approx(value, abs=1e-6), key


def test_evaluate_model_rejects_count_mismatch(tmp_path):
    import json

    from sbrjob.errors import SbrjobError
    from sbrjob.export import write_split

    cfg = _cfg(tmp_path)
    session, item, _ = _sessions(np.random.default_rng(0), 5, 10)
    split_dir = tmp_path / "test"
    manifest = write_split(session, item, split_dir, split="test", lanes=2, n_shards=1, block_steps=4)
    manifest["pairs"] += 1
    (split_dir / "manifest.json").write_text(json.dumps(manifest))
    from sbrjob.model import GRU4Rec
    from sbrjob.shards import sealed

    with pytest.raises(SbrjobError, match="edited after export"):  # a hand edit is caught by the digest
        evaluate_model(GRU4Rec(cfg.model, 10), str(split_dir), cfg.eval)
    (split_dir / "manifest.json").write_text(json.dumps(sealed(manifest)))  # resealed: the count check
    with pytest.raises(SbrjobError, match="pairs"):
        evaluate_model(GRU4Rec(cfg.model, 10), str(split_dir), cfg.eval)


# ---------------------------------------------------------------- end to end on configs/tiny.yaml


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """configs/tiny.yaml trained for one epoch (prepare -> export -> train), output in a temp dir."""
    from sbrjob.config import load_config
    from sbrjob.stages import train_stage

    out = str(tmp_path_factory.mktemp("e2e") / "tiny")
    overrides = [f"output_dir={out}", "train.epochs=1"]
    metrics, _ = train_stage(load_config("tiny", overrides))
    return out, overrides, metrics


def _cli(*args):
    from typer.testing import CliRunner

    from sbrjob.cli import app

    result = CliRunner().invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.stdout  # the command's result; stage lines go to stderr


def test_end_to_end_evaluate_matches_training_test_metrics(tiny_run):
    import json

    from conftest import load_split

    out, overrides, metrics = tiny_run
    sets = [a for o in overrides for a in ("--set", o)]
    printed = json.loads(_cli("evaluate", "--config", "tiny", *sets, "--checkpoint", "last"))
    saved = json.loads(open(f"{out}/eval_test.json").read())
    assert printed == saved and saved["checkpoint"] == "last"
    test = load_split(f"{out}/data", "test")
    assert saved["events"] == len(test) - test["session"].nunique()  # every (input, target) pair
    for key, value in metrics["test"].items():  # same schema and numbers as training's test section
        assert saved[key] == (pytest.approx(value, abs=1e-6) if isinstance(value, float) else value), key


def test_end_to_end_baselines_recommend_export(tiny_run):
    import json

    out, overrides, metrics = tiny_run
    sets = [a for o in overrides for a in ("--set", o)]
    table = _cli("baselines", "--config", "tiny", *sets)
    for name in ("gru4rec", "pop", "spop", "itemknn", "vsknn"):
        assert f"| {name} | {metrics['test']['events']} |" in table  # same events for every method
    assert open(f"{out}/comparison.md").read().endswith(table)
    results = json.loads(open(f"{out}/baselines.json").read())
    assert set(results) == {"pop", "spop", "itemknn", "vsknn"}

    from conftest import load_items

    ids = load_items(f"{out}/data").sort_values("index")["item_id"].tolist()[:3]
    rec = json.loads(_cli("recommend", "--run", out, "--items", ",".join(ids), "-k", "5", "--json",
                          "--include-seen"))
    assert [r["rank"] for r in rec["recommendations"]] == [1, 2, 3, 4, 5]

    path = _cli("export-model", "--run", out, "-k", "5").strip()
    import tensorflow as tf

    served = tf.saved_model.load(path).signatures["serving_default"](items=tf.constant([ids]))
    assert [s.decode() for s in served["item_ids"][0].numpy()] == [r["item_id"] for r in rec["recommendations"]]
    np.testing.assert_allclose(served["scores"][0].numpy(), [r["score"] for r in rec["recommendations"]],
                               rtol=1e-5, atol=1e-5)


def test_new_models_reuse_compiled_evaluation_and_trigger_no_retracing_warnings(tmp_path):
    """Tune trials and benchmark rounds evaluate many new model objects: those of one architecture
    share the evaluation programs (weights copied in), and six architectures, each evaluated with
    the valid and the test settings, stay below TensorFlow's frequent-retracing warning (5 traces
    among a function's last 10 calls, counted across instances of its code)."""
    import io
    import logging

    from sbrjob.export import write_split
    from sbrjob.model import GRU4Rec

    session, item, _ = _sessions(np.random.default_rng(5), 20, 10)
    split_dir = tmp_path / "test"  # ~20 blocks, as a real split has many: each runner traces once, runs often
    write_split(session, item, split_dir, split="test", lanes=2, n_shards=1, block_steps=2)
    buf = io.StringIO()
    handler = logging.StreamHandler(buf)
    tf.get_logger().addHandler(handler)
    try:
        results = {}
        for width in (4, 6, 8, 10, 12, 14, 8, 8):
            cfg = _cfg(tmp_path, layers=[width])
            model = GRU4Rec(cfg.model, 10, seed=width)
            valid = evaluate_model(model, str(split_dir), cfg.eval, beyond_accuracy=False)
            results.setdefault(width, []).append((valid, evaluate_model(model, str(split_dir), cfg.eval)))
    finally:
        tf.get_logger().removeHandler(handler)
    assert "retracing" not in buf.getvalue(), buf.getvalue()
    assert results[8][0] == results[8][1] == results[8][2]  # same seed, same weights: the same numbers


@pytest.mark.parametrize("rows_per_slice, key, bias", [
    (None, "exclude_seen", -np.inf), (5, "exclude_seen", -np.inf), (None, "seen_bias", 0.7),
    (5, "seen_bias", -0.3), (None, "seen_bias", -np.inf)])
def test_seen_bias_scores_each_sessions_own_items(tmp_path, monkeypatch, rows_per_slice, key, bias):
    """eval.exclude_seen / eval.seen_bias: the per-session loop with the bias added to the fed
    items (-inf: left out), across lanes, blocks, session changes within a lane and slices queued
    across blocks; and it changes the result."""
    import sbrjob.evaluate
    from sbrjob.export import write_split
    from sbrjob.model import GRU4Rec

    if rows_per_slice:
        monkeypatch.setattr(sbrjob.evaluate, "SCORE_CELLS", 12 * rows_per_slice)
    cfg = _cfg(tmp_path)
    rng = np.random.default_rng(5)
    n_items = 12  # few items, sessions up to 8 long: many targets repeat an item of their session
    session, item, lengths = _sessions(rng, 31, n_items)
    model = GRU4Rec(cfg.model, n_items, seed=2)
    manifest = write_split(session, item, tmp_path / "test", split="test", lanes=4, n_shards=1, block_steps=3)
    assert manifest["steps"] > 3 * 2  # several blocks, lanes that play several sessions
    setattr(cfg.eval, key, True if key == "exclude_seen" else bias)
    want = _reference(model, session, item, cfg.eval.cutoffs, cfg.eval.ties, seen_bias=bias)
    got = evaluate_model(model, str(tmp_path / "test"), cfg.eval)
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    assert got["seen_bias"] == ("-inf" if bias == -np.inf else bias)
    cfg.eval.exclude_seen, cfg.eval.seen_bias = False, 0.0
    plain = evaluate_model(model, str(tmp_path / "test"), cfg.eval)
    assert "seen_bias" not in plain and plain["mrr@10"] != pytest.approx(got["mrr@10"])


def test_choose_seen_bias_takes_the_best_on_the_split(tmp_path):
    """eval.seen_bias auto: every grid value and the midpoints around the best are scored on the
    split; the choice is the best of them by eval.metric, which the Evaluator then tests with."""
    from sbrjob.evaluate import Evaluator, choose_seen_bias
    from sbrjob.export import write_split
    from sbrjob.model import GRU4Rec

    cfg = _cfg(tmp_path)
    rng = np.random.default_rng(8)
    session, item, _ = _sessions(rng, 40, 12)
    item = np.where(rng.random(len(item)) < 0.5, np.roll(item, 2), item)  # repeats within sessions
    model = GRU4Rec(cfg.model, 12, seed=4)
    write_split(session, item, tmp_path / "valid", split="valid", lanes=4, n_shards=1, block_steps=3)
    cfg.eval.seen_bias = "auto"
    choice = choose_seen_bias(model, str(tmp_path / "valid"), cfg.eval, grid=(-np.inf, -1.0, 0.0, 1.0, 4.0))
    tried = {float(b): v for b, v in choice["tried"].items()}
    assert {-np.inf, -1.0, 0.0, 1.0, 4.0} <= set(tried) and len(tried) in (5, 7)  # + 2 midpoints unless 0/-inf won
    assert float(choice["value"]) == max(tried, key=lambda b: (tried[b], -abs(b)))
    for b, v in tried.items():  # each entry is what evaluate_model gives with that bias
        assert evaluate_model(model, str(tmp_path / "valid"), cfg.eval, seen_bias=b,
                              beyond_accuracy=False)[cfg.eval.metric] == pytest.approx(v, abs=1e-6)
    assert float(choice["value"]) != 0.0 and choice["split"] == "valid"  # repeats: some bias beats the model alone
    out = Evaluator(str(tmp_path / "valid"), cfg.eval, choose_seen_on=str(tmp_path / "valid"))(model)
    assert out["seen_bias"] == out["seen_bias_choice"]["value"] == choice["value"]
    assert out[cfg.eval.metric] == pytest.approx(max(tried.values()), abs=1e-6)
