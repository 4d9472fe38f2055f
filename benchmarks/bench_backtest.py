"""Warm start against cold training over a sliding window of days (issue 16's target).

For each dataset: N windows (`backtest.window_config`: data.until = a day, split.scheme days with
test_days 1, valid_days 1, so each window tests on its last day). Every window is trained COLD for
`--cold-epochs` epochs; every window but the first is also trained WARM (`--init-from` the previous
window: the cold w00 for w01, then the previous warm window: the nightly chain) for `--warm-epochs`.
Each run is trained one epoch at a time (raising train.epochs continues a run, and every call ends
with the test evaluation on the best-by-validation weights), so the test MRR@20 after 1..E epochs
comes from the same run. The question: does a warm window reach the cold model's final test MRR@20
(within 2 %) in <= 40 % of the cold run's epochs? Prints one line per run and epoch, then a
markdown table; writes benchmarks/results/backtest.{json,png} (`--results NAME`).

    .venv/bin/python benchmarks/bench_backtest.py --datasets yoochoose movielens --windows 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

RESULTS = Path(__file__).resolve().parent / "results"
CONFIGS = Path(__file__).resolve().parents[1] / "configs"  # this checkout's configs, not an installed copy

# the window settings per dataset: the shipped config plus what makes a day-by-day backtest of it
DATASETS = {
    # 7 days of clicks (2014-04-01..07): windows end on the last days
    "yoochoose": {"config": "yoochoose", "end": "2014-04-07", "set": ["split.valid_days=1", "split.test_days=1"]},
    # ML-1M users 1-2999: most ratings fall in 2000-11; sessions of 1 h bursts (not whole histories,
    # which a time window would cut), the last 14 days of each window (a sliding window), split by day
    "movielens": {"config": "movielens", "end": "2000-11-30",
                  "set": ["sessions.gap=3600", "split.scheme=days", "split.valid_days=1", "split.test_days=1",
                          "filter.last_days=14"]},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    ap.add_argument("--windows", type=int, default=3)
    ap.add_argument("--step-days", type=int, default=1)
    ap.add_argument("--cold-epochs", type=int, default=5)
    ap.add_argument("--warm-epochs", type=int, default=2)
    ap.add_argument("--variants", nargs="+", default=["keep", "reset"], choices=["keep", "reset"],
                    help="warm starts to run: keep (carry the optimizer state) and/or reset (--reset-optimizer)")
    ap.add_argument("--set", action="append", default=[], help="extra config overrides for every run")
    ap.add_argument("--out", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--results", default="backtest", help="results file name: benchmarks/results/NAME.{json,png}")
    ap.add_argument("--warm-set", action="append", default=[],
                    help="with --final: config overrides for the warm runs only (e.g. train.lr=0.2)")
    ap.add_argument("--final", action="store_true",
                    help="train each run once and compare the final models (under train.refit: the refits, each "
                         "warm window and its refit starting from the previous window's final model); epochs "
                         "count the run's and its refit's; no per-epoch curves")
    ap.add_argument("--replot", nargs="+", metavar="JSON",
                    help="only draw --final results files (their datasets side by side) to "
                         "benchmarks/results/NAME.png")
    args = ap.parse_args()
    if args.replot:
        merged = {"datasets": {}}
        for f in args.replot:
            for name, rows in json.loads(Path(f).read_text())["datasets"].items():
                merged["datasets"][f"{name} ({Path(f).stem})"] = rows
        (RESULTS / f"{args.results}.png").write_bytes(plot_final(merged))
        return
    if args.final:
        final_mode(args)
        return

    from sbrjob.backtest import window_config, window_days
    from sbrjob.config import load_config
    from sbrjob.stages import train_stage

    root = Path(args.out or tempfile.mkdtemp(prefix="bench-backtest-"))
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "windows": args.windows,
               "variants": args.variants,
               "step_days": args.step_days, "cold_epochs": args.cold_epochs, "warm_epochs": args.warm_epochs,
               "extra_set": args.set, "datasets": {}}

    def curve(cfg, epochs: int, init_from=None, reset=False) -> list[dict]:
        """Train `cfg` one epoch at a time up to `epochs`; the test metrics (best weights) after each.
        Kept in RUN/curve.json: a second invocation (another variant) reuses the runs it shares."""
        cache = Path(cfg.output_dir) / "curve.json"
        if cache.exists():
            return json.loads(cache.read_text())[:epochs]
        done = Path(cfg.output_dir) / "metrics.json"
        if done.exists() and json.loads(done.read_text()).get("status") == "done" and \
                len(json.loads(done.read_text())["epochs"]) == epochs:  # a run from before curve.json: final only
            m = json.loads(done.read_text())
            return [{"epochs": epochs, "test_mrr@20": m["test"]["mrr@20"], "test_recall@20": m["test"]["recall@20"],
                     "test_events": m["test"]["events"], "best_epoch": m["best_epoch"],
                     "train_seconds": sum(r["train_seconds"] for r in m["epochs"]), "init_from": m.get("init_from"),
                     "final_only": True}]
        out = []
        for e in range(1, epochs + 1):
            cfg.train.epochs = e
            t0 = time.perf_counter()
            metrics, _ = train_stage(cfg, init_from=init_from, reset_optimizer=reset)
            rec = metrics["epochs"][-1]
            out.append({"epochs": e, "test_mrr@20": metrics["test"]["mrr@20"],
                        "test_recall@20": metrics["test"]["recall@20"], "test_events": metrics["test"]["events"],
                        "valid_mrr@20": (rec.get("valid") or {}).get("mrr@20"), "best_epoch": metrics["best_epoch"],
                        "train_seconds": sum(r["train_seconds"] for r in metrics["epochs"]),
                        "wall_seconds": round(time.perf_counter() - t0, 2), "init_from": metrics.get("init_from")})
            print(f"  {cfg.name} epoch {e}: test mrr@20 {out[-1]['test_mrr@20']:.4f} recall@20 "
                  f"{out[-1]['test_recall@20']:.4f} (best epoch {metrics['best_epoch']}, "
                  f"{rec['train_seconds']:.1f} s)", flush=True)
        cache.write_text(json.dumps(out, indent=2))
        return out

    for name in args.datasets:
        spec = DATASETS[name]
        base = load_config(str(CONFIGS / f"{spec['config']}.yaml"), [f"output_dir={root / name}"] + spec["set"] + args.set)
        days = window_days(dt.date.fromisoformat(spec["end"]), args.windows, args.step_days)
        rows, previous = [], {v: None for v in args.variants}
        print(f"{name}: windows until {', '.join(d.isoformat() for d in days)}", flush=True)
        for i, day in enumerate(days):
            cold_cfg = window_config(base, i, day, warm=False)
            cold = curve(cold_cfg, args.cold_epochs)
            row = {"window": i, "until": day.isoformat(), "cold": cold}
            for variant in args.variants:
                if i == 0:
                    previous[variant] = cold_cfg.output_dir  # the chain starts from the cold first window
                    continue
                warm_cfg = window_config(base, i, day, warm=True)
                if variant == "reset":
                    warm_cfg.output_dir += "-reset"
                    warm_cfg.name += "-reset"
                warm = curve(warm_cfg, args.warm_epochs, init_from=previous[variant], reset=variant == "reset")
                target = cold[-1]["test_mrr@20"]
                reached = next((w["epochs"] for w in warm if w["test_mrr@20"] >= 0.98 * target), None)
                row[variant] = {"curve": warm, "reaches_cold_at": reached,
                                "ratio": None if reached is None else reached / args.cold_epochs}
                row["items"] = warm[0]["init_from"]["items"]
                previous[variant] = warm_cfg.output_dir
            rows.append(row)
        results["datasets"][name] = rows

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.results}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.results}.png").write_bytes(plot(results))
    print(markdown(results))


def final_mode(args) -> None:
    """--final: cold and warm runs trained once each; their final models' test MRR@20 and epochs."""
    from sbrjob.backtest import window_config, window_days
    from sbrjob.config import config_from_dict, load_config
    from sbrjob.stages import train_stage

    root = Path(args.out or tempfile.mkdtemp(prefix="bench-backtest-"))
    results = {"machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "mode": "final", "windows": args.windows,
               "variants": args.variants, "step_days": args.step_days, "cold_epochs": args.cold_epochs,
               "warm_epochs": args.warm_epochs, "extra_set": args.set, "warm_set": args.warm_set, "datasets": {}}

    def final(cfg, epochs: int, init_from=None, reset=False) -> dict:
        cfg.train.epochs = epochs
        t0 = time.perf_counter()
        m, _ = train_stage(cfg, init_from=init_from, reset_optimizer=reset)
        refit = m.get("refit") or {}
        test = refit.get("test") or m["test"]
        rec = {"epochs": len(m["epochs"]), "best_epoch": m["best_epoch"], "refit_epochs": refit.get("epochs", 0),
               "test_mrr@20": test["mrr@20"], "test_recall@20": test["recall@20"], "test_events": test["events"],
               "run_test_mrr@20": m["test"]["mrr@20"],
               "train_seconds": round(sum(r["train_seconds"] for r in m["epochs"]) + refit.get("train_seconds", 0), 1),
               "wall_seconds": round(time.perf_counter() - t0, 1), "items": (m.get("init_from") or {}).get("items")}
        print(f"  {cfg.name}: {rec['epochs']}+{rec['refit_epochs']} epochs, final test mrr@20 {rec['test_mrr@20']:.4f} "
              f"(run's best {rec['run_test_mrr@20']:.4f}), {rec['train_seconds']} s", flush=True)
        return rec

    for name in args.datasets:
        spec = DATASETS[name]
        base = load_config(str(CONFIGS / f"{spec['config']}.yaml"), [f"output_dir={root / name}"] + spec["set"] + args.set)
        days = window_days(dt.date.fromisoformat(spec["end"]), args.windows, args.step_days)
        print(f"{name}: windows until {', '.join(d.isoformat() for d in days)}", flush=True)
        rows, previous = [], {}
        for i, day in enumerate(days):
            cold_cfg = window_config(base, i, day, warm=False)
            row = {"window": i, "until": day.isoformat(), "cold": final(cold_cfg, args.cold_epochs)}
            for variant in args.variants:
                warm_cfg = window_config(base, i, day, warm=True)
                if args.warm_set:
                    warm_cfg = config_from_dict(warm_cfg.to_dict(), args.warm_set)
                tag = f"{variant}-{args.warm_epochs}ep" + "".join(f"-{s}" for s in args.warm_set)
                if i == 0:
                    previous[tag] = cold_cfg.output_dir  # the chain starts from the cold first window
                    continue
                warm_cfg.output_dir += f"-{tag}"
                warm_cfg.name += f"-{tag}"
                w = final(warm_cfg, args.warm_epochs, init_from=previous[tag], reset=variant == "reset")
                cold = row["cold"]
                w["ratio_mrr"] = round(w["test_mrr@20"] / cold["test_mrr@20"], 4)
                w["ratio_epochs"] = round((w["epochs"] + w["refit_epochs"]) / (cold["epochs"] + cold["refit_epochs"]), 3)
                w["met"] = w["ratio_mrr"] >= 0.98 and w["ratio_epochs"] <= 0.4
                row[tag] = w
                previous[tag] = warm_cfg.output_dir
            rows.append(row)
        results["datasets"][name] = rows
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.results}.json").write_text(json.dumps(results, indent=2) + "\n")
    (RESULTS / f"{args.results}.png").write_bytes(plot_final(results))
    lines = ["| data | window (until) | items kept/new/dropped | test events | cold: epochs (+refit), final MRR@20 | "
             "warm start | warm: epochs (+refit), final MRR@20 | MRR ratio | epoch ratio | met? |",
             "|---|---|---|---:|---:|---|---:|---:|---:|---|"]
    for name, rows in results["datasets"].items():
        for r in rows:
            c = r["cold"]
            cold = f"{c['epochs']}+{c['refit_epochs']}, {c['test_mrr@20']:.4f}"
            tags = _warm_tags(r)
            if not tags:
                lines.append(f"| {name} | w{r['window']:02d} ({r['until']}) | (first: cold only) | "
                             f"{c['test_events']:,} | {cold} | - | - | - | - | - |")
            for t in tags:
                w, it = r[t], r[t]["items"]
                lines.append(f"| {name} | w{r['window']:02d} ({r['until']}) | {it['kept']:,}/{it['new']:,}/"
                             f"{it['dropped']:,} | {w['test_events']:,} | {cold} | {t} | {w['epochs']}+"
                             f"{w['refit_epochs']}, {w['test_mrr@20']:.4f} | {w['ratio_mrr']:.3f} | "
                             f"{w['ratio_epochs']:.2f} | {'yes' if w['met'] else 'no'} |")
    print("\n".join(lines))


