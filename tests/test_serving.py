"""The exported SavedModel: the same top-k as the in-process model, stateful `step` = history,
call-time k / exclude_seen, TF Serving layout (versions, asset, model card), without sbrjob."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from sbrjob.config import config_from_dict
from sbrjob.errors import SbrjobError
from sbrjob.model import GRU4Rec
from sbrjob.recommend import session_scores
from sbrjob.serving import Recommender, existing_versions, save_recommender, save_version

from conftest import cli

N_ITEMS, K = 12, 4
IDS = [f"m{i}" for i in range(N_ITEMS)]
SIZES = [8, 6]
S = sum(SIZES)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = config_from_dict({"model": {"layers": SIZES, "input": "embedding", "embedding_dim": 5}})
    model = GRU4Rec(cfg.model, N_ITEMS, seed=7)
    dest = str(tmp_path_factory.mktemp("serve") / "saved_model")
    save_recommender(Recommender(model, IDS, K), dest)
    return model, dest


@pytest.fixture(scope="module")
def loaded(exported):
    return tf.saved_model.load(exported[1])


def _expected(model, history, k=K, exclude=()):
    scores = session_scores(model, [IDS.index(i) for i in history])
    scores[[IDS.index(i) for i in exclude]] = -np.inf
    top = np.argsort(-scores, kind="stable")[:k]
    return [IDS[i] for i in top], scores[top]


def _ids(tensor):
    return [[s.decode() for s in row] for row in tensor.numpy()]


def test_saved_model_matches_in_process_model(exported, loaded):
    model, _ = exported
    # padding on either side, an unknown id in the middle
    batch = [["m3", "m5", "m1"], ["", "m2", "m7"], ["m4", "nope", ""]]
    out = loaded.signatures["serving_default"](items=tf.constant(batch))
    assert set(out) == {"item_ids", "scores", "known"}  # serving_default as before the stateful signatures
    assert out["item_ids"].shape == (3, K) and out["scores"].shape == (3, K)
    assert out["known"].numpy().tolist() == [3, 2, 1]
    for row, history in enumerate([["m3", "m5", "m1"], ["m2", "m7"], ["m4"]]):
        ids, scores = _expected(model, history)
        assert _ids(out["item_ids"])[row] == ids
        np.testing.assert_allclose(out["scores"][row].numpy(), scores, rtol=1e-5, atol=1e-6)
    ragged = loaded.recommend_ragged(tf.ragged.constant([["m3", "m5", "m1"], ["m4"]]))
    np.testing.assert_array_equal(ragged["item_ids"].numpy(), out["item_ids"].numpy()[[0, 2]])


def _click_by_click(loaded, sessions, k, exclude_seen, signature="step_exclude_seen"):
    """Every session fed one click at a time through `step` (or, with `exclude_seen`, `signature`
    with the earlier clicks as `seen`; all sessions side by side, "" once a session is over);
    returns the last output of each session."""
    length = max(len(s) for s in sessions)
    state = np.zeros([len(sessions), S], np.float32)
    last = [None] * len(sessions)
    for t in range(length):
        clicks = [s[t] if t < len(s) else "" for s in sessions]
        args = dict(item_id=tf.constant(clicks), state=tf.constant(state), k=tf.constant(k))
        if exclude_seen:
            width = max(1, t)
            seen = [(list(s[:t]) + [""] * width)[:width] for s in sessions]
            out = loaded.signatures[signature](seen=tf.constant(seen), **args)
        else:
            out = loaded.signatures["step"](**args)
        assert out["known"].dtype == tf.bool
        state = out["state"].numpy()
        for i, s in enumerate(sessions):
            if t == len(s) - 1:
                last[i] = (_ids(out["item_ids"])[i], out["scores"][i].numpy(), state[i].copy())
    return last


@pytest.mark.parametrize("exclude_seen", [False, True])
def test_step_click_by_click_equals_history(exported, loaded, exclude_seen):
    model, _ = exported
    rng = np.random.default_rng(3)
    vocab = IDS + ["unknown-1", "unknown-2"]  # unknown ids carry the state unchanged in both
    sessions = [[vocab[i] for i in rng.integers(0, len(vocab), rng.integers(1, 9))] for _ in range(25)]
    k = N_ITEMS  # the whole ranking
    stepped = _click_by_click(loaded, sessions, k, exclude_seen)
    width = max(len(s) for s in sessions)
    padded = [s + [""] * (width - len(s)) for s in sessions]
    hist = loaded.signatures["recommend"](items=tf.constant(padded), k=tf.constant(k),
                                          exclude_seen=tf.constant(exclude_seen))
    for i, s in enumerate(sessions):
        ids, scores, state = stepped[i]
        assert ids == _ids(hist["item_ids"])[i], s
        np.testing.assert_allclose(scores, hist["scores"][i].numpy(), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(state, hist["state"][i].numpy(), rtol=1e-5, atol=1e-5)
        known = [x for x in s if x in IDS]
        if known:  # and both are the in-process model's ranking
            want_ids, want_scores = _expected(model, known, k=k, exclude=known if exclude_seen else ())
            n = len(want_ids) if not exclude_seen else N_ITEMS - len(set(known))
            assert ids[:n] == want_ids[:n]
            np.testing.assert_allclose(scores[:n], want_scores[:n], rtol=1e-5, atol=1e-6)
        if exclude_seen:  # the excluded slots are empty at the end of the ranking
            n_out = len(set(known))
            assert ids[N_ITEMS - n_out:] == [""] * n_out and np.all(np.isneginf(scores[N_ITEMS - n_out:]))


@pytest.fixture(scope="module")
def biased(tmp_path_factory, exported):
    """The same model exported with a seen bias (a run's eval.seen_bias)."""
    dest = str(tmp_path_factory.mktemp("serve-bias") / "saved_model")
    save_recommender(Recommender(exported[0], IDS, K, seen_bias=1.5), dest)
    return tf.saved_model.load(dest)


def test_seen_bias_in_history_and_step_seen(exported, biased):
    """serving_default adds the bias once to each item of the history (a repeated item once),
    recommend(exclude_seen=False) gives the same, step_seen click by click too, and plain step
    stays the model's own scores."""
    model, _ = exported
    sessions = [["m3", "m5", "m3"], ["m2"], ["m4", "nope", "m1", "m4", "m4"]]
    width = max(len(s) for s in sessions)
    padded = tf.constant([s + [""] * (width - len(s)) for s in sessions])
    out = biased.signatures["serving_default"](items=padded)
    hist = biased.signatures["recommend"](items=padded, k=tf.constant(K), exclude_seen=tf.constant(False))
    stepped = _click_by_click(biased, sessions, K, True, signature="step_seen")
    moved = 0
    for row, s in enumerate(sessions):
        known = [IDS.index(x) for x in s if x in IDS]
        scores = session_scores(model, known)
        moved += list(np.argsort(-scores, kind="stable")[:K]) != list(np.argsort(-np.where(
            np.isin(np.arange(N_ITEMS), known), scores + 1.5, scores), kind="stable")[:K])
        scores[sorted(set(known))] += 1.5
        top = np.argsort(-scores, kind="stable")[:K]
        assert _ids(out["item_ids"])[row] == _ids(hist["item_ids"])[row] == stepped[row][0] == [IDS[i] for i in top]
        for got in (out["scores"][row].numpy(), hist["scores"][row].numpy(), stepped[row][1]):
            np.testing.assert_allclose(got, scores[top], rtol=1e-5, atol=1e-6)
    assert moved  # the bias changed some top-k: the test can tell it from the plain model
    plain = biased.signatures["step"](item_id=tf.constant(["m3"]), state=tf.zeros([1, S]), k=tf.constant(K))
    np.testing.assert_allclose(plain["scores"][0].numpy(), _expected(model, ["m3"])[1], rtol=1e-5, atol=1e-6)


def test_state_layout_and_unknown_clicks(exported, loaded):
    model, _ = exported
    state0 = np.zeros([2, S], np.float32)
    out = loaded.step(tf.constant(["m3", "nope"]), tf.constant(state0))  # k defaults to the export's
    assert out["item_ids"].shape == (2, K) and out["known"].numpy().tolist() == [True, False]
    np.testing.assert_array_equal(out["state"][1].numpy(), state0[1])  # unknown: carried unchanged
    _, layers = model.step(tf.constant([3], tf.int32), model.initial_state(1))
    np.testing.assert_allclose(out["state"][0, :SIZES[0]].numpy(), layers[0][0].numpy(), atol=1e-6)
    np.testing.assert_allclose(out["state"][0, SIZES[0]:].numpy(), layers[1][0].numpy(), atol=1e-6)
    with pytest.raises((ValueError, TypeError, tf.errors.InvalidArgumentError)):
        loaded.signatures["step"](item_id=tf.constant(["m3"]), state=tf.zeros([1, S + 1]), k=tf.constant(3))


def test_k_at_call_time(loaded):
    items = tf.constant([["m3", "m5"]])
    for k, width in ((1, 1), (7, 7), (N_ITEMS, N_ITEMS), (1000, N_ITEMS)):  # bounded by the catalogue
        out = loaded.signatures["recommend"](items=items, k=tf.constant(k), exclude_seen=tf.constant(False))
        assert out["item_ids"].shape == (1, width)
    assert loaded.recommend(items)["item_ids"].shape == (1, K)  # the Python function's default k
    with pytest.raises(tf.errors.InvalidArgumentError, match="k must be >= 1"):
        loaded.signatures["recommend"](items=items, k=tf.constant(0), exclude_seen=tf.constant(False))
    seen = loaded.recommend(items, k=tf.constant(1000), exclude_seen=tf.constant(True))
    assert "m3" not in _ids(seen["item_ids"])[0][:N_ITEMS - 2] and _ids(seen["item_ids"])[0][-2:] == ["", ""]


def test_signatures_as_tf_serving_reads_them(exported):
    """The SignatureDefs in saved_model.pb (what TF Serving reads): predict method, named tensors,
    the vocabulary as an asset file."""
    from tensorflow.core.protobuf import saved_model_pb2

    _, dest = exported
    proto = saved_model_pb2.SavedModel.FromString(Path(dest, "saved_model.pb").read_bytes())
    graph = proto.meta_graphs[0]
    assert "serve" in graph.meta_info_def.tags
    defs = graph.signature_def
    assert set(defs) >= {"serving_default", "recommend", "step", "step_exclude_seen", "step_seen"}
    assert all(defs[n].method_name == "tensorflow/serving/predict" for n in defs if not n.startswith("__"))
    assert set(defs["step"].inputs) == {"item_id", "state", "k"}
    assert set(defs["step"].outputs) == {"item_ids", "scores", "state", "known"}
    assert set(defs["step_exclude_seen"].inputs) == set(defs["step_seen"].inputs) == {"item_id", "state", "k", "seen"}
    assert set(defs["recommend"].inputs) == {"items", "k", "exclude_seen"}
    assert [d.size for d in defs["step"].inputs["state"].tensor_shape.dim] == [-1, S]
    assert Path(dest, "assets", "items.txt").read_text().splitlines() == IDS
    # loaded as TF Serving loads it (graph + session, asset-initialised tables), fed by tensor names
    with tf.Graph().as_default(), tf.compat.v1.Session() as sess:
        meta = tf.compat.v1.saved_model.loader.load(sess, ["serve"], dest)
        sig = meta.signature_def["step"]
        feed = {"item_id": [b"m3", b"nope"], "state": np.zeros((2, S), np.float32), "k": 3}
        out = sess.run({n: t.name for n, t in sig.outputs.items()}, {sig.inputs[n].name: v for n, v in feed.items()})
    assert out["known"].tolist() == [True, False] and out["item_ids"].shape == (2, 3)
    eager = tf.saved_model.load(dest).signatures["step"](item_id=tf.constant(["m3"]), state=tf.zeros([1, S]),
                                                         k=tf.constant(3))
    np.testing.assert_array_equal(out["item_ids"][:1], eager["item_ids"].numpy())
    np.testing.assert_allclose(out["state"][:1], eager["state"].numpy(), atol=1e-6)
    info = json.loads(Path(dest, "sbrjob_serving.json").read_text())
    assert info["k"] == K and info["n_items"] == N_ITEMS and info["state_size"] == S
    assert info["state_layout"] == [{"layer": 0, "units": 8, "columns": [0, 8]},
                                    {"layer": 1, "units": 6, "columns": [8, 14]}]
    assert info["signatures"]["step"]["inputs"]["state"] == {"dtype": "float32", "shape": [-1, S]}


def test_tfsmlayer_calls_the_signatures(exported, loaded):
    import keras

    model, dest = exported
    layer = keras.layers.TFSMLayer(dest, call_endpoint="step")
    out = layer(tf.constant(["m3"]), state=tf.zeros([1, S]), k=tf.constant(5))
    direct = loaded.signatures["step"](item_id=tf.constant(["m3"]), state=tf.zeros([1, S]), k=tf.constant(5))
    np.testing.assert_array_equal(out["item_ids"].numpy(), direct["item_ids"].numpy())
    history = keras.layers.TFSMLayer(dest, call_endpoint="serving_default")
    out = history(tf.constant([["m3", "m5", "m1"]]))
    assert _ids(out["item_ids"])[0] == _expected(model, ["m3", "m5", "m1"])[0]


def test_saved_model_loads_without_sbrjob(exported):
    model, dest = exported
    code = (
        "import sys, json\n"
        "sys.modules['sbrjob'] = None  # any import of sbrjob now fails\n"
        "import tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "ids = lambda t: [s.decode() for s in t[0].numpy()]\n"
        "out = {'history': ids(m.signatures['serving_default'](items=tf.constant([['m3', 'm5', 'm1']]))['item_ids'])}\n"
        "state = tf.zeros([1, %d])\n"
        "for click in ['m3', 'm5', 'm1']:\n"
        "    step = m.signatures['step'](item_id=tf.constant([click]), state=state, k=tf.constant(%d))\n"
        "    state = step['state']\n"
        "out['step'] = ids(step['item_ids'])\n"
        "r = m.signatures['recommend'](items=tf.constant([['m3', 'm5', 'm1']]), k=tf.constant(%d),\n"
        "                              exclude_seen=tf.constant(True))\n"
        "out['recommend'] = ids(r['item_ids'])\n"
        "print(json.dumps(out))\n" % (S, K, K)
    )
    run = subprocess.run([sys.executable, "-c", code, dest], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    history = ["m3", "m5", "m1"]
    assert got["history"] == got["step"] == _expected(model, history)[0]
    assert got["recommend"] == _expected(model, history, exclude=history)[0]


def test_versions_are_never_overwritten(exported, tmp_path):
    model, _ = exported
    module = Recommender(model, IDS, K)
    base = tmp_path / "models" / "gru4rec"
    assert existing_versions(str(base)) == []
    assert save_version(module, str(base)) == (str(base / "1"), 1)
    (base / "notes").mkdir()  # other names are not versions
    assert save_version(module, str(base), version=7)[1] == 7
    assert save_version(module, str(base))[1] == 8
    with pytest.raises(SbrjobError, match=r"gru4rec/7 already exists .*next free: 9"):
        save_version(module, str(base), version=7)
    with pytest.raises(SbrjobError, match="must be an integer >= 1"):
        save_version(module, str(base), version=0)
    assert existing_versions(str(base)) == [1, 7, 8]
    assert sorted(p.name for p in base.iterdir()) == ["1", "7", "8", "notes"]  # no staging debris
    assert (base / "8" / "saved_model.pb").exists() and (base / "8" / "assets" / "items.txt").exists()
    assert json.loads((base / "8" / "model_card.json").read_text())["version"] == 8


def test_versions_on_gcs(exported, gcs):
    """gs:// base paths through sbrjob.storage (a local GCS emulator): next version, pinned, refused."""
    from sbrjob import storage

    model, _ = exported
    module = Recommender(model, IDS, K)
    base = f"{gcs}/models/gru4rec"
    assert save_version(module, base)[1] == 1 and save_version(module, base, version=4)[1] == 4
    assert save_version(module, base)[1] == 5 and existing_versions(base) == [1, 4, 5]
    with pytest.raises(SbrjobError, match="gru4rec/4 already exists"):
        save_version(module, base, version=4)
    files = storage.list_files(f"{base}/5")
    assert {"saved_model.pb", "assets/items.txt", "model_card.json", "sbrjob_serving.json"} <= set(files)
    local = storage.local_dir_copy(f"{base}/5")
    out = tf.saved_model.load(local).signatures["serving_default"](items=tf.constant([["m3", "m5", "m1"]]))
    assert _ids(out["item_ids"])[0] == _expected(model, ["m3", "m5", "m1"])[0]


# ---------------------------------------------------------------- from a trained run: card and CLI


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from sbrjob.config import load_config
    from sbrjob.stages import train_stage

    out = str(tmp_path_factory.mktemp("served") / "run")
    train_stage(load_config("tiny", [f"output_dir={out}", "train.epochs=1"]))
    return out


def _cli(*args):
    """(exit code, the command's stdout or its one error line)."""
    result = cli(*args)
    return result.exit_code, result.error or result.stdout


def test_export_model_to_versions_with_model_card(trained_run, tmp_path):
    from sbrjob.runs import Prepared, Run, load_trained, stored_fingerprint

    base = tmp_path / "serving" / "tiny"
    code, printed = _cli("export-model", "--run", trained_run, "--to", base, "-k", "5")
    assert code == 0 and printed.strip() == str(base / "1")
    code, printed = _cli("export-model", "--run", trained_run, "--to", base)
    assert code == 0 and printed.strip() == str(base / "2")
    code, printed = _cli("export-model", "--run", trained_run, "--to", base, "--version", "2")
    assert code == 2 and "already exists" in printed and printed.count("\n") == 0
    code, printed = _cli("export-model", "--run", trained_run, "--version", "3")
    assert code == 2 and "--version needs --to" in printed

    card = json.loads((base / "1" / "model_card.json").read_text())
    trained = load_trained(trained_run)
    assert card["run"] == trained_run and card["version"] == 1 and card["k"] == 5
    assert card["data_digest"] == Prepared.open(f"{trained_run}/data").digest
    assert card["run_fingerprint"] == stored_fingerprint(trained.checkpoint) is not None
    assert card["metrics"]["test"] == Run(trained_run).metrics()["test"]
    assert set(card["signatures"]) == {"serving_default", "recommend", "step", "step_exclude_seen", "step_seen"}
    assert card["seen_bias"] == 0.0  # the run has no eval.seen_bias
    assert card["state"]["size"] == sum(trained.cfg.model.layers)
    # the example requests of the card, fed as TF Serving would feed them, run
    m = tf.saved_model.load(str(base / "1"))
    for name in card["signatures"]:
        body = card["example_request"][name]
        fn = m.signatures[body["signature_name"]]
        specs = fn.structured_input_signature[1]
        out = fn(**{k: tf.constant(v, dtype=specs[k].dtype) for k, v in body["inputs"].items()})
        assert out["item_ids"].shape[0] == 1
    # RUN/saved_model as before, and the same ranking as `sbrjob recommend`
    code, printed = _cli("export-model", "--run", trained_run, "-k", "5")
    assert code == 0 and printed.strip() == f"{trained_run}/saved_model"
    ids = trained.items["item_id"].tolist()[:3]
    code, printed = _cli("recommend", "--run", trained_run, "--items", ",".join(ids), "-k", "5", "--json")
    recs = json.loads(printed)["recommendations"]
    default = tf.saved_model.load(f"{trained_run}/saved_model")  # held: its functions reference its variables
    served = default.recommend(tf.constant([ids]), k=tf.constant(5), exclude_seen=tf.constant(True))
    assert _ids(served["item_ids"])[0] == [r["item_id"] for r in recs]
    np.testing.assert_allclose(served["scores"][0].numpy(), [r["score"] for r in recs], rtol=1e-5, atol=1e-5)


def test_batch_recommend_equals_the_exported_model(trained_run, tmp_path):
    """`recommend --sessions` (in-process, compiled, input-table lookups) = the SavedModel's `recommend`."""
    from sbrjob.runs import load_trained

    ids = load_trained(trained_run).items["item_id"].tolist()
    rng = np.random.default_rng(0)
    sessions = [[ids[i] for i in rng.integers(0, len(ids), rng.integers(1, 12))] for _ in range(40)]
    path = tmp_path / "s.jsonl"
    path.write_text("".join(json.dumps({"session_id": f"s{n}", "items": s}) + "\n" for n, s in enumerate(sessions)))
    code, printed = _cli("recommend", "--run", trained_run, "--sessions", path, "-k", "10", "--include-seen")
    assert code == 0
    got = [json.loads(line) for line in printed.splitlines()]
    dest = tmp_path / "sm"
    _cli("export-model", "--run", trained_run, "--to", dest)
    m = tf.saved_model.load(str(dest / "1"))
    width = max(map(len, sessions))
    out = m.recommend(tf.constant([s + [""] * (width - len(s)) for s in sessions]), k=tf.constant(10),
                      exclude_seen=tf.constant(False))
    assert [g["session_id"] for g in got] == [f"s{n}" for n in range(len(sessions))]
    assert [g["item_ids"] for g in got] == _ids(out["item_ids"])
    np.testing.assert_allclose([g["scores"] for g in got], out["scores"].numpy(), rtol=1e-5, atol=1e-5)
