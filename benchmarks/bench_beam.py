"""Wall time and peak memory of `sbrjob prepare` + `export` on Apache Beam's DirectRunner vs in-process.

The input is SYNTHETIC YOOCHOOSE-format clicks (benchmarks/gen_yoochoose.py; the full log is
33,003,944 clicks), generated under /tmp when missing. Each case runs in a fresh process; peak RSS
is that process's own and, for the DirectRunner's worker processes (multi_processing), the largest
child. Every case also checks that its data/ files and shards are byte-identical to the in-process
case's (the sha256 of each file).

Needs a venv with the `sbrjob[beam]` extra (e.g. `make test-beam` builds .venv-beam):

    .venv-beam/bin/python benchmarks/bench_beam.py                      # 3.3M clicks (a tenth)
    .venv-beam/bin/python benchmarks/bench_beam.py --clicks 33003944    # full scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CASES = ["inprocess", "beam:multi_processing:2", "beam:in_memory:1"]


def run_one(case: str, path: str, export: bool) -> None:
    """In the child: prepare (and export) once and print one JSON line."""
    t0 = time.perf_counter()
    from sbrjob import stages
    from sbrjob.config import load_config
    from sbrjob.runs import PREPARED_FILES, SPLITS, Run

    runner, *rest = case.split(":")
    sets = []
    if rest:
        sets = [f"beam.direct_running_mode={rest[0]}", f"beam.direct_num_workers={rest[1]}"]
    # imports are a cost of their own, not counted in the stages: TensorFlow (the in-process shard
    # writer) and Apache Beam
    if runner == "inprocess":
        import tensorflow  # noqa: F401
    else:
        import apache_beam  # noqa: F401
    with tempfile.TemporaryDirectory(prefix="bench-beam-") as out:
        cfg = load_config("yoochoose", [f"data.path={path}", f"output_dir={out}", *sets])
        run = Run(cfg.output_dir)
        t1, c1 = time.perf_counter(), time.process_time()
        data = stages.ensure_prepared(run, cfg, runner=runner)
        t2 = time.perf_counter()
        manifests = stages.ensure_exported(run, cfg, data, runner=runner) if export else {}
        t3, c3 = time.perf_counter(), time.process_time()
        stats = json.loads(Path(run.data_dir, "stats.json").read_text())
        digests = {name: data.manifest["files"][name] for name in PREPARED_FILES}
        for split, m in manifests.items():
            digests.update({f"{split}/{k}": v for k, v in m["files"].items()})
    print(json.dumps({
        "case": case, "input_rows": stats["input"]["rows"], "filter_rounds": stats.get("filter_rounds"),
        "prepare_s": round(t2 - t1, 1), "export_s": round(t3 - t2, 1), "cpu_s_main": round(c3 - c1, 1),
        "process_s": round(t3 - t0, 1),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),  # KiB on Linux
        "peak_rss_child_gb": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1e6, 2),
        "splits": {s: [stats[s]["events"], stats[s]["sessions"]] for s in SPLITS}, "digests": digests,
    }))


def tree_rss_gb(pid: int) -> float:
    """Resident memory of a process and all its descendants now (Linux /proc), in GB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(d.name))
            rss[int(d.name)] = int(fields[21]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, IndexError, ValueError):
            continue  # the process ended while we looked
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += rss.get(p, 0)
        todo.extend(children.get(p, []))
    return total / 1e9


def run_sampled(cmd: list[str]) -> tuple[subprocess.CompletedProcess, float]:
    """Run cmd; also the peak of its whole process tree's summed RSS, sampled every 0.5 s."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0.0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_gb(proc.pid))
            time.sleep(0.5)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = proc.communicate()
    t.join()
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), peak[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clicks", type=int, default=3_300_000, help="synthetic clicks (33003944 = full scale)")
    ap.add_argument("--cases", nargs="+", default=CASES,
                    help="inprocess, or beam:MODE:WORKERS (MODE in_memory or multi_processing)")
    ap.add_argument("--no-export", action="store_true", help="prepare only")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        run_one(args.one, args.path, not args.no_export)
        return
    path = Path(tempfile.gettempdir()) / f"yoochoose-clicks-synth-{args.clicks}.dat"
    if args.clicks == 33_003_944 and (Path(tempfile.gettempdir()) / "yoochoose-clicks-synth.dat").exists():
        path = Path(tempfile.gettempdir()) / "yoochoose-clicks-synth.dat"  # bench_prepare.py's file
    if not path.exists():
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "gen_yoochoose.py"), str(path),
                        "--clicks", str(args.clicks)], check=True)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; input {path} "
          f"({path.stat().st_size / 1e6:.0f} MB)")
    reference = None
    for case in args.cases:
        cmd = [sys.executable, __file__, "--one", case, "--path", str(path)] + (["--no-export"] if args.no_export else [])
        res, tree_peak = run_sampled(cmd)
        if res.returncode:
            print(f"{case}: failed\n{res.stderr[-2000:]}")
            continue
        r = json.loads(res.stdout.strip().splitlines()[-1])
        reference = reference or r["digests"]
        same = "identical to the first case" if r["digests"] == reference else "DIFFERENT from the first case"
        print(f"{case}: {r['input_rows']:,} rows, {r['filter_rounds']} filter rounds  prepare {r['prepare_s']} s  "
              f"export {r['export_s']} s  (process incl. imports {r['process_s']} s; main-process CPU "
              f"{r['cpu_s_main']} s)  peak RSS main {r['peak_rss_gb']} GB, largest worker {r['peak_rss_child_gb']} GB, "
              f"all processes together {tree_peak:.2f} GB  "
              f"splits(events, sessions) {r['splits']}  outputs {same}")
    print(f"load average {os.getloadavg()[0]:.1f} at end")


if __name__ == "__main__":
    main()
