"""The exported SavedModel gives the same top-k as the in-process model, without sbrjob installed."""

import json
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from sbrjob.config import config_from_dict
from sbrjob.model import GRU4Rec
from sbrjob.recommend import session_scores
from sbrjob.serving import Recommender, save_recommender

N_ITEMS, K = 12, 4
IDS = [f"m{i}" for i in range(N_ITEMS)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    cfg = config_from_dict({"model": {"layers": [8, 6], "input": "embedding", "embedding_dim": 5}})
    model = GRU4Rec(cfg.model, N_ITEMS, seed=7)
    dest = str(tmp_path_factory.mktemp("serve") / "saved_model")
    save_recommender(Recommender(model, IDS, K), dest)
    return model, dest


def _expected(model, history):
    scores = session_scores(model, [IDS.index(i) for i in history])
    top = np.argsort(-scores, kind="stable")[:K]
    return [IDS[i] for i in top], scores[top]


def test_saved_model_matches_in_process_model(exported):
    model, dest = exported
    loaded = tf.saved_model.load(dest)
    # padding on either side, an unknown id in the middle
    batch = [["m3", "m5", "m1"], ["", "m2", "m7"], ["m4", "nope", ""]]
    out = loaded.signatures["serving_default"](items=tf.constant(batch))
    assert out["item_ids"].shape == (3, K) and out["scores"].shape == (3, K)
    assert out["known"].numpy().tolist() == [3, 2, 1]
    for row, history in enumerate([["m3", "m5", "m1"], ["m2", "m7"], ["m4"]]):
        ids, scores = _expected(model, history)
        assert [s.decode() for s in out["item_ids"][row].numpy()] == ids
        np.testing.assert_allclose(out["scores"][row].numpy(), scores, rtol=1e-5, atol=1e-6)
    ragged = loaded.recommend_ragged(tf.ragged.constant([["m3", "m5", "m1"], ["m4"]]))
    np.testing.assert_array_equal(ragged["item_ids"].numpy(), out["item_ids"].numpy()[[0, 2]])


def test_saved_model_loads_without_sbrjob(exported):
    model, dest = exported
    code = (
        "import sys, json\n"
        "sys.modules['sbrjob'] = None  # any import of sbrjob now fails\n"
        "import tensorflow as tf\n"
        "m = tf.saved_model.load(sys.argv[1])\n"
        "out = m.signatures['serving_default'](items=tf.constant([['m3', 'm5', 'm1']]))\n"
        "print(json.dumps([s.decode() for s in out['item_ids'][0].numpy()]))\n"
    )
    run = subprocess.run([sys.executable, "-c", code, dest], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout.strip().splitlines()[-1]) == _expected(model, ["m3", "m5", "m1"])[0]


def test_serving_info_written(exported):
    _, dest = exported
    info = json.loads(open(f"{dest}/sbrjob_serving.json").read())
    assert info["k"] == K and info["n_items"] == N_ITEMS
