"""eval.seen_scope user: each session's user history, the rebuilt lane layout, and evaluation with
the bias on those items against a plain per-session loop."""

import dataclasses

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from sbrjob import batching
from sbrjob.config import config_from_dict
from sbrjob.errors import SbrjobError
from sbrjob.evaluate import Evaluator, evaluate_model
from sbrjob.export import session_order, write_split
from sbrjob.history import lane_sessions, user_history
from sbrjob.metrics import RankingMetrics


@dataclasses.dataclass
class FakePrepared:
    frames: dict
    data_dir: str = "prepared"

    def load_split(self, split):
        return self.frames[split]


def _frames(rng, n_items=14, users=5):
    """Per user a few sessions one hour apart; the last sessions of all users go to test, the ones
    before to valid, the rest to train (session ids 0..n-1 per split, rows by (session, time))."""
    per_split = {"train": [], "valid": [], "test": []}
    for u in range(users):
        n = int(rng.integers(3, 6))
        for k in range(n):
            split = "test" if k == n - 1 else "valid" if k == n - 2 else "train"
            length = int(rng.integers(2, 7))
            t0 = 10_000.0 * u + 3600.0 * k
            per_split[split].append((u, rng.choice(n_items, size=length, replace=False), t0 + np.arange(length)))
    frames = {}
    for split, rows in per_split.items():
        parts = [pd.DataFrame({"session": s, "item": items.astype(np.int32), "time": times, "user": u})
                 for s, (u, items, times) in enumerate(rows)]
        frames[split] = pd.concat(parts, ignore_index=True)
    return frames


def _earlier(frames, split, s):
    """The reference: items of that session's user strictly before the session's first event."""
    f = frames[split]
    user, start = f.loc[f.session == s, "user"].iloc[0], f.loc[f.session == s, "time"].min()
    every = pd.concat(frames.values())
    return set(every.loc[(every.user == user) & (every.time < start), "item"])


def test_user_history_holds_every_earlier_item_of_the_user_and_nothing_later():
    frames = _frames(np.random.default_rng(0))
    for split in ("valid", "test"):
        h = user_history(FakePrepared(frames), split)
        for s in range(frames[split].session.max() + 1):
            got = set(h.items[h.splits[s]:h.splits[s + 1]].tolist())
            assert got == _earlier(frames, split, s), (split, s)
    assert user_history(FakePrepared(frames), "test").sessions_with_history == frames["test"].session.nunique()


def test_no_users_or_no_earlier_items_means_no_history():
    frames = _frames(np.random.default_rng(1))
    no_user = {k: v.drop(columns="user") for k, v in frames.items()}
    assert user_history(FakePrepared(no_user), "test") is None
    # every user's first session is in train: nothing comes before it
    first_only = {**frames, "test": frames["train"][frames["train"].time % 10_000 < 3600].copy()}
    first_only["test"]["session"] = pd.factorize(first_only["test"]["session"])[0]
    assert user_history(FakePrepared(first_only), "test") is None


def test_lane_sessions_name_the_session_of_every_real_step():
    rng = np.random.default_rng(2)
    lengths = rng.integers(1, 9, size=40)
    session = np.repeat(np.arange(40), lengths)
    item = rng.integers(0, 50, size=lengths.sum()).astype(np.int32)
    _, order = session_order(None, "test", session)
    plan = batching.plan(session, 6, 4, order)
    arrays, grid = batching.fill(plan, item), lane_sessions(plan)
    assert np.array_equal(grid >= 0, arrays["weight"] > 0)
    first = np.cumsum(lengths) - lengths
    for lane in range(6):  # the t-th step of a session feeds its t-th event
        steps = np.flatnonzero(grid[lane] >= 0)
        sess = grid[lane, steps]
        t = np.concatenate([np.arange(n) for n in np.diff(np.flatnonzero(np.r_[True, sess[1:] != sess[:-1], True]))])
        assert np.array_equal(arrays["input"][lane, steps], item[first[sess] + t])


def _reference(model, frames, split, cutoffs, ties, bias, scope):
    m = RankingMetrics(model.n_items, cutoffs, ties)
    f = frames[split]
    for s in range(f.session.max() + 1):
        seq = f.loc[f.session == s, "item"].to_numpy()
        prior = list(_earlier(frames, split, s)) if scope == "user" else []
        state = model.initial_state(1)
        for t in range(len(seq) - 1):
            h, state = model.step(tf.constant(seq[t:t + 1]), state)
            scores = model.item_scores(h).numpy()
            scores[0, np.unique(np.r_[seq[:t + 1], prior].astype(int))] += bias
            m.add(scores, seq[t + 1:t + 2])
    return m.result()


@pytest.mark.parametrize("bias", [-np.inf, -0.6, 0.8])
def test_evaluation_with_user_scope_matches_per_session_loop(tmp_path, bias):
    from sbrjob.model import GRU4Rec

    frames = _frames(np.random.default_rng(3), users=9)
    cfg = config_from_dict({"output_dir": str(tmp_path / "run"), "model": {"layers": [8]},
                            "eval": {"cutoffs": [1, 3, 10], "metric": "mrr@10", "seen_bias": float(bias),
                                     "seen_scope": "user"}})
    model = GRU4Rec(cfg.model, 14, seed=4)
    f = frames["test"]
    _, order = session_order(None, "test", f.session.to_numpy())
    manifest = write_split(f.session.to_numpy(), f.item.to_numpy(), tmp_path / "test", split="test", lanes=3,
                           n_shards=1, block_steps=2, order=order)
    assert manifest["blocks"] > 2
    got = Evaluator(str(tmp_path / "test"), cfg.eval, data=FakePrepared(frames))(model)
    want = _reference(model, frames, "test", cfg.eval.cutoffs, cfg.eval.ties, bias, "user")
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-6), name
    assert got["seen_scope"] == "user"
    session_only = evaluate_model(model, str(tmp_path / "test"), cfg.eval, seen_bias=bias)
    assert session_only["mrr@10"] == pytest.approx(
        _reference(model, frames, "test", cfg.eval.cutoffs, cfg.eval.ties, bias, "session")["mrr@10"], abs=1e-6)
    assert session_only["mrr@10"] != pytest.approx(got["mrr@10"])


def test_shards_from_other_data_are_refused(tmp_path):
    from sbrjob.model import GRU4Rec

    frames = _frames(np.random.default_rng(5))
    cfg = config_from_dict({"output_dir": str(tmp_path / "run"), "model": {"layers": [8]},
                            "eval": {"cutoffs": [10], "metric": "mrr@10", "seen_bias": -1.0, "seen_scope": "user"}})
    f = frames["test"]
    _, order = session_order(None, "test", f.session.to_numpy())
    write_split(f.session.to_numpy(), (f.item.to_numpy() + 1) % 14, tmp_path / "test", split="test", lanes=3,
                n_shards=1, block_steps=2, order=order)
    with pytest.raises(SbrjobError, match="do not match the prepared data"):
        Evaluator(str(tmp_path / "test"), cfg.eval, data=FakePrepared(frames))(GRU4Rec(cfg.model, 14, seed=4))


def test_seen_scope_is_checked_and_added_as_before():
    from sbrjob.config import ADDED_KEYS

    with pytest.raises(SbrjobError, match="eval.seen_scope"):
        config_from_dict({"eval": {"seen_scope": "household"}})
    assert ADDED_KEYS[("eval", "seen_scope")] == "session"
