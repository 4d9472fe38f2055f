"""The session-parallel layout: exact coverage, resets, padding, balance, order."""

from collections import Counter

import numpy as np
import pytest

from sbrjob import batching
from sbrjob.errors import SbrjobError


def events(lengths, first_item=0):
    """Rows sorted by session: session ids and distinct item ids (session s, position p -> 100*s + p)."""
    session = np.repeat(np.arange(len(lengths)), lengths)
    item = np.concatenate([100 * s + np.arange(n) for s, n in enumerate(lengths)]).astype(np.int32) + first_item
    return session, item


def random_split(n_sessions=400, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 20, n_sessions)
    session = np.repeat(np.arange(n_sessions), lengths)
    return session, rng.integers(0, 50, session.size).astype(np.int32), lengths


def test_worked_example_five_sessions_on_two_lanes():
    # Lengths 4,2,3,2,5 -> 3,1,2,1,4 steps. s0 takes lane 0, s1 lane 1 (free at step 1), s2 lane 1,
    # s3: both lanes free at step 3 -> lowest lane 0, s4 lane 1 at step 3. Lane 1 ends at 7 -> pad to 8.
    session, item = events([4, 2, 3, 2, 5])
    lay = batching.layout(session, item, lanes=2, block_steps=4)
    np.testing.assert_array_equal(lay.input, [[0, 1, 2, 300, 0, 0, 0, 0],
                                              [100, 200, 201, 400, 401, 402, 403, 0]])
    np.testing.assert_array_equal(lay.target, [[1, 2, 3, 301, 0, 0, 0, 0],
                                               [101, 201, 202, 401, 402, 403, 404, 0]])
    np.testing.assert_array_equal(lay.reset, [[1, 0, 0, 1, 0, 0, 0, 0],
                                              [1, 1, 0, 1, 0, 0, 0, 0]])
    np.testing.assert_array_equal(lay.weight, [[1, 1, 1, 1, 0, 0, 0, 0],
                                               [1, 1, 1, 1, 1, 1, 1, 0]])
    np.testing.assert_array_equal(lay.lane_steps, [4, 7])
    assert (lay.sessions, lay.events, lay.pairs, lay.steps) == (5, 16, 11, 8)
    assert lay.padding == pytest.approx(5 / 16)


def pairs_of_split(session, item):
    same = session[1:] == session[:-1]
    return Counter(zip(item[:-1][same].tolist(), item[1:][same].tolist()))


@pytest.mark.parametrize("lanes,block", [(1, 8), (7, 5), (16, 32), (64, 3)])
def test_every_pair_exactly_once(lanes, block):
    session, item, _ = random_split()
    lay = batching.layout(session, item, lanes, block)
    real = lay.weight == 1
    laid = Counter(zip(lay.input[real].tolist(), lay.target[real].tolist()))
    assert laid == pairs_of_split(session, item)
    assert lay.pairs == sum(laid.values()) == session.size - len(np.unique(session))
    assert lay.steps % block == 0


def test_resets_exactly_at_session_starts_and_weights_zero_exactly_on_padding():
    # Distinct items per (session, position) let us recover where each session starts in its lane.
    lengths = np.random.default_rng(1).integers(2, 12, 300)
    session, item = events(lengths)
    lay = batching.layout(session, item, lanes=9, block_steps=7)
    starts = np.isin(lay.input, item[np.r_[0, np.cumsum(lengths)[:-1]]]) & (lay.weight == 1)
    np.testing.assert_array_equal(lay.reset == 1, starts)
    assert int(lay.reset.sum()) == len(lengths)
    # padding: exactly the steps after each lane's last real step, and they hold zeros
    step = np.arange(lay.steps)[None, :]
    np.testing.assert_array_equal(lay.weight == 1, step < lay.lane_steps[:, None])
    pad = lay.weight == 0
    assert not lay.input[pad].any() and not lay.target[pad].any() and not lay.reset[pad].any()
    # within a session the next input is the current target (the lane carries on with the session)
    cont = (lay.weight[:, 1:] == 1) & (lay.reset[:, 1:] == 0)
    np.testing.assert_array_equal(lay.input[:, 1:][cont], lay.target[:, :-1][cont])


def test_lanes_finish_within_one_session_and_padding_bounded():
    session, item, lengths = random_split(n_sessions=2000, seed=3)
    lanes, block = 32, 10
    lay = batching.layout(session, item, lanes, block)
    longest = int(lengths.max()) - 1
    assert lay.lane_steps.max() - lay.lane_steps.min() <= longest
    # padding: at most one longest session plus one block per lane
    assert lay.lanes * lay.steps - lay.pairs <= lanes * (longest + block - 1)
    assert lay.padding < 0.1


def test_sessions_enter_in_order_of_the_given_sequence():
    lengths = np.random.default_rng(2).integers(2, 9, 200)
    session, item = events(lengths)
    for order in (None, np.random.default_rng(5).permutation(200)):
        lay = batching.layout(session, item, lanes=6, block_steps=4, order=order)
        # the step at which each session starts, read back from the reset positions
        lane, step = np.nonzero(lay.reset)
        started = lay.input[lane, step] // 100
        start_step = np.empty(200, dtype=int)
        start_step[started] = step
        seq = np.arange(200) if order is None else order
        assert np.all(np.diff(start_step[seq]) >= 0)  # a later session never starts earlier


def test_short_sessions_skipped_and_more_lanes_than_sessions():
    session, item = events([1, 3, 1, 2])
    lay = batching.layout(session, item, lanes=5, block_steps=2)
    assert (lay.sessions, lay.events, lay.pairs, lay.steps) == (2, 5, 3, 2)
    np.testing.assert_array_equal(lay.lane_steps, [2, 1, 0, 0, 0])
    np.testing.assert_array_equal(lay.input[:2], [[100, 101], [300, 0]])


def test_empty_split_gives_no_steps():
    lay = batching.layout(np.zeros(0, np.int64), np.zeros(0, np.int32), lanes=4, block_steps=8)
    assert lay.input.shape == (4, 0) and lay.pairs == 0 and lay.padding == 0.0


def test_unsorted_rows_refused():
    with pytest.raises(SbrjobError, match="not sorted by session"):
        batching.layout(np.array([0, 0, 1, 0]), np.arange(4, dtype=np.int32), lanes=2, block_steps=2)


@pytest.mark.parametrize("lanes,per_shard", [(8, 2), (6, 3), (5, 1)])
def test_filling_lane_ranges_gives_the_rows_of_the_whole_layout(lanes, per_shard):
    """What a Beam worker writes for its shard (`fill` on its lanes only) is that shard's slice of the layout."""
    rng = np.random.default_rng(lanes)
    lengths = rng.integers(1, 12, 60)
    session = np.repeat(np.arange(60), lengths)
    item = rng.integers(0, 50, len(session)).astype(np.int32)
    order = rng.permutation(60)
    whole = batching.layout(session, item, lanes, 4, order)
    plan = batching.plan(session, lanes, 4, order)
    for lo in range(0, lanes, per_shard):
        part = batching.fill(plan, item, lo, lo + per_shard)
        for name in ("input", "target", "reset", "weight"):
            np.testing.assert_array_equal(part[name], getattr(whole, name)[lo:lo + per_shard])
