"""Where a warm start loses against a cold run: test MRR@20 of both final models on the test
sessions that hold an item the warm start's source lacked, and on the others.

    .venv/bin/python benchmarks/diag_warmstart.py --cold B/cold/w01_2014-04-05 \
        --warm B/warm/w01_2014-04-05-keep-1ep --source B/cold/w00_2014-04-04

(B = a `bench_backtest.py --final` output's `<dataset>/backtest`.) Each run's final model is its
refit when it has one. Standard ties, full ranking, as `bench_backtest.py`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sbrjob import runs  # noqa: E402
from sbrjob.config import EvalConfig  # noqa: E402
from sbrjob.evaluate import evaluate_model  # noqa: E402
from sbrjob.export import write_split  # noqa: E402
from sbrjob.warmstart import final_model_dir  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cold", required=True)
    ap.add_argument("--warm", required=True)
    ap.add_argument("--source", required=True, help="the run the warm start began from")
    args = ap.parse_args()
    ev = EvalConfig(cutoffs=[20], ties="standard", beyond_accuracy=False)
    data = runs.Prepared.open(runs.Run(args.cold).data_dir)
    ids = data.load_items()["item_id"].astype(str)
    source_ids = runs.Prepared.open(runs.Run(final_model_dir(args.source)).data_dir).load_items()["item_id"].astype(str)
    new = ~ids.isin(set(source_ids)).to_numpy()
    test = data.load_split("test")
    with_new = test.groupby("session")["item"].transform(lambda x: new[x].any()).to_numpy()
    models = {k: runs.load_trained(final_model_dir(d), "best").model for k, d in (("cold", args.cold), ("warm", args.warm))}
    print(f"{new.sum()} of {len(new)} items new to the source; {with_new.mean():.1%} of the test events are in "
          "sessions holding one")
    print("| test sessions | predictions | cold MRR@20 | warm MRR@20 | warm / cold |\n|---|---:|---:|---:|---:|")
    for name, mask in (("all", np.ones(len(test), bool)), ("without a new item", ~with_new),
                       ("with a new item", with_new)):
        part = test[mask]
        session = pd.factorize(part["session"])[0]
        with tempfile.TemporaryDirectory() as tmp:
            write_split(session, part["item"].to_numpy(), tmp, split="test", lanes=64, n_shards=1, block_steps=32,
                        order=np.argsort(-np.bincount(session), kind="stable"))
            res = {k: evaluate_model(m, tmp, ev) for k, m in models.items()}
        c, w = res["cold"]["mrr@20"], res["warm"]["mrr@20"]
        print(f"| {name} | {res['cold']['events']:,} | {c:.4f} | {w:.4f} | {w / c:.3f} |")


if __name__ == "__main__":
    main()
