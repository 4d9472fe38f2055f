"""`sbrjob train`: session-parallel GRU4Rec training under any tf.distribute strategy, resumable.

One `tf.function` call trains one block of T steps in-graph. Per step, every replica: zeroes the
state of lanes whose `reset` is 1, advances its lanes one event, scores the B + n_sample columns,
and the summed gradients make ONE optimizer update; the new state is carried (gradient stopped,
no backpropagation through time) to the next step and, as PerReplica values, to the next block.

In-batch negatives under several replicas: each replica all-gathers the step's targets (and
padding flags) of the whole global batch, so its lanes are scored against exactly the columns a
single replica holding all B lanes would use. Replica r owns lanes [r*B/N, (r+1)*B/N); dropout
masks and negative samples are drawn for the global batch from (seed, step) and sliced. The
equivalent single-replica run of an N-replica job is therefore the same config on one device:
same global batch, same loss trajectory (up to float summation order).

Checkpoints (`output_dir/checkpoints/last`, every `train.checkpoint_every_steps` steps and at each
epoch end, and `checkpoints/best` by `eval.metric` on valid) hold the model, optimizer slots, the
position (epoch, block, step: which also fixes the sampler and dropout draws), the partial epoch
sums, the per-epoch history and the hidden states gathered from all replicas. Re-running the same
command resumes from `last` and ends with the same metrics as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np
import tensorflow as tf

from sbrjob import storage
from sbrjob.config import JobConfig, join, load_config, save_config
from sbrjob.distribute import is_chief, make_strategy, task_id
from sbrjob.errors import SbrjobError
from sbrjob.losses import NegativeSampler, step_lane_losses
from sbrjob.model import GRU4Rec
from sbrjob.optim import make_optimizer
from sbrjob.shards import check_layout

log = logging.getLogger("sbrjob.train")

# train settings that may change between a run and its resumption without invalidating checkpoints
_RESUMABLE_KEYS = ("epochs", "strategy", "jit_compile", "checkpoint_every_steps", "keep_checkpoints")


class Trainer:
    """Model, optimizer, negative sampler and the compiled block function for one strategy."""

    def __init__(self, cfg: JobConfig, strategy: tf.distribute.Strategy, n_items: int, support: np.ndarray,
                 lanes: int, block_steps: int):
        self.cfg, self.strategy = cfg, strategy
        self.replicas = strategy.num_replicas_in_sync
        check_layout(lanes, 1, self.replicas)
        self.lanes, self.local_lanes, self.block_steps = lanes, lanes // self.replicas, block_steps
        with strategy.scope():
            self.model = GRU4Rec(cfg.model, n_items, seed=cfg.seed)
            self.optimizer = make_optimizer(cfg.train, self.model.trainable_variables)
        self.sampler = None if cfg.train.loss == "softmax" else \
            NegativeSampler(support, cfg.train.n_sample, cfg.train.sample_alpha)
        single = isinstance(strategy, type(tf.distribute.get_strategy())) and self.replicas == 1
        jit = bool(cfg.train.jit_compile) and single
        if cfg.train.jit_compile and not single:
            log.info("train.jit_compile applies to single-device runs; TPUStrategy compiles with XLA anyway")
        self.optimizer.static_shapes = jit or isinstance(strategy, tf.distribute.TPUStrategy)
        self.train_block = tf.function(self._block, jit_compile=jit)
        self._gather = None

    # -------------------------------------------------------------- hidden state <-> global tensors

    def zero_state(self):
        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: self.model.initial_state(self.local_lanes))

    def distribute_state(self, global_state: list[tf.Tensor]):
        """Global [B, H] states -> per-replica slices (replica r owns lanes r*b .. r*b+b-1)."""
        b = self.local_lanes

        def slice_for(ctx):
            r = ctx.replica_id_in_sync_group
            return [tf.identity(s[r * b:(r + 1) * b]) for s in global_state]

        return self.strategy.experimental_distribute_values_from_function(slice_for)

    def gather_state(self, state) -> list[tf.Tensor]:
        """Per-replica states -> global [B, H] tensors (a collective: every worker must call it)."""
        if self.replicas == 1:
            return [tf.convert_to_tensor(self.strategy.experimental_local_results(s)[0]) for s in state]
        if self._gather is None:  # one traced function, not a fresh eager trace per checkpoint
            self._gather = tf.function(lambda st: [self.strategy.gather(s, axis=0) for s in st])
        return self._gather(state)

    # -------------------------------------------------------------- the compiled training block

    def _replica_step(self, block, state, sums, t, step):
        cfg = self.cfg
        ctx = tf.distribute.get_replica_context()
        offset = ctx.replica_id_in_sync_group * self.local_lanes
        x, y = block["input"][:, t], block["target"][:, t]
        reset, w = block["reset"][:, t], block["weight"][:, t]
        state = [s * (1.0 - reset)[:, None] for s in state]  # a new session starts from zero
        if self.replicas > 1:
            batch_y, batch_w = ctx.all_gather(y, axis=0), ctx.all_gather(w, axis=0)
        else:
            batch_y, batch_w = y, w
        seed = tf.cast(cfg.seed, tf.int64)
        with tf.GradientTape() as tape:
            h, new_state = self.model.step(x, state, training=True, dropout_seed=tf.stack([seed, step]),
                                           lanes=(offset, self.lanes))
            lane_loss = step_lane_losses(cfg.train, self.sampler, self.model, h, y, batch_y, batch_w > 0,
                                         offset, tf.stack([seed + 7919, step]))
            weighted = tf.reduce_sum(w * lane_loss)
            loss = weighted / self.lanes  # summed over lanes / nominal batch size; replicas' grads are summed
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, variables)
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(grads, variables)]
        self.optimizer.apply(grads, tf.reduce_sum(w))
        return [tf.stop_gradient(s) for s in new_state], sums + tf.stack([weighted, tf.reduce_sum(w)])

    def _block(self, block, state, first_step):
        """T steps in-graph; returns (new per-replica state, [sum of weighted lane losses, real lane-steps])."""
        sums = self.strategy.run(lambda: tf.zeros([2]))
        # pass the state through strategy.run once, so the loop carries the structure it returns
        # (with one local replica, e.g. one per worker, that is a plain tensor, not a PerReplica)
        state = self.strategy.run(lambda s: [tf.identity(x) for x in s], args=(state,))
        for t in tf.range(self.block_steps):
            state, sums = self.strategy.run(self._replica_step,
                                            args=(block, state, sums, t, first_step + tf.cast(t, tf.int64)))
        return state, self.strategy.reduce(tf.distribute.ReduceOp.SUM, sums, axis=None)


# ------------------------------------------------------------------ run bookkeeping


class Progress(tf.Module):
    """Where training stands; saved in every checkpoint."""

    def __init__(self, lanes: int, sizes: list[int]):
        super().__init__(name="progress")
        self.epoch = tf.Variable(tf.constant(0, tf.int64), trainable=False)
        self.block = tf.Variable(tf.constant(0, tf.int64), trainable=False)  # blocks done in this epoch
        self.step = tf.Variable(tf.constant(0, tf.int64), trainable=False)  # global step: seeds sampler/dropout
        self.sums = tf.Variable(tf.zeros([2], tf.float64), trainable=False)  # this epoch's loss sum, lane-steps
        self.seconds = tf.Variable(tf.constant(0.0, tf.float64), trainable=False)  # this epoch's train time
        self.history = tf.Variable("[]", trainable=False)  # JSON list of finished epochs
        self.fingerprint = tf.Variable("", trainable=False)
        self.hidden = [tf.Variable(tf.zeros([lanes, n]), trainable=False) for n in sizes]


class ProgressBar:
    """A one-line bar on a terminal; plain log lines (every `interval` s) when stderr is not a TTY."""

    def __init__(self, total: int, label: str, enabled: bool = True, interval: float = 30.0):
        self.total, self.label, self.enabled, self.interval = max(total, 1), label, enabled, interval
        self.tty = sys.stderr.isatty()
        self.last = time.monotonic()

    def update(self, done: int, loss: float, events_per_s: float, final: bool = False) -> None:
        if not self.enabled:
            return
        text = f"{self.label} {done}/{self.total} blocks  loss {loss:.4f}  {events_per_s:,.0f} events/s"
        if self.tty:
            filled = int(30 * done / self.total)
            sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {text[len(self.label) + 1:]}")
            if final:
                sys.stderr.write("\n")
            sys.stderr.flush()
        elif final or time.monotonic() - self.last >= self.interval:
            self.last = time.monotonic()
            print(text, file=sys.stderr, flush=True)


def _scalar(tag: str, value: float) -> None:
    """A TensorBoard scalar written with core TF only (the `tensorboard` package is not a dependency)."""
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.constant(float(value), tf.float32), metadata=meta.SerializeToString())


def code_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


def run_fingerprint(cfg: JobConfig, manifest: dict) -> str:
    """What a checkpoint depends on: model, the train settings that change the math, seed and the shards."""
    train = {k: v for k, v in cfg.to_dict()["train"].items() if k not in _RESUMABLE_KEYS}
    blob = json.dumps({"model": cfg.to_dict()["model"], "train": train, "seed": cfg.seed,
                       "data": manifest.get("data_fingerprint"), "export": manifest.get("export_fingerprint")},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("sbrjob", "tensorflow", "tensorflow-cpu", "keras", "numpy", "pandas"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _device() -> dict:
    gpus = tf.config.list_physical_devices("GPU")
    names = []
    for g in gpus:
        try:
            names.append(tf.config.experimental.get_device_details(g).get("device_name", g.name))
        except (ValueError, RuntimeError):
            names.append(g.name)
    return {"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "gpus": names, "tpu": bool(tf.config.list_logical_devices("TPU"))}


def _item_support(cfg: JobConfig, n_items: int) -> np.ndarray:
    """Train events per item (the vocabulary's `support`), for the negative sampler and logQ."""
    from sbrjob.prepare import item_support

    support = item_support(cfg.data_dir)
    if len(support) != n_items:
        raise SbrjobError(f"{cfg.data_dir}: items.parquet has {len(support)} items, the shards {n_items}; "
                          "run `sbrjob train --reexport`")
    return support


def _evaluate(model, split_dir: str, cfg: JobConfig) -> dict | None:
    from sbrjob.evaluate import evaluate_model

    return evaluate_model(model, split_dir, cfg)


# ------------------------------------------------------------------ the job


def configure_determinism(cfg: JobConfig) -> None:
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()


def train(cfg: JobConfig, reexport: bool = False) -> dict:
    """Prepare/export if needed, train (resuming from the last checkpoint), evaluate; returns metrics.json's content."""
    from sbrjob.export import ensure_exported, wait_for_export

    configure_determinism(cfg)
    manifests = ensure_exported(cfg, force=reexport) if is_chief() else wait_for_export(cfg)
    strategy, kind = make_strategy(cfg.train.strategy)
    train_manifest = manifests["train"]
    n_items = int(train_manifest["n_items"])
    support = _item_support(cfg, n_items)
    return fit(cfg, strategy, kind, join(cfg.shards_dir, "train"), n_items, support,
               valid_dir=join(cfg.shards_dir, "valid"), test_dir=join(cfg.shards_dir, "test"))


def fit(cfg: JobConfig, strategy, kind: str, train_dir: str, n_items: int, support: np.ndarray,
        valid_dir: str | None = None, test_dir: str | None = None, evaluate=_evaluate,
        stop_after_blocks: int | None = None) -> dict:
    """The training loop over exported train shards (usable without prepare: tests pass their own shards).

    `evaluate(model, split_dir, cfg) -> dict` gives validation/test metrics.
    `stop_after_blocks` ends the process's work early (tests of resumption), as a kill would.
    """
    from sbrjob.shards import distribute_blocks, read_manifest

    manifest = read_manifest(train_dir)
    chief = is_chief()
    trainer = Trainer(cfg, strategy, n_items, support, manifest["lanes"], manifest["block_steps"])
    progress = Progress(manifest["lanes"], list(cfg.model.layers))
    ckpt = tf.train.Checkpoint(model=trainer.model, optimizer=trainer.optimizer, progress=progress)
    # gs:// outputs: TensorFlow writes into local mirrors that sync_dir pushes after every save
    # (TF's own gs:// filesystem cannot be tested against an emulator). Locally both are no-ops.
    ckpt_work = storage.work_dir(cfg.checkpoint_dir)
    own_dir = ckpt_work if chief else join(ckpt_work, f".{task_id()}")
    last = tf.train.CheckpointManager(ckpt, join(own_dir, "last"), max_to_keep=cfg.train.keep_checkpoints)
    best = tf.train.CheckpointManager(ckpt, join(own_dir, "best"), max_to_keep=1)
    fingerprint = run_fingerprint(cfg, manifest)
    valid_cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, beyond_accuracy=False))

    latest = tf.train.latest_checkpoint(join(ckpt_work, "last"))
    if latest:
        ckpt.restore(latest).assert_existing_objects_matched()
        if progress.fingerprint.numpy().decode() != fingerprint:
            raise SbrjobError(f"{cfg.checkpoint_dir}: checkpoints belong to a different model/train config or data; "
                              "use another output_dir or delete the checkpoints directory")
        if chief:
            print(f"resuming from {latest} (epoch {int(progress.epoch) + 1}, block {int(progress.block)})",
                  file=sys.stderr, flush=True)
    progress.fingerprint.assign(fingerprint)
    if chief:
        save_config(cfg, cfg.output_dir)
    tb_dir = join(cfg.output_dir, "tensorboard")
    tb_work = storage.work_dir(tb_dir) if chief else None
    writer = tf.summary.create_file_writer(tb_work) if chief else None

    def push(which: str) -> None:
        if chief:  # checkpoint marker file last: a killed upload leaves no trusted checkpoint
            storage.sync_dir(join(own_dir, which), join(cfg.checkpoint_dir, which), last="checkpoint")

    def save_last():
        for var, value in zip(progress.hidden, trainer.gather_state(state)):
            var.assign(value)
        last.save(checkpoint_number=int(progress.step))
        push("last")

    report = _Report(cfg, kind, strategy.num_replicas_in_sync, manifest)
    state = trainer.distribute_state([h.value() for h in progress.hidden]) if int(progress.block) > 0 \
        else trainer.zero_state()
    blocks_done_here = 0
    every = cfg.train.checkpoint_every_steps
    T = manifest["block_steps"]
    while int(progress.epoch) < cfg.train.epochs:
        epoch = int(progress.epoch)
        bar = ProgressBar(manifest["blocks"], f"epoch {epoch + 1}/{cfg.train.epochs}", enabled=chief)
        batches = iter(distribute_blocks(strategy, train_dir))
        for _ in range(int(progress.block)):  # resume: skip the blocks this epoch already trained on
            next(batches)
        start = time.perf_counter()
        base_seconds = float(progress.seconds)
        for block in batches:
            step = int(progress.step)
            state, sums = trainer.train_block(block, state, tf.constant(step, tf.int64))
            progress.sums.assign_add(tf.cast(sums, tf.float64))
            progress.step.assign_add(T)
            progress.block.assign_add(1)
            progress.seconds.assign(base_seconds + time.perf_counter() - start)
            loss_sum, events = progress.sums.numpy()
            rate = events / max(float(progress.seconds), 1e-9)
            bar.update(int(progress.block), loss_sum / max(events, 1.0), rate)
            if writer is not None:
                with writer.as_default(step=int(progress.step)):
                    _scalar("train/loss", float(sums[0] / tf.maximum(sums[1], 1.0)))
                    _scalar("train/events_per_s", rate)
            if every and (step + T) // every > step // every:
                save_last()
            blocks_done_here += 1
            if stop_after_blocks is not None and blocks_done_here >= stop_after_blocks:
                return {}
        loss_sum, events = progress.sums.numpy()
        bar.update(int(progress.block), loss_sum / max(events, 1.0), events / max(float(progress.seconds), 1e-9),
                   final=True)
        record = {"epoch": epoch + 1, "train_loss": float(loss_sum / max(events, 1.0)), "train_events": int(events),
                  "train_seconds": round(float(progress.seconds), 3),
                  "train_events_per_s": round(float(events / max(float(progress.seconds), 1e-9)), 1)}
        if valid_dir is not None:  # accuracy only: coverage/popularity (top-K lists) are for the test split
            record["valid"] = evaluate(trainer.model, valid_dir, valid_cfg)
        history = json.loads(progress.history.numpy().decode()) + [record]
        improved = _is_best(history, cfg.eval.metric)
        progress.history.assign(json.dumps(history))
        progress.epoch.assign_add(1)
        progress.block.assign(0)
        progress.sums.assign(tf.zeros([2], tf.float64))
        progress.seconds.assign(0.0)
        state = trainer.zero_state()
        save_last()
        if improved:
            best.save(checkpoint_number=int(progress.step))
            push("best")
        if writer is not None:
            with writer.as_default(step=epoch + 1):
                _scalar("epoch/train_loss", record["train_loss"])
                _scalar("epoch/train_events_per_s", record["train_events_per_s"])
                for key, value in (record.get("valid") or {}).items():
                    if isinstance(value, (int, float)) and "@" in key:
                        _scalar(f"valid/{key}", value)
            writer.flush()
            storage.sync_dir(tb_work, tb_dir)
        log.info("epoch %d: %s", epoch + 1, json.dumps(record))
        if chief:
            report.write(history)

    history = json.loads(progress.history.numpy().decode())
    test = None
    if test_dir is not None:
        best_path = tf.train.latest_checkpoint(join(own_dir, "best")) or tf.train.latest_checkpoint(join(own_dir, "last"))
        eval_model = GRU4Rec(cfg.model, n_items, seed=cfg.seed)
        tf.train.Checkpoint(model=eval_model).restore(best_path).expect_partial()
        test = evaluate(eval_model, test_dir, cfg)
    metrics = report.write(history, test=test, done=True) if chief else report.build(history, test=test, done=True)
    if not chief:
        storage.remove_tree(own_dir)
    return metrics


