"""Full-ranking next-item metrics, accumulated over a stream of predictions.

Every prediction scores ALL items; the rank of the true next item decides Recall@K (hit rate),
MRR@K and NDCG@K. Ties between the target's score and other items' scores are resolved by a
declared mode (the official GRU4Rec evaluation):

- standard:     rank = #(score > target) + 1            (ties counted in the target's favour)
- conservative: rank = #(score >= target)               (ties against it; the default)
- median:       rank = #(score > target) + (#ties + 1)/2 (the mean of the two)

A NaN target score gets the worst rank (n_items): a broken model must not look good.

`RankingMetrics.update` works inside `tf.function` loops and returns small per-batch totals; `merge`
adds them on the host in float64 so millions of events sum exactly. On a CPU the ranks and top-K
lists come from the numba kernel in `kernels.py` (through `tf.numpy_function`; TF's TopK cost more
per row than the scoring); elsewhere, or with `cpu_kernel=False`, from TF ops. Both give the same
numbers (tested).
Besides accuracy it tracks item coverage@K (share of the catalogue that appears in any top-K list)
and popularity@K (mean of support / max support over the recommended items).
"""

from __future__ import annotations

import math
from typing import Mapping, Optional, Sequence

import numpy as np
import tensorflow as tf

from sbrjob import kernels

TIE_MODES = tuple(kernels.TIES)  # ("standard", "conservative", "median")


def target_ranks(scores: tf.Tensor, targets: tf.Tensor, ties: str = "conservative") -> tf.Tensor:
    """1-based rank of each row's target among all items' scores: float32 [b] (median may be x.5)."""
    if ties not in TIE_MODES:
        raise ValueError(f"ties must be one of {TIE_MODES}, got {ties!r}")
    scores = tf.cast(scores, tf.float32)
    target_score = tf.gather(scores, tf.cast(targets, tf.int32)[:, None], batch_dims=1)  # [b, 1]

    def count(mask):
        return tf.reduce_sum(tf.cast(mask, tf.float32), axis=1)

    if ties == "standard":
        ranks = count(scores > target_score) + 1.0
    elif ties == "conservative":  # one pass: the target itself is among the >=
        ranks = count(scores >= target_score)
    else:
        higher = count(scores > target_score)
        ranks = higher + (count(scores == target_score) + 1.0) / 2.0  # equal includes the target
    n_items = tf.cast(tf.shape(scores)[1], tf.float32)
    return tf.where(tf.math.is_nan(target_score[:, 0]), n_items, ranks)


