"""A tune trial against the same training under `train`: wall time of the same epochs, side by side.

Each round, in alternating order: `stages.train_stage` on a fresh run directory whose data and
shards are links to a prepared parent (as tune's trials get them), and `tune.tune` with one trial
whose values are the config's own (trial 000, the incumbent) in a fresh study. Both are timed end to
end (trace, epochs, validation, test evaluation); the tune figure is the trial's own wall time
(`seconds` in the leaderboard) and the whole `tune` call (study, reports). Prints one line per
measurement and the ratio of medians.

    .venv/bin/python benchmarks/bench_tune.py --config tiny --epochs 4 --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="tiny")
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()

    from sbrjob import stages, tune
    from sbrjob.config import load_config

    root = Path(tempfile.mkdtemp(prefix="bench-tune-"))
    parent = load_config(args.config, [f"output_dir={root / 'parent'}", f"train.epochs={args.epochs}"])
    stages.export_stage(parent)  # prepared once: both sides link to it
    space = root / "space.yaml"  # one searched key whose range holds the config's value: trial 000 = the config
    lr = parent.train.lr
    space.write_text("".join(f"{k}: null\n" for k in tune.DEFAULT_SPACE if k != "train.lr")
                     + f"train.lr: {{low: {lr / 2}, high: {lr * 2}}}\n")

    def under_train(i: int) -> float:
        cfg = load_config(args.config, [f"output_dir={root / f'train-{i}'}", f"train.epochs={args.epochs}"])
        out = Path(cfg.output_dir)
        out.mkdir(parents=True)
        for name in ("data", "shards"):
            (out / name).symlink_to(root / "parent" / name, target_is_directory=True)
        t0 = time.perf_counter()
        stages.train_stage(cfg)
        return time.perf_counter() - t0

    def under_tune(i: int) -> tuple[float, float]:
        cfg = load_config(args.config, [f"output_dir={root / f'tune-{i}'}", f"train.epochs={args.epochs}"])
        out = Path(cfg.output_dir)
        out.mkdir(parents=True)
        (out / "data").symlink_to(root / "parent" / "data", target_is_directory=True)
        cache = out / "tune" / "cache"  # where tune keeps shards per export setting
        cache.mkdir(parents=True)
        (cache / tune._shards_key(cfg)).symlink_to(root / "parent" / "shards", target_is_directory=True)
        t0 = time.perf_counter()
        result = tune.tune(cfg, trials=1, space=str(space), echo=lambda s: None)
        whole = time.perf_counter() - t0
        (row,) = result["leaderboard"]
        return float(row["seconds"]), whole

    trains, trials, wholes = [], [], []
    for i in range(args.rounds):
        order = ("train", "tune") if i % 2 == 0 else ("tune", "train")
        for side in order:
            if side == "train":
                trains.append(under_train(i))
                print(f"round {i + 1} train: {trains[-1]:.1f} s", flush=True)
            else:
                trial, whole = under_tune(i)
                trials.append(trial)
                wholes.append(whole)
                print(f"round {i + 1} tune:  trial {trial:.1f} s (whole tune call {whole:.1f} s)", flush=True)
    m_train, m_trial, m_whole = (statistics.median(x) for x in (trains, trials, wholes))
    print(f"{args.config}, {args.epochs} epochs, {args.rounds} rounds: median train {m_train:.1f} s, "
          f"tune trial {m_trial:.1f} s ({m_trial / m_train:.2f}x), whole tune call {m_whole:.1f} s "
          f"({m_whole / m_train:.2f}x)")


if __name__ == "__main__":
    main()
