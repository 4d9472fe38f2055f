"""Simple session-based baselines, judged by exactly the same full-ranking metrics as GRU4Rec.

Every baseline fits on the train split and, for every position of every test session, scores ALL
items from the session prefix; `metrics.RankingMetrics` ranks the true next item with the same tie
mode as the model's evaluation. Predictions are the same (input, target) pairs as the model's.

- pop: most popular items (train events).
- spop: session popularity: items already in the session by how often they occurred, the rest by
  global popularity (which also breaks ties among the session's items).
- itemknn: the baseline of the GRU4Rec paper: items similar to the LAST item, similarity =
  co-occurrence in train sessions / (supp_i^alpha * supp_j^(1-alpha) + lambda), supp = sessions
  containing the item (alpha 0.5, lambda 0 is the cosine of binary session vectors); the item itself
  is excluded and only the `knn_neighbors` most similar are kept.
- vsknn: vector multiplied session-kNN (Ludewig & Jannach): the prefix is a vector whose item at
  position p of t weighs p/t (latest occurrence); similarity to a train session = sum of the weights
  of the items they share. Candidates are the `knn_sample` most recent train sessions sharing an item;
  the `knn_neighbors` most similar (ties: more recent) vote for their items with their similarity.

Vectorised with numpy and TensorFlow sparse matmuls (no scipy): predictions are scored in chunks of
whole sessions, prefix statistics by cumulative sums along the chunk.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import tensorflow as tf

from sbrjob.config import EvalConfig
from sbrjob.errors import SbrjobError
from sbrjob.metrics import RankingMetrics
from sbrjob.progress import Bar

log = logging.getLogger("sbrjob.baselines")

CHUNK_CELLS = 1 << 23  # ~32 MB of float32 per dense [rows, n_items] chunk
DENSE_CELLS = 1 << 26  # V-SKNN keeps a dense session x item matrix up to 256 MB


@dataclass(frozen=True)
class Sessions:
    """A split as flat item indices with session offsets (`start[s]:start[s+1]`)."""

    item: np.ndarray  # int32
    start: np.ndarray  # int64 [n_sessions + 1]
    last_time: np.ndarray  # float64 [n_sessions]: time of each session's last event

    @classmethod
    def from_frame(cls, df) -> "Sessions":
        session = df["session"].to_numpy(np.int64)
        if session.size and np.any(session[1:] < session[:-1]):
            raise SbrjobError("split rows are not sorted by session; re-run `sbrjob prepare --force`")
        _, first = np.unique(session, return_index=True)
        start = np.append(first, session.size).astype(np.int64)
        times = df["time"].to_numpy(np.float64) if "time" in df else np.arange(session.size, dtype=np.float64)
        last = times[start[1:] - 1] if session.size else np.zeros(0)
        return cls(df["item"].to_numpy(np.int32), start, last)

    @classmethod
    def from_lists(cls, sessions: list[list[int]]) -> "Sessions":
        lengths = [len(s) for s in sessions]
        start = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        item = np.concatenate([np.asarray(s, np.int32) for s in sessions]) if sessions else np.zeros(0, np.int32)
        return cls(item, start, np.arange(len(sessions), dtype=np.float64))

    @property
    def n(self) -> int:
        return len(self.start) - 1

    @property
    def pairs(self) -> int:
        return int(np.maximum(np.diff(self.start) - 1, 0).sum())

    def session_items(self, n_items: int) -> tf.SparseTensor:
        """Binary [n_sessions, n_items] matrix, rows ordered oldest -> most recent (by last event)."""
        order = np.argsort(self.last_time, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(self.n)
        rows = np.repeat(rank, np.diff(self.start))
        pairs = np.unique(rows.astype(np.int64) * n_items + self.item)
        idx = np.stack([pairs // n_items, pairs % n_items], axis=1)
        return tf.SparseTensor(idx, tf.ones(len(pairs), tf.float32), [self.n, n_items])


@dataclass(frozen=True)
class Chunk:
    """Whole sessions' events; each prediction row r reads `item[rows[r]]` (the last event of its
    prefix), whose session starts at `item[first[r]]`; the target is `item[rows[r] + 1]`."""

    item: np.ndarray
    rows: np.ndarray
    first: np.ndarray
    starts: np.ndarray  # session offsets within the chunk [sessions + 1]

    @property
    def targets(self) -> np.ndarray:
        return self.item[self.rows + 1]

    def one_hot(self, n_items: int, values: np.ndarray) -> np.ndarray:
        """Dense [events, n_items] with `values[e]` at (e, item[e])."""
        out = np.zeros((len(self.item), n_items), np.float32)
        out[np.arange(len(self.item)), self.item] = values
        return out

    def seen(self, n_items: int) -> np.ndarray:
        """Bool [predictions, n_items]: the items of each prediction's prefix (`eval.exclude_seen`)."""
        counts = np.cumsum(self.one_hot(n_items, np.ones(len(self.item), np.float32)), axis=0)
        before = np.where((self.first > 0)[:, None], counts[np.maximum(self.first - 1, 0)], 0.0)
        return counts[self.rows] - before > 0


