"""Full-ranking evaluation throughput (target: >= 50k events/s on an ML-1M-size catalogue on CPU).

    .venv/bin/python benchmarks/bench_evaluate.py [--items 3700] [--hidden 128] [--lanes 256]
        [--block-steps 32] [--events 200000] [--ties conservative] [--repeats 3] [--accuracy-only]

Writes a synthetic test split (MovieLens-like session lengths) to TFRecord shards with
`sbrjob.export.write_split`, then times `sbrjob.evaluate.evaluate_model` end to end (shard reading,
GRU steps, scoring all items, ranks, top-K for coverage/popularity, host accumulation) with a
randomly initialised GRU4Rec. The first pass (tracing) is reported separately. Also times the
metric update alone on random scores and the full-ranking matmul alone, to show where the time goes.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import tensorflow as tf

from sbrjob.config import config_from_dict
from sbrjob.evaluate import evaluate_model
from sbrjob.export import write_split
from sbrjob.metrics import RankingMetrics
from sbrjob.model import GRU4Rec


def synthetic_sessions(events: int, n_items: int, seed: int = 0):
    """Long, skewed sessions like MovieLens user histories (lengths 2..1500, median ~70)."""
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < events:
        lengths.append(int(np.clip(rng.lognormal(4.2, 1.0), 2, 1500)))
    lengths = np.array(lengths)
    session = np.repeat(np.arange(len(lengths)), lengths)
    item = (rng.zipf(1.3, session.size) % n_items).astype(np.int32)
    return session, item


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=3700)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--lanes", type=int, default=256)
    ap.add_argument("--block-steps", type=int, default=32)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--ties", default="conservative")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--accuracy-only", action="store_true", help="eval.beyond_accuracy false: no top-K lists")
    args = ap.parse_args()

    cfg = config_from_dict({"model": {"layers": [args.hidden]},
                            "eval": {"ties": args.ties, "beyond_accuracy": not args.accuracy_only}})
    session, item = synthetic_sessions(args.events, args.items)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, TF {tf.__version__}")
    print(f"catalogue {args.items} items, GRU {args.hidden}, {args.lanes} lanes x {args.block_steps} steps, "
          f"ties {args.ties}, cutoffs {cfg.eval.cutoffs}, coverage/popularity {cfg.eval.beyond_accuracy}")
    with tempfile.TemporaryDirectory() as tmp:
        manifest = write_split(session, item, f"{tmp}/test", split="test", lanes=args.lanes, n_shards=1,
                               block_steps=args.block_steps)
        print(f"split: {manifest['sessions']} sessions, {manifest['pairs']} (input, target) pairs, "
              f"padding {manifest['padding']:.1%}")
        model = GRU4Rec(cfg.model, args.items, seed=0)
        support = np.bincount(item, minlength=args.items)
        t = time.perf_counter()
        first = evaluate_model(model, f"{tmp}/test", cfg, support=support)
        print(f"first pass (includes tracing): {time.perf_counter() - t:.2f}s")
        times, cpu = [], []
        for _ in range(args.repeats):
            t, c = time.perf_counter(), time.process_time()
            again = evaluate_model(model, f"{tmp}/test", cfg, support=support)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        assert again == first, "evaluation is not deterministic"
        best = min(times)
        print(f"evaluate_model: {first['events']} events in {best:.2f}s wall (best of {args.repeats}) = "
              f"{first['events'] / best:,.0f} events/s full ranking; process CPU {min(cpu):.2f}s "
              f"({first['events'] / min(cpu):,.0f} events per CPU-second; load average now "
              f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs)")

    # the metric update alone (no model): where the non-matmul time goes
    rng = np.random.default_rng(1)
    scores = tf.constant(rng.normal(size=(args.lanes, args.items)).astype(np.float32))
    targets = tf.constant(rng.integers(0, args.items, size=args.lanes).astype(np.int32))
    m = RankingMetrics(args.items, cfg.eval.cutoffs, args.ties, item_support=support,
                       beyond_accuracy=cfg.eval.beyond_accuracy)
    update = tf.function(lambda s, t: m.update(m.initial(), s, t))
    update(scores, targets)
    reps = 200
    t = time.perf_counter()
    for _ in range(reps):
        out = update(scores, targets)
    out["events"].numpy()
    dt = time.perf_counter() - t
    print(f"metric update alone: {reps * args.lanes / dt:,.0f} events/s")

    # the full-ranking matmul alone: a lower bound on the cost per event of any full ranking
    rows = 566  # evaluate.py's slice size at 3700 items
    h = tf.constant(rng.normal(size=(rows, args.hidden)).astype(np.float32))
    score = tf.function(lambda h: tf.reduce_sum(model.item_scores(h)))
    score(h)
    t = time.perf_counter()
    for _ in range(reps):
        score(h).numpy()
    print(f"scoring matmul alone ([{rows}, {args.hidden}] x [{args.hidden}, {args.items}]): "
          f"{reps * rows / (time.perf_counter() - t):,.0f} events/s")


if __name__ == "__main__":
    main()
