"""Training speed: sbrjob's in-graph block loop vs the tutorial's per-step `train_on_batch`, and sweeps.

    .venv/bin/python benchmarks/bench_train.py                  # side by side + sweeps
    .venv/bin/python benchmarks/bench_train.py --quick          # fewer sweep points
    .venv/bin/python benchmarks/bench_train.py --no-sweeps --n-items 3700 --batch 64 --hidden 100

Both sides train on the same synthetic session-parallel layout (ML-1M-sized catalogue by default).
"Same setting" = same batch, hidden size and loss: full softmax cross-entropy, one-hot input, Adam
(the tutorial's choices; sbrjob `model.input: onehot`, `train.loss: softmax`, `train.optimizer: adam`).
sbrjob's recommended setting (shared embedding, sampled cross-entropy + logQ, Adagrad) is also timed.
Events/s counts real (input, target) pairs trained per second of training, after a warm-up.
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


def ours(session, items, n_items, batch, hidden, setting: str, strategy, workdir: Path, budget_s: float):
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
        train_cfg = {"loss": "xe", "n_sample": min(2048, n_items // 2), "optimizer": "adagrad", "lr": 0.1}
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
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--budget", type=float, default=15.0, help="seconds of timed training per measurement")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-sweeps", action="store_true")
    ap.add_argument("--no-tutorial", action="store_true")
    args = ap.parse_args()

    strategy, kind = make_strategy("auto")
    session, items = synthetic(args.n_items, args.sessions)
    print(f"device: {device_name()}; strategy {kind} x{strategy.num_replicas_in_sync}; "
          f"{len(items):,} events, {args.n_items:,} items; TF {tf.__version__}", flush=True)
    results = {"device": device_name(), "strategy": kind, "events": int(len(items)), "n_items": args.n_items}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        head = {}
        if not args.no_tutorial:
            from tutorial_reference import events_per_second

            layout = batching.layout(session, items, args.batch, BLOCK_STEPS)
            tut, steps = events_per_second(layout, args.n_items, args.hidden, budget_s=args.budget)
            head["tutorial (train_on_batch, one-hot, Keras GRU, Dense softmax, Adam)"] = tut
            print(f"tutorial reference   batch {args.batch} hidden {args.hidden}: {tut:10,.0f} events/s "
                  f"({steps} steps)", flush=True)
        same, steps = ours(session, items, args.n_items, args.batch, args.hidden, "tutorial", strategy, work,
                           args.budget)
        head["sbrjob, same setting (onehot, full softmax, Adam)"] = same
        print(f"sbrjob same setting  batch {args.batch} hidden {args.hidden}: {same:10,.0f} events/s "
              f"({steps} steps)", flush=True)
        rec, steps = ours(session, items, args.n_items, args.batch, args.hidden, "recommended", strategy, work,
                          args.budget)
        head["sbrjob, recommended (shared, sampled XE + logQ, Adagrad)"] = rec
        print(f"sbrjob recommended   batch {args.batch} hidden {args.hidden}: {rec:10,.0f} events/s "
              f"({steps} steps)", flush=True)
        if not args.no_tutorial:
            print(f"speed-up, same setting: {same / tut:.1f}x; recommended: {rec / tut:.1f}x", flush=True)
        results["side_by_side"] = {"batch": args.batch, "hidden": args.hidden, "events_per_s": head}
        if not args.no_sweeps:
            batches = [32, 128, 512] if args.quick else [32, 64, 128, 256, 512]
            hiddens = [100, 500] if args.quick else [100, 200, 300, 500]
            sweep = {}
            for setting in ("recommended", "tutorial"):
                for b in batches:
                    v, _ = ours(session, items, args.n_items, b, args.hidden, setting, strategy, work, args.budget / 3)
                    sweep[f"{setting} batch={b} hidden={args.hidden}"] = v
                    print(f"sbrjob {setting:11s} batch {b:4d} hidden {args.hidden:4d}: {v:10,.0f} events/s", flush=True)
                for h in hiddens:
                    v, _ = ours(session, items, args.n_items, args.batch, h, setting, strategy, work, args.budget / 3)
                    sweep[f"{setting} batch={args.batch} hidden={h}"] = v
                    print(f"sbrjob {setting:11s} batch {args.batch:4d} hidden {h:4d}: {v:10,.0f} events/s", flush=True)
            results["sweep_events_per_s"] = sweep
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
