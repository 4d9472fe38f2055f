"""Each baseline on tiny data against scores and metrics worked out by hand."""

import math

import numpy as np
import pytest

from sbrjob.baselines import VSKNN, ItemKNN, Pop, Sessions, SPop, chunks, comparison_table, evaluate_baseline
from sbrjob.metrics import RankingMetrics

# items 0..4; train sessions, oldest first
TRAIN = Sessions.from_lists([[0, 1, 2], [1, 2], [2, 3], [0, 1]])
# one test session: predictions (prefix [2] -> 1), ([2, 1] -> 2), ([2, 1, 2] -> 0)
TEST = Sessions.from_lists([[2, 1, 2, 0]])
N = 5


def _scores(model, sessions=TEST):
    return np.concatenate([np.asarray(model.score(c)) for c in chunks(sessions, N)])


def _metrics(model, ties="conservative"):
    return evaluate_baseline(model, TEST, RankingMetrics(N, (1, 2, 5), ties)).result()


def test_pop():
    model = Pop().fit(TRAIN, N)
    np.testing.assert_array_equal(_scores(model), [[2, 3, 3, 1, 0]] * 3)
    r = _metrics(model)  # conservative ranks: target 1 -> 2 (ties item 2), 2 -> 2, 0 -> 3
    assert r["events"] == 3
    assert r["recall@1"] == 0 and r["recall@2"] == pytest.approx(2 / 3)
    assert r["mrr@5"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)
    assert _metrics(model, "standard")["recall@1"] == pytest.approx(2 / 3)  # ranks 1, 1, 3


def test_spop():
    model = SPop().fit(TRAIN, N)
    tie = np.array([2, 3, 3, 1, 0]) / 4  # support / (max + 1)
    want = np.array([[0, 0, 1, 0, 0], [0, 1, 1, 0, 0], [0, 1, 2, 0, 0]]) + tie
    np.testing.assert_allclose(_scores(model), want)
    r = _metrics(model)  # conservative ranks 2, 2 (ties with item 1), 3
    assert r["mrr@5"] == pytest.approx((1 / 2 + 1 / 2 + 1 / 3) / 3)
    assert _metrics(model, "standard")["recall@1"] == pytest.approx(1 / 3)  # ranks 2, 1, 3