def chunks(sessions: Sessions, n_items: int, cells: int = CHUNK_CELLS) -> Iterator[Chunk]:
    """Groups of whole sessions whose dense [events, n_items] work area stays near `cells`."""
    budget = max(1, cells // max(n_items, 1))
    s = 0
    while s < sessions.n:
        e = s + 1
        while e < sessions.n and sessions.start[e + 1] - sessions.start[s] <= budget:
            e += 1
        lo, hi = sessions.start[s], sessions.start[e]
        starts = sessions.start[s:e + 1] - lo
        lengths = np.diff(starts)
        rows = np.concatenate([np.arange(a, b - 1) for a, b in zip(starts[:-1], starts[1:])]) \
            if e > s else np.zeros(0, np.int64)
        first = np.repeat(starts[:-1], np.maximum(lengths - 1, 0))
        yield Chunk(sessions.item[lo:hi], rows.astype(np.int64), first.astype(np.int64), starts.astype(np.int64))
        s = e


# ---------------------------------------------------------------- the baselines


class Pop:
    name = "pop"

    def fit(self, train: Sessions, n_items: int) -> "Pop":
        self.n_items = n_items
        self.support = np.bincount(train.item, minlength=n_items).astype(np.float32)
        return self

    def score(self, chunk: Chunk) -> np.ndarray:
        return np.broadcast_to(self.support, (len(chunk.rows), self.n_items))


class SPop(Pop):
    name = "spop"

    def score(self, chunk: Chunk) -> np.ndarray:
        # global popularity scaled into [0, 1): it orders items the session has not shown and breaks
        # ties among those it has, never outweighing one more occurrence in the session
        tie_break = self.support / (self.support.max() + 1.0)
        counts = np.cumsum(chunk.one_hot(self.n_items, 1.0), axis=0)
        before = np.where(chunk.first[:, None] > 0, counts[np.maximum(chunk.first - 1, 0)], 0.0)
        return counts[chunk.rows] - before + tie_break


class ItemKNN:
    name = "itemknn"

    def __init__(self, neighbors: int = 100, lam: float = 20.0, alpha: float = 0.5):
        self.neighbors, self.lam, self.alpha = neighbors, lam, alpha

    def fit(self, train: Sessions, n_items: int) -> "ItemKNN":
        self.n_items = n_items
        x = train.session_items(n_items)
        supp = tf.sparse.reduce_sum(x, axis=0).numpy().astype(np.float64)  # sessions per item
        k = min(self.neighbors, max(n_items - 1, 1))
        self.nbr_idx = np.zeros((n_items, k), np.int32)
        self.nbr_sim = np.zeros((n_items, k), np.float32)
        step = max(1, min(n_items, CHUNK_CELLS // max(train.n, n_items, 1)))
        for lo in range(0, n_items, step):
            hi = min(lo + step, n_items)
            cols = tf.sparse.to_dense(tf.sparse.slice(x, [0, lo], [train.n, hi - lo]))
            co = tf.sparse.sparse_dense_matmul(x, cols, adjoint_a=True).numpy().T.astype(np.float64)  # [rows, n]
            denom = supp[lo:hi, None] ** self.alpha * supp[None, :] ** (1.0 - self.alpha) + self.lam
            sim = np.divide(co, denom, out=np.zeros_like(co), where=denom > 0)
            sim[np.arange(hi - lo), np.arange(lo, hi)] = 0.0  # an item is not its own neighbour
            top = tf.math.top_k(sim.astype(np.float32), k=k)
            self.nbr_idx[lo:hi], self.nbr_sim[lo:hi] = top.indices.numpy(), top.values.numpy()
        return self

    def score(self, chunk: Chunk) -> np.ndarray:
        last = chunk.item[chunk.rows]
        out = np.zeros((len(last), self.n_items), np.float32)
        out[np.arange(len(last))[:, None], self.nbr_idx[last]] = self.nbr_sim[last]
        return out


class VSKNN:
    name = "vsknn"

    def __init__(self, neighbors: int = 100, sample: int = 1000):
        self.neighbors, self.sample = neighbors, sample

    def fit(self, train: Sessions, n_items: int) -> "VSKNN":
        self.n_items, self.n_sessions = n_items, train.n
        x = train.session_items(n_items)  # rows: oldest -> most recent
        session, item = x.indices.numpy().T
        self.sess_ptr = np.searchsorted(session, np.arange(train.n + 1))  # session -> its items
        self.sess_items = item.astype(np.int64)
        by_item = np.lexsort((session, item))  # item -> the sessions holding it (inverted index)
        self.item_ptr = np.searchsorted(item[by_item], np.arange(n_items + 1))
        self.item_sess = session[by_item].astype(np.int64)
        self.dense = None  # dense copy for matmul votes when small enough
        if train.n * n_items <= DENSE_CELLS:
            self.dense = np.zeros((train.n, n_items), np.float32)
            self.dense[session, item] = 1.0
        return self

    def similarities(self, item: np.ndarray, starts: np.ndarray) -> np.ndarray:
        """[prediction rows, train sessions]: sum of the prefix weights p/t of the items they share.

        Built incrementally along each session: when item x arrives at position t its weight
        becomes t (replacing an earlier occurrence's), which adds t - previous position to every
        train session holding x; a cumulative sum then gives every prefix at once.
        """
        n_ev = len(item)
        lengths = np.diff(starts)
        sess = np.repeat(np.arange(len(lengths)), lengths)
        pos = np.arange(n_ev) - starts[sess] + 1  # 1-based position in the session
        order = np.lexsort((np.arange(n_ev), item, sess))
        same = (sess[order][1:] == sess[order][:-1]) & (item[order][1:] == item[order][:-1])
        prev = np.zeros(n_ev, np.int64)
        prev[order[1:][same]] = pos[order[:-1][same]]
        count = self.item_ptr[item + 1] - self.item_ptr[item]
        event = np.repeat(np.arange(n_ev), count)
        offset = np.repeat(self.item_ptr[item] - np.cumsum(count) + count, count) + np.arange(count.sum())
        delta = np.zeros((n_ev, self.n_sessions), np.float32)
        delta[event, self.item_sess[offset]] = (pos - prev)[event]
        total = np.cumsum(delta, axis=0)
        rows = np.flatnonzero(pos < lengths[sess])  # every event but a session's last is a prefix end
        first = starts[sess[rows]]
        before = np.where((first > 0)[:, None], total[np.maximum(first - 1, 0)], 0.0)
        return (total[rows] - before) / pos[rows][:, None]

    def votes(self, sims: np.ndarray) -> np.ndarray:
        """Item scores [rows, n_items] from the neighbours chosen among the recent candidates."""
        shares = sims > 0
        recent = np.cumsum(shares[:, ::-1], axis=1)  # most recent first: how many sharing sessions so far
        masked = np.where(shares[:, ::-1] & (recent <= self.sample), sims[:, ::-1], -1.0).astype(np.float32)
        k = min(self.neighbors, self.n_sessions)
        top = tf.math.top_k(masked, k=k)  # ties: lower index = more recent session
        weight, session = top.values.numpy(), self.n_sessions - 1 - top.indices.numpy()
        row, col = np.nonzero(weight > 0)
        session, weight = session[row, col], weight[row, col]
        count = self.sess_ptr[session + 1] - self.sess_ptr[session]
        if self.dense is not None and count.sum() * 1000 > len(sims) * self.n_sessions * self.n_items:
            # long neighbour sessions (MovieLens): one BLAS matmul beats scattering every vote
            nbr = np.zeros((len(sims), self.n_sessions), np.float32)
            nbr[row, session] = weight
            return nbr @ self.dense
        offset = np.repeat(self.sess_ptr[session] - np.cumsum(count) + count, count) + np.arange(count.sum())
        flat = np.repeat(row, count) * self.n_items + self.sess_items[offset]
        scores = np.bincount(flat, weights=np.repeat(weight, count), minlength=len(sims) * self.n_items)
        return scores.reshape(len(sims), self.n_items).astype(np.float32)

    def score(self, chunk: Chunk) -> np.ndarray:
        out = np.zeros((len(chunk.rows), self.n_items), np.float32)
        budget = max(1, CHUNK_CELLS // max(self.n_sessions, 1))  # events per [events, sessions] area
        a, done = 0, 0
        n_chunk = len(chunk.starts) - 1
        while a < n_chunk:
            b = a + 1
            while b < n_chunk and chunk.starts[b + 1] - chunk.starts[a] <= budget:
                b += 1
            lo, hi = chunk.starts[a], chunk.starts[b]
            sims = self.similarities(chunk.item[lo:hi], chunk.starts[a:b + 1] - lo)
            out[done:done + len(sims)] = self.votes(sims)
            done += len(sims)
            a = b
        return out


def make_baseline(name: str, ev: EvalConfig):
    if name == "pop":
        return Pop()
    if name == "spop":
        return SPop()
    if name == "itemknn":
        return ItemKNN(ev.knn_neighbors, ev.itemknn_lambda, ev.itemknn_alpha)
    if name == "vsknn":
        return VSKNN(ev.knn_neighbors, ev.knn_sample)
    raise SbrjobError(f"eval.baselines: unknown baseline {name!r}; use pop, spop, itemknn, vsknn")


def evaluate_baseline(model, test: Sessions, metrics: RankingMetrics, bar: Bar | None = None,
                      exclude_seen: bool = False) -> RankingMetrics:
    """Score every (prefix, next item) pair of `test` with a fitted baseline into `metrics`
    (with `exclude_seen`, the prefix's items score -inf, as in `evaluate.evaluate_blocks`)."""
    done = 0
    for chunk in chunks(test, metrics.n_items):
        if len(chunk.rows):
            scores = np.ascontiguousarray(model.score(chunk), np.float32)
            if exclude_seen:
                scores[chunk.seen(metrics.n_items)] = -np.inf
            metrics.add(scores, chunk.targets)
            done += len(chunk.rows)
            if bar is not None:
                bar.update(done)
    return metrics


# ---------------------------------------------------------------- the command


def comparison_table(results: dict[str, dict], cutoffs: list[int]) -> str:
    """Markdown table: one row per method (GRU4Rec first when present)."""
    kmax = max(cutoffs)
    cols = [f"{m}@{k}" for m in ("recall", "mrr") for k in cutoffs] + [f"ndcg@{kmax}", f"coverage@{kmax}",
                                                                     f"popularity@{kmax}"]
    lines = ["| method | events | " + " | ".join(cols) + " |", "|---|---:|" + "---:|" * len(cols)]
    for name, r in results.items():
        cells = [f"{r[c]:.4f}" if isinstance(r.get(c), (int, float)) else "-" for c in cols]
        lines.append(f"| {name} | {r.get('events', '-')} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run_baselines(ev: EvalConfig, train: Sessions, test: Sessions, support: np.ndarray) -> dict[str, dict]:
    """Fit each baseline of `ev.baselines` on `train` and evaluate it on every pair of `test`;
    returns {name: metrics} (with the seconds each took)."""
    n_items = len(support)
    results = {}
    for name in ev.baselines:
        t0 = time.perf_counter()
        log.info("baselines: %s fits on %s train sessions", name, f"{train.n:,}")
        model = make_baseline(name, ev).fit(train, n_items)
        bar = Bar(f"baselines {name}", test.pairs, "test events")
        metrics = evaluate_baseline(model, test, RankingMetrics(n_items, ev.cutoffs, ev.ties, support,
                                                                ev.beyond_accuracy), bar, ev.exclude_seen)
        bar.close()
        if metrics.events != test.pairs:
            raise SbrjobError(f"{name}: evaluated {metrics.events} events, the test split has {test.pairs} pairs")
        results[name] = {"split": "test", **metrics.result(), "seconds": round(time.perf_counter() - t0, 3)}
        log.info("baselines: %s fitted and evaluated on %s test events in %.1f s", name, f"{test.pairs:,}",
                 results[name]["seconds"])
    return results
