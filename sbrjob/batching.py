"""Session-parallel layout: which lane plays which session, and the (input, target, reset, weight) steps.

Pure numpy, computed once per export instead of in a Python loop every epoch. For B lanes, each
lane plays sessions one after another; a session of L events gives L-1 steps (predict event t+1
from event t). Sessions enter the lanes in the given order (oldest first by default): the next
session always takes the lane that becomes free first (ties: lowest lane), exactly as the official
GRU4Rec refills finished lanes. So lanes finish within one session's length of each other, and the
tail is padded with zero-weight steps up to a whole number of blocks of T steps. Nothing is dropped.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from sbrjob.errors import SbrjobError


@dataclass(frozen=True)
class Layout:
    """Per-lane step arrays, each `[lanes, steps]` with `steps` a multiple of the block length."""

    input: np.ndarray  # int32 item index fed at this step
    target: np.ndarray  # int32 item index to predict
    reset: np.ndarray  # uint8: 1 = this step starts a session in this lane (zero the state first)
    weight: np.ndarray  # uint8: 0 = padding
    lane_steps: np.ndarray  # int64 [lanes]: real (non-padding) steps per lane
    sessions: int  # sessions laid out (length >= 2)
    events: int  # their events
    pairs: int  # (input, target) pairs = real steps

    @property
    def lanes(self) -> int:
        return self.input.shape[0]

    @property
    def steps(self) -> int:
        return self.input.shape[1]

    @property
    def padding(self) -> float:
        """Fraction of all lane-steps that are zero-weight padding."""
        total = self.lanes * self.steps
        return 0.0 if total == 0 else 1.0 - self.pairs / total


def session_lengths(session: np.ndarray) -> np.ndarray:
    """Events per session id, for rows sorted by session (ids 0..n-1 as in the prepare contract)."""
    session = np.asarray(session)
    if session.size and (session[0] < 0 or np.any(session[1:] < session[:-1])):
        raise SbrjobError("split rows are not sorted by session id (>= 0); re-run `sbrjob prepare`")
    return np.bincount(session) if session.size else np.zeros(0, dtype=np.int64)


def assign_lanes(steps: np.ndarray, lanes: int) -> tuple[np.ndarray, np.ndarray]:
    """Greedy refill: session j (in order) takes the lane free first; returns (lane, start step) per session.

    A heap of keys `finish * lanes + lane` (one int each, so ties go to the lowest lane); the loop
    body is a single C call per session, the per-event work happens vectorised in `layout`.
    """
    if lanes < 1:
        raise ValueError("lanes must be >= 1")
    heap = list(range(lanes))  # every lane free at step 0; a sorted list is a valid heap
    replace = heapq.heapreplace
    keys = np.fromiter((replace(heap, heap[0] + x) for x in (np.asarray(steps, np.int64) * lanes).tolist()),
                       dtype=np.int64, count=len(steps))
    return keys % lanes, keys // lanes


def layout(session: np.ndarray, item: np.ndarray, lanes: int, block_steps: int,
           order: np.ndarray | None = None) -> Layout:
    """Lay out a split's events (rows sorted by session) on `lanes` lanes in blocks of `block_steps`.

    `order` is the sequence in which session ids enter the lanes (default: 0, 1, 2, ... = oldest
    first). Sessions with fewer than 2 events give no step and are skipped.
    """
    item = np.asarray(item, dtype=np.int32)
    lengths = session_lengths(session)
    first = np.cumsum(lengths) - lengths  # row of each session's first event
    if order is None:
        order = np.arange(len(lengths))
    order = order[lengths[order] >= 2]
    steps = lengths[order] - 1
    lane, start = assign_lanes(steps, lanes)
    lane_steps = np.bincount(lane, weights=steps, minlength=lanes).astype(np.int64)
    n_steps = -(-int(lane_steps.max(initial=0)) // block_steps) * block_steps
    size = lanes * n_steps

    # Where every row lands in the flat [lanes * n_steps] layout, all rows at once: row e of a laid
    # out session goes to base[session] + e. Rows that feed no step (a session's last row, sessions
    # too short) go to one extra scratch slot at the end that is cut off afterwards.
    base = size - first  # too-short sessions: their only row -> scratch
    base[order] = lane * n_steps + start - first[order]
    flat = np.repeat(base, lengths) + np.arange(len(item))
    flat[first[order] + steps] = size
    inputs = np.zeros(size + 1, dtype=np.int32)
    targets = np.zeros(size + 1, dtype=np.int32)
    weight = np.zeros(size + 1, dtype=np.uint8)
    reset = np.zeros(size + 1, dtype=np.uint8)
    inputs[flat] = item
    targets[flat[:-1]] = item[1:]  # the step fed by row e predicts row e+1
    weight[flat] = 1
    reset[lane * n_steps + start] = 1
    shape = (lanes, n_steps)
    return Layout(inputs[:size].reshape(shape), targets[:size].reshape(shape), reset[:size].reshape(shape),
                  weight[:size].reshape(shape), lane_steps, sessions=len(order),
                  events=int(lengths[order].sum()), pairs=int(steps.sum()))
