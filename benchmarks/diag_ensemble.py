"""Valid MRR@20 (eval.metric) of several runs (e.g. seeds) one by one and of their score average (a check for
seed ensembles; nothing in sbrjob ensembles). The runs must share one prepared vocabulary and
valid split (the same config but the seed); the first run's valid split is scored.

    .venv/bin/python benchmarks/diag_ensemble.py --runs /tmp/ens/s1 /tmp/ens/s2 /tmp/ens/s3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import tensorflow as tf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sbrjob import runs  # noqa: E402
from sbrjob.config import bias_text  # noqa: E402
from sbrjob.evaluate import choose_seen_bias  # noqa: E402


class Ensemble(tf.Module):
    """The model contract evaluation uses (initial_state, step, item_scores) over several models:
    the state is every member's, then their last hidden states side by side; scores are averaged."""

    def __init__(self, members):
        super().__init__()
        self.members = members
        self.n_items = members[0].n_items
        self.widths = [m.sizes[-1] for m in members]

    def initial_state(self, batch):
        return [s for m in self.members for s in m.initial_state(batch)] + [tf.zeros([batch, sum(self.widths)])]

    def step(self, items, state, training=False, **_):
        hs, new, i = [], [], 0
        for m in self.members:
            h, s = m.step(items, state[i:i + len(m.sizes)], training=False)
            hs.append(h)
            new += s
            i += len(m.sizes)
        h = tf.concat(hs, -1)
        return h, new + [h]

    def item_scores(self, h):
        parts = tf.split(h, self.widths, axis=-1)
        return tf.add_n([m.item_scores(p) for m, p in zip(self.members, parts)]) / len(self.members)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--checkpoint", default="best")
    args = ap.parse_args()
    trained = [runs.load_trained(r, args.checkpoint) for r in args.runs]
    cfg, valid = trained[0].cfg, runs.Run(args.runs[0]).split_dir("valid")
    assert all(len(t.items) == len(trained[0].items) for t in trained), "the runs' vocabularies differ"

    def report(label, model):
        choice = choose_seen_bias(model, valid, cfg.eval, label="valid")  # tries 0 (the plain model) too
        bias = float(choice["value"])
        plain, biased = choice["tried"][str(bias_text(0.0))], choice["tried"][str(choice["value"])]
        print(f"{label}: valid {cfg.eval.metric} {plain:.4f}, with seen_bias {bias:.3g} {biased:.4f}", flush=True)
        return plain, biased

    singles = [report(Path(r).name, t.model) for r, t in zip(args.runs, trained)]
    for k in range(2, len(trained) + 1):
        report(f"average of the first {k}", Ensemble([t.model for t in trained[:k]]))
    mean = [sum(s[i] for s in singles) / len(singles) for i in (0, 1)]
    print(f"mean of the single runs: {mean[0]:.4f}, with seen_bias {mean[1]:.4f}")


if __name__ == "__main__":
    main()
