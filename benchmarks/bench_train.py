"""Training speed: sbrjob's in-graph block loop vs the tutorial's per-step `train_on_batch`, and sweeps.

    .venv/bin/python benchmarks/bench_train.py                      # side by side at batch 32, 64, 512 + sweeps
    .venv/bin/python benchmarks/bench_train.py --batches 64 --no-sweeps --n-items 37000

Both sides train on the same synthetic session-parallel layout (ML-1M-sized catalogue by default),
in one run, at the same batch and hidden size, timed after a warm-up. sbrjob is timed in three
settings, all cross-entropy:
- "same": the tutorial's exact choices: one-hot input, softmax over ALL items, Adam
  (`model.input: onehot`, `train.loss: softmax`, `train.optimizer: adam`);
- "xe": GRU4Rec's cross-entropy over the batch's targets plus `--n-sample` extra items (logQ),
  shared embedding, row-sparse Adagrad (default n_sample: 512 under 10k items, as configs/movielens.yaml,
  else 2048);
- "xe, in-batch": the same with `n_sample: 0` (softmax over the batch's targets only).
Events/s counts real (input, target) pairs trained per second.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from sbrjob import batching, export  # noqa: E402
from sbrjob.config import config_from_dict  # noqa: E402
from sbrjob.distribute import make_strategy  # noqa: E402
from sbrjob.shards import distribute_blocks  # noqa: E402
from sbrjob.synthetic import walk_sessions  # noqa: E402

BLOCK_STEPS = 32


def synthetic(n_items: int, n_sessions: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.geometric(1 / 12, size=n_sessions), 2, 200)
    items = walk_sessions(lengths, n_items, rng).astype(np.int32)
    return np.repeat(np.arange(n_sessions), lengths), items


def ours(session, items, n_items, batch, hidden, setting: str, strategy, workdir: Path, budget_s: float,
         n_sample: int = 512):
    """sbrjob training events/s: one tf.function call per block of 32 steps."""
    split = workdir / f"train-b{batch}"
    if not (split / "manifest.json").exists():
        shards = max(strategy.num_replicas_in_sync, 1)
        export.write_split(session, items, split, split="train", lanes=batch, n_shards=shards,
                           block_steps=BLOCK_STEPS, extra={"n_items": n_items})
    if setting == "tutorial":
        model = {"input": "onehot", "layers": [hidden], "dropout_hidden": 0.25}
        train_cfg = {"loss": "softmax", "optimizer": "adam", "lr": 0.001}
    else:
        model = {"input": "shared", "layers": [hidden]}
        train_cfg = {"loss": "xe", "n_sample": n_sample, "optimizer": "adagrad", "lr": 0.1}
    cfg = config_from_dict({"model": model, "train": train_cfg})
    from sbrjob.train import Trainer

    support = np.bincount(items, minlength=n_items)
    trainer = Trainer(cfg, strategy, n_items, support, batch, BLOCK_STEPS)
    state, step, events, elapsed, blocks = trainer.zero_state(), 0, 0.0, 0.0, 0
    for i, block in enumerate(distribute_blocks(strategy, str(split))):
        start = time.perf_counter()
        state, sums = trainer.train_block(block, state, tf.constant(step, tf.int64))
        sums = sums.numpy()  # wait for the block to finish
        step += BLOCK_STEPS
        if i >= 2:  # the first calls trace and compile
            elapsed += time.perf_counter() - start
            events += float(sums[1])
            blocks += 1
            if elapsed > budget_s:
                break
    return events / max(elapsed, 1e-9), blocks * BLOCK_STEPS


def device_name() -> str:
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        try:
            return tf.config.experimental.get_device_details(gpus[0]).get("device_name", "GPU")
        except Exception:  # noqa: BLE001 - details are best effort
            return "GPU"
    return f"CPU ({os.cpu_count()} cores, {platform.processor() or platform.machine()})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-items", type=int, default=3700)
    ap.add_argument("--sessions", type=int, default=20000)
    ap.add_argument("--batches", default="32,64,512", help="batch sizes of the side-by-side comparison")
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--n-sample", type=int, default=None, help="extra negatives of the xe setting")
    ap.add_argument("--budget", type=float, default=10.0, help="seconds of timed training per measurement")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-sweeps", action="store_true")
    ap.add_argument("--no-tutorial", action="store_true")
    args = ap.parse_args()
    n_sample = args.n_sample if args.n_sample is not None else (512 if args.n_items < 10_000 else 2048)

    strategy, kind = make_strategy("auto")
    session, items = synthetic(args.n_items, args.sessions)
    print(f"device: {device_name()}; strategy {kind} x{strategy.num_replicas_in_sync}; "
          f"{len(items):,} events, {args.n_items:,} items; GRU {args.hidden}; TF {tf.__version__}", flush=True)
    results = {"device": device_name(), "strategy": kind, "events": int(len(items)), "n_items": args.n_items,
               "hidden": args.hidden, "n_sample": n_sample}
    settings = {"same": ("tutorial", 0), "xe": ("recommended", n_sample), "xe, in-batch": ("recommended", 0)}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        side = {}
        for batch in [int(b) for b in args.batches.split(",")]:
            row = {}
            if not args.no_tutorial:
                from tutorial_reference import events_per_second

                layout = batching.layout(session, items, batch, BLOCK_STEPS)
                row["tutorial"], _ = events_per_second(layout, args.n_items, args.hidden, budget_s=args.budget)
            for name, (setting, ns) in settings.items():
                row[name], _ = ours(session, items, args.n_items, batch, args.hidden, setting, strategy, work,
                                    args.budget, n_sample=ns)
            side[f"batch={batch}"] = row
            ratio = lambda v: f" ({v / row['tutorial']:.1f}x)" if "tutorial" in row else ""  # noqa: E731
            print(f"batch {batch:4d}: " + ", ".join(f"{k} {v:,.0f}{'' if k == 'tutorial' else ratio(v)}"
                                                     for k, v in row.items()) + " events/s", flush=True)
        results["side_by_side_events_per_s"] = side
        if not args.no_sweeps:
            batches = [32, 128, 512] if args.quick else [32, 64, 128, 256, 512]
            hiddens = [100, 500] if args.quick else [100, 200, 300, 500]
            sweep = {}
            for name in ("xe", "same"):
                setting, ns = settings[name]
                points = [(b, args.hidden) for b in batches] + [(64, h) for h in hiddens if h != args.hidden]
                for b, h in points:
                    v, _ = ours(session, items, args.n_items, b, h, setting, strategy, work, args.budget / 3,
                                n_sample=ns)
                    sweep[f"{name} batch={b} hidden={h}"] = v
                    print(f"sbrjob {name:5s} batch {b:4d} hidden {h:4d}: {v:10,.0f} events/s", flush=True)
            results["sweep_events_per_s"] = sweep
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
