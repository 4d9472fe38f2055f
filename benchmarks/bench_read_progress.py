"""What the reading progress of `prepare` costs: parsing a raw input as the readers do now (a stream
whose reads are counted and reported to a progress bar) vs the reference, pyarrow reading the path
itself with the same options (what the readers did before, no progress possible).

The input is SYNTHETIC YOOCHOOSE clicks (benchmarks/gen_yoochoose.py, generated under /tmp when
missing; --clicks sets the size) plain and gzip'd (`gzip -1`). Each measurement is a fresh process
(imports excluded), the two variants alternate for --rounds rounds, and the ratio new/reference is
printed per file as the median of the per-round ratios (a shared machine drifts; pairs cancel it),
for wall time and for CPU time (user + system, all threads: steadier when others load the machine).
Then the reads alone, where the two differ (the parse is the same): the file drained through
pyarrow's native stream vs through the counted one, 16 MiB at a time, in this process.

    .venv/bin/python benchmarks/bench_read_progress.py                      # 10M clicks, 5 rounds
    .venv/bin/python benchmarks/bench_read_progress.py --clicks 3000000 --rounds 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_one(variant: str, path: str) -> None:
    """In the child: parse `path` once and print one JSON line."""
    from sbrjob import readers
    from sbrjob.progress import BYTES, Steps

    first = readers._first_line(path)
    names = ("session", "time", "item", "category")[:len(first.split(","))]
    layout = readers.Layout(",", {"session": "int", "time": "iso", "item": "int"}, names=names, time="time",
                            time_unit="iso")
    reports = 0
    t0, c0 = time.perf_counter(), time.process_time()
    if variant == "reference":
        table = readers._parse(path, layout, layout.arrow_kinds(), lambda row: "error")
    else:
        with Steps(BYTES) as progress:  # no TTY here: the Bar checks its 30 s interval on each report

            def report(step, done, total):
                nonlocal reports
                reports += 1
                progress(step, done, total)

            table = readers._arrow_read(path, layout, False, lambda done, total: report("read", done, total))[0]
    t1, c1 = time.perf_counter(), time.process_time()
    print(json.dumps({"variant": variant, "rows": table.num_rows, "s": t1 - t0, "cpu_s": c1 - c0, "reports": reports}))


def reads_only(path: Path, rounds: int) -> None:
    """CPU seconds to drain the (decompressed) stream: native vs counted + reported."""
    import pyarrow as pa

    sys.path.insert(0, str(REPO))  # this checkout, as the children get it through PYTHONPATH
    from sbrjob import readers
    from sbrjob.progress import BYTES, Steps

    def drain(stream) -> int:
        n = 0
        while (buf := stream.read_buffer(1 << 24)).size:
            n += buf.size
        return n

    codec = "gzip" if path.suffix == ".gz" else None
    cpu = {"native": [], "counted": []}
    for _ in range(rounds):
        c0 = time.process_time()
        with pa.input_stream(str(path)) as native:  # what read_csv(path) opens (codec by suffix)
            n_native = drain(native)
        c1 = time.process_time()
        with Steps(BYTES) as progress, readers._Counted(str(path), lambda d, t: progress("read", d, t)) as f:
            raw = pa.PythonFile(f, mode="r")
            stream = pa.CompressedInputStream(raw, codec) if codec else raw
            n_counted = drain(stream)
            stream.close()
            raw.close()
        c2 = time.process_time()
        assert n_native == n_counted
        cpu["native"].append(c1 - c0)
        cpu["counted"].append(c2 - c1)
    nat, cnt = statistics.median(cpu["native"]), statistics.median(cpu["counted"])
    print(f"{path.name} reads only ({n_native / 1e6:,.0f} MB decompressed): native {nat:.2f} s CPU, counted "
          f"{cnt:.2f} s CPU (medians of {rounds}), difference {cnt - nat:+.2f} s", flush=True)


def measure(variant: str, path: Path) -> dict:
    res = subprocess.run([sys.executable, __file__, "--one", variant, str(path)], check=True, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clicks", type=int, default=10_000_000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--one", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--reads-only", action="store_true", help="only the second part (the reads alone)")
    args = ap.parse_args()
    if args.one:
        run_one(*args.one)
        return
    plain = Path(tempfile.gettempdir()) / f"yoochoose-clicks-synth-{args.clicks}.dat"
    packed = plain.with_name(plain.name + ".gz")
    if not plain.exists():
        subprocess.run([sys.executable, str(REPO / "benchmarks" / "gen_yoochoose.py"), str(plain), "--clicks",
                        str(args.clicks)], check=True)
    if not packed.exists():
        with open(plain, "rb") as src, gzip.open(packed, "wb", compresslevel=1) as dst:
            shutil.copyfileobj(src, dst, 1 << 24)
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start", flush=True)
    for path in () if args.reads_only else (plain, packed):
        ratios, cpu_ratios, rows = [], [], {}
        for k in range(args.rounds):
            order = ("reference", "progress") if k % 2 == 0 else ("progress", "reference")
            r = {v: measure(v, path) for v in order}
            rows = {v: r[v]["rows"] for v in r}
            ratios.append(r["progress"]["s"] / r["reference"]["s"])
            cpu_ratios.append(r["progress"]["cpu_s"] / r["reference"]["cpu_s"])
            print(f"  {path.name} round {k + 1}: reference {r['reference']['s']:.2f} s ({r['reference']['cpu_s']:.2f} s "
                  f"CPU), progress {r['progress']['s']:.2f} s ({r['progress']['cpu_s']:.2f} s CPU, "
                  f"{r['progress']['reports']} reports), ratio {ratios[-1]:.3f} wall, {cpu_ratios[-1]:.3f} CPU",
                  flush=True)
        assert rows["reference"] == rows["progress"], rows
        print(f"{path.name} ({path.stat().st_size / 1e6:,.0f} MB, {rows['reference']:,} rows): progress/reference "
              f"median {statistics.median(ratios):.3f} wall (min {min(ratios):.3f}, max {max(ratios):.3f}), "
              f"{statistics.median(cpu_ratios):.3f} CPU (min {min(cpu_ratios):.3f}, max {max(cpu_ratios):.3f}) over "
              f"{args.rounds} rounds, load average {os.getloadavg()[0]:.1f} at the end", flush=True)
    for path in (plain, packed):
        reads_only(path, args.rounds)


if __name__ == "__main__":
    main()