def _warm_tags(row: dict) -> list[str]:
    """The warm starts of a --final results row (its keys besides the window and the cold run)."""
    return [k for k in row if k not in ("window", "until", "cold")]


def markdown(results: dict) -> str:
    E, W = results["cold_epochs"], results["warm_epochs"]
    lines = [f"| data | window (until) | items kept/new/dropped | test events | cold MRR@20 ({E} ep) | warm start | "
             + " | ".join(f"warm MRR@20 ({e} ep)" for e in range(1, W + 1))
             + " | reaches cold -2 % at | ≤ 40 %? | cold s/epoch | warm s/epoch |",
             "|---|---|---|---:|---:|---|" + "---:|" * W + "---:|---|---:|---:|"]
    for name, rows in results["datasets"].items():
        for r in rows:
            cold = r["cold"]
            head = [name, f"w{r['window']:02d} ({r['until']})"]
            items = r.get("items")
            head.append(f"{items['kept']:,}/{items['new']:,}/{items['dropped']:,}" if items else "(first: cold only)")
            head += [f"{cold[-1]['test_events']:,}", f"{cold[-1]['test_mrr@20']:.4f}"]
            cold_s = f"{cold[-1]['train_seconds'] / E:.1f}"
            variants = [v for v in results["variants"] if v in r]
            if not variants:
                lines.append("| " + " | ".join(head + ["-"] * (W + 3) + [cold_s, "-"]) + " |")
            for v in variants:
                w, at = r[v]["curve"], r[v]["reaches_cold_at"]
                cells = head + [{"keep": "optimizer kept", "reset": "optimizer reset"}[v]]
                cells += [f"{c['test_mrr@20']:.4f}" for c in w]
                cells += [f"{at} epoch(s) ({at / E:.0%})" if at else f"not within {W}",
                          "yes" if at and at / E <= 0.4 else "no", cold_s, f"{w[-1]['train_seconds'] / len(w):.1f}"]
                lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(results: dict) -> bytes:
    from matplotlib.figure import Figure

    names = list(results["datasets"])
    fig = Figure(figsize=(max(8.0, 5.5 * len(names)), 4.4))
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    styles = {"keep": "s--", "reset": "^:"}
    for ax, name in zip(axes, names):
        for r in results["datasets"][name]:
            color = f"C{r['window']}"
            cold = r["cold"]
            ax.plot([c["epochs"] for c in cold], [c["test_mrr@20"] for c in cold], "o-", color=color,
                    label=f"w{r['window']:02d} {r['until']} cold")
            for v in results["variants"]:
                if v in r:
                    w = r[v]["curve"]
                    ax.plot([c["epochs"] for c in w], [c["test_mrr@20"] for c in w], styles[v], color=color,
                            label=f"w{r['window']:02d} warm, optimizer {v}")
            if any(v in r for v in results["variants"]):
                ax.axhline(0.98 * cold[-1]["test_mrr@20"], color=color, linestyle=(0, (1, 3)), alpha=0.6)
        ax.axvline(0.4 * results["cold_epochs"], color="grey", linestyle=":", alpha=0.7)
        ax.set_xlabel("epochs trained in this window")
        ax.set_ylabel("test MRR@20 (best-by-validation weights)")
        ax.set_title(f"{name}: cold vs warm start per window")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig, "faint dotted: 98 % of the cold run's final MRR@20; grey: 40 % of the cold epochs")


