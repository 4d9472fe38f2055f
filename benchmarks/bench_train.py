"""Training speed at the official GRU4Rec settings and at the tutorial's, with the matmul limit beside them.

    .venv/bin/python benchmarks/bench_train.py                    # both settings, 3 alternating rounds
    .venv/bin/python benchmarks/bench_train.py --rounds 1 --steps 320 --json-line   # one JSON line (GPU script)
    .venv/bin/python benchmarks/bench_train.py --profile /tmp/prof  # + a TF profiler trace of one block each

Settings (both on the same synthetic session-parallel data, a 2,807-item catalogue as the ML-1M
subset of issue #15, sessions of ML-like lengths):
- official: the official GRU4Rec's RetailRocket setting: BPR-max after ELU(0.5), bpreg 1.95, one GRU
  layer of 224, batch 80, 2,048 extra samples ∝ support**0.4, shared embedding, dropout 0.5/0.05,
  Adagrad lr 0.05 with momentum 0.4;
- tutorial: the Keras tutorial's choices: one-hot input, GRU 50, softmax over ALL items, Adam
  (lr 0.001), batch 64, dropout 0.25; timed beside `tutorial_reference.py` (its per-step
  `train_on_batch` loop) in the same run;
- movielens (`--settings movielens`): configs/movielens.yaml's training at batch 96.

Per setting and round: sbrjob's first block (tracing/compiling included) is timed apart; the steady
state is the median of the following blocks (each synchronised), as ms per step and events/s (real
(input, target) pairs). `limit` is the arithmetic at those shapes run with nothing else: the
scored-columns matmul [B,H]x[H,C] forward and both backward matmuls, the GRU's forward and
backward matmuls (and, for the tutorial, the dense Adam pass over every parameter, which its
setting cannot avoid), looped in-graph with plain TF and with numpy; the faster is the limit.
`fraction` = limit ms / sbrjob ms per step; `fixed` = sbrjob ms - limit ms (per-step cost beyond
that arithmetic). Rounds alternate the settings (and the reference) so load changes hit all alike;
the summary takes medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from sbrjob import use_tf_env  # noqa: E402

use_tf_env()  # as the CLI: time what `sbrjob train` runs

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from sbrjob import batching, export  # noqa: E402
from sbrjob.config import config_from_dict  # noqa: E402
from sbrjob.distribute import make_strategy  # noqa: E402
from sbrjob.shards import distribute_blocks  # noqa: E402
from sbrjob.synthetic import walk_sessions  # noqa: E402

BLOCK_STEPS = 32

SETTINGS = {
    "official": {
        "batch": 80,
        "model": {"input": "shared", "layers": [224], "dropout_embedding": 0.5, "dropout_hidden": 0.05,
                  "final_activation": "elu", "elu_param": 0.5},
        "train": {"loss": "bpr-max", "bpreg": 1.95, "n_sample": 2048, "sample_alpha": 0.4,
                  "optimizer": "adagrad", "lr": 0.05, "momentum": 0.4},
    },
    "tutorial": {
        "batch": 64,
        "model": {"input": "onehot", "layers": [50], "dropout_hidden": 0.25},
        "train": {"loss": "softmax", "optimizer": "adam", "lr": 0.001},
    },
    "movielens": {
        "batch": 96,
        "model": {"input": "shared", "layers": [224], "dropout_embedding": 0.1272, "dropout_hidden": 0.1722},
        "train": {"loss": "xe", "n_sample": 512, "sample_alpha": 0.5803, "logq": 1.0, "optimizer": "adagrad",
                  "lr": 0.04512, "momentum": 0.4089},
    },
}


def synthetic(n_items: int, n_sessions: int, seed: int = 0):
    """Sessions of ML-1M-like lengths (geometric, mean ~40 events, capped at 400) over n_items items."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.geometric(1 / 40, size=n_sessions), 2, 400)
    items = walk_sessions(lengths, n_items, rng).astype(np.int32)
    return np.repeat(np.arange(n_sessions), lengths), items


def job_config(name: str, overrides: dict | None = None):
    s = SETTINGS[name]
    train_cfg = dict(s["train"], **(overrides or {}))
    return config_from_dict({"model": s["model"], "train": train_cfg, "export": {"batch_size": s["batch"]}})


def load_blocks(strategy, split: Path, n: int) -> list:
    blocks = []
    for block in distribute_blocks(strategy, str(split)):
        blocks.append(block)
        if len(blocks) >= n:
            break
    return blocks


