"""GRU4Rec's optimizers, written to run inside `strategy.run` of any tf.distribute strategy.

- adagrad: Adagrad with momentum, as in the official GRU4Rec:
  `acc += g**2; v = mu * v - lr * g / sqrt(acc + eps); p += v`, accumulator starting at 0.
  Gradients of gathered tables (item embedding/output rows, biases, one-hot input weights) arrive
  as `tf.IndexedSlices` and update ONLY the rows used in the step: their accumulator, velocity and
  value. Unused rows keep their velocity untouched until they are used again.
- adam: plain (dense) Adam, the tutorial's choice.

`apply(grads, active)` is called in replica context. It sums the gradients across replicas
(all-reduce for dense ones, all-gather of rows for IndexedSlices), then a `merge_call` updates every
replica's copy with `extended.update`: the pattern stock optimizers use, so it works under the
default strategy, MirroredStrategy, MultiWorkerMirroredStrategy and TPUStrategy alike.
`active` (real lanes, summed over replicas) turns the whole update into a no-op on a step where
every lane is padding, so padding never moves a weight (momentum would otherwise keep moving them);
it is a select, not a tf.cond, to keep tracing cheap (except around Adam's fused dense update).

Row-sparse updates use dynamic shapes (fast on CPU/GPU); with `static_shapes` (set under XLA:
jit_compile or TPU) an equivalent static-shaped variant is used instead. `apply_local` is the
single-replica update `train.jit_compile: dense` splits: inside XLA the dense math and small item
tables (one masked whole-table pass, `_update_table`), after it the row scatters of large tables.
With momentum 0 the velocity slot is not maintained (it would always equal the last step).
"""

from __future__ import annotations

import tensorflow as tf


def dedupe_rows(grad: tf.IndexedSlices):
    """Sum duplicate rows of an IndexedSlices with static shapes (for XLA/TPU).

    Returns (rows [n], values [n, ...], touched [n] bool): the first u entries are the u distinct rows
    with their summed gradients and the remaining entries repeat entry 0 (so scatter_update writes
    them twice with identical values: harmless and deterministic). `touched` is False for a row whose
    summed gradient is exactly zero: that only happens for rows gathered by padded lanes (weight 0),
    which the official code never feeds (it shrinks the batch), so they must not get a momentum step.
    """
    idx = tf.cast(grad.indices, tf.int32)
    n = tf.shape(idx)[0]
    order = tf.argsort(idx, stable=True)
    s_idx = tf.gather(idx, order)
    s_val = tf.gather(grad.values, order)
    first = tf.concat([[True], s_idx[1:] != s_idx[:-1]], axis=0)
    seg = tf.cumsum(tf.cast(first, tf.int32)) - 1
    summed = tf.math.unsorted_segment_sum(s_val, seg, n)
    rows = tf.math.unsorted_segment_max(s_idx, seg, n)
    used = tf.range(n) <= seg[-1]
    rows = tf.where(used, rows, rows[0])
    summed = tf.where(tf.reshape(used, [-1] + [1] * (len(s_val.shape) - 1)), summed, summed[0])
    nonzero = summed != 0
    touched = tf.reduce_any(tf.reshape(nonzero, [n, -1]), axis=1)
    return rows, summed, touched


def unique_touched_rows(grad: tf.IndexedSlices):
    """(rows [u], summed values [u, ...]) of the distinct rows with a non-zero summed gradient.

    Dynamic shapes: sort + sorted segment_sum, several times faster on CPU than
    unsorted_segment_sum. Rows whose gradient is exactly zero come only from padded lanes and are
    dropped (see `dedupe_rows`).
    """
    idx = tf.cast(grad.indices, tf.int32)
    order = tf.argsort(idx, stable=True)
    s_idx = tf.gather(idx, order)
    first = tf.concat([[True], s_idx[1:] != s_idx[:-1]], axis=0)
    seg = tf.cumsum(tf.cast(first, tf.int32)) - 1
    summed = tf.math.segment_sum(tf.gather(grad.values, order), seg)
    rows = tf.math.segment_max(s_idx, seg)  # every entry of a segment holds its row
    axes = list(range(1, len(grad.values.shape)))
    touched = tf.reduce_any(summed != 0, axis=axes) if axes else summed != 0
    keep = tf.reshape(tf.where(touched), [-1])  # one gather each: tf.boolean_mask costs ~20 graph ops
    return tf.gather(rows, keep), tf.gather(summed, keep)


