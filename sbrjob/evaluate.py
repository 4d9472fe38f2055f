"""Full-ranking evaluation over an exported split (the official GRU4Rec protocol).

The split's shards already lay out every test session in session-parallel lanes: at each step
lane b feeds event t and its target is event t+1, `reset` marks the first step of a session (the
hidden state is zeroed exactly there) and `weight` 0 marks padding. So evaluation is one pass over
the blocks: one compiled `tf.function` per block advances the lanes T steps, scores ALL items for
every real event, ranks its target and returns the block's metric totals; the host adds them up
(micro-average). Every (input, target) pair of the split is counted exactly once, and checked.
"""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import Iterable, Optional

import numpy as np
import tensorflow as tf

from sbrjob import storage
from sbrjob.config import JobConfig, join
from sbrjob.errors import SbrjobError
from sbrjob.metrics import RankingMetrics


SCORE_CELLS = 1 << 21  # rows scored at once x n_items: 8 MB of float32 scores (cache-friendly)


def _block_runner(model, metrics: RankingMetrics):
    """One compiled function: (block, state) -> (metric totals of the block, state after it).

    Each step advances only the lanes holding a real event (padding fills the tails of lanes, and
    a lane's next real step after padding would start a session and zero its state anyway), so the
    cost follows the events, not lanes x steps. The scoring does not feed back into the recurrence:
    the hidden states of the block's events are collected and scored together, in slices of
    `SCORE_CELLS / n_items` rows: few large matmuls and metric updates instead of one per step.
    """
    rows_per_slice = max(1, SCORE_CELLS // metrics.n_items)

    @tf.function(reduce_retracing=True)
    def run_block(block, state):
        steps = tf.shape(block["input"])[1]
        collect = lambda dtype, shape: tf.TensorArray(dtype, size=steps, infer_shape=False, element_shape=shape)
        hidden = collect(tf.float32, tf.TensorShape([None, state[-1].shape[-1]]))
        targets, weights = collect(tf.int32, tf.TensorShape([None])), collect(tf.float32, tf.TensorShape([None]))
        for t in tf.range(steps):
            real = tf.where(block["weight"][:, t] > 0)[:, 0]
            keep = 1.0 - tf.gather(block["reset"][:, t], real)[:, None]  # a session starts: zero its state
            lanes = [tf.gather(s, real) * keep for s in state]
            h, lanes = model.step(tf.gather(block["input"][:, t], real), lanes, training=False)
            state = [tf.tensor_scatter_nd_update(s, real[:, None], n) for s, n in zip(state, lanes)]
            hidden = hidden.write(t, tf.cast(h, tf.float32))
            targets = targets.write(t, tf.gather(block["target"][:, t], real))
            weights = weights.write(t, tf.gather(block["weight"][:, t], real))
        h, target, weight = hidden.concat(), targets.concat(), weights.concat()
        acc = metrics.initial()
        n_real = tf.shape(target)[0]
        for lo in tf.range(0, n_real, rows_per_slice):
            hi = tf.minimum(lo + rows_per_slice, n_real)
            acc = metrics.update(acc, model.item_scores(h[lo:hi]), target[lo:hi], weight[lo:hi])
        return acc, state

    return run_block


def evaluate_blocks(model, blocks: Iterable[dict], metrics: RankingMetrics) -> RankingMetrics:
    """Run `model` over session-parallel blocks in step order, adding every prediction to `metrics`.

    Blocks are dicts of `[lanes, T]` tensors (`input`, `target` int32; `reset`, `weight` float32),
    consecutive in time for the same lanes; the state starts at zero and is carried across blocks.
    """
    run_block = _block_runner(model, metrics)
    state = None
    for block in blocks:
        if state is None:
            state = model.initial_state(int(block["input"].shape[0]))
        acc, state = run_block(block, state)
        metrics.merge(acc)
    return metrics


def item_support(cfg: JobConfig) -> Optional[np.ndarray]:
    """Train support per item index from the prepared vocabulary, or None when it is not there."""
    from sbrjob.prepare import item_support as prepared_support

    try:
        return prepared_support(cfg.data_dir)
    except (FileNotFoundError, SbrjobError):
        return None


def n_items_of(model) -> int:
    n = getattr(model, "n_items", None)
    if n is None:  # contract-only models: ask the scorer
        n = model.item_scores(model.initial_state(1)[-1]).shape[-1]
    return int(n)


def evaluate_model(model, split_dir: str, cfg: JobConfig, support: Optional[np.ndarray] = None) -> dict:
    """Metrics of `model` on an exported split: {"split", "events", "ties", "recall@K", ...}.

    `support` (train events per item) enables popularity@K; by default it is read from the prepared
    data of `cfg` when available. The event count is checked against the split's manifest.
    """
    from sbrjob.shards import block_dataset, read_manifest

    manifest = read_manifest(split_dir)
    n_items = n_items_of(model)
    if support is None:
        support = item_support(cfg)
    if support is not None and len(support) != n_items:
        support = None  # vocabulary of another run: popularity would be meaningless
    metrics = RankingMetrics(n_items, cfg.eval.cutoffs, cfg.eval.ties, item_support=support,
                             beyond_accuracy=cfg.eval.beyond_accuracy)
    evaluate_blocks(model, block_dataset(split_dir, manifest=manifest), metrics)
    if metrics.events != manifest["pairs"]:
        raise SbrjobError(f"{split_dir}: evaluated {metrics.events} events but the manifest lists "
                          f"{manifest['pairs']} (input, target) pairs; run `sbrjob export --force`")
    return {"split": manifest.get("split", PurePosixPath(split_dir).name), **metrics.result()}


def evaluate_run(cfg: JobConfig, checkpoint: str = "best", split: str = "test") -> dict:
    """Load a trained run's checkpoint, evaluate it on a split, write `eval_<split>.json` in the run dir."""
    from sbrjob.export import ensure_exported
    from sbrjob.train import load_trained

    if split not in ("test", "valid"):
        raise SbrjobError(f"--split {split!r}: use test or valid")
    _, model, _ = load_trained(cfg.output_dir, checkpoint)
    ensure_exported(cfg)
    result = evaluate_model(model, join(cfg.shards_dir, split), cfg)
    result["checkpoint"] = checkpoint
    storage.write_text(join(cfg.output_dir, f"eval_{split}.json"), json.dumps(result, indent=2) + "\n")
    return result
