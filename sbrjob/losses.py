"""GRU4Rec's training losses over sampled columns: mini-batch negatives plus shared extra samples.

Per step the scored columns are the targets of all lanes of the (global) batch, then `n_sample`
extra items drawn with probability ∝ support**alpha BEFORE scoring, so only B + n_sample columns
are ever scored. Lane i's own target is column `offset + i` (the "diagonal"). Accidental hits
(another lane's target or a sample equal to my target) are kept, as in the official code.
Columns of padded lanes (weight 0) are masked out of every lane's softmax.

All functions return one loss per lane; the caller sums `weight * loss` over lanes and divides
by the nominal global batch size.
"""

from __future__ import annotations

import contextlib

import numpy as np
import tensorflow as tf

from sbrjob.model import _mix32, _uint32, hash_uniform, seed_words

MASKED = -1e9  # a finite "minus infinity": exp() is exactly 0 and 0 * MASKED stays finite


class NegativeSampler:
    """Draws `n_sample` items ∝ support**alpha with stateless randomness: a (seed, step) pair fixes the draw.

    Inverse-CDF sampling (searchsorted) of hashed uniforms costs O(n_sample log n_items) per step, independent of the
    catalogue's size, and every replica given the same (seed, step) draws the same items.

    The training block draws the samples of all its T steps at once (`draw_steps`, a [T, n_sample]
    store sliced per step: one hash pass and one searchsorted per block instead of ~25 small ops per
    step). Row t of the store is exactly `draw([seed, first_step + t])`, so the random stream, a
    resumed run and every replica's draw are the same as with per-step draws.
    """

    def __init__(self, support: np.ndarray, n_sample: int, alpha: float):
        support = np.maximum(np.asarray(support, np.float64), 1.0)  # an item seen 0 times still has Q > 0
        self.n_sample = int(n_sample)
        weights = support ** alpha
        q_sample = weights / weights.sum()
        pop = support / support.sum()
        cdf = np.cumsum(q_sample)
        cdf /= cdf[-1]
        self.cdf = tf.constant(cdf, tf.float32)
        self.log_q_sample = tf.constant(np.log(q_sample), tf.float32)  # Q of an extra sample
        self.log_pop = tf.constant(np.log(pop), tf.float32)  # Q of a mini-batch column (targets ~ popularity)
        self.log_count = tf.constant(np.log(support), tf.float32)  # the official code's unnormalised log c
        self.alpha = float(alpha)
        self.n_items = len(support)
        self._store = None  # (samples [T, n_sample], first_step) while a block is traced

    def _lookup(self, u) -> tf.Tensor:
        idx = tf.searchsorted(self.cdf, u, side="right", out_type=tf.int32)
        return tf.minimum(idx, self.n_items - 1)

    def draw(self, seed) -> tf.Tensor:
        """`n_sample` item indices (int32) for the step identified by `seed` ([2] ints: seed, step).

        Inside `block_store`, the row of that step is sliced from the block's store instead."""
        if self._store is not None:
            samples, first = self._store
            return samples[tf.cast(tf.cast(seed[1], tf.int64) - first, tf.int32)]
        u = hash_uniform([self.n_sample, 1], seed, salt=1)[:, 0]  # same numbers on every replica, CPU or XLA
        return self._lookup(u)

    def draw_steps(self, seed, first_step, steps: int) -> tf.Tensor:
        """[steps, n_sample] int32: row t equals `draw([seed, first_step + t])`, drawn in one pass.

        The per-step key of `hash_uniform(..., salt=1)` is computed for all steps as a vector, then
        one hash of [steps, n_sample] counters and one searchsorted."""
        seed_lo, seed_hi = seed_words(seed)
        step_lo, step_hi = seed_words(tf.cast(first_step, tf.int64) + tf.range(steps, dtype=tf.int64))
        key = _mix32(seed_lo ^ _uint32((0x9E3779B9 * 2) & 0xFFFFFFFF)[0])  # salt 1
        key = _mix32(key ^ seed_hi)
        key = _mix32(key[None] ^ step_lo)
        key = _mix32(key ^ step_hi)[:, None]  # [steps, 1]
        index = tf.cast(tf.range(self.n_sample), tf.uint32)[None, :]
        h = _mix32(_mix32(index ^ key) + key)
        u = tf.cast(tf.bitwise.right_shift(h, _uint32(8)[0]), tf.float32) * (1.0 / (1 << 24))
        return tf.reshape(self._lookup(tf.reshape(u, [-1])), [steps, self.n_sample])

    @contextlib.contextmanager
    def block_store(self, samples, first_step):
        """While tracing a block: `draw([seed, step])` slices row `step - first_step` of `samples`
        (from `draw_steps(seed, first_step, T)` with the same seed)."""
        self._store = (samples, tf.cast(first_step, tf.int64))
        try:
            yield
        finally:
            self._store = None


