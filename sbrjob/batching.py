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


@dataclass(frozen=True)
class Plan:
    """Where every session goes: computed from the session lengths alone (a few bytes per session),
    so the lanes can then be filled piece by piece (`fill`), e.g. one shard per worker."""

    lengths: np.ndarray  # int64 events per session id
    order: np.ndarray  # the session ids laid out (length >= 2), in the order they enter the lanes
    lane: np.ndarray  # per laid-out session: its lane
    start: np.ndarray  # per laid-out session: its first step in the lane
    lane_steps: np.ndarray  # int64 [lanes]: real steps per lane
    lanes: int
    n_steps: int  # steps per lane, a multiple of the block length

    @property
    def steps(self) -> np.ndarray:
        return self.lengths[self.order] - 1


def plan(session: np.ndarray, lanes: int, block_steps: int, order: np.ndarray | None = None) -> Plan:
    """The lane and start step of every session (see `layout`)."""
    lengths = session_lengths(session)
    if order is None:
        order = np.arange(len(lengths))
    order = order[lengths[order] >= 2]
    lane, start = assign_lanes(lengths[order] - 1, lanes)
    lane_steps = np.bincount(lane, weights=lengths[order] - 1, minlength=lanes).astype(np.int64)
    n_steps = -(-int(lane_steps.max(initial=0)) // block_steps) * block_steps
    return Plan(lengths, order, lane, start, lane_steps, lanes, n_steps)


def fill(p: Plan, item: np.ndarray, lane_lo: int = 0, lane_hi: int | None = None) -> dict[str, np.ndarray]:
    """The `[lane_hi - lane_lo, n_steps]` input/target/reset/weight arrays of lanes lane_lo..lane_hi-1.

    Only the rows of sessions on those lanes are touched: filling every lane range separately gives
    exactly the rows of the whole layout.
    """
    lane_hi = p.lanes if lane_hi is None else lane_hi
    item = np.asarray(item, dtype=np.int32)
    n_steps, width = p.n_steps, lane_hi - lane_lo
    size = width * n_steps
    first = np.cumsum(p.lengths) - p.lengths  # row of each session's first event
    mine = (p.lane >= lane_lo) & (p.lane < lane_hi)
    order, lane, start = p.order[mine], p.lane[mine] - lane_lo, p.start[mine]
    steps = p.lengths[order] - 1
    # Where every row lands in the flat [width * n_steps] layout, all rows at once: row e of a laid
    # out session goes to base[session] + e. Rows that feed no step (a session's last row, sessions
    # too short or on other lanes) go to one extra scratch slot at the end that is cut off afterwards.
    base = size - first
    base[order] = lane * n_steps + start - first[order]
    flat = np.repeat(base, p.lengths) + np.arange(len(item))
    flat[first[order] + steps] = size
    flat[flat > size] = size  # rows of other lanes' sessions
    inputs = np.zeros(size + 1, dtype=np.int32)
    targets = np.zeros(size + 1, dtype=np.int32)
    weight = np.zeros(size + 1, dtype=np.uint8)
    reset = np.zeros(size + 1, dtype=np.uint8)
    inputs[flat] = item
    targets[flat[:-1]] = item[1:]  # the step fed by row e predicts row e+1
    weight[flat] = 1
    reset[lane * n_steps + start] = 1
    shape = (width, n_steps)
    return {"input": inputs[:size].reshape(shape), "target": targets[:size].reshape(shape),
            "reset": reset[:size].reshape(shape), "weight": weight[:size].reshape(shape)}


def layout(session: np.ndarray, item: np.ndarray, lanes: int, block_steps: int,
           order: np.ndarray | None = None) -> Layout:
    """Lay out a split's events (rows sorted by session) on `lanes` lanes in blocks of `block_steps`.

    `order` is the sequence in which session ids enter the lanes (default: 0, 1, 2, ... = oldest
    first). Sessions with fewer than 2 events give no step and are skipped.
    """
    p = plan(session, lanes, block_steps, order)
    a = fill(p, item)
    return Layout(a["input"], a["target"], a["reset"], a["weight"], p.lane_steps, sessions=len(p.order),
                  events=int(p.lengths[p.order].sum()), pairs=int(p.steps.sum()))
