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

`fit` is the outer loop (orbit's Controller, nanoGPT's loop): it owns the checkpoints and
metrics.json, and is handed its evaluators (`{"valid": fn, "test": fn}`, each `model -> metrics`)
and `on_epoch_end` hooks (early stopping, tune's pruning) instead of importing any stage.

Checkpoints (`output_dir/checkpoints/last`, every `train.checkpoint_every_steps` steps and at each
epoch end, and `checkpoints/best` by `eval.metric` on valid) hold the model, optimizer slots, the
position (epoch, block, step: which also fixes the sampler and dropout draws), the partial epoch
sums, the per-epoch history and the hidden states gathered from all replicas. At an epoch end
`best` is written before `last`, so a kill between the two leaves a `best` ahead of `last`, which
the resumed run drops and rewrites; an unreadable newest checkpoint falls back to the previous
one. Re-running the same command resumes from `last` and ends with the same metrics as an
uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Callable, Optional, Sequence, Union

import numpy as np
import tensorflow as tf

from sbrjob import runs, storage
from sbrjob.config import JobConfig, join
from sbrjob.distribute import is_chief, task_id
from sbrjob.errors import SbrjobError
from sbrjob.losses import NegativeSampler, step_lane_losses
from sbrjob.model import GRU4Rec
from sbrjob.optim import make_optimizer
from sbrjob.progress import Bar
from sbrjob.report import training_curves
from sbrjob.shards import check_layout, distribute_blocks, read_manifest

log = logging.getLogger("sbrjob.train")

Evaluator = Callable[[GRU4Rec], dict]  # model -> metrics of one split
SAMPLE_SEED_OFFSET = 7919  # negative samples are seeded by (seed + this, step); dropout by (seed, step)
EpochHook = Callable[[int, dict], Union[bool, str, None]]  # (epoch, record) -> stop? (a str says why)


DENSE_MIN_WORK = 10**8  # planned steps x scored cells per step below which auto skips the XLA compile


def jit_choice(setting, single_device: bool, work: Optional[int] = None) -> str:
    """What `train.jit_compile` compiles with XLA: "block" (the whole training block), "dense" (each
    step's forward pass, loss, gradients and the updates that compile well, `optimizer.fuses`; the
    row-sparse updates of large item tables stay outside) or "off".

    auto: on a single GPU the block (the ~400 small ops of a step become a few fused kernels); on a
    CPU the dense part (the whole block was measured ~10x slower there: the static-shape row-sparse
    update sorts and scatters every table; the dense part alone fuses the element-wise passes over
    the [b, C] scores, see BENCHMARKS.md "Training speed (#15)") when the run is long enough to repay
    its ~2-3 s compile: `work` (planned steps x scored cells per step; None = long enough) of at
    least DENSE_MIN_WORK, about 600 steps at the official setting, so tiny and smoke runs skip it;
    several replicas: off (TPUStrategy compiles anyway). true/dense/false force a choice for a single
    device.
    """
    if not single_device:
        return "off"
    if setting == "auto":
        if tf.config.list_logical_devices("GPU"):
            return "block"
        return "dense" if work is None or work >= DENSE_MIN_WORK else "off"
    if setting == "dense":
        return "dense"
    return "block" if setting else "off"


class Trainer:
    """Model, optimizer, negative sampler and the compiled block function for one strategy."""

    def __init__(self, cfg: JobConfig, strategy: tf.distribute.Strategy, n_items: int, support: np.ndarray,
                 lanes: int, block_steps: int, planned_steps: Optional[int] = None):
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
        cells = lanes * (n_items if cfg.train.loss == "softmax" else lanes + cfg.train.n_sample)
        mode = jit_choice(cfg.train.jit_compile, single, None if planned_steps is None else planned_steps * cells)
        if cfg.train.jit_compile not in (False, "auto") and not single:
            log.info("train.jit_compile applies to single-device runs; TPUStrategy compiles with XLA anyway")
        self._tpu = isinstance(strategy, tf.distribute.TPUStrategy)
        self._gather = None
        self._set_jit(mode)
        if mode != "off" and cfg.train.jit_compile == "auto":  # the first call falls back if XLA cannot compile
            self.train_block = self._compile_or_fall_back

    def _set_jit(self, mode: str) -> None:
        self.jit = mode == "block"  # the whole block under XLA
        self.dense_jit = mode == "dense"  # each step's dense part under XLA (`_dense_part`)
        self.optimizer.static_shapes = self.jit or self._tpu
        # autograph off: converting the model, loss and optimizer code was most of the tracing time,
        # and the block's only tensor-dependent control flow is its explicit tf.while_loop
        self._dense_step = tf.function(self._dense_part, jit_compile=True, autograph=False) if self.dense_jit \
            else self._dense_part
        self.train_block = tf.function(self._block, jit_compile=self.jit, autograph=False)

    def _compile_or_fall_back(self, *args):
        """`train.jit_compile: auto` chose XLA: compile on the first block; without XLA if that fails.

        A failed compile raises before the step's first update (the XLA part computes every update's
        input), so the block is simply run again."""
        compiled = self.train_block = tf.function(self._block, jit_compile=self.jit, autograph=False)
        try:
            out = compiled(*args)
        except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as err:
            first = (str(err).strip().splitlines() or [""])[0][:200]
            log.warning("train.jit_compile auto: XLA cannot compile the training %s here (%s); "
                        "training without XLA (set train.jit_compile: false to skip the attempt)",
                        "block" if self.jit else "step's dense part", first)
            self._set_jit("off")
            out = self.train_block(*args)
        return out

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
        x, y, reset, w = (tf.gather(block[k], t, axis=1) for k in ("input", "target", "reset", "weight"))
        state = [s * (1.0 - reset)[:, None] for s in state]  # a new session starts from zero
        if self.replicas > 1:
            batch_y, batch_w = ctx.all_gather(y, axis=0), ctx.all_gather(w, axis=0)
        else:
            batch_y, batch_w = y, w
        extra = None
        if self.sampler is not None and self.sampler.n_sample > 0:
            extra = self.sampler.draw(tf.stack([tf.cast(cfg.seed + SAMPLE_SEED_OFFSET, tf.int64), step]))
        active = tf.reduce_sum(w)
        weighted, new_state, grads = self._dense_step(x, y, batch_y, batch_w, w, state, step, offset, extra)
        if self.dense_jit:  # the updates that compile well ran in the XLA part; the row-sparse ones run here
            self.optimizer.apply_local(grads, active, count=False)
        else:
            self.optimizer.apply(grads, active)
        return [tf.stop_gradient(s) for s in new_state], sums + tf.stack([weighted, active])

    def _dense_part(self, x, y, batch_y, batch_w, w, state, step, offset, extra):
        """One step's forward pass, loss and gradients: (weighted loss sum, new state, gradients).

        Tensors in and out (the sampler's draw is `extra`), so `train.jit_compile: dense` compiles it
        alone with XLA: the element-wise passes over the [b, C] scores fuse. There (single replica)
        it also makes the updates that compile well (`optimizer.fuses`: dense gradients, and item
        tables small next to the step's rows, as one masked pass) and returns only the other
        gradients, the row-sparse ones of large tables: their updates stay outside XLA, where
        dynamic shapes are cheap and tables are scattered in place."""
        cfg = self.cfg
        seed = tf.cast(cfg.seed, tf.int64)
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            h, new_state = self.model.step(x, state, training=True, dropout_seed=tf.stack([seed, step]),
                                           lanes=(offset, self.lanes))
            lane_loss = step_lane_losses(cfg.train, self.sampler, self.model, h, y, batch_y, batch_w > 0,
                                         offset, None, extra=extra)
            weighted = tf.reduce_sum(w * lane_loss)
            loss = weighted / self.lanes  # summed over lanes / nominal batch size; replicas' grads are summed
        grads = [tf.zeros_like(v) if g is None else g for g, v in zip(tape.gradient(loss, variables), variables)]
        if self.dense_jit:
            fused = [self.optimizer.fuses(g, v) for g, v in zip(grads, variables)]
            self.optimizer.apply_local([g if f else None for g, f in zip(grads, fused)], tf.reduce_sum(w),
                                       whole_tables=True)
            grads = [None if f else g for g, f in zip(grads, fused)]
        return weighted, new_state, grads

    def _block(self, block, state, first_step):
        """T steps in-graph; returns (new per-replica state, [sum of weighted lane losses, real lane-steps])."""
        sums = self.strategy.run(lambda: tf.zeros([2]))
        # pass the state through strategy.run once, so the loop carries the structure it returns
        # (with one local replica, e.g. one per worker, that is a plain tensor, not a PerReplica)
        state = self.strategy.run(lambda s: [tf.identity(x) for x in s], args=(state,))
        store = contextlib.nullcontext()
        if self.sampler is not None and self.sampler.n_sample > 0:
            # the block's negative samples in one draw, identical on every replica (from seed and step)
            samples = self.sampler.draw_steps(tf.cast(self.cfg.seed + SAMPLE_SEED_OFFSET, tf.int64), first_step,
                                              self.block_steps)
            store = self.sampler.block_store(samples, first_step)

        def body(t, state, sums):
            state, sums = self.strategy.run(self._replica_step,
                                            args=(block, state, sums, t, first_step + tf.cast(t, tf.int64)))
            return t + 1, state, sums

        with store:
            _, state, sums = tf.while_loop(lambda t, state, sums: t < self.block_steps, body,
                                           (tf.constant(0), state, sums), maximum_iterations=self.block_steps)
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


def _scalar(tag: str, value: float) -> None:
    """A TensorBoard scalar written with core TF only (the `tensorboard` package is not a dependency)."""
    from tensorflow.core.framework import summary_pb2

    meta = summary_pb2.SummaryMetadata()
    meta.plugin_data.plugin_name = "scalars"
    tf.summary.write(tag, tf.constant(float(value), tf.float32), metadata=meta.SerializeToString())


def configure_determinism(cfg: JobConfig) -> None:
    if cfg.train.deterministic:
        tf.config.experimental.enable_op_determinism()


class Checkpoints:
    """`last` and `best` of one run (a local mirror of gs://, synced after each save; marker last)."""

    def __init__(self, cfg: JobConfig, ckpt: tf.train.Checkpoint):
        self.chief = is_chief()
        self.remote = runs.Run(cfg.output_dir).checkpoint_dir
        self.work = storage.work_dir(self.remote)  # every worker resumes from the chief's checkpoints
        self.dir = self.work if self.chief else join(self.work, f".{task_id()}")  # others save scratch copies
        self.last = tf.train.CheckpointManager(ckpt, join(self.dir, "last"), max_to_keep=cfg.train.keep_checkpoints)
        # two kept: a kill between the best and the last save leaves a best ahead of last, dropped on resume
        self.best = tf.train.CheckpointManager(ckpt, join(self.dir, "best"), max_to_keep=2)
        self.ckpt = ckpt

    def restore_latest(self) -> Optional[str]:
        """Restore the newest readable `last` (older ones when it is truncated or corrupted) and drop
        `best` checkpoints newer than it; None for a new run."""
        latest = runs.newest_readable(join(self.work, "last"))
        if latest is None:
            return None
        try:
            self.ckpt.restore(latest).assert_existing_objects_matched()
        except (tf.errors.OpError, ValueError, AssertionError) as err:
            first = (str(err).strip().splitlines() or [""])[0][:160]
            raise SbrjobError(f"{latest}: does not fit this model ({first}); use another output_dir or "
                              "`sbrjob train --fresh`") from None
        self._drop_best_after(runs.checkpoint_number(latest))
        return latest

    def _drop_best_after(self, step: int) -> None:
        best_dir = join(self.dir, "best")
        paths = runs.checkpoint_paths(best_dir)
        keep = [p for p in paths if runs.checkpoint_number(p) <= step]
        if len(keep) == len(paths):
            return
        for p in paths[len(keep):]:
            log.info("dropping %s: saved after the last checkpoint (killed between the two saves)", p)
            for f in tf.io.gfile.glob(p + ".*"):
                tf.io.gfile.remove(f)
        if keep:  # relative names, as CheckpointManager writes them: a run directory can move
            tf.compat.v1.train.update_checkpoint_state(best_dir, os.path.basename(keep[-1]),
                                                       [os.path.basename(p) for p in keep])
        else:
            tf.io.gfile.remove(join(best_dir, "checkpoint"))
        self.best = tf.train.CheckpointManager(self.ckpt, best_dir, max_to_keep=2)
        self._push("best")

    def _push(self, which: str) -> None:
        if self.chief:  # checkpoint marker file last: a killed upload leaves no trusted checkpoint
            storage.sync_dir(join(self.dir, which), join(self.remote, which), last="checkpoint")

    def save(self, which: str, step: int) -> None:
        (self.last if which == "last" else self.best).save(checkpoint_number=step)
        self._push(which)

    def for_test(self) -> str:
        return runs.best_or_last(self.dir)

    def close(self) -> None:
        if not self.chief:
            storage.remove_tree(self.dir)


def epoch_line(record: dict, history: list[dict], cfg: JobConfig, seconds: float) -> str:
    """One line per epoch: loss, the validation metric against the best so far, speed, time and ETA."""
    metric, epochs = cfg.eval.metric, cfg.train.epochs
    parts = [f"epoch {record['epoch']}/{epochs}", f"loss {record['train_loss']:.4f}"]
    value = (record.get("valid") or {}).get(metric)
    if value is not None:
        best = runs.best_epoch(history, metric)
        best_value = next(r["valid"][metric] for r in history if r["epoch"] == best)
        parts.append(f"valid {metric} {value:.4f} " + ("(best)" if best == record["epoch"]
                                                        else f"(best {best_value:.4f} at epoch {best})"))
    parts.append(f"{record['train_events_per_s']:,.0f} events/s")
    left = epochs - record["epoch"]
    parts.append(f"{seconds:.1f} s" + (f", ETA {left * seconds:.0f} s" if left and not record.get("stopped") else ""))
    if record.get("stopped"):
        parts.append(f"stopped: {record['stopped']}")
    return "  ".join(parts)


def _hooks(on_epoch_end: Union[EpochHook, Sequence[EpochHook], None]) -> list[EpochHook]:
    if on_epoch_end is None:
        return []
    return [on_epoch_end] if callable(on_epoch_end) else list(on_epoch_end)


def fit(cfg: JobConfig, strategy, kind: str, train_dir: str, n_items: int, support: np.ndarray, *,
        evaluators: Optional[dict[str, Evaluator]] = None,
        on_epoch_end: Union[EpochHook, Sequence[EpochHook], None] = None,
        init_from: Optional[Callable[[GRU4Rec, object], object]] = None) -> dict:
    """Train on exported train shards until `train.epochs` (resuming from the last checkpoint) or a
    hook stops it; returns metrics.json's content.

    Args:
      cfg: the job; `cfg.output_dir` receives checkpoints/, tensorboard/ and metrics.json.
      strategy, kind: a tf.distribute strategy and its name (`distribute.make_strategy`).
      train_dir: a split directory written by `export.write_split`.
      n_items, support: vocabulary size and train events per item (sampler, logQ).
      evaluators: `valid` runs after every epoch (its `eval.metric` picks `best`); `test` runs once
        at the end on the best weights.
      on_epoch_end: hooks `(epoch, record) -> stop?` after every epoch; a true value (or a string,
        the reason) ends training there, and the run counts as complete.
      init_from: `(model, optimizer) -> _` sets the first weights of a NEW run (a warm start,
        `warmstart.apply`); not called when the run resumes from a checkpoint of its own.
    """
    evaluators = evaluators or {}
    hooks = _hooks(on_epoch_end)
    manifest = read_manifest(train_dir)
    chief = is_chief()
    planned = manifest["steps"] * cfg.train.epochs
    trainer = Trainer(cfg, strategy, n_items, support, manifest["lanes"], manifest["block_steps"],
                      planned_steps=min(planned, cfg.train.max_steps) if cfg.train.max_steps else planned)
    progress = Progress(manifest["lanes"], list(cfg.model.layers))
    checkpoints = Checkpoints(cfg, tf.train.Checkpoint(model=trainer.model, optimizer=trainer.optimizer,
                                                       progress=progress))
    fingerprint = runs.run_fingerprint(cfg, manifest)
    latest = checkpoints.restore_latest()
    if latest:
        if progress.fingerprint.numpy().decode() != fingerprint:
            raise SbrjobError(f"{checkpoints.remote}: checkpoints belong to a different model/train config or "
                              "data; use another output_dir or `sbrjob train --fresh`")
        log.info("resuming from %s (epoch %d, block %d)", latest, int(progress.epoch) + 1, int(progress.block))
    elif init_from is not None:
        init_from(trainer.model, trainer.optimizer)
    progress.fingerprint.assign(fingerprint)
    tb_dir = runs.Run(cfg.output_dir).tensorboard_dir
    tb_work = storage.work_dir(tb_dir) if chief else None
    writer = tf.summary.create_file_writer(tb_work) if chief else None
    report = runs.MetricsRecord(cfg, kind, strategy.num_replicas_in_sync, manifest)

    def save_last():
        for var, value in zip(progress.hidden, trainer.gather_state(state)):
            var.assign(value)
        checkpoints.save("last", int(progress.step))

    state = trainer.distribute_state([h.value() for h in progress.hidden]) if int(progress.block) > 0 \
        else trainer.zero_state()
    every = cfg.train.checkpoint_every_steps
    T = manifest["block_steps"]
    history = json.loads(progress.history.numpy().decode())
    warmup = None  # this process's first block (it includes tracing): (epoch, seconds, events)
    cap = cfg.train.max_steps  # 0 = none

    def steady_rate(epoch: int, events: float, seconds: float) -> float:
        """events/s without the tracing block, when this epoch holds it and more."""
        if warmup is not None and warmup[0] == epoch and events > warmup[2]:
            events, seconds = events - warmup[2], seconds - warmup[1]
        return events / max(seconds, 1e-9)

    while int(progress.epoch) < cfg.train.epochs and not (history and history[-1].get("stopped")):
        epoch = int(progress.epoch)
        bar = Bar(f"epoch {epoch + 1}/{cfg.train.epochs}", manifest["blocks"], "blocks", enabled=chief)
        batches = iter(distribute_blocks(strategy, train_dir))
        for _ in range(int(progress.block)):  # resume: skip the blocks this epoch already trained on
            next(batches)
        start = epoch_wall = time.perf_counter()
        base_seconds = float(progress.seconds)
        for block in batches:
            step = int(progress.step)
            t_block = time.perf_counter()
            state, sums = trainer.train_block(block, state, tf.constant(step, tf.int64))
            progress.sums.assign_add(tf.cast(sums, tf.float64))
            progress.step.assign_add(T)
            progress.block.assign_add(1)
            progress.seconds.assign(base_seconds + time.perf_counter() - start)
            loss_sum, events = progress.sums.numpy()
            if warmup is None:
                warmup = (epoch + 1, time.perf_counter() - t_block, float(sums[1]))
            rate = steady_rate(epoch + 1, events, float(progress.seconds))
            bar.update(int(progress.block), f"loss {loss_sum / max(events, 1.0):.4f}  {rate:,.0f} events/s")
            if writer is not None:
                with writer.as_default(step=int(progress.step)):
                    _scalar("train/loss", float(sums[0] / tf.maximum(sums[1], 1.0)))
                    _scalar("train/events_per_s", rate)
            if every and (step + T) // every > step // every:
                save_last()
            if cap and int(progress.step) >= cap:
                break
        capped = bool(cap) and int(progress.step) >= cap and \
            (int(progress.block) < manifest["blocks"] or epoch + 1 < cfg.train.epochs)
        loss_sum, events = progress.sums.numpy()
        rate = steady_rate(epoch + 1, events, float(progress.seconds))
        bar.close()
        record = {"epoch": epoch + 1, "train_loss": float(loss_sum / max(events, 1.0)), "train_events": int(events),
                  "train_seconds": round(float(progress.seconds), 3),
                  "train_events_per_s": round(float(rate), 1)}  # steady state: tracing excluded
        if warmup is not None and warmup[0] == epoch + 1:
            record["first_block_seconds"] = round(warmup[1], 3)  # tracing (and compiling) included
        if capped:
            record["stopped"] = f"train.max_steps: {cap} steps reached"
        if "valid" in evaluators:
            record["valid"] = evaluators["valid"](trainer.model)
        history.append(record)
        for hook in [] if capped else hooks:
            stop = hook(epoch + 1, record)
            if stop and epoch + 1 < cfg.train.epochs:
                record["stopped"] = stop if isinstance(stop, str) else "on_epoch_end"
                break
        progress.history.assign(json.dumps(history))
        progress.epoch.assign_add(1)
        progress.block.assign(0)
        progress.sums.assign(tf.zeros([2], tf.float64))
        progress.seconds.assign(0.0)
        state = trainer.zero_state()
        if runs.is_best(history, cfg.eval.metric):  # best before last: see the module docstring
            checkpoints.save("best", int(progress.step))
        save_last()
        if writer is not None:
            with writer.as_default(step=epoch + 1):
                _scalar("epoch/train_loss", record["train_loss"])
                _scalar("epoch/train_events_per_s", record["train_events_per_s"])
                for key, value in (record.get("valid") or {}).items():
                    if isinstance(value, (int, float)) and "@" in key:
                        _scalar(f"valid/{key}", value)
            writer.flush()
            storage.sync_dir(tb_work, tb_dir)
        log.info("%s", epoch_line(record, history, cfg, time.perf_counter() - epoch_wall))
        log.debug("epoch %d: %s", epoch + 1, json.dumps(record))
        if chief:
            report.write(history)
            storage.write_bytes(join(cfg.output_dir, "training_curves.png"),
                                training_curves(history, cfg.eval.metric, cfg.name))

    test = None
    if "test" in evaluators:
        eval_model = GRU4Rec(cfg.model, n_items, seed=cfg.seed)
        tf.train.Checkpoint(model=eval_model).restore(checkpoints.for_test()).expect_partial()
        test = evaluators["test"](eval_model)
    metrics = report.write(history, test=test, done=True) if chief else report.build(history, test=test, done=True)
    checkpoints.close()
    return metrics
