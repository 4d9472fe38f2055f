"""Is one score bias for a session's own items enough, or does recency matter? (post hoc, valid only)

    .venv/bin/python benchmarks/diag_seen_recency.py --run RUN [--split valid]

`eval.seen_bias` adds one value to every item the session has fed. Here the seen items are split by
how recently the session fed them (1 = the current input, 2 = the one before, ...; an item fed
several times counts at its most recent position), and MRR@20 (standard ties) is computed for a grid
of (bias of the current input, bias of older seen items): whether a two-value rule beats the best
single value, on the split's sessions, one prediction at a time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from diag_seen import predictions  # noqa: E402
from sbrjob import runs  # noqa: E402

GRID = (-np.inf, -8.0, -2.0, 0.0, 2.0, 4.0, 5.66, 8.0, 12.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    ap.add_argument("--split", default="valid", choices=("valid", "test"))
    ap.add_argument("--checkpoint", default="best")
    ap.add_argument("--lanes", type=int, default=256)
    args = ap.parse_args()
    model = runs.load_trained(args.run, args.checkpoint).model
    frame = runs.Prepared.open(runs.Run(args.run).data_dir).load_split(args.split)
    sessions = [g["item"].to_numpy() for _, g in frame.groupby("session", sort=False)]
    grid = np.array(GRID, np.float32)
    hits = np.zeros((len(grid), len(grid)))  # [current bias, older bias] -> sum of reciprocal ranks
    n = 0
    kinds = np.zeros(3)  # targets: the current input, an older seen item, a new item
    for s, t, row in predictions(model, sessions, args.lanes):
        target, current = s[t + 1], s[t]
        older = np.setdiff1d(s[:t], [current])
        kinds[0 if target == current else 1 if target in older else 2] += 1
        n += 1
        for a, bc in enumerate(grid):
            for b, bo in enumerate(grid):
                moved = row.copy()
                moved[current] += bc
                moved[older] += bo
                rank = (moved > moved[target]).sum() + 1
                hits[a, b] += 1 / rank if rank <= 20 else 0.0
    mrr = hits / n
    diag = np.array([mrr[i, i] for i in range(len(grid))])
    best_one = int(np.argmax(diag))
    a, b = np.unravel_index(int(np.argmax(mrr)), mrr.shape)
    print(f"{n:,} predictions on {args.split}; targets: current input {kinds[0] / n:.1%}, older seen item "
          f"{kinds[1] / n:.1%}, new item {kinds[2] / n:.1%}")
    print(f"no bias: MRR@20 {mrr[list(grid).index(0.0), list(grid).index(0.0)]:.4f}")
    print(f"best single bias {grid[best_one]:+g}: {diag[best_one]:.4f}")
    print(f"best pair (current {grid[a]:+g}, older {grid[b]:+g}): {mrr[a, b]:.4f} "
          f"({100 * (mrr[a, b] / diag[best_one] - 1):+.2f} % over the single bias)")
    print("rows: bias of the current input; columns: bias of older seen items")
    print("        " + " ".join(f"{g:>7g}" for g in grid))
    for i, g in enumerate(grid):
        print(f"{g:>7g} " + " ".join(f"{v:7.4f}" for v in mrr[i]))


if __name__ == "__main__":
    main()
