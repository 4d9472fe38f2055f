"""Rank-based metrics against hand-computed examples, including every tie mode, on both paths:
the numba kernel (`cpu_kernel=True`, the CPU default) and pure TensorFlow (GPUs, no numba)."""

import math

import numpy as np
import pytest

from sbrjob.metrics import RankingMetrics, target_ranks

# row 0: target 1 ties with items 2 and 4 (0.5), nothing higher
# row 1: target 3 ties with item 2 (0.3), item 0 is higher
# row 2: target 0 is the lowest of five distinct scores
SCORES = np.array([[0.1, 0.5, 0.5, 0.2, 0.5],
                   [0.9, 0.1, 0.3, 0.3, 0.0],
                   [1.0, 2.0, 3.0, 4.0, 5.0]], np.float32)
TARGETS = np.array([1, 3, 0], np.int32)
SUPPORT = np.array([10, 5, 0, 20, 1])


@pytest.mark.parametrize("ties, expected", [
    ("standard", [1, 2, 5]),
    ("conservative", [3, 3, 5]),
    ("median", [2, 2.5, 5]),
])
def test_target_ranks_tie_modes(ties, expected):
    np.testing.assert_allclose(target_ranks(SCORES, TARGETS, ties).numpy(), expected)


def test_nan_target_gets_worst_rank():
    scores = np.array([[np.nan, 1.0, 2.0]], np.float32)
    assert target_ranks(scores, np.array([0]), "standard").numpy().tolist() == [3.0]


def test_unknown_tie_mode_rejected():
    with pytest.raises(ValueError, match="ties"):
        target_ranks(SCORES, TARGETS, "optimistic")


@pytest.fixture(params=[True, False], ids=["kernel", "tf"])
def cpu_kernel(request):
    return request.param


def _result(ties, cpu_kernel, cutoffs=(1, 2, 3), weights=None, support=None):
    m = RankingMetrics(5, cutoffs, ties, item_support=support, cpu_kernel=cpu_kernel)
    m.add(SCORES, TARGETS, weights)
    return m.result()


def test_metrics_conservative_by_hand(cpu_kernel):
    r = _result("conservative", cpu_kernel)  # ranks 3, 3, 5
    assert r["events"] == 3 and r["ties"] == "conservative"
    assert r["recall@1"] == 0 and r["recall@2"] == 0
    assert r["recall@3"] == pytest.approx(2 / 3)
    assert r["mrr@3"] == pytest.approx((1 / 3 + 1 / 3) / 3)
    assert r["ndcg@3"] == pytest.approx(2 * (1 / math.log2(4)) / 3)


