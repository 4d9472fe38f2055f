"""The numba ranking kernel against TensorFlow's own ranks and TopK, on every code path it has."""

import numpy as np
import pytest
import tensorflow as tf

from sbrjob import kernels
from sbrjob.metrics import target_ranks

pytestmark = pytest.mark.skipif(not kernels.available, reason="numba not installed")


def score_matrices(rows, n, seed):
    rng = np.random.default_rng(seed)
    smooth = rng.normal(size=(rows, n)).astype(np.float32)
    tied = rng.integers(0, 5, size=(rows, n)).astype(np.float32)  # ties at the target and across the cut
    flat = np.zeros((rows, n), np.float32)  # every item equal
    return {"smooth": smooth, "tied": tied, "flat": flat}


# 3706: not a multiple of the group size; 200: fewer groups than k (every item a candidate); 20 = k
@pytest.mark.parametrize("n, k", [(3706, 20), (1000, 7), (200, 10), (20, 20), (50, 0)])
@pytest.mark.parametrize("ties", ["standard", "conservative", "median"])
def test_ranks_and_top_k_equal_tensorflow(n, k, ties):
    for name, scores in score_matrices(40, n, seed=n).items():
        targets = np.random.default_rng(k).integers(0, n, len(scores))
        ranks, top = kernels.rank_and_top(scores, targets, ties, k)
        np.testing.assert_array_equal(ranks, target_ranks(scores, targets, ties).numpy(), err_msg=name)
        np.testing.assert_array_equal(top, tf.math.top_k(scores, k=k).indices.numpy(), err_msg=name)


def test_rows_split_over_threads_give_the_same_result(monkeypatch):
    scores = score_matrices(301, 3706, seed=3)["smooth"]
    targets = np.arange(301) % 3706
    one = kernels.rank_and_top(scores, targets, "median", 20)
    monkeypatch.setattr(kernels, "MIN_ROWS_PER_THREAD", 1)
    monkeypatch.setattr(kernels, "_threads", lambda: 3)  # uneven parts
    many = kernels.rank_and_top(scores, targets, "median", 20)
    np.testing.assert_array_equal(one[0], many[0])
    np.testing.assert_array_equal(one[1], many[1])


def test_a_forked_child_gets_its_own_thread_pool():
    import multiprocessing

    scores = score_matrices(200, 300, seed=4)["smooth"]
    targets = np.arange(200) % 300
    parent = kernels.rank_and_top(scores, targets, "standard", 5)  # starts the pool here
    with multiprocessing.get_context("fork").Pool(1) as pool:  # would hang on the parent's dead pool
        child = pool.apply_async(kernels.rank_and_top, (scores, targets, "standard", 5)).get(timeout=60)
    np.testing.assert_array_equal(parent[1], child[1])


def test_nan_scores_rank_last_and_never_crash():
    scores = np.array([[np.nan, 3.0, np.nan, 1.0, 2.0],
                       [np.nan] * 5,
                       [0.5, np.nan, np.inf, -np.inf, 0.5]], np.float32)
    ranks, top = kernels.rank_and_top(scores, np.array([0, 1, 4]), "conservative", 4)
    assert ranks.tolist() == [5.0, 5.0, 3.0]  # a NaN target gets the worst rank, as in TF
    assert top.tolist() == [[1, 4, 3, 0], [0, 1, 2, 3], [2, 0, 4, 3]]


def test_bad_targets_and_k_are_errors():
    scores = np.zeros((2, 5), np.float32)
    with pytest.raises(ValueError, match="target item index 5 outside 0..4"):
        kernels.rank_and_top(scores, np.array([0, 5]), "standard", 2)
    with pytest.raises(ValueError, match="k=6"):
        kernels.rank_and_top(scores, np.array([0, 1]), "standard", 6)
