"""Full-ranking evaluation over an exported split (the official GRU4Rec protocol).

The split's shards already lay out every test session in session-parallel lanes: at each step
lane b feeds event t and its target is event t+1, `reset` marks the first step of a session (the
hidden state is zeroed exactly there) and `weight` 0 marks padding. So evaluation is one pass over
the blocks: one compiled `tf.function` per block advances the lanes T steps, scores ALL items for
every real event, ranks its target and returns the block's metric totals; the host adds them up
(micro-average). Every (input, target) pair of the split is counted exactly once, and checked.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import weakref
from pathlib import PurePosixPath
from typing import Iterable, Optional

import numpy as np
import tensorflow as tf

from sbrjob.config import EvalConfig, bias_text, fixed_seen_bias
from sbrjob.errors import SbrjobError
from sbrjob.history import UserHistory, user_history
from sbrjob.metrics import RankingMetrics
from sbrjob.progress import Bar


log = logging.getLogger(__name__)

SCORE_CELLS = 1 << 22  # rows scored at once x n_items: 16 MB of float32 scores


def _block_runner(model, metrics: RankingMetrics, track_seen: bool = False):
    """Compiled functions that turn blocks into metric totals: `run_block(block, state, pending,
    table)` and `flush(pending)`.

    The recurrence and the scoring are two XLA programs with static shapes. `advance` steps all
    lanes of a block (a lane's state is zeroed where `reset` is set and left as it is on padding)
    and returns every lane-step's hidden state; the real events among them are queued in `pending`
    (hidden, target, weight). `scores` scores a fixed-size slice of queued events against ALL
    items; `metrics.update` ranks the targets and takes the top-K lists (on a CPU in one numba
    kernel pass per row, outside XLA). Scoring does not feed back into the recurrence, so a call
    scores the full slices queued by earlier blocks while this block's recurrence runs: TF runs
    the two at once, and slices stay full whatever the padding of a block.

    With `track_seen` the last entry of `state` is a [lanes, n_items] mask of the items each
    lane's session has fed so far, and every queued event carries its row: those items get the
    `bias` argument of `run_block`/`flush` added to their scores (-inf leaves them out). The bias
    is a tensor, so trying several (`choose_seen_bias`) compiles once.
    """
    rows = max(1, SCORE_CELLS // metrics.n_items)

    @tf.function(jit_compile=True)
    def advance(inputs, reset, weight, state, table):
        steps = tf.shape(inputs)[1]
        hidden = tf.TensorArray(tf.float32, size=steps)
        masks = tf.TensorArray(tf.bool, size=steps if track_seen else 0)
        step_kw = {} if table is None else {"input_table": table}
        seen = state[-1] if track_seen else tf.zeros([], tf.bool)  # (autograph: no None loop variables)
        state = state[:-1] if track_seen else state
        for t in tf.range(steps):
            keep = 1.0 - reset[:, t][:, None]  # a session starts: zero its state
            h, new = model.step(inputs[:, t], [s * keep for s in state], training=False, **step_kw)
            real = weight[:, t][:, None] > 0
            state = [tf.where(real, n, s) for s, n in zip(state, new)]
            hidden = hidden.write(t, tf.cast(h, tf.float32))
            if track_seen:
                fed = tf.one_hot(inputs[:, t], metrics.n_items, on_value=True, off_value=False, dtype=tf.bool)
                seen = tf.logical_or(tf.logical_and(seen, keep > 0), tf.logical_and(fed, real))
                masks = masks.write(t, seen)
        if track_seen:
            return hidden.stack(), state + [seen], masks.stack()  # [T, lanes, H], state, [T, lanes, n_items]
        return hidden.stack(), state, None

    @tf.function(jit_compile=True)
    def scores(h, mask=None, bias=None):
        s = model.item_scores(h)
        return s if mask is None else tf.where(mask, s + tf.cast(bias, s.dtype), s)

    def score_full_slices(pending, bias):
        h, target, weight = pending[:3]
        mask = pending[3] if track_seen else None
        acc = metrics.initial()
        for lo in tf.range(0, tf.shape(target)[0] // rows * rows, rows):
            m = None if mask is None else mask[lo:lo + rows]
            acc = metrics.update(acc, scores(h[lo:lo + rows], m, bias), target[lo:lo + rows], weight[lo:lo + rows])
        return acc

    @tf.function(reduce_retracing=True)
    def run_block(block, state, pending, table, bias, prior=None):
        acc = score_full_slices(pending, bias)
        hidden, state, masks = advance(block["input"], block["reset"], block["weight"], state, table)
        step_major = lambda x: tf.reshape(tf.transpose(x), [-1])  # noqa: E731 (hidden is [T, lanes])
        w = step_major(block["weight"])
        real = tf.where(w > 0)[:, 0]
        done = tf.shape(pending[1])[0] // rows * rows
        new = (tf.gather(tf.reshape(hidden, [-1, hidden.shape[-1]]), real), tf.gather(step_major(block["target"]), real),
               tf.gather(w, real))
        if track_seen:
            mask = tf.gather(tf.reshape(masks, [-1, metrics.n_items]), real)
            if prior is not None:  # eval.seen_scope user: the user's earlier items count as seen too
                earlier = tf.gather(prior, tf.gather(step_major(block["session"]), real))
                where = tf.stack([tf.cast(earlier.value_rowids(), tf.int32), earlier.flat_values], 1)
                mask = tf.tensor_scatter_nd_update(mask, where, tf.ones_like(earlier.flat_values, tf.bool))
            new += (mask,)
        pending = tuple(tf.concat([old[done:], add], 0) for old, add in zip(pending, new))
        return acc, state, pending

    def flush(pending, bias):  # eager, once per evaluation: reuses the slice programs run_block traced
        pad = -tf.shape(pending[1])[0] % rows  # padded rows have weight 0: not counted
        return score_full_slices(tuple(tf.pad(x, [[0, pad]] + [[0, 0]] * (x.shape.rank - 1)) for x in pending), bias)

    return run_block, flush


_RUNNERS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _cached_runner(model, metrics: RankingMetrics, track_seen: bool = False):
    """One compiled runner per (model, metric settings): evaluating every epoch compiles once."""
    popularity = None if metrics.popularity is None else metrics.popularity.numpy().tobytes()
    key = (metrics.n_items, tuple(metrics.cutoffs), metrics.ties, metrics.beyond_accuracy, metrics.cpu_kernel,
           popularity, SCORE_CELLS, track_seen)
    try:
        per_model = _RUNNERS.setdefault(model, {})
    except TypeError:  # not weak-referenceable: no caching
        return _block_runner(model, metrics, track_seen)
    if key not in per_model:
        per_model[key] = _block_runner(model, metrics, track_seen)
    return per_model[key]


_TWINS: dict = {}  # architecture -> the model evaluation runs on (see _evaluation_model)
_MAX_TWINS = 4


def _evaluation_model(model):
    """The model evaluation runs on: one per architecture in the process, holding a copy of
    `model`'s weights, so that the next epoch, tune trial or benchmark round of the same shape
    reuses the compiled programs instead of tracing new ones for a new model object."""
    cfg = getattr(model, "cfg", None)
    if not dataclasses.is_dataclass(cfg):
        return model
    key = (type(model), json.dumps(dataclasses.asdict(cfg), sort_keys=True), int(model.n_items))
    twin = _TWINS.pop(key, None)
    if twin is None:
        if len(_TWINS) >= _MAX_TWINS:
            _TWINS.pop(next(iter(_TWINS)))  # the least recently used architecture
        twin = type(model)(cfg, model.n_items)
    _TWINS[key] = twin
    if twin is not model:
        for dst, src in zip(twin.variables, model.variables, strict=True):
            dst.assign(src)
    return twin


def evaluate_blocks(model, blocks: Iterable[dict], metrics: RankingMetrics, bar: Optional[Bar] = None,
                    seen_bias: float = 0.0, prior: Optional[tf.RaggedTensor] = None) -> RankingMetrics:
    """Run `model` over session-parallel blocks in step order, adding every prediction to `metrics`.

    Blocks are dicts of `[lanes, T]` tensors (`input`, `target` int32; `reset`, `weight` float32),
    consecutive in time for the same lanes; the state starts at zero and is carried across blocks.
    `seen_bias` is added to the scores of the items a session has already fed (`eval.seen_bias`;
    -inf leaves them out of its rankings, as `eval.exclude_seen`). With `prior` ([sessions, None]
    item ids, `history.UserHistory`) and blocks carrying `session` ids, each session's prior items
    get the bias as well.
    """
    model = _evaluation_model(model)
    track_seen = seen_bias != 0
    run_block, flush = _cached_runner(model, metrics, track_seen)
    table = model.input_table() if hasattr(model, "input_table") else None  # today's weights
    bias = tf.constant(seen_bias, tf.float32)
    state = pending = None
    for done, block in enumerate(blocks, start=1):
        if state is None:
            lanes = int(block["input"].shape[0])
            state = model.initial_state(lanes)
            width = int(state[-1].shape[-1])
            pending = (tf.zeros([0, width]), tf.zeros([0], tf.int32), tf.zeros([0]))
            if track_seen:
                state = state + [tf.zeros([lanes, metrics.n_items], tf.bool)]
                pending += (tf.zeros([0, metrics.n_items], tf.bool),)
        acc, state, pending = run_block(block, state, pending, table, bias, prior if track_seen else None)
        metrics.merge(acc)
        if bar is not None:
            bar.update(done)
    if pending is not None:
        metrics.merge(flush(pending, bias))
    return metrics


def evaluate_model(model, split_dir: str, eval_cfg: EvalConfig, support: Optional[np.ndarray] = None,
                   beyond_accuracy: Optional[bool] = None, label: Optional[str] = None,
                   seen_bias: Optional[float] = None, history: Optional[UserHistory] = None) -> dict:
    """Metrics of `model` on an exported split: {"split", "events", "ties", "recall@K", ...}.

    Args:
      support: train events per item; enables popularity@K (ignored when its length is not the
        model's vocabulary size).
      beyond_accuracy: coverage/popularity top-K lists; default `eval_cfg.beyond_accuracy`.
      label: shows progress under this name (`progress.Bar`).
      seen_bias: added to the scores of a session's own items; default `eval_cfg`'s fixed one (0
        under `auto`). A non-zero bias is reported as "seen_bias".
      history: the split's `history.UserHistory` (`eval.seen_scope: user`): the bias also goes to the
        items each session's user had before it.
    The event count is checked against the split's manifest.
    """
    from sbrjob.shards import block_dataset, read_manifest

    manifest = read_manifest(split_dir)
    n_items = int(model.n_items)
    if support is not None and len(support) != n_items:
        support = None  # vocabulary of another run: popularity would be meaningless
    wide = eval_cfg.beyond_accuracy if beyond_accuracy is None else beyond_accuracy
    bias = (fixed_seen_bias(eval_cfg) or 0.0) if seen_bias is None else float(seen_bias)
    metrics = RankingMetrics(n_items, eval_cfg.cutoffs, eval_cfg.ties, item_support=support, beyond_accuracy=wide)
    bar = Bar(label, manifest["blocks"], "blocks") if label else None
    blocks, prior = block_dataset(split_dir, manifest=manifest), None
    if history is not None and bias:
        blocks = history.blocks(blocks.as_numpy_iterator(), manifest)
        prior = tf.RaggedTensor.from_row_splits(history.items, history.splits)
    evaluate_blocks(model, blocks, metrics, bar, bias, prior)
    if bar is not None:
        bar.close()
    if metrics.events != manifest["pairs"]:
        raise SbrjobError(f"{split_dir}: evaluated {metrics.events} events but the manifest lists "
                          f"{manifest['pairs']} (input, target) pairs; run `sbrjob export --force`")
    out = {"split": manifest.get("split", PurePosixPath(split_dir).name), **metrics.result()}
    if history is not None:
        out["seen_scope"] = "user"
    return {**out, "seen_bias": bias_text(bias)} if bias else out


# Candidates of `eval.seen_bias: auto`, in score units (logits, or ELU outputs > -1): the shipped
# models' best lie between -inf (MovieLens: a rated movie is never the next) and +4 (YOOCHOOSE: a
# third of the next clicks return to an item of the session)
SEEN_BIAS_GRID = (-math.inf, -8.0, -4.0, -2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def choose_seen_bias(model, split_dir: str, eval_cfg: EvalConfig, support: Optional[np.ndarray] = None,
                     grid: Iterable[float] = SEEN_BIAS_GRID, label: Optional[str] = None,
                     history: Optional[UserHistory] = None) -> dict:
    """`eval.seen_bias: auto`: the bias for a session's own items that maximises `eval.metric` on
    `split_dir` (the valid split), from `grid` and then the geometric midpoints around the best.

    Returns {"value": bias, "metric": name, "split": split_dir's split, "tried": {bias: value}}
    (biases as `bias_text`); ties go to the bias nearest 0 (0 first: the model as trained).
    """
    tried: dict[float, float] = {}

    def score(bias: float) -> float:
        if bias not in tried:
            result = evaluate_model(model, split_dir, eval_cfg, support, beyond_accuracy=False, seen_bias=bias,
                                    history=history)
            tried[bias] = float(result[eval_cfg.metric])
            log.debug("seen_bias %s on %s: %s %.4f", bias_text(bias), label or split_dir, eval_cfg.metric, tried[bias])
        return tried[bias]

    def best() -> float:
        return max(tried, key=lambda b: (tried[b], -abs(b)))

    for bias in grid:
        score(float(bias))
    top = best()
    if math.isfinite(top) and top != 0:
        for factor in (math.sqrt(0.5), math.sqrt(2.0)):
            score(top * factor)
    value = best()
    log.info("seen_bias: %.4g, chosen on %s (%s %.4f; %.4f without)", value, label or split_dir,
             eval_cfg.metric, tried[value], tried.get(0.0, float("nan")))
    return {"value": bias_text(value), "metric": eval_cfg.metric,
            "split": PurePosixPath(split_dir).name, "tried": {str(bias_text(b)): round(v, 6) for b, v in sorted(tried.items())}}


@dataclasses.dataclass
class Evaluator:
    """One split's evaluation, built once and handed to `train.fit` (or called on any model).

    With `choose_seen_on` (a valid split) and `eval.seen_bias: auto`, each call first chooses the
    bias there (`choose_seen_bias`), then evaluates with it; the result holds the choice under
    "seen_bias_choice" and the bias under "seen_bias". With `eval.seen_scope: user`, `data` (the
    run's `runs.Prepared`) supplies each session's user history (`history.user_history`).
    """

    split_dir: str
    eval_cfg: EvalConfig
    support: Optional[np.ndarray] = None
    beyond_accuracy: Optional[bool] = None  # None: eval_cfg's; per-epoch validation passes False
    label: Optional[str] = None  # progress shown under this name
    choose_seen_on: Optional[str] = None
    data: object = None  # runs.Prepared, for eval.seen_scope: user
    _histories: dict = dataclasses.field(default_factory=dict, repr=False)

    def history(self, split_dir: str) -> Optional[UserHistory]:
        if self.eval_cfg.seen_scope != "user" or self.data is None:
            return None
        split = PurePosixPath(split_dir).name
        if split not in self._histories:  # built once: every epoch's call reuses it
            self._histories[split] = user_history(self.data, split)
        return self._histories[split]

    def __call__(self, model) -> dict:
        choice = None
        if self.choose_seen_on and fixed_seen_bias(self.eval_cfg) is None:
            choice = choose_seen_bias(model, self.choose_seen_on, self.eval_cfg, self.support,
                                      label=PurePosixPath(self.choose_seen_on).name,
                                      history=self.history(self.choose_seen_on))
        bias = None if choice is None else float(choice["value"])
        result = evaluate_model(model, self.split_dir, self.eval_cfg, self.support, self.beyond_accuracy, self.label,
                                seen_bias=bias, history=self.history(self.split_dir))
        return result if choice is None else {**result, "seen_bias": choice["value"], "seen_bias_choice": choice}