def time_sbrjob(name, strategy, session, items, n_items, work: Path, steps: int, overrides=None) -> dict:
    """First block (tracing included) and steady-state median ms/step of one fresh Trainer."""
    from sbrjob.train import Trainer

    batch = SETTINGS[name]["batch"]
    split = work / f"train-b{batch}"
    if not (split / "manifest.json").exists():
        export.write_split(session, items, split, split="train", lanes=batch,
                           n_shards=max(strategy.num_replicas_in_sync, 1), block_steps=BLOCK_STEPS,
                           extra={"n_items": n_items})
    n_blocks = 1 + max(2, -(-steps // BLOCK_STEPS))
    blocks = load_blocks(strategy, split, n_blocks)
    cfg = job_config(name, overrides)
    support = np.bincount(items, minlength=n_items)
    trainer = Trainer(cfg, strategy, n_items, support, batch, BLOCK_STEPS)
    state, step, times, events = trainer.zero_state(), 0, [], []
    for block in blocks:
        start = time.perf_counter()
        state, sums = trainer.train_block(block, state, tf.constant(step, tf.int64))
        sums = sums.numpy()  # wait for the block
        times.append(time.perf_counter() - start)
        events.append(float(sums[1]))
        step += BLOCK_STEPS
    steady = sorted(t / BLOCK_STEPS for t in times[1:])
    ms = 1e3 * statistics.median(steady)
    per_step_events = sum(events[1:]) / (len(events) - 1) / BLOCK_STEPS
    return {"first_block_s": round(times[0], 3), "tracing_s": round(times[0] - statistics.median(times[1:]), 3),
            "ms_per_step": round(ms, 3), "events_per_s": round(per_step_events / ms * 1e3, 1),
            "steps": (len(times) - 1) * BLOCK_STEPS, "jit": bool(trainer.jit)
            if hasattr(trainer, "jit") else bool(cfg.train.jit_compile),
            "dense_jit": bool(getattr(trainer, "dense_jit", False))}


# ------------------------------------------------------------------ the matmul limit


def matmul_shapes(name: str, n_items: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matmul of one training step at this setting, forward and backward."""
    s = SETTINGS[name]
    b, h = s["batch"], s["model"]["layers"][0]
    cols = n_items if s["train"]["loss"] == "softmax" else b + s["train"].get("n_sample", 0)
    shapes = [(b, h, cols), (b, cols, h), (cols, b, h)]  # scores, d(h), d(column rows)
    shapes += [(b, h, 2 * h), (h, b, 2 * h),  # h @ Wrz and d(Wrz) (the carried h is a constant)
               (b, h, h), (h, b, h), (b, h, h)]  # (r*h) @ Wh, d(Wh), d(r*h)
    if s["model"]["input"] != "onehot":  # x @ Wx, d(Wx), d(x); one-hot input is a row gather
        shapes += [(b, h, 3 * h), (h, b, 3 * h), (b, 3 * h, h)]
    return shapes


def dense_params(name: str, n_items: int) -> int:
    s = SETTINGS[name]
    h = s["model"]["layers"][0]
    return n_items * h + n_items + n_items * 3 * h + 3 * h * h + 3 * h


def matmul_limit(name: str, n_items: int, reps: int = 64) -> dict:
    """ms per step of the setting's matmuls alone (+ the dense Adam pass for Adam), with TF and numpy."""
    shapes = matmul_shapes(name, n_items)
    flops = sum(2 * m * k * n for m, k, n in shapes)
    rng = np.random.default_rng(0)
    pairs = [(rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)) for m, k, n in shapes]
    tf_pairs = [(tf.constant(a), tf.constant(b)) for a, b in pairs]

    @tf.function
    def loop():
        acc = tf.constant(0.0)
        for _ in tf.range(reps):
            for a, b in tf_pairs:
                acc += tf.matmul(a, b)[0, 0] * 0.0 + acc * 0.0
        return acc

    loop()
    best_tf = min(_timed(lambda: loop().numpy()) for _ in range(5)) / reps
    best_np = min(_timed(lambda: [a @ b for a, b in pairs]) for _ in range(5 * reps // 8)) if reps else 0.0
    update = 0.0
    if SETTINGS[name]["train"]["optimizer"] == "adam":
        n = dense_params(name, n_items)
        var, m, v = (tf.Variable(tf.zeros([n])) for _ in range(3))
        grad = tf.constant(rng.standard_normal(n).astype(np.float32))

        @tf.function
        def adam_loop():
            for _ in tf.range(reps):
                tf.raw_ops.ResourceApplyAdam(var=var.handle, m=m.handle, v=v.handle, beta1_power=0.9, beta2_power=0.99,
                                             lr=0.001, beta1=0.9, beta2=0.999, epsilon=1e-7, grad=grad)
            return var[0]

        adam_loop()
        update = min(_timed(lambda: adam_loop().numpy()) for _ in range(5)) / reps
    matmul = min(best_tf, best_np)
    return {"mflop_per_step": round(flops / 1e6, 1), "matmul_ms_tf": round(1e3 * best_tf, 3),
            "matmul_ms_numpy": round(1e3 * best_np, 3), "gflops": round(flops / matmul / 1e9, 1),
            "dense_update_ms": round(1e3 * update, 3), "limit_ms": round(1e3 * (matmul + update), 3)}


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# ------------------------------------------------------------------ profile


def profile_block(name, strategy, session, items, n_items, work: Path, logdir: Path) -> dict:
    """A TF profiler trace of one steady block; returns ops per step and time per op type."""
    from sbrjob.train import Trainer

    batch = SETTINGS[name]["batch"]
    split = work / f"train-b{batch}"
    if not (split / "manifest.json").exists():
        export.write_split(session, items, split, split="train", lanes=batch, n_shards=1, block_steps=BLOCK_STEPS,
                           extra={"n_items": n_items})
    blocks = load_blocks(strategy, split, 3)
    trainer = Trainer(job_config(name), strategy, n_items, np.bincount(items, minlength=n_items), batch, BLOCK_STEPS)
    state = trainer.zero_state()
    for i, block in enumerate(blocks[:2]):  # trace outside the profile
        state, sums = trainer.train_block(block, state, tf.constant(i * BLOCK_STEPS, tf.int64))
    sums.numpy()
    out = logdir / name
    tf.profiler.experimental.start(str(out))
    start = time.perf_counter()
    state, sums = trainer.train_block(blocks[2], state, tf.constant(2 * BLOCK_STEPS, tf.int64))
    sums.numpy()
    wall = time.perf_counter() - start
    tf.profiler.experimental.stop()
    return summarize_trace(out, wall)


def summarize_trace(logdir: Path, wall: float) -> dict:
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = sorted(logdir.rglob("*.xplane.pb"))
    space = xplane_pb2.XSpace()
    space.ParseFromString(files[-1].read_bytes())
    by_type: dict[str, list] = {}
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for ev in line.events:
                full = names.get(ev.metadata_id, "")
                if ":" not in full or "::" in full or "/" not in full:  # ops are "scope/name:OpType"
                    continue
                op_type = full.rsplit(":", 1)[1]
                if not op_type or not op_type[0].isupper() or " " in op_type:
                    continue
                entry = by_type.setdefault(op_type, [0, 0.0])
                entry[0] += 1
                entry[1] += ev.duration_ps / 1e9  # ms
    total_ops = sum(c for c, _ in by_type.values())
    top = sorted(by_type.items(), key=lambda kv: -kv[1][1])
    return {"wall_ms_per_step": round(1e3 * wall / BLOCK_STEPS, 3), "ops_per_step": round(total_ops / BLOCK_STEPS, 1),
            "op_ms_per_step": round(sum(t for _, t in by_type.values()) / BLOCK_STEPS, 3),
            "by_type_ms_per_step": {k: [round(c / BLOCK_STEPS, 1), round(t / BLOCK_STEPS, 4)] for k, (c, t) in top[:25]}}


# ------------------------------------------------------------------ main


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
    ap.add_argument("--settings", default="official,tutorial", help=f"comma list of {', '.join(SETTINGS)}")
    ap.add_argument("--n-items", type=int, default=2807)
    ap.add_argument("--sessions", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=640, help="steady-state steps timed per setting and round")
    ap.add_argument("--reference-budget", type=float, default=8.0, help="seconds of the tutorial loop per round")
    ap.add_argument("--no-tutorial", action="store_true", help="skip the tutorial reference loop")
    ap.add_argument("--jit", default=None, help="override train.jit_compile (true/false/auto/dense)")
    ap.add_argument("--compare-jit", default=None,
                    help="also time this train.jit_compile value in every round (alternating order) and report "
                         "the median per-round speed ratio against it")
    ap.add_argument("--profile", type=Path, default=None, help="write a profiler trace of one block per setting here")
    ap.add_argument("--json-line", action="store_true", help="print only one JSON line at the end")
    ap.add_argument("--quick", action="store_true", help="1 round of 320 steps")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.steps = 1, 320
    names = [s for s in args.settings.split(",") if s]
    overrides, other = {}, None
    as_setting = lambda v: {"true": True, "false": False}.get(v.lower(), v)  # noqa: E731
    if args.jit is not None:
        overrides["jit_compile"] = as_setting(args.jit)
    if args.compare_jit is not None:
        other = {"jit_compile": as_setting(args.compare_jit)}
    say = (lambda *a, **k: None) if args.json_line else (lambda *a: print(*a, flush=True))

    strategy, kind = make_strategy("auto")
    session, items = synthetic(args.n_items, args.sessions)
    say(f"device: {device_name()}; strategy {kind} x{strategy.num_replicas_in_sync}; {len(items):,} events, "
        f"{args.n_items:,} items; TF {tf.__version__}; oneDNN {os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'default')}")
    results = {"device": device_name(), "strategy": kind, "tf": tf.__version__, "n_items": args.n_items,
               "events": int(len(items)), "rounds": args.rounds, "settings": {}}
    runs = {n: [] for n in names}
    compared = {n: [] for n in names}
    ref = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for r in range(args.rounds):
            for name in names:
                if name == "tutorial" and not args.no_tutorial:
                    from tutorial_reference import events_per_second

                    layout = batching.layout(session, items, SETTINGS[name]["batch"], BLOCK_STEPS)
                    rate, n = events_per_second(layout, args.n_items, SETTINGS[name]["model"]["layers"][0],
                                                budget_s=args.reference_budget, max_steps=2000)
                    ref.append(rate)
                    say(f"round {r + 1} tutorial reference: {rate:,.0f} events/s ({n} steps)")
                if other is not None and r % 2 == 1:
                    compared[name].append(time_sbrjob(name, strategy, session, items, args.n_items, work,
                                                      args.steps, other))
                got = time_sbrjob(name, strategy, session, items, args.n_items, work, args.steps, overrides)
                runs[name].append(got)
                if other is not None and r % 2 == 0:
                    compared[name].append(time_sbrjob(name, strategy, session, items, args.n_items, work,
                                                      args.steps, other))
                if other is not None:
                    c = compared[name][-1]
                    say(f"round {r + 1} sbrjob {name} with jit_compile {args.compare_jit}: {c['ms_per_step']:.3f} "
                        f"ms/step; first block {c['first_block_s']:.2f} s (tracing {c['tracing_s']:.2f} s)")
                say(f"round {r + 1} sbrjob {name}: {got['ms_per_step']:.3f} ms/step, {got['events_per_s']:,.0f} "
                    f"events/s steady; first block {got['first_block_s']:.2f} s (tracing {got['tracing_s']:.2f} s)")
        for name in names:
            limit = matmul_limit(name, args.n_items)
            ms = statistics.median(g["ms_per_step"] for g in runs[name])
            row = {"ms_per_step": ms, "events_per_s": statistics.median(g["events_per_s"] for g in runs[name]),
                   "tracing_s": statistics.median(g["tracing_s"] for g in runs[name]),
                   "first_block_s": statistics.median(g["first_block_s"] for g in runs[name]),
                   "rounds": runs[name], "limit": limit,
                   "fraction_of_limit": round(limit["limit_ms"] / ms, 3),
                   "fixed_ms_per_step": round(ms - limit["limit_ms"], 3)}
            if other is not None:
                row["compared"] = {"jit_compile": args.compare_jit, "rounds": compared[name],
                                   "speedup": round(statistics.median(
                                       c["ms_per_step"] / g["ms_per_step"] for c, g in zip(compared[name], runs[name])), 2),
                                   "tracing_s": statistics.median(c["tracing_s"] for c in compared[name])}
            if name == "tutorial" and ref:
                row["reference_events_per_s"] = round(statistics.median(ref), 1)
                row["ratio_vs_reference"] = round(row["events_per_s"] / row["reference_events_per_s"], 2)
            results["settings"][name] = row
            say(f"{name}: {ms:.3f} ms/step = {row['events_per_s']:,.0f} events/s (median of {args.rounds}); "
                f"limit {limit['limit_ms']:.3f} ms ({limit['mflop_per_step']} MFLOP at {limit['gflops']} GFLOP/s"
                + (f" + dense Adam {limit['dense_update_ms']:.3f} ms" if limit["dense_update_ms"] else "")
                + f"): {100 * row['fraction_of_limit']:.0f}% of it, {row['fixed_ms_per_step']:.3f} ms/step beyond; "
                f"tracing {row['tracing_s']:.2f} s"
                + (f"; tutorial loop {row['reference_events_per_s']:,.0f} events/s -> {row['ratio_vs_reference']}x"
                   if "ratio_vs_reference" in row else "")
                + (f"; {row['compared']['speedup']}x the speed of jit_compile {args.compare_jit} (median per round)"
                   if "compared" in row else ""))
        if args.profile:
            results["profile"] = {n: profile_block(n, strategy, session, items, args.n_items, work, args.profile)
                                  for n in names}
    if args.json_line:
        print(json.dumps(results, separators=(",", ":")))
    else:
        print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