class _Optimizer(tf.Module):
    slot_names: tuple[str, ...] = ()

    def __init__(self, variables, name=None):
        super().__init__(name=name)
        self.variables_ = list(variables)
        # slots are created under the caller's strategy scope, so they mirror their variables
        self.slots = {s: [tf.Variable(tf.zeros_like(v), trainable=False, name=f"{s}_{i}")
                          for i, v in enumerate(self.variables_)] for s in self.slot_names}
        self.iterations = tf.Variable(tf.constant(0, tf.int64), trainable=False, name="iterations")
        self.static_shapes = False  # True under XLA (jit_compile, TPU): row-sparse updates avoid dynamic shapes

    def apply(self, grads, active):
        """Called in replica context with this replica's gradients and its real-lane count for the step."""
        ctx = tf.distribute.get_replica_context()
        grads, active = list(grads), tf.cast(active, tf.float32)
        if ctx.num_replicas_in_sync > 1:
            grads, active = _sum_over_replicas(ctx, grads, active)
        # one packed argument: merge_call regroups it per replica whatever the replicas' values are
        ctx.merge_call(self._apply_cross_replica, args=((grads, active),))

    def fuses(self, grad, var) -> bool:
        """Whether this variable's update is dense math that XLA compiles well (no row scatter)."""
        return not isinstance(grad, tf.IndexedSlices)

    @tf.autograph.experimental.do_not_convert
    def apply_local(self, grads, active, count: bool = True, whole_tables: bool = False):
        """A single replica's update without the strategy machinery, skipping None gradients.

        `train.jit_compile: dense` runs it in two parts: the `fuses` ones inside XLA (counting the
        step there; `whole_tables`: row gradients update their table in one masked pass, see
        `_update_table`) and the rest after it (count=False)."""
        active = tf.cast(active, tf.float32)
        if count:
            _count_active(self.iterations, active)
        for i, (g, v) in enumerate(zip(grads, self.variables_)):
            if g is None:
                continue
            slots = tuple(self.slots[s][i] for s in self.slot_names)
            if whole_tables and isinstance(g, tf.IndexedSlices):
                self._update_table(v, g, active, self.iterations, *slots)
            else:
                self._update(v, g, active, self.iterations, *slots)

    def _update_table(self, var, grad, active, iterations, *slots):
        """A row gradient's update as whole-table math for XLA; by default the optimizer's own update."""
        self._update(var, grad, active, iterations, *slots)

    @tf.autograph.experimental.do_not_convert
    def _apply_cross_replica(self, strategy, packed):
        grads, active = packed
        # every replica now holds the same summed gradients: update each copy with its own
        strategy.extended.update(self.iterations, _count_active, args=(active,))
        for i, (g, v) in enumerate(zip(grads, self.variables_)):
            slots = tuple(self.slots[s][i] for s in self.slot_names)
            strategy.extended.update(v, self._update, args=(g, active, self.iterations) + slots)


def _sum_over_replicas(ctx, grads, active):
    """Sum gradients over replicas in replica context.

    Dense ones with one all-reduce; row-sparse ones by all-gathering their (indices, values): their
    shapes are static and equal on every replica, so this is a plain all-gather (the optimizer sums
    duplicate rows anyway). tf.distribute's own IndexedSlices all-reduce gathers lengths first and
    branches on them (a tf.cond around collectives), which deadlocked MultiWorkerMirroredStrategy
    inside the in-graph step loop.
    """
    dense = [i for i, g in enumerate(grads) if not isinstance(g, tf.IndexedSlices)]
    summed = ctx.all_reduce(tf.distribute.ReduceOp.SUM, [grads[i] for i in dense] + [active])
    out = list(grads)
    for i, value in zip(dense, summed[:-1]):
        out[i] = value
    for i, g in enumerate(grads):
        if isinstance(g, tf.IndexedSlices):
            out[i] = tf.IndexedSlices(ctx.all_gather(g.values, axis=0), ctx.all_gather(g.indices, axis=0),
                                      g.dense_shape)
    return out, summed[-1]


@tf.autograph.experimental.do_not_convert
def _count_active(iterations, active):
    return iterations.assign_add(tf.cast(active > 0, tf.int64))


