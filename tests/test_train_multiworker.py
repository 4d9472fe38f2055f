"""MultiWorkerMirroredStrategy: two local worker processes (TF_CONFIG on 127.0.0.1) train one model."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import tensorflow as tf

from sbrjob import export, train
from sbrjob.config import config_from_dict

from conftest import chain_sessions, split_evaluators

N_ITEMS = 30
WORKER = r"""
import sys
import numpy as np
from sbrjob.distribute import make_strategy
strategy, kind = make_strategy("auto")  # TF_CONFIG lists 2 workers -> MultiWorkerMirroredStrategy
from sbrjob import train
from sbrjob.config import config_from_dict
from sbrjob.evaluate import Evaluator
import json
root, raw = sys.argv[1], json.loads(sys.argv[2])
cfg = config_from_dict(raw)
train.configure_determinism(cfg)
train.fit(cfg, strategy, kind, root + "/train", 30, np.ones(30),
          evaluators={"valid": Evaluator(root + "/valid", cfg.eval, beyond_accuracy=False),
                      "test": Evaluator(root + "/valid", cfg.eval)})
"""


def free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_two_worker_processes_train_one_consistent_model(tmp_path):
    extra = {"n_items": N_ITEMS}
    export.write_split(*chain_sessions(200, N_ITEMS, 0), tmp_path / "train", split="train", lanes=8, n_shards=2, block_steps=8, extra=extra)
    export.write_split(*chain_sessions(40, N_ITEMS, 1), tmp_path / "valid", split="valid", lanes=8, n_shards=1, block_steps=8, extra=extra)
    raw = {"seed": 3, "model": {"layers": [16], "dropout_hidden": 0.2},
           "train": {"n_sample": 8, "epochs": 2, "momentum": 0.2, "checkpoint_every_steps": 40}}
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    out = tmp_path / "multi"
    procs = []
    for index in range(2):
        env = dict(os.environ, TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                                     "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-c", WORKER, str(tmp_path), json.dumps({**raw, "output_dir": str(out)})],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        logs = [p.communicate(timeout=240)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], "\n".join(log[-3000:] for log in logs)

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["strategy"] == "multi_worker" and metrics["replicas"] == 2 and metrics["status"] == "done"
    # one checkpoint directory, written by the chief; the other worker's scratch copy is gone
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best", "last"]
    last = tf.train.latest_checkpoint(str(out / "checkpoints/last"))
    steps = json.loads((tmp_path / "train/manifest.json").read_text())["steps"]
    assert last.endswith(f"-{2 * steps}")

    # the same job on one device follows the same trajectory (targets are all-gathered across workers)
    cfg = config_from_dict({**raw, "output_dir": str(tmp_path / "single")})
    single = train.fit(cfg, tf.distribute.get_strategy(), "default", str(tmp_path / "train"), N_ITEMS,
                       np.ones(N_ITEMS), evaluators=split_evaluators(cfg, tmp_path / "valid", tmp_path / "valid"))
    np.testing.assert_allclose([e["train_loss"] for e in metrics["epochs"]],
                               [e["train_loss"] for e in single["epochs"]], rtol=1e-4)
    np.testing.assert_allclose(metrics["test"]["mrr@20"], single["test"]["mrr@20"], rtol=1e-3)
