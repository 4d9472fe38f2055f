"""Valid MRR@20 of each kept checkpoint of a run, and of the average of the last 2, 3 and all of
their weights (a check for weight averaging; nothing in sbrjob averages).

    .venv/bin/python benchmarks/diag_average.py --run /tmp/q2/ml-gap/shipped-10ep
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sbrjob import runs  # noqa: E402
from sbrjob.evaluate import evaluate_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True)
    args = ap.parse_args()
    found = sorted({str(p)[:-6] for d in ("last", "best") for p in Path(args.run, "checkpoints", d).glob("ckpt-*.index")},
                   key=lambda p: int(p.rsplit("ckpt-", 1)[1]))
    trained = [runs.load_trained(args.run, p) for p in found]
    cfg, valid = trained[0].cfg, runs.Run(args.run).split_dir("valid")
    for path, t in zip(found, trained):
        print(f"{Path(path).name}: {evaluate_model(t.model, valid, cfg.eval, beyond_accuracy=False)['mrr@20']:.4f}")
    model = trained[-1].model
    for k in sorted({2, 3, len(trained)}):
        for i, var in enumerate(model.variables):
            var.assign(np.mean([t.model.variables[i].numpy() for t in trained[-k:]], axis=0))
        print(f"average of the last {k}: {evaluate_model(model, valid, cfg.eval, beyond_accuracy=False)['mrr@20']:.4f}")


if __name__ == "__main__":
    main()
