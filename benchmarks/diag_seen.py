"""How much of a model's top-20 is items its session already holds, and MRR@20 if those items
were excluded or given a score bonus (post hoc, one session at a time; standard ties).

    .venv/bin/python benchmarks/diag_seen.py --run /tmp/q2/ml-gap/shipped-10ep [--split valid]

Prints MRR@20, the share of top-20 slots holding a seen item, the share of targets that repeat an
item of their session, and MRR@20 for each bonus added to the seen items' scores (-inf = excluded).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sbrjob import runs  # noqa: E402

BONUSES = (-np.inf, -1.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def predictions(model, sessions, lanes: int):
    """(session, t, scores of every item after feeding session[:t + 1]) for each next-item target."""
    for lo in range(0, len(sessions), lanes):
        batch = sessions[lo:lo + lanes]
        state = model.initial_state(len(batch))
        for t in range(max(len(s) for s in batch) - 1):
            items = np.array([s[t] if t < len(s) else 0 for s in batch], np.int32)
            h, state = model.step(tf.constant(items), state, training=False)
            scores = model.item_scores(h).numpy()
            for j, s in enumerate(batch):
                if t + 1 < len(s):
                    yield s, t, scores[j]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--split", default="valid", choices=("valid", "test"))
    ap.add_argument("--lanes", type=int, default=64)
    args = ap.parse_args()
    model = runs.load_trained(args.run, "best").model
    frame = runs.Prepared.open(runs.Run(args.run).data_dir).load_split(args.split)
    sessions = [g["item"].to_numpy() for _, g in frame.groupby("session", sort=False)]
    rr, rr_bonus, seen_top, target_seen = [], [], [], []
    for s, t, row in predictions(model, sessions, args.lanes):
        seen = np.zeros(model.n_items, bool)
        seen[s[:t + 1]] = True
        target = s[t + 1]
        target_seen.append(seen[target])
        rank = (row > row[target]).sum() + 1
        rr.append(1 / rank if rank <= 20 else 0.0)
        seen_top.append(seen[np.argpartition(-row, 20)[:20]].mean())
        got = []
        for bonus in BONUSES:
            moved = np.where(seen, row + bonus, row)
            rank = (moved > moved[target]).sum() + 1
            got.append(1 / rank if rank <= 20 else 0.0)
        rr_bonus.append(got)
    print(f"{len(rr):,} predictions: MRR@20 {np.mean(rr):.4f}; top-20 slots holding a seen item {np.mean(seen_top):.1%}; "
          f"targets repeating an item of their session {np.mean(target_seen):.1%}")
    for bonus, value in zip(BONUSES, np.mean(rr_bonus, axis=0)):
        print(f"  bonus {bonus:+g}: MRR@20 {value:.4f}")


if __name__ == "__main__":
    main()