def _metric_value(record: dict, metric: str) -> float | None:
    valid = record.get("valid") or {}
    value = valid.get(metric)
    return None if value is None or not valid.get("events", 1) else float(value)


def _is_best(history: list[dict], metric: str) -> bool:
    """True when the newest epoch is the best so far by the validation metric (or there is no validation)."""
    values = [_metric_value(r, metric) for r in history]
    if values[-1] is None:
        return True
    return all(v is None or values[-1] > v for v in values[:-1])


def best_epoch(history: list[dict], metric: str) -> int | None:
    best, best_value = None, None
    for r in history:
        v = _metric_value(r, metric)
        if v is None:
            best = r["epoch"]
        elif best_value is None or v > best_value:
            best, best_value = r["epoch"], v
    return best


class _Report:
    """metrics.json: rewritten whole (atomically) after every epoch and at the end."""

    def __init__(self, cfg: JobConfig, kind: str, replicas: int, manifest: dict):
        self.cfg, self.static = cfg, {
            "name": cfg.name,
            "config": cfg.to_dict(),
            "fingerprints": {"data": manifest.get("data_fingerprint"), "export": manifest.get("export_fingerprint"),
                             "code": code_fingerprint()},
            "versions": _versions(),
            "device": _device(),
            "strategy": kind,
            "replicas": replicas,
            "train_shards": {k: manifest.get(k) for k in ("lanes", "block_steps", "blocks", "steps", "pairs", "padding")},
        }

    def build(self, history: list[dict], test: dict | None = None, done: bool = False) -> dict:
        out = dict(self.static)
        out["status"] = "done" if done else "training"
        out["epochs"] = history
        out["eval_metric"] = self.cfg.eval.metric
        out["best_epoch"] = best_epoch(history, self.cfg.eval.metric)
        out["test"] = test
        return out

    def write(self, history: list[dict], test: dict | None = None, done: bool = False) -> dict:
        out = self.build(history, test, done)
        storage.write_text(self.cfg.metrics_path, json.dumps(out, indent=2, default=float) + "\n")
        return out