def top_k_indices(scores: tf.Tensor, k: int, group: int = 32) -> tf.Tensor:
    """Indices of the k highest scores per row, highest first, lower index first among equals
    (as `tf.math.top_k`), computed in two stages because the CPU TopK kernel is slow on wide rows.

    Items are cut into groups of `group`; the k groups with the highest maxima contain the top k
    items (a group holding one of them has a maximum at least the k-th score), so the exact top k
    is taken over those k*group candidates only, kept in item order so ties still favour low indices.
    """
    n = scores.shape[-1]
    if n is None or n <= 4 * k * group:
        return tf.math.top_k(scores, k=k).indices
    pad = -n % group
    padded = tf.pad(scores, [[0, 0], [0, pad]], constant_values=float("-inf"))
    grouped = tf.reshape(padded, [tf.shape(scores)[0], (n + pad) // group, group])
    best_groups = tf.sort(tf.math.top_k(tf.reduce_max(grouped, axis=2), k=k).indices, axis=1)  # item order
    candidates = tf.gather(grouped, best_groups, batch_dims=1)  # [b, k, group]
    flat = tf.reshape(candidates, [tf.shape(scores)[0], k * group])
    pick = tf.math.top_k(flat, k=k).indices
    item = tf.reshape(best_groups[:, :, None] * group + tf.range(group)[None, None, :], [-1, k * group])
    return tf.gather(item, pick, batch_dims=1)


def rank_metrics(ranks: tf.Tensor, k: int) -> dict[str, tf.Tensor]:
    """Per-prediction hit, reciprocal rank and NDCG at cutoff k (one relevant item): each [b]."""
    hit = tf.cast(ranks <= k, tf.float32)
    return {
        "recall": hit,
        "mrr": hit / ranks,
        "ndcg": hit / (tf.math.log(ranks + 1.0) / math.log(2.0)),
    }


class RankingMetrics:
    """Streaming full-ranking metrics at several cutoffs, micro-averaged over weighted events.

    Usage: `acc = m.update(m.initial(), scores, targets, weights)` (any number of times, in or out
    of a tf.function), then `m.merge(acc)` on the host, and finally `m.result()`.
    """

    ACCURACY = ("recall", "mrr", "ndcg")

    def __init__(self, n_items: int, cutoffs: Sequence[int] = (1, 5, 10, 20), ties: str = "conservative",
                 item_support: Optional[np.ndarray] = None, beyond_accuracy: bool = True,
                 cpu_kernel: Optional[bool] = None):
        if ties not in TIE_MODES:
            raise ValueError(f"ties must be one of {TIE_MODES}, got {ties!r}")
        self.n_items = int(n_items)
        self.cutoffs = sorted(set(int(k) for k in cutoffs))
        self.top = min(max(self.cutoffs), self.n_items)
        self.ties = ties
        self.beyond_accuracy = beyond_accuracy  # coverage/popularity need a top-K list per prediction
        if cpu_kernel is None:  # ranks and top-K lists by the numba kernel, unless the scores are on a GPU
            cpu_kernel = kernels.available and not tf.config.list_logical_devices("GPU")
        if cpu_kernel and not kernels.available:
            raise ValueError("cpu_kernel=True needs numba (pip install numba)")
        self.cpu_kernel = cpu_kernel
        self.popularity = None
        if item_support is not None and beyond_accuracy:
            support = np.asarray(item_support, dtype=np.float64)
            if support.shape != (self.n_items,):
                raise ValueError(f"item_support has shape {support.shape}, expected ({self.n_items},)")
            self.popularity = tf.constant(support / max(support.max(), 1.0), tf.float32)
            self._host_popularity = self.popularity.numpy().astype(np.float64)
        self.reset()

    # -- graph part -----------------------------------------------------------------------------
    def initial(self) -> dict[str, tf.Tensor]:
        nk = len(self.cutoffs)
        acc = {"events": tf.zeros([], tf.float32),
               "covered": tf.zeros([nk, self.n_items], tf.float32)}
        for name in self.ACCURACY + ("popularity",):
            acc[name] = tf.zeros([nk], tf.float32)
        return acc

    def update(self, acc: Mapping[str, tf.Tensor], scores: tf.Tensor, targets: tf.Tensor,
               weights: Optional[tf.Tensor] = None) -> dict[str, tf.Tensor]:
        """Add a batch of predictions: scores [b, n_items], targets [b] int, weights [b] (0 = padding)."""
        scores = tf.cast(scores, tf.float32)
        targets = tf.cast(targets, tf.int32)
        w = tf.ones_like(scores[:, 0]) if weights is None else tf.cast(weights, tf.float32)
        if self.cpu_kernel:
            names = sorted(acc)
            totals = tf.numpy_function(self._host_totals, [scores, targets, w], [tf.float32] * len(names),
                                       stateful=False)
            return {name: acc[name] + tf.reshape(t, acc[name].shape) for name, t in zip(names, totals)}
        acc = self.add_ranks(acc, target_ranks(scores, targets, self.ties), w)
        return self.add_lists(acc, top_k_indices(scores, self.top), w) if self.beyond_accuracy else acc

    def _host_totals(self, scores: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> list[np.ndarray]:
        """`update`'s totals on the host (as `initial()`'s keys, sorted), from the numba kernel's ranks
        and top-K lists; the same formulas as `add_ranks`/`add_lists`, summed in float64."""
        ranks, top = kernels.rank_and_top(scores, targets, self.ties, self.top if self.beyond_accuracy else 0)
        ranks, w = ranks.astype(np.float64), weights.astype(np.float64)
        out = {"events": w.sum()}
        hits = [(ranks <= k) * w for k in self.cutoffs]
        out["recall"] = [h.sum() for h in hits]
        out["mrr"] = [(h / ranks).sum() for h in hits]
        out["ndcg"] = [(h / np.log2(ranks + 1.0)).sum() for h in hits]
        nk = len(self.cutoffs)
        out["covered"], out["popularity"] = np.zeros((nk, self.n_items)), np.zeros(nk)
        if self.beyond_accuracy:
            shown = [top[:, :min(k, self.top)] for k in self.cutoffs]
            out["covered"] = [np.bincount(s.ravel(), np.repeat(w, s.shape[1]), self.n_items) for s in shown]
            if self.popularity is not None:
                out["popularity"] = [(self._host_popularity[s].mean(axis=1) * w).sum() for s in shown]
        return [np.asarray(out[name], np.float32) for name in sorted(out)]

    def add_ranks(self, acc, ranks, weights) -> dict[str, tf.Tensor]:
        """The accuracy part of `update` (events, recall, mrr, ndcg), from the targets' ranks."""
        out = dict(acc, events=acc["events"] + tf.reduce_sum(weights))
        for name in self.ACCURACY:
            out[name] = acc[name] + tf.stack([tf.reduce_sum(rank_metrics(ranks, k)[name] * weights)
                                              for k in self.cutoffs])
        return out

    def add_lists(self, acc, top, weights) -> dict[str, tf.Tensor]:
        """The beyond-accuracy part of `update` (coverage, popularity), from top-K lists [b, top]."""
        popularity, covered = [], []
        for k in self.cutoffs:
            shown = top[:, :min(k, self.top)]
            covered.append(tf.math.unsorted_segment_sum(
                tf.reshape(tf.broadcast_to(weights[:, None], tf.shape(shown)), [-1]),
                tf.reshape(shown, [-1]), self.n_items))
            popularity.append(tf.zeros([]) if self.popularity is None else tf.reduce_sum(
                tf.reduce_mean(tf.gather(self.popularity, shown), axis=1) * weights))
        return dict(acc, popularity=acc["popularity"] + tf.stack(popularity),
                    covered=acc["covered"] + tf.stack(covered))

    # -- host side: exact streaming totals ----------------------------------------------------
    def reset(self) -> None:
        nk = len(self.cutoffs)
        self._events = 0.0
        self._sums = {name: np.zeros(nk, np.float64) for name in self.ACCURACY + ("popularity",)}
        self._covered = np.zeros((nk, self.n_items), dtype=bool)

    def merge(self, acc: Mapping[str, tf.Tensor]) -> None:
        """Add the totals of one or more `update` calls (e.g. one block) to the running result."""
        self._events += float(np.asarray(acc["events"]))
        for name in self._sums:
            self._sums[name] += np.asarray(acc[name], dtype=np.float64)
        self._covered |= np.asarray(acc["covered"]) > 0

    def add(self, scores, targets, weights=None) -> None:
        """Eager convenience: update + merge for one batch (used by baselines)."""
        self.merge(self._update_fn(tf.convert_to_tensor(scores, tf.float32),
                                   tf.convert_to_tensor(targets, tf.int32),
                                   tf.ones([np.shape(targets)[0]], tf.float32) if weights is None
                                   else tf.convert_to_tensor(weights, tf.float32)))

    @property
    def _update_fn(self):
        if not hasattr(self, "_compiled"):
            self._compiled = tf.function(lambda s, t, w: self.update(self.initial(), s, t, w),
                                         reduce_retracing=True)
        return self._compiled

    @property
    def events(self) -> int:
        return int(round(self._events))

    def result(self) -> dict:
        """{"events", "ties", "recall@K", "mrr@K", "ndcg@K"[, "coverage@K"[, "popularity@K"]]}."""
        n = max(self._events, 1.0)
        out: dict = {"events": self.events, "ties": self.ties}
        names = self.ACCURACY + (("popularity",) if self.popularity is not None else ())
        for name in self.ACCURACY:
            for i, k in enumerate(self.cutoffs):
                out[f"{name}@{k}"] = float(self._sums[name][i] / n)
        for i, k in enumerate(self.cutoffs if self.beyond_accuracy else []):
            out[f"coverage@{k}"] = float(self._covered[i].mean())
        if "popularity" in names:
            for i, k in enumerate(self.cutoffs):
                out[f"popularity@{k}"] = float(self._sums["popularity"][i] / n)
        return out
