"""Teardown of a finished block iterator, with and without tf.data's autotune model.

    .venv/bin/python benchmarks/bench_iterator_teardown.py --split RUN/shards/train --life 10 --rounds 2

TF 2.21's autotune thread sleeps between its optimisation passes and a finished iterator's
teardown waited for that sleep to end: up to ~33 s between two ML-1M epochs. `shards` now builds
its pipelines with autotune off; this times both, the same shards read at the pace given by
--life (seconds an iterator lives, as an epoch's training spreads its blocks), alternating.
"""

from __future__ import annotations

import argparse
import time

from sbrjob import use_tf_env

use_tf_env()  # as the CLI


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", required=True, help="an exported split directory (e.g. RUN/shards/train)")
    ap.add_argument("--life", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    import tensorflow as tf

    from sbrjob import shards

    blocks = shards.read_manifest(args.split)["blocks"]
    for r in range(args.rounds):
        for autotune in (True, False):
            options = tf.data.Options()
            options.autotune.enabled = autotune
            it = iter(shards.block_dataset(args.split).with_options(options))
            t0 = time.perf_counter()
            for _ in it:
                time.sleep(args.life / blocks)
            t1 = time.perf_counter()
            del it, _
            print(f"round {r + 1} autotune {'on ' if autotune else 'off'}: lived {t1 - t0:.1f} s, "
                  f"teardown {time.perf_counter() - t1:.2f} s")


if __name__ == "__main__":
    main()