def plot_final(results: dict) -> bytes:
    """--final: per dataset, the final models' test MRR@20 per window, cold and each warm start, with
    the band of 98 % of cold; each point is labelled with its epochs (run + refit)."""
    from matplotlib.figure import Figure

    names = list(results["datasets"])
    fig = Figure(figsize=(max(8.0, 5.5 * len(names)), 4.4))
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        rows = results["datasets"][name]
        x = [r["window"] for r in rows]
        cold = [r["cold"]["test_mrr@20"] for r in rows]
        ax.plot(x, cold, "o-", color="tab:blue", label="cold")
        ax.fill_between(x, [0.98 * c for c in cold], cold, color="tab:blue", alpha=0.12, label="cold -2 %")
        tags = sorted({t for r in rows for t in _warm_tags(r)})
        for i, tag in enumerate(tags):
            pts = [(r["window"], r[tag]) for r in rows if tag in r]
            ax.plot([p[0] for p in pts], [p[1]["test_mrr@20"] for p in pts], "s--", color=f"C{i + 1}",
                    label=f"warm, {tag}")
            for wx, w in pts:
                ax.annotate(f"{w['epochs']}+{w['refit_epochs']}", (wx, w["test_mrr@20"]), textcoords="offset points",
                            xytext=(0, 6), ha="center", fontsize=7, color=f"C{i + 1}")
        for r in rows:
            c = r["cold"]
            ax.annotate(f"{c['epochs']}+{c['refit_epochs']}", (r["window"], c["test_mrr@20"]),
                        textcoords="offset points", xytext=(0, -12), ha="center", fontsize=7, color="tab:blue")
        ax.set_xticks(x, [f"w{r['window']:02d}\n{r['until']}" for r in rows], fontsize=7)
        ax.set_ylabel("final model's test MRR@20")
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _png(fig, "cold vs warm-started final models per window (labels: epochs, run + refit)")


def _png(fig, title: str) -> bytes:
    import io

    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


if __name__ == "__main__":
    main()
