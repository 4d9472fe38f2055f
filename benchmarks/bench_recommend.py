"""Batch recommendation throughput (target: >= 5k sessions/s with one loaded model on this CPU),
and the latency of one click through the exported `step` signature.

    .venv/bin/python benchmarks/bench_recommend.py [--items 3700] [--layers 224] [--sessions 20000]
        [--mean-length 5] [--k 20] [--batch-size 1024] [--repeats 3] [--include-seen]
    .venv/bin/python benchmarks/bench_recommend.py --run runs/tiny    # a trained run, its vocabulary
    .venv/bin/python benchmarks/bench_recommend.py --tf-topk          # TF's TopK (the GPU path)

Sessions are synthetic: geometric lengths >= 1 (mean `--mean-length`, capped at 200; YOOCHOOSE-like
short sessions at the default 5), items drawn by popularity (Zipf 1.1) from the vocabulary, given as
original ids. Timed as `sbrjob recommend --sessions` works once the file is read: id lookup,
sessions sorted by length within windows, the compiled recurrence + scoring + top-k per batch,
result dicts and one `json.dumps` per session. The first pass (tracing) is reported separately.
Without `--run` the model is a randomly initialised GRU4Rec (shared embedding) of the given size:
throughput does not depend on the weights. Also times `step` of the exported SavedModel at batch 1
(one click of one live session: a GRU step plus scoring and top-k over the catalogue).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pandas as pd
import tensorflow as tf

from sbrjob.config import config_from_dict
from sbrjob.model import GRU4Rec
from sbrjob.recommend import BatchRecommender, Session
from sbrjob.runs import Trained, load_trained
from sbrjob.serving import Recommender, save_recommender


def synthetic_trained(n_items: int, layers: list[int], seed: int = 0) -> Trained:
    cfg = config_from_dict({"model": {"layers": layers, "input": "shared"}})
    model = GRU4Rec(cfg.model, n_items, seed=seed)
    items = pd.DataFrame({"index": np.arange(n_items, dtype=np.int32),
                          "item_id": [str(100000 + i) for i in range(n_items)],
                          "title": [None] * n_items, "genres": [None] * n_items,
                          "support": np.arange(n_items, 0, -1, dtype=np.int64)})
    return Trained(None, cfg, model, items, "")


def synthetic_sessions(ids: np.ndarray, n: int, mean_length: float, seed: int = 0) -> list[Session]:
    rng = np.random.default_rng(seed)
    lengths = np.minimum(rng.geometric(1.0 / max(mean_length, 1.0), n), 200)  # >= 1, mean ~mean_length
    weights = 1.0 / np.arange(1, len(ids) + 1) ** 1.1
    draws = rng.choice(len(ids), size=int(lengths.sum()), p=weights / weights.sum())
    out, at = [], 0
    for s, length in enumerate(lengths):
        out.append(Session(f"s{s}", ids[draws[at:at + length]].tolist(), s + 1))
        at += length
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", help="a trained run directory (default: a synthetic model)")
    ap.add_argument("--items", type=int, default=3700)
    ap.add_argument("--layers", type=lambda s: [int(x) for x in s.split(",")], default=[224])
    ap.add_argument("--sessions", type=int, default=20000)
    ap.add_argument("--mean-length", type=float, default=5.0)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=1024)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--include-seen", action="store_true")
    ap.add_argument("--clicks", type=int, default=300, help="step calls timed at batch 1")
    ap.add_argument("--tf-topk", action="store_true", help="TF's TopK instead of the numba kernel (as on a GPU)")
    args = ap.parse_args()

    trained = load_trained(args.run) if args.run else synthetic_trained(args.items, args.layers)
    ids = trained.items["item_id"].astype(str).to_numpy()
    sessions = synthetic_sessions(ids, args.sessions, args.mean_length)
    events = sum(len(s.items) for s in sessions)
    batch = BatchRecommender(args.run, k=args.k, exclude_seen=not args.include_seen,
                             batch_size=args.batch_size, trained=trained, kernel=False if args.tf_topk else None)
    print(f"cpu: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; tensorflow {tf.__version__}")
    print(f"model: {'run ' + args.run if args.run else 'synthetic'}, {len(ids)} items, layers {list(trained.model.sizes)}; "
          f"{len(sessions)} sessions, {events} events (mean length {events / len(sessions):.2f}, max "
          f"{max(len(s.items) for s in sessions)}), k {args.k}, exclude_seen {not args.include_seen}, "
          f"batch {args.batch_size}, top-k by {'numba' if batch._kernel else 'TF'}")

    def one_pass() -> float:
        t0 = time.perf_counter()
        for result in batch.run(sessions):
            json.dumps(result)
        return time.perf_counter() - t0

    first = one_pass()
    print(f"first pass (with tracing): {first:.2f} s = {len(sessions) / first:,.0f} sessions/s")
    times = [one_pass() for _ in range(args.repeats)]
    rates = [len(sessions) / t for t in times]
    print("passes: " + ", ".join(f"{r:,.0f}" for r in rates) + f" sessions/s; median {statistics.median(rates):,.0f} "
          f"sessions/s ({statistics.median(rates) * events / len(sessions):,.0f} events/s)")

    # one live click: the exported step signature at batch 1
    with tempfile.TemporaryDirectory() as tmp:
        save_recommender(Recommender(trained.model, ids.tolist(), args.k), f"{tmp}/sm")
        m = tf.saved_model.load(f"{tmp}/sm")
        step = m.signatures["step"]
        state = tf.zeros([1, sum(trained.model.sizes)])
        k = tf.constant(args.k)
        clicks = [tf.constant([ids[i % len(ids)]]) for i in range(args.clicks)]
        for c in clicks[:20]:
            state = step(item_id=c, state=state, k=k)["state"]
        t0 = time.perf_counter()
        for c in clicks:
            state = step(item_id=c, state=state, k=k)["state"]
        per = (time.perf_counter() - t0) / len(clicks)
        print(f"SavedModel step, batch 1: {per * 1e3:.2f} ms per click ({1 / per:,.0f} clicks/s, in-process call)")


if __name__ == "__main__":
    main()