def test_metrics_standard_by_hand(cpu_kernel):
    r = _result("standard", cpu_kernel)  # ranks 1, 2, 5
    assert r["recall@1"] == pytest.approx(1 / 3)
    assert r["recall@2"] == pytest.approx(2 / 3)
    assert r["mrr@1"] == pytest.approx(1 / 3)
    assert r["mrr@2"] == pytest.approx((1 + 1 / 2) / 3)
    assert r["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 3)


def test_metrics_median_by_hand(cpu_kernel):
    r = _result("median", cpu_kernel)  # ranks 2, 2.5, 5
    assert r["recall@2"] == pytest.approx(1 / 3)
    assert r["recall@3"] == pytest.approx(2 / 3)
    assert r["mrr@3"] == pytest.approx((1 / 2 + 1 / 2.5) / 3)
    assert r["ndcg@3"] == pytest.approx((1 / math.log2(3) + 1 / math.log2(3.5)) / 3)


def test_coverage_and_popularity_by_hand(cpu_kernel):
    r = _result("standard", cpu_kernel, cutoffs=(1, 2), support=SUPPORT)
    # top-1 lists (lower index first among equal scores): 1, 0, 4
    assert r["coverage@1"] == pytest.approx(3 / 5)
    # top-2 lists: {1,2}, {0,2}, {4,3}
    assert r["coverage@2"] == pytest.approx(5 / 5)
    pop = SUPPORT / 20
    assert r["popularity@1"] == pytest.approx((pop[1] + pop[0] + pop[4]) / 3)
    assert r["popularity@2"] == pytest.approx(((pop[1] + pop[2]) / 2 + (pop[0] + pop[2]) / 2 + (pop[4] + pop[3]) / 2) / 3)


def test_padding_weight_zero_is_not_counted(cpu_kernel):
    r = _result("standard", cpu_kernel, cutoffs=(1, 2), weights=np.array([1, 1, 0], np.float32))
    assert r["events"] == 2
    assert r["recall@1"] == pytest.approx(1 / 2)  # ranks 1, 2 (row 2 ignored)
    assert r["coverage@1"] == pytest.approx(2 / 5)  # items 1 and 0 only


def test_streaming_equals_one_batch(cpu_kernel):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 30)).astype(np.float32)
    targets = rng.integers(0, 30, size=50).astype(np.int32)
    whole = RankingMetrics(30, (1, 5, 10), cpu_kernel=cpu_kernel)
    whole.add(scores, targets)
    parts = RankingMetrics(30, (1, 5, 10), cpu_kernel=cpu_kernel)
    for lo in range(0, 50, 7):
        parts.add(scores[lo:lo + 7], targets[lo:lo + 7])
    a, b = whole.result(), parts.result()
    assert a.keys() == b.keys()
    for key in a:
        assert a[key] == pytest.approx(b[key]), key
    # cross-check against a plain numpy computation of the same ranks
    ranks = (scores > scores[np.arange(50), targets][:, None]).sum(1) + 1
    assert a["recall@5"] == pytest.approx(np.mean(ranks <= 5))
    assert a["mrr@10"] == pytest.approx(np.mean(np.where(ranks <= 10, 1 / ranks, 0)))


@pytest.mark.parametrize("n, k", [(3700, 20), (1000, 7), (129, 1)])
def test_two_stage_top_k_equals_top_k(n, k):
    import tensorflow as tf

    from sbrjob.metrics import top_k_indices

    rng = np.random.default_rng(n)
    smooth = rng.normal(size=(64, n)).astype(np.float32)
    tied = rng.integers(0, 5, size=(64, n)).astype(np.float32)  # massive ties across the cut
    for scores in (smooth, tied):
        got = top_k_indices(tf.constant(scores), k, group=8).numpy()
        np.testing.assert_array_equal(got, tf.math.top_k(scores, k=k).indices.numpy())


def test_accuracy_only_mode_gives_same_accuracy_without_coverage(cpu_kernel):
    full = _result("conservative", cpu_kernel, support=SUPPORT)
    m = RankingMetrics(5, (1, 2, 3), "conservative", item_support=SUPPORT, beyond_accuracy=False,
                       cpu_kernel=cpu_kernel)
    m.add(SCORES, TARGETS)
    lean = m.result()
    assert not any(k.startswith(("coverage", "popularity")) for k in lean)
    assert lean == {k: v for k, v in full.items() if not k.startswith(("coverage", "popularity"))}


@pytest.mark.parametrize("ties", ["standard", "conservative", "median"])
def test_kernel_and_tf_paths_agree_on_every_metric(ties):
    rng = np.random.default_rng(1)
    n = 1000
    scores = rng.normal(size=(300, n)).astype(np.float32)
    scores[::3] = np.round(scores[::3])  # many ties, at the target and across the top-K cut
    targets = rng.integers(0, n, 300).astype(np.int32)
    weights = rng.integers(0, 2, 300).astype(np.float32)
    support = rng.integers(0, 50, n)
    results = []
    for cpu_kernel in (True, False):
        m = RankingMetrics(n, (1, 5, 10, 20), ties, item_support=support, cpu_kernel=cpu_kernel)
        m.add(scores, targets, weights)
        results.append(m.result())
    kernel, tf_path = results
    assert kernel.keys() == tf_path.keys() and kernel["events"] == weights.sum()
    for key in kernel:
        assert kernel[key] == (tf_path[key] if key == "ties" else pytest.approx(tf_path[key], rel=1e-5)), key
