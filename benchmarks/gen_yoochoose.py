"""SYNTHETIC clicks in the YOOCHOOSE `yoochoose-clicks.dat` format, at full scale, for benchmarks.

Not real data. Same shape as the real file: 33,003,944 clicks in ~9.25M sessions over ~53k items
and 183 days (2014-04-01 .. 2014-09-30), lines `SessionID,Timestamp,ItemID,Category` with
ISO-8601 UTC millisecond times (`2014-04-07T10:51:09.277Z`), sessions numbered in order of their
start and written session by session, like the original.

Distributions chosen to resemble the real log: session length ~ ceil(lognormal(0.8, 0.8))
(about 16% single clicks, mean 3.57, long tail capped at 200), item popularity Zipf with exponent
1.3 (so some items fall below a support of 5), exponential gaps of 2.5 minutes between clicks,
Category mostly `0`, sometimes `S` or 1..12.

    python benchmarks/gen_yoochoose.py /tmp/yoochoose-clicks-synth.dat            # full scale
    python benchmarks/gen_yoochoose.py /tmp/small.dat --clicks 1000000            # smaller

Generated in chunks of sessions with numpy + pyarrow (no Python loop per row): ~1.4 GB.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

CLICKS = 33_003_944
SESSIONS = 9_249_729
ITEMS = 52_739
START = np.datetime64("2014-04-01T00:00:00", "ms").astype(np.int64)  # epoch ms
DAYS = 183


def session_lengths(n_sessions: int, n_clicks: int, rng: np.random.Generator) -> np.ndarray:
    """Lengths >= 1 that sum to exactly n_clicks."""
    lengths = np.minimum(np.ceil(np.exp(rng.normal(0.8, 0.8, n_sessions))), 200).astype(np.int64)
    diff = n_clicks - int(lengths.sum())
    while diff:  # nudge random sessions up or down until the total is exact
        idx = rng.integers(0, n_sessions, abs(diff))
        if diff > 0:
            np.add.at(lengths, idx, 1)
        else:
            idx = idx[lengths[idx] > 1]
            idx = np.unique(idx)[: -diff]
            lengths[idx] -= 1
        diff = n_clicks - int(lengths.sum())
    return lengths


def iso_strings(t_ms: np.ndarray) -> pa.StringArray:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ` for epoch milliseconds, built as bytes (strftime is ~100x slower)."""
    day, ms = np.divmod(t_ms, 86_400_000)
    days = np.arange(day.min(), day.max() + 1)
    table = np.frombuffer("".join(f"{d}T" for d in days.astype("datetime64[D]")).encode(), np.uint8).reshape(-1, 11)
    out = np.empty((len(t_ms), 24), np.uint8)
    out[:, :11] = table[day - day.min()]
    fields = [(11, 3_600_000, 24, 2), (14, 60_000, 60, 2), (17, 1000, 60, 2), (20, 1, 1000, 3)]  # col, unit, mod, digits
    for col, unit, mod, digits in fields:
        value = (ms // unit) % mod
        for k in range(digits):
            out[:, col + k] = 48 + value // 10 ** (digits - 1 - k) % 10
    out[:, 13] = out[:, 16] = ord(":")
    out[:, 19] = ord(".")
    out[:, 23] = ord("Z")
    offsets = np.arange(0, 24 * len(t_ms) + 1, 24, dtype=np.int32)
    return pa.StringArray.from_buffers(len(t_ms), pa.py_buffer(offsets), pa.py_buffer(out))


def generate(path: str, n_clicks: int = CLICKS, n_sessions: int = SESSIONS, n_items: int = ITEMS,
             seed: int = 2015, chunk_sessions: int = 500_000) -> None:
    rng = np.random.default_rng(seed)
    lengths = session_lengths(n_sessions, n_clicks, rng)
    starts = np.sort(rng.integers(0, DAYS * 86_400_000, n_sessions)) + START  # session ids follow start order
    item_ids = 214_500_000 + rng.choice(40_000_000, n_items, replace=False)
    popularity = 1.0 / np.arange(1, n_items + 1) ** 1.3
    popularity = np.cumsum(popularity[rng.permutation(n_items)])
    popularity /= popularity[-1]
    categories = pa.array(["0", "S"] + [str(c) for c in range(1, 13)])
    cat_p = np.array([0.85, 0.05] + [0.1 / 12] * 12)

    options = pacsv.WriteOptions(include_header=False, quoting_style="none")
    schema = pa.schema([("session", pa.int64()), ("time", pa.string()), ("item", pa.int64()), ("category", pa.string())])
    with pacsv.CSVWriter(path, schema, write_options=options) as writer:
        for lo in range(0, n_sessions, chunk_sessions):
            hi = min(lo + chunk_sessions, n_sessions)
            ln = lengths[lo:hi]
            n = int(ln.sum())
            session = np.repeat(np.arange(lo + 1, hi + 1, dtype=np.int64), ln)
            # click times: session start + cumulative exponential gaps, restarted at each session
            gaps = rng.exponential(150_000.0, n).astype(np.int64)
            first = np.concatenate([[0], np.cumsum(ln)[:-1]])
            gaps[first] = 0
            csum = np.cumsum(gaps)
            t_ms = np.repeat(starts[lo:hi], ln) + csum - np.repeat(csum[first], ln)
            stamp = iso_strings(t_ms)
            item = item_ids[np.searchsorted(popularity, rng.random(n), side="right").clip(0, n_items - 1)]
            cat = categories.take(pa.array(rng.choice(len(cat_p), n, p=cat_p)))
            writer.write_table(pa.table([session, stamp, item, cat], schema=schema))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path", help="output file, e.g. /tmp/yoochoose-clicks-synth.dat (never inside the repo)")
    ap.add_argument("--clicks", type=int, default=CLICKS)
    ap.add_argument("--seed", type=int, default=2015)
    args = ap.parse_args()
    scale = args.clicks / CLICKS
    t0 = time.perf_counter()
    generate(args.path, args.clicks, max(1, int(SESSIONS * scale)), min(ITEMS, max(10, int(ITEMS * scale ** 0.5))),
             seed=args.seed)
    size = Path(args.path).stat().st_size
    print(f"wrote {args.path}: {args.clicks:,} clicks, {size / 1e9:.2f} GB in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