class AdagradMomentum(_Optimizer):
    slot_names = ("accumulator", "velocity")
    # a table of at most this many times the step's gradient rows is updated in one masked pass over
    # all its rows inside XLA (measured 2.3x faster than the row-sparse ops at 2,807 table rows for
    # 2,208 gradient rows, 1 thread; the pass grows with the table, the row-sparse ops with the rows)
    WHOLE_TABLE_RATIO = 2

    def __init__(self, variables, lr: float, momentum: float = 0.0, epsilon: float = 1e-6):
        super().__init__(variables, name="adagrad_momentum")
        self.lr, self.momentum, self.epsilon = lr, momentum, epsilon

    def fuses(self, grad, var) -> bool:
        if not isinstance(grad, tf.IndexedSlices):
            return True
        rows, table = grad.indices.shape[0], var.shape[0]
        return rows is not None and table <= self.WHOLE_TABLE_RATIO * rows

    @tf.autograph.experimental.do_not_convert
    def _update_table(self, var, grad, active, iterations, acc, vel):
        """The row-sparse update as one masked pass over the whole table (static shapes, for XLA):
        duplicate rows summed, and only rows with a non-zero summed gradient change, exactly the
        rows `unique_touched_rows` keeps (padding-only rows and all-padding steps move nothing)."""
        g = tf.math.unsorted_segment_sum(grad.values, grad.indices, tf.shape(var)[0])
        touched = g != 0
        if len(g.shape) > 1:
            touched = tf.reduce_any(touched, axis=list(range(1, len(g.shape))), keepdims=True)
        a = acc + tf.square(g)  # untouched rows: + 0, unchanged
        acc.assign(a)
        step = -self.lr * g / tf.sqrt(a + self.epsilon)
        if self.momentum:
            step = tf.where(touched, self.momentum * vel + step, vel)
            vel.assign(step)
        var.assign_add(tf.where(touched, step, tf.zeros_like(step)))

    @tf.autograph.experimental.do_not_convert
    def _update(self, var, grad, active, iterations, acc, vel):
        active = active > 0
        if isinstance(grad, tf.IndexedSlices):
            # an all-padding step has all-zero gradients: no row is touched, nothing moves
            if not self.static_shapes:
                rows, g = unique_touched_rows(grad)
                acc.scatter_add(tf.IndexedSlices(tf.square(g), rows))
                step = -self.lr * g / tf.sqrt(tf.gather(acc, rows) + self.epsilon)
                if self.momentum:
                    step = self.momentum * tf.gather(vel, rows) + step
                    vel.scatter_update(tf.IndexedSlices(step, rows))
                var.scatter_add(tf.IndexedSlices(step, rows))
                return
            rows, g, touched = dedupe_rows(grad)
            a_old, v_old, p_old = tf.gather(acc, rows), tf.gather(vel, rows), tf.gather(var, rows)
            a = a_old + tf.square(g)
            v = self.momentum * v_old - self.lr * g / tf.sqrt(a + self.epsilon)
            p = p_old + v
            keep = tf.reshape(touched, [-1] + [1] * (len(g.shape) - 1))
            a, v, p = tf.where(keep, a, a_old), tf.where(keep, v, v_old), tf.where(keep, p, p_old)
            acc.scatter_update(tf.IndexedSlices(a, rows))
            vel.scatter_update(tf.IndexedSlices(v, rows))
            var.scatter_update(tf.IndexedSlices(p, rows))
            return
        a = acc.assign_add(tf.square(grad))  # zero on an inactive step
        v = vel.assign(tf.where(active, self.momentum * vel - self.lr * grad / tf.sqrt(a + self.epsilon), vel))
        var.assign_add(tf.where(active, v, tf.zeros_like(v)))


class Adam(_Optimizer):
    slot_names = ("m", "v")

    def __init__(self, variables, lr: float, beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-7):
        super().__init__(variables, name="adam")
        self.lr, self.beta1, self.beta2, self.epsilon = lr, beta1, beta2, epsilon

    def fuses(self, grad, var) -> bool:
        return True  # dense: a row gradient is scattered into a zero table first

    @tf.autograph.experimental.do_not_convert
    def _update(self, var, grad, active, iterations, m, v):
        if isinstance(grad, tf.IndexedSlices):  # Adam is dense: every row's moments decay each step
            grad = tf.math.unsorted_segment_sum(grad.values, grad.indices, tf.shape(var)[0])
        t = tf.cast(tf.maximum(iterations, 1), tf.float32)

        def apply():  # TF's fused kernel: one pass over var, m and v (the catalogue-sized tables)
            tf.raw_ops.ResourceApplyAdam(var=var.handle, m=m.handle, v=v.handle, beta1_power=self.beta1 ** t,
                                         beta2_power=self.beta2 ** t, lr=tf.constant(self.lr, tf.float32),
                                         beta1=tf.constant(self.beta1, tf.float32),
                                         beta2=tf.constant(self.beta2, tf.float32),
                                         epsilon=tf.constant(self.epsilon, tf.float32), grad=grad)
            return tf.constant(True)

        tf.cond(active > 0, apply, lambda: tf.constant(False))  # an all-padding step moves nothing


def make_optimizer(train_cfg, variables) -> _Optimizer:
    """The configured optimizer over `variables`; create it under the strategy's scope."""
    if train_cfg.optimizer == "adagrad":
        return AdagradMomentum(variables, lr=train_cfg.lr, momentum=train_cfg.momentum)
    return Adam(variables, lr=train_cfg.lr)