def test_itemknn_cosine():
    model = ItemKNN(neighbors=4, lam=0.0, alpha=0.5).fit(TRAIN, N)
    # sessions per item: 2, 3, 3, 1, 0; co-occurring sessions: (0,1) 2, (0,2) 1, (1,2) 2, (2,3) 1
    s01, s02, s12, s23 = 2 / math.sqrt(6), 1 / math.sqrt(6), 2 / 3, 1 / math.sqrt(3)
    want = np.array([[s02, s12, 0, s23, 0],   # last item 2
                     [s01, 0, s12, 0, 0],     # last item 1
                     [s02, s12, 0, s23, 0]])  # last item 2
    np.testing.assert_allclose(_scores(model), want, rtol=1e-6)
    r = _metrics(model)  # ranks 1, 2, 3
    assert r["recall@1"] == pytest.approx(1 / 3)
    assert r["mrr@5"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_itemknn_regularised_and_pruned():
    model = ItemKNN(neighbors=1, lam=1.0, alpha=1.0).fit(TRAIN, N)
    # sim(2, j) = co / (supp_2 + 1) = co / 4 -> only the best neighbour (item 1: 2/4) is kept
    np.testing.assert_allclose(_scores(model)[0], [0, 0.5, 0, 0, 0])


def test_vsknn_weights_and_scores():
    model = VSKNN(neighbors=2, sample=1000).fit(TRAIN, N)
    # prefix weights p/t by latest position: [2] -> {2: 1}; [2, 1] -> {2: 1/2, 1: 1}; [2, 1, 2] -> {2: 1, 1: 2/3}
    # similarity to each train session = sum of the weights of the shared items
    sims = model.similarities(TEST.item, TEST.start)
    np.testing.assert_allclose(sims, [[1, 1, 1, 0], [1.5, 1.5, .5, 1], [5 / 3, 5 / 3, 1, 2 / 3]], rtol=1e-6)
    # 1: sims s0 1, s1 1, s2 1, s3 0 -> the two most recent of the tie: s2 {2,3}, s1 {1,2}
    # 2: sims 1.5, 1.5, .5, 1 -> s0 {0,1,2}, s1 {1,2};  3: sims 5/3, 5/3, 1, 2/3 -> s0, s1
    want = [[0, 1, 2, 1, 0], [1.5, 3, 3, 0, 0], [5 / 3, 10 / 3, 10 / 3, 0, 0]]
    np.testing.assert_allclose(_scores(model), want, rtol=1e-6)
    r = _metrics(model)  # conservative ranks: target 1 -> 3 (ties item 3), 2 -> 2, 0 -> 3
    assert r["mrr@5"] == pytest.approx((1 / 3 + 1 / 2 + 1 / 3) / 3)


@pytest.mark.parametrize("votes", ["dense matmul", "sparse scatter"])
def test_vsknn_matches_brute_force_on_random_data(votes):
    rng = np.random.default_rng(5)
    train = Sessions.from_lists([list(rng.integers(0, 9, size=n)) for n in rng.integers(2, 8, size=30)])
    test = Sessions.from_lists([list(rng.integers(0, 9, size=n)) for n in rng.integers(2, 10, size=6)])
    model = VSKNN(neighbors=4, sample=10).fit(train, 9)
    if votes == "sparse scatter":
        model.dense = None  # the path taken for large catalogues / short sessions
    got = np.concatenate([model.score(c) for c in chunks(test, 9, cells=9 * 12)])
    train_sets = [set(train.item[a:b]) for a, b in zip(train.start[:-1], train.start[1:])]
    want = []
    for a, b in zip(test.start[:-1], test.start[1:]):
        for t in range(1, b - a):
            prefix = list(test.item[a:a + t])
            weight = {i: (max(p for p, j in enumerate(prefix) if j == i) + 1) / t for i in prefix}
            sims = np.array([sum(weight.get(i, 0) for i in s) for s in train_sets])
            recent = [j for j in range(len(train_sets) - 1, -1, -1) if sims[j] > 0][:10]
            best = sorted(recent, key=lambda j: -sims[j])[:4]  # stable: more recent first among equals
            row = np.zeros(9)
            for j in best:
                row[list(train_sets[j])] += sims[j]
            want.append(row)
    np.testing.assert_allclose(got, np.array(want), rtol=1e-5, atol=1e-6)


def test_vsknn_sample_keeps_most_recent_candidates():
    model = VSKNN(neighbors=2, sample=2).fit(TRAIN, N)
    # prefix [2, 1]: all four sessions share an item; only s2 (.5) and s3 (1) are recent enough
    np.testing.assert_allclose(_scores(model)[1], [1, 1, .5, .5, 0], rtol=1e-6)


def test_chunks_cover_every_pair_once():
    rng = np.random.default_rng(1)
    sessions = Sessions.from_lists([list(rng.integers(0, 7, size=n)) for n in rng.integers(2, 12, size=40)])
    seen = []
    for c in chunks(sessions, 7, cells=7 * 25):  # force many small chunks
        assert len(c.rows) and np.all(c.first <= c.rows)
        seen.append(np.stack([c.item[c.rows], c.targets], 1))
    seen = np.concatenate(seen)
    want = np.concatenate([np.stack([sessions.item[a:b - 1], sessions.item[a + 1:b]], 1)
                           for a, b in zip(sessions.start[:-1], sessions.start[1:])])
    np.testing.assert_array_equal(seen, want)
    assert len(seen) == sessions.pairs


def test_comparison_table_lists_every_method():
    rows = {"gru4rec": {"events": 3, "recall@1": 0.5, "mrr@1": 0.5}, "pop": {"events": 3, "recall@1": 0.25}}
    table = comparison_table(rows, [1])
    assert "| gru4rec | 3 | 0.5000 | 0.5000 |" in table
    assert "| pop | 3 | 0.2500 | - |" in table


def test_exclude_seen_ranks_pop_without_the_prefix_items():
    # pop scores [2, 3, 3, 1, 0]; prefixes [2] -> 1, [2, 1] -> 2, [2, 1, 2] -> 0
    model = Pop().fit(TRAIN, N)
    r = evaluate_baseline(model, TEST, RankingMetrics(N, (1, 2), "conservative"), exclude_seen=True).result()
    # [2] out: target 1 ranks 1; [2, 1] out: target 2 is itself excluded (ranked last: missed);
    # [2, 1] out: target 0 ranks 1 (without the exclusion: 2, 2 and 3)
    assert r["events"] == 3
    assert r["recall@1"] == pytest.approx(2 / 3) and r["recall@2"] == pytest.approx(2 / 3)
    assert r["mrr@2"] == pytest.approx(2 / 3)


def test_exclude_seen_masks_exactly_each_predictions_prefix_across_chunks():
    rng = np.random.default_rng(0)
    lists = [list(rng.integers(0, N, size=rng.integers(2, 7))) for _ in range(20)]
    test = Sessions.from_lists(lists)
    want = [[i in s[:t + 1] for i in range(N)] for s in lists for t in range(len(s) - 1)]
    got = np.concatenate([c.seen(N) for c in chunks(test, N, cells=4 * N)])  # chunks of a few sessions
    np.testing.assert_array_equal(got, want)
