"""Wall time and peak memory of `sbrjob prepare` on ML-1M (shared data) and full-scale YOOCHOOSE.

Targets (issue 2): ML-1M in a few seconds; 33,003,944 YOOCHOOSE clicks with peak RSS <= 4 GB in
<= 3 minutes on a 2-core machine. The YOOCHOOSE input is SYNTHETIC, same format and size
(benchmarks/gen_yoochoose.py), generated under /tmp when missing. Each case runs in a fresh
process so its peak RSS is its own. CPU seconds (user + system, all threads) are printed too: on a
shared machine they change less than wall time.

    .venv/bin/python benchmarks/bench_prepare.py                 # both cases
    .venv/bin/python benchmarks/bench_prepare.py --cases ml1m    # one
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
SYNTH = Path(tempfile.gettempdir()) / "yoochoose-clicks-synth.dat"


def overrides(case: str, out: str) -> tuple[str, list[str]]:
    if case == "ml1m":
        ml = SHARED / "ml-1m"
        return "movielens", [f"data.path={ml / 'ratings.dat.gz'}", f"data.items_path={ml / 'movies.dat'}",
                             f"output_dir={out}"]
    if case == "yoochoose":
        return "yoochoose", [f"data.path={SYNTH}", f"output_dir={out}"]
    raise SystemExit(f"unknown case {case}")


def run_one(case: str) -> None:
    """In the child: run prepare once and print one JSON line."""
    t0 = time.perf_counter()
    from sbrjob.config import load_config
    from sbrjob.prepare import prepare

    with tempfile.TemporaryDirectory(prefix="bench-prepare-") as out:
        name, sets = overrides(case, out)
        cfg = load_config(name, sets)
        t1, c1 = time.perf_counter(), time.process_time()
        stats = prepare(cfg)
        t2, c2 = time.perf_counter(), time.process_time()
    print(json.dumps({
        "case": case, "input_rows": stats["input"]["rows"],
        "prepare_s": round(t2 - t1, 1), "cpu_s": round(c2 - c1, 1), "process_s": round(t2 - t0, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),  # KiB on Linux
        "splits": {s: [stats[s]["events"], stats[s]["sessions"]] for s in ("train", "valid", "test")},
        "n_items": stats["n_items"],
    }))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", nargs="+", default=["ml1m", "yoochoose"], choices=["ml1m", "yoochoose"])
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run_one(args.one)
        return
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    for case in args.cases:
        if case == "ml1m" and not (SHARED / "ml-1m").exists():
            print(f"ml1m: skipped, {SHARED / 'ml-1m'} not found")
            continue
        if case == "yoochoose" and not SYNTH.exists():
            subprocess.run([sys.executable, str(REPO / "benchmarks" / "gen_yoochoose.py"), str(SYNTH)], check=True)
        res = subprocess.run([sys.executable, __file__, "--one", case], check=True, capture_output=True, text=True)
        r = json.loads(res.stdout.strip().splitlines()[-1])
        print(f"{case}: {r['input_rows']:,} rows  prepare {r['prepare_s']} s wall, {r['cpu_s']} s CPU  (process incl. imports "
              f"{r['process_s']} s)  peak RSS {r['peak_rss_gb']} GB  splits(events, sessions) {r['splits']}  "
              f"items {r['n_items']:,}")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
