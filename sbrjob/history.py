"""`eval.seen_scope: user`: the items a session's user had before the session started.

MovieLens-like data holds one event per (user, item): with sessions cut at time gaps, a user's earlier
sessions hold many items that will never be the next one, and a session-based model ranks them as
if they were new. Under `seen_scope: user` those items count as "seen" (they get `eval.seen_bias`,
like the session's own items). Only events before the session's first event count, from every
split of the prepared data, so no target is ever used.

The evaluation runs over exported blocks, which carry no session ids: `lane_sessions` rebuilds the
split's lane layout from the prepared session column (the export is a pure function of it) and
`UserHistory.blocks` checks every block's inputs against that layout before trusting it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sbrjob import batching
from sbrjob.errors import SbrjobError

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class UserHistory:
    """Per session id of one split, the user's earlier items (CSR: `items[splits[s]:splits[s + 1]]`),
    and that split's events (session, item) to rebuild its lane layout."""

    splits: np.ndarray  # int64 [sessions + 1]
    items: np.ndarray  # int32
    session: np.ndarray  # the split's session column
    item: np.ndarray  # the split's item column
    where: str  # the split, for messages

    @property
    def sessions_with_history(self) -> int:
        return int((np.diff(self.splits) > 0).sum())

    def blocks(self, blocks, manifest: dict):
        """`blocks` (dicts of [lanes, T] arrays in step order) with a `session` key added: the
        session id of every lane-step (-1 on padding). Raises when a block's inputs differ from the
        layout rebuilt from the prepared data (shards exported from other data)."""
        from sbrjob.export import session_order

        lanes, block_steps = int(manifest["lanes"]), int(manifest["block_steps"])
        _, order = session_order(None, manifest["split"], self.session)
        plan = batching.plan(self.session, lanes, block_steps, order)
        expect = batching.fill(plan, self.item)["input"]
        grid = lane_sessions(plan)
        for k, block in enumerate(blocks):
            lo, hi = k * block_steps, (k + 1) * block_steps
            if hi > grid.shape[1] or not np.array_equal(np.asarray(block["input"]), expect[:, lo:hi]):
                raise SbrjobError(f"{self.where}: the exported shards do not match the prepared data's lane "
                                  f"layout (block {k}); run `sbrjob export --force`")
            yield {**block, "session": grid[:, lo:hi]}


def lane_sessions(plan: batching.Plan) -> np.ndarray:
    """[lanes, n_steps] int32: the session id each lane-step of `plan` predicts for, -1 on padding."""
    grid = np.full(plan.lanes * plan.n_steps, -1, np.int32)
    steps = plan.steps
    pos = np.repeat(plan.lane * plan.n_steps + plan.start, steps) + _ranges(steps)
    grid[pos] = np.repeat(plan.order, steps)
    return grid.reshape(plan.lanes, plan.n_steps)


def _ranges(lengths: np.ndarray) -> np.ndarray:
    """0..n-1 for each n in `lengths`, concatenated."""
    lengths = np.asarray(lengths, np.int64)
    return np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)


def user_history(data, split: str) -> UserHistory | None:
    """The earlier items of every session's user in `split` of `data` (a `runs.Prepared`), or None
    when the data has no users (session-keyed data such as YOOCHOOSE) or no session has any."""
    frames = {s: data.load_split(s) for s in SPLITS}
    frame = frames[split]
    if "user" not in frame.columns:
        return None
    session = frame["session"].to_numpy()
    n = int(session.max()) + 1 if len(session) else 0
    first = np.searchsorted(session, np.arange(n))  # rows are sorted by (session, time)
    start = frame["time"].to_numpy()[first] if n else np.zeros(0)
    user = frame["user"].to_numpy()[first] if n else np.zeros(0, np.int64)
    # every event of every split, sorted by (user, time): a session's history is one contiguous run
    u = np.concatenate([f["user"].to_numpy() for f in frames.values()])
    t = np.concatenate([f["time"].to_numpy() for f in frames.values()])
    it = np.concatenate([f["item"].to_numpy() for f in frames.values()]).astype(np.int32)
    by = np.lexsort((t, u))
    u, t, it = u[by], t[by], it[by]
    lo = np.searchsorted(u, user, side="left")
    hi = np.searchsorted(u, user, side="right")
    parts, counts = [], np.zeros(n, np.int64)
    for s in range(n):  # one slice per session; np.unique drops repeats
        end = lo[s] + np.searchsorted(t[lo[s]:hi[s]], start[s], side="left")  # strictly before the start
        got = np.unique(it[lo[s]:end])
        parts.append(got)
        counts[s] = len(got)
    if not counts.any():
        return None
    splits = np.concatenate([[0], np.cumsum(counts)])
    return UserHistory(splits, np.concatenate(parts).astype(np.int32), session, frame["item"].to_numpy(),
                       f"{data.data_dir}/{split}.parquet")
