"""Sampled losses against straight numpy transcriptions of the GRU4Rec formulas; the negative sampler."""

import numpy as np
import pytest
import tensorflow as tf

from sbrjob.config import ModelConfig, TrainConfig
from sbrjob.losses import NegativeSampler, full_softmax_lane_losses, sampled_lane_losses, step_lane_losses
from sbrjob.model import GRU4Rec


class FixedScores:
    """A stand-in model whose `scores_for` returns given scores (the losses only call that)."""

    def __init__(self, scores):
        self.scores = tf.constant(scores, tf.float32)

    def scores_for(self, h, columns):
        return self.scores


def softmax(x):
    e = np.exp(x - x.max())
    return e / e.sum()


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


RNG = np.random.default_rng(5)
SCORES = RNG.normal(size=(3, 7)).astype(np.float32) * 2  # 3 lanes, 3 batch columns + 4 samples
LABEL = np.array([0, 1, 2])
LOG_Q = np.log(RNG.dirichlet(np.ones(7))).astype(np.float32)


def run(loss, valid=None, scores=SCORES, label=LABEL, log_q=LOG_Q, **kw):
    n = scores.shape[1]
    valid = np.ones(n, bool) if valid is None else valid
    return sampled_lane_losses(loss, FixedScores(scores), None, tf.zeros(n, tf.int32), tf.constant(valid),
                               tf.constant(label), log_q=tf.constant(log_q), **kw).numpy()


def test_cross_entropy_with_logq_correction():
    want = [-np.log(softmax(SCORES[i] - 1.0 * LOG_Q)[LABEL[i]]) for i in range(3)]
    np.testing.assert_allclose(run("xe", logq_weight=1.0), want, rtol=1e-5)
    plain = [-np.log(softmax(SCORES[i])[LABEL[i]]) for i in range(3)]
    np.testing.assert_allclose(run("xe", logq_weight=0.0), plain, rtol=1e-5)


def test_bpr_max_formula_with_score_regularisation():
    want = []
    for i in range(3):
        neg = [j for j in range(7) if j != LABEL[i]]
        s = softmax(SCORES[i, neg])
        r_t = SCORES[i, LABEL[i]]
        want.append(-np.log(np.sum(s * sigmoid(r_t - SCORES[i, neg]))) + 1.95 * np.sum(s * SCORES[i, neg] ** 2))
    np.testing.assert_allclose(run("bpr-max", bpreg=1.95), want, rtol=1e-5)


def test_bpr_max_never_takes_log_of_zero():
    huge = FixedScores([[-80.0, 60.0, 70.0]])  # sigmoid(target - r_j) underflows to 0 in float32
    out = sampled_lane_losses("bpr-max", huge, None, tf.zeros(3, tf.int32), tf.constant([True] * 3),
                              tf.constant([0]), bpreg=0.0).numpy()
    assert np.isfinite(out).all() and out[0] > 100  # ~ -log(sigmoid(-150)) = 150


def test_top1_max_formula():
    want = []
    for i in range(3):
        neg = [j for j in range(7) if j != LABEL[i]]
        s = softmax(SCORES[i, neg])
        r = SCORES[i, neg]
        want.append(np.sum(s * (sigmoid(r - SCORES[i, LABEL[i]]) + sigmoid(r ** 2))))
    np.testing.assert_allclose(run("top1-max"), want, rtol=1e-5)


@pytest.mark.parametrize("loss", ["xe", "bpr-max", "top1-max"])
def test_padded_lanes_columns_are_masked_out(loss):
    valid = np.ones(7, bool)
    valid[2] = False  # lane 2 is padding: its target column is nobody's negative
    got = run(loss, valid=valid, logq_weight=1.0, bpreg=0.5)
    keep = [0, 1, 3, 4, 5, 6]  # the same lanes 0 and 1 with column 2 removed altogether
    want = run(loss, scores=SCORES[:2][:, keep], label=LABEL[:2], log_q=LOG_Q[keep], logq_weight=1.0, bpreg=0.5)
    np.testing.assert_allclose(got[:2], want, rtol=1e-5)
    assert np.isfinite(got).all()  # the padded lane itself stays finite (its weight is 0)