# ------------------------------------------------------------------ loading a trained model


def load_trained(run_dir: str, which: str = "best"):
    """(cfg, model, items DataFrame) of a finished or running job; `which` = best, last or a checkpoint path."""
    from sbrjob.prepare import load_items

    cfg_path = join(run_dir, "config.yaml")
    if not storage.exists(cfg_path):
        raise SbrjobError(f"{cfg_path}: not found; is {run_dir} the output_dir of a `sbrjob train` run?")
    cfg = load_config(cfg_path)
    cfg.output_dir = run_dir
    items = load_items(cfg.data_dir)
    if which in ("best", "last"):
        ckpt_root = storage.work_dir(cfg.checkpoint_dir)  # a local mirror when gs://
        path = tf.train.latest_checkpoint(join(ckpt_root, which))
        if path is None and which == "best":
            path = tf.train.latest_checkpoint(join(ckpt_root, "last"))
    else:
        path = tf.train.latest_checkpoint(which) or which
    if not path or not (storage.exists(path + ".index") if not storage.is_remote(path) else True):
        raise SbrjobError(f"{run_dir}: no {which!r} checkpoint found; run `sbrjob train` first")
    model = GRU4Rec(cfg.model, len(items), seed=cfg.seed)
    status = tf.train.Checkpoint(model=model).restore(path).expect_partial()
    status.assert_existing_objects_matched()
    return cfg, model, items