def sampled_lane_losses(loss: str, model, h, columns, column_valid, label, log_q=None, logq_weight: float = 0.0,
                        bpreg: float = 0.0) -> tf.Tensor:
    """Loss per lane over the given columns.

    h [b, H]; columns [C] item ids (mini-batch targets then extra samples); column_valid [C] bool
    (False = a padded lane's column); label [b] int: the column holding each lane's target;
    log_q [C]: log sampling probability per column (cross-entropy's logQ correction; up to a constant
    per column group: `train.logq_form` official uses log c and alpha * log c, which shifts in-batch
    against sampled columns by log(N / sum c^alpha) compared with normalising each group).
    """
    scores = model.scores_for(h, columns)  # [b, C], after the final activation
    n_cols = tf.shape(columns)[0]
    is_label = tf.one_hot(label, n_cols, on_value=True, off_value=False, dtype=tf.bool)
    valid = tf.logical_or(column_valid[None, :], is_label)
    if loss == "xe":
        logits = scores if log_q is None or logq_weight == 0 else scores - logq_weight * log_q[None, :]
        logits = tf.where(valid, logits, MASKED)
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=label, logits=logits)
    target_score = tf.reduce_sum(tf.where(is_label, scores, 0.0), axis=1, keepdims=True)
    negative = tf.logical_and(valid, tf.logical_not(is_label))
    # softmax over the negatives only (the target's own column excluded)
    log_s = tf.nn.log_softmax(tf.where(negative, scores, MASKED), axis=1)
    s = tf.where(negative, tf.exp(log_s), 0.0)
    if loss == "bpr-max":
        # -log(sum_j s_j sigmoid(r_t - r_j)) computed in the log domain: never log(0)
        log_terms = tf.where(negative, log_s + tf.math.log_sigmoid(target_score - scores), MASKED)
        return -tf.reduce_logsumexp(log_terms, axis=1) + bpreg * tf.reduce_sum(s * tf.square(scores), axis=1)
    if loss == "top1-max":
        return tf.reduce_sum(s * (tf.sigmoid(scores - target_score) + tf.sigmoid(tf.square(scores))), axis=1)
    raise ValueError(f"unknown sampled loss {loss!r}")


def full_softmax_lane_losses(model, h, targets) -> tf.Tensor:
    """Cross-entropy over every item (`train.loss: softmax`): exact but scores the whole catalogue."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=model.item_scores(h))


def step_lane_losses(train_cfg, sampler: NegativeSampler | None, model, h, targets, batch_targets, batch_valid,
                     offset, sample_seed, extra=None) -> tf.Tensor:
    """One step's per-lane losses as configured.

    targets [b] are this replica's lanes; batch_targets/batch_valid [B] are the whole global batch's
    targets and weight>0 flags (this replica's lanes start at `offset`). `extra`: the step's
    negative samples when already drawn (else drawn here from `sample_seed`).
    """
    if train_cfg.loss == "softmax":
        return full_softmax_lane_losses(model, h, targets)
    valid, log_q = batch_valid, None
    official = train_cfg.logq_form == "official"
    if train_cfg.loss == "xe":
        log_q = tf.gather(sampler.log_count if official else sampler.log_pop, batch_targets)
    if extra is None and sampler is not None and sampler.n_sample > 0:
        extra = sampler.draw(sample_seed)
    columns = batch_targets
    if extra is not None:
        columns = tf.concat([batch_targets, extra], axis=0)
        valid = tf.concat([batch_valid, tf.ones_like(extra, tf.bool)], axis=0)
        if log_q is not None:
            extra_q = sampler.alpha * tf.gather(sampler.log_count, extra) if official else \
                tf.gather(sampler.log_q_sample, extra)
            log_q = tf.concat([log_q, extra_q], axis=0)
    label = offset + tf.range(tf.shape(targets)[0])
    return sampled_lane_losses(train_cfg.loss, model, h, columns, valid, label, log_q=log_q,
                               logq_weight=train_cfg.logq, bpreg=train_cfg.bpreg)
