"""`eval.seen_bias: auto` on finished runs of bench_quality.py: the bias chosen on valid, then test
with and without it, for the best (and the last) checkpoint and the refit (issue #14, round 3).

    .venv/bin/python benchmarks/bench_seen_bias.py --root /tmp/q3 --regimes yoo,ml-gap,ml --variants shipped,official

Training does not depend on eval.seen_bias (per-epoch validation scores the model alone), so a run
trained without it and evaluated here gives what the same config with `eval.seen_bias: auto`
gives: the choice is made on the valid split of the run, for the checkpoint that is tested; the
refit takes that number. Test numbers are reported, never used to choose.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SETS = ["--set", "eval.ties=standard", "--set", "eval.beyond_accuracy=false"]


def evaluate(run: Path, bias: str, checkpoint: str = "best") -> dict:
    cmd = [sys.executable, "-m", "sbrjob", "evaluate", "--run", str(run), "--checkpoint", checkpoint,
           "--set", f"eval.seen_bias={bias}", *SETS]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{run}: {proc.stderr.strip().splitlines()[-1]}")
    return json.loads(proc.stdout)


def one(run: Path, checkpoint: str) -> dict:
    plain, chosen = evaluate(run, "0", checkpoint), evaluate(run, "auto", checkpoint)
    choice = chosen["seen_bias_choice"]
    row = {"run": str(run), "checkpoint": checkpoint, "seen_bias": chosen["seen_bias"],
           "valid_mrr@20": {"plain": choice["tried"]["0.0"], "biased": choice["tried"][str(chosen["seen_bias"])]},
           "test": {"plain": plain["mrr@20"], "biased": chosen["mrr@20"]},
           "test_recall@20": {"plain": plain["recall@20"], "biased": chosen["recall@20"]}}
    if checkpoint == "best" and (run / "refit" / "metrics.json").exists():
        refit = evaluate(run / "refit", str(chosen["seen_bias"]))
        row["refit_test"] = {"plain": evaluate(run / "refit", "0")["mrr@20"], "biased": refit["mrr@20"]}
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", required=True, help="bench_quality.py's --root")
    ap.add_argument("--regimes", default="yoo,ml-gap,ml")
    ap.add_argument("--variants", default="shipped,official")
    ap.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "seen_bias.jsonl"))
    args = ap.parse_args()
    print("| regime | variant | checkpoint | chosen seen_bias | valid MRR@20 plain -> biased | "
          "test MRR@20 plain -> biased | refit test MRR@20 plain -> biased |")
    print("|---|---|---|---:|---|---|---|")
    for regime in args.regimes.split(","):
        for variant in args.variants.split(","):
            run = Path(args.root) / regime / variant
            if not (run / "metrics.json").exists():
                continue
            for checkpoint in ("best", "last") if variant.startswith("official") else ("best",):
                row = {"regime": regime, "variant": variant, **one(run, checkpoint)}
                with open(args.results, "a") as f:
                    f.write(json.dumps(row) + "\n")
                v, t, r = row["valid_mrr@20"], row["test"], row.get("refit_test")
                refit = f"{r['plain']:.4f} -> {r['biased']:.4f}" if r else ""
                bias = row["seen_bias"]
                print(f"| {regime} | {variant} | {checkpoint} | {bias if isinstance(bias, str) else round(bias, 2)} | "
                      f"{v['plain']:.4f} -> {v['biased']:.4f} | {t['plain']:.4f} -> {t['biased']:.4f} | {refit} |",
                      flush=True)


if __name__ == "__main__":
    main()