def test_sampler_is_deterministic_per_step_and_follows_support_power_alpha():
    support = np.array([1, 10, 100, 1000, 0], np.float64)
    sampler = NegativeSampler(support, n_sample=200_000, alpha=0.5)
    a = sampler.draw(tf.constant([1, 7], tf.int64)).numpy()
    np.testing.assert_array_equal(a, sampler.draw(tf.constant([1, 7], tf.int64)).numpy())
    assert not np.array_equal(a[:100], sampler.draw(tf.constant([1, 8], tf.int64)).numpy()[:100])
    freq = np.bincount(a, minlength=5) / len(a)
    want = np.maximum(support, 1) ** 0.5
    np.testing.assert_allclose(freq, want / want.sum(), atol=0.005)
    uniform = NegativeSampler(support, n_sample=100_000, alpha=0.0).draw(tf.constant([3, 3], tf.int64)).numpy()
    np.testing.assert_allclose(np.bincount(uniform, minlength=5) / 1e5, 0.2, atol=0.01)


@pytest.mark.parametrize("form", ["official", "normalized"])
def test_step_scores_batch_plus_samples_and_logq_uses_each_columns_probability(form):
    model = GRU4Rec(ModelConfig(layers=[4]), n_items=30, seed=1)
    support = np.arange(1, 31, dtype=np.float64)
    cfg = TrainConfig(loss="xe", n_sample=5, sample_alpha=0.5, logq=1.0, logq_form=form)
    sampler = NegativeSampler(support, cfg.n_sample, cfg.sample_alpha)
    h = tf.random.normal([2, 4], seed=4)
    batch = tf.constant([3, 8, 8, 20], tf.int32)  # global batch of 4; this replica owns lanes 2, 3
    seed = tf.constant([5, 6], tf.int64)
    got = step_lane_losses(cfg, sampler, model, h, batch[2:], batch, tf.constant([True] * 4), 2, seed).numpy()
    extra = sampler.draw(seed).numpy()
    cols = np.concatenate([batch.numpy(), extra])
    scores = model.scores_for(h, tf.constant(cols)).numpy()
    if form == "official":  # the official code: log c and alpha * log c, unnormalised
        log_q = np.concatenate([np.log(support[batch.numpy()]), 0.5 * np.log(support[extra])])
    else:
        log_q = np.concatenate([np.log(support[batch.numpy()] / support.sum()),
                                np.log(np.sqrt(support[extra]) / np.sqrt(support).sum())])
    want = [-np.log(softmax(scores[i] - log_q)[2 + i]) for i in range(2)]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    no_samples = TrainConfig(loss="xe", n_sample=0, logq=0.0)
    got0 = step_lane_losses(no_samples, NegativeSampler(support, 0, 0.5), model, h, batch[2:], batch,
                            tf.constant([True] * 4), 2, seed).numpy()
    s0 = model.scores_for(h, batch).numpy()
    np.testing.assert_allclose(got0, [-np.log(softmax(s0[i])[2 + i]) for i in range(2)], rtol=1e-4)


def test_full_softmax_scores_every_item():
    model = GRU4Rec(ModelConfig(layers=[4]), n_items=9, seed=1)
    h = tf.random.normal([2, 4], seed=4)
    targets = tf.constant([1, 8], tf.int32)
    scores = model.item_scores(h).numpy()
    want = [-np.log(softmax(scores[i])[t]) for i, t in enumerate([1, 8])]
    np.testing.assert_allclose(full_softmax_lane_losses(model, h, targets).numpy(), want, rtol=1e-5)
    cfg = TrainConfig(loss="softmax")
    np.testing.assert_allclose(step_lane_losses(cfg, None, model, h, targets, targets, tf.constant([True, True]), 0,
                                                tf.constant([0, 0], tf.int64)).numpy(), want, rtol=1e-5)


def test_block_store_rows_are_the_per_step_draws():
    """The training block draws all its steps' samples at once: row t must be exactly step first+t's
    own draw (same stream, so a resumed run and every replica draw the same), also past 2**32 steps."""
    sampler = NegativeSampler(np.arange(1, 301) ** 2, n_sample=64, alpha=0.4)
    seed, first = tf.constant(7 + 7919, tf.int64), tf.constant(2**32 - 3, tf.int64)
    store = sampler.draw_steps(seed, first, 6)
    assert store.shape == (6, 64)
    for t in range(6):
        np.testing.assert_array_equal(store[t].numpy(), sampler.draw(tf.stack([seed, first + t])).numpy())
    assert len({tuple(row) for row in store.numpy()}) == 6  # each step its own draw
    with sampler.block_store(store, first):  # while a block is traced: draw slices the store
        np.testing.assert_array_equal(sampler.draw(tf.stack([seed, first + 4])).numpy(), store[4].numpy())
    np.testing.assert_array_equal(sampler.draw(tf.stack([seed, first + 4])).numpy(), store[4].numpy())
