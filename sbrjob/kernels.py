"""The CPU kernel behind full-ranking metrics: target ranks and top-k lists in one pass per row.

On a CPU, TF's TopK kernel costs more per 3.7k-item row (about 14 us) than scoring the row, and
XLA's reductions read the score matrix once more for the ranks. This numba kernel reads each row
once for both (counts against the target's score, maxima of groups of 32 items), then finds the
top k among the few groups whose maximum reaches the k-th largest group maximum (a lower bound
of the k-th largest score). It takes 3-6 us of one core per 3.7k-item row (the row in L2 or in
L3) and splits rows over the CPU cores.

Results equal `metrics.target_ranks` and `tf.math.top_k` (highest first, lower index first among
equal scores). NaN scores enter a top-k list only when fewer than k others are left; a NaN target
score gets the worst rank (n_items), as in TF.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:
    import numba
except ImportError:  # the TF path in metrics.py takes over
    numba = None

GROUP = 32  # items per group: two cache lines of float32 scores
TIES = {"standard": 0, "conservative": 1, "median": 2}
NEG_INF = np.float32(-np.inf)
MIN_ROWS_PER_THREAD = 64  # fewer rows are not worth a thread hand-off
available = numba is not None


def _jit(fn):
    if not available:
        return fn
    try:  # compiled code is cached on disk (beside this file, in NUMBA_CACHE_DIR or ~/.cache)
        return numba.njit(nogil=True, cache=True)(fn)
    except RuntimeError:  # nowhere writable to cache: compile in every process (about 5 s)
        return numba.njit(nogil=True)(fn)


@_jit
def _kth_largest(a, k):
    """The k-th largest value of `a` (k >= 1), by quickselect; reorders `a`."""
    lo, hi, want = 0, len(a) - 1, k - 1
    while lo < hi:
        pivot = a[(lo + hi) >> 1]
        i, j = lo, hi
        while i <= j:
            while a[i] > pivot:
                i += 1
            while a[j] < pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if want <= j:
            hi = j
        elif want >= i:
            lo = i
        else:
            break
    return a[want]


@_jit
def _rank_top_rows(scores, targets, tie, ranks, top):
    """Fill ranks[r] (by tie mode) and top[r, :] for every row r of `scores`."""
    b, n = scores.shape
    k = top.shape[1]
    groups = (n + GROUP - 1) // GROUP
    gmax = np.empty(groups, np.float32)
    scratch = np.empty(groups, np.float32)
    vals = np.empty(max(k, 1), np.float32)
    idx = np.empty(max(k, 1), np.int32)
    for r in range(b):
        s = scores[r]
        target = s[targets[r]]
        higher = 0
        at_least = 0
        for q in range(n):  # vectorised counts; the row stays in L1 for the group maxima below
            v = s[q]
            higher += np.int32(v > target)
            at_least += np.int32(v >= target)
        full = n // GROUP
        for g in range(full):
            m = NEG_INF
            for q in range(g * GROUP, g * GROUP + GROUP):
                v = s[q]
                m = v if v > m else m  # NaN never becomes the maximum
            gmax[g] = m
        if groups > full:
            m = NEG_INF
            for q in range(full * GROUP, n):
                v = s[q]
                m = v if v > m else m
            gmax[full] = m
        if target != target:
            ranks[r] = n
        elif tie == 0:
            ranks[r] = higher + 1
        elif tie == 1:
            ranks[r] = at_least
        else:
            ranks[r] = higher + (at_least - higher + 1) / 2.0
        if k == 0:
            continue
        bound = NEG_INF
        if groups >= k:  # k distinct items reach the k-th largest group maximum
            scratch[:] = gmax
            bound = _kth_largest(scratch, k)
        # the top k among the candidates, kept sorted; visited in item order, so equal scores keep
        # the lower index first, and an equal score never displaces a kept one
        kept = 0
        for g in range(groups):
            if gmax[g] >= bound:
                for q in range(g * GROUP, min(g * GROUP + GROUP, n)):
                    v = s[q]
                    if v >= bound and (kept < k or v > vals[k - 1]):
                        p = kept if kept < k else k - 1
                        kept = min(kept + 1, k)
                        while p > 0 and vals[p - 1] < v:
                            vals[p] = vals[p - 1]
                            idx[p] = idx[p - 1]
                            p -= 1
                        vals[p] = v
                        idx[p] = q
        q = 0
        while kept < k:  # only NaN scores are left: lowest indices first
            if s[q] != s[q]:
                idx[kept] = q
                kept += 1
            q += 1
        top[r, :] = idx[:k]


_POOL: ThreadPoolExecutor | None = None


def _forget_pool() -> None:  # a forked child has none of the parent's threads: start a new pool
    global _POOL
    _POOL = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pool)


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def rank_and_top(scores: np.ndarray, targets: np.ndarray, ties: str, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ranks float32 [b], top-k item indices int32 [b, k]) of a [b, n_items] score matrix."""
    global _POOL
    scores = np.ascontiguousarray(scores, dtype=np.float32)
    targets = np.ascontiguousarray(targets, dtype=np.int64)
    b, n = scores.shape
    if not 0 <= k <= n:
        raise ValueError(f"k={k} must be within 0..{n} (the number of items)")
    if b and (targets.min() < 0 or targets.max() >= n):
        bad = targets.min() if targets.min() < 0 else targets.max()
        raise ValueError(f"target item index {bad} outside 0..{n - 1}")
    ranks = np.empty(b, np.float32)
    top = np.empty((b, k), np.int32)
    parts = min(_threads(), max(1, b // MIN_ROWS_PER_THREAD))
    if parts == 1:
        _rank_top_rows(scores, targets, TIES[ties], ranks, top)
        return ranks, top
    if _POOL is None or _POOL._max_workers < parts:  # noqa: SLF001 (grow once, keep it)
        _POOL = ThreadPoolExecutor(max_workers=parts, thread_name_prefix="sbrjob-rank")
    cuts = np.linspace(0, b, parts + 1).astype(int)
    jobs = [_POOL.submit(_rank_top_rows, scores[lo:hi], targets[lo:hi], TIES[ties], ranks[lo:hi], top[lo:hi])
            for lo, hi in zip(cuts[:-1], cuts[1:])]
    for job in jobs:
        job.result()
    return ranks, top


def warm_up() -> None:
    """Compile the kernel now (about 5 s) into numba's on-disk cache: images call this at build time."""
    rank_and_top(np.zeros((1, 2), np.float32), np.zeros(1, np.int64), "median", 1)
