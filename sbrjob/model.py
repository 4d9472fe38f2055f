"""GRU4Rec: a stack of original (Cho et al.) GRU cells between an item embedding and an item matrix.

One call of `step` advances every lane by one event. The cell applies the reset gate to the state
BEFORE the recurrent matmul, `h~ = tanh(W x + U (r * h))` (Keras `reset_after=False`); the cuDNN
default (`reset_after=True`) is a different model. Input modes:

- shared: the input embedding IS the output item matrix Wy (so its width is the last layer's);
- embedding: a separate table of `embedding_dim` columns;
- onehot: the one-hot input times the first layer's input weights, done as a row gather of that
  [n_items, 3H] matrix (a dense one-hot matmul would cost n_items x 3H per event).

Dropout (probability of dropping) is applied to the input embedding and to every layer's output;
with `carry_dropout` (the official code) the dropped output is also the lane's carried state,
otherwise the undropped output is carried. Masks come from a
counter-based hash of (seed, step, position in the GLOBAL batch): a resumed run draws the same
masks, a replica's lanes get exactly the masks of a single-replica run, and XLA agrees with CPU.
"""

from __future__ import annotations

import math
import weakref

import tensorflow as tf


def glorot(rng: tf.random.Generator, fan_in: int, fan_out: int, gates: int = 1) -> tf.Tensor:
    """Glorot-uniform per gate: each [fan_in, fan_out] gate block gets its own limit, blocks side by side."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return tf.concat([rng.uniform((fan_in, fan_out), -limit, limit) for _ in range(gates)], axis=1)


def _uint32(*values: int) -> list[tf.Tensor]:
    """uint32 constants of the graph being traced, made once per graph: tracing costs about a
    millisecond per op, and the hashes below would otherwise add a Const op at every use."""
    if tf.executing_eagerly():
        return [tf.constant(v, tf.uint32) for v in values]
    graph = tf.compat.v1.get_default_graph()
    cache = _CONSTS.setdefault(graph, {})
    with tf.control_dependencies(None):  # a shared constant must not inherit a local control scope
        for v in values:
            if v not in cache:
                cache[v] = tf.constant(v, tf.uint32)
    return [cache[v] for v in values]


_CONSTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _mix32(x):
    """lowbias32 (C. Wellons): a strong 32-bit integer mixing function."""
    s16, s15, m1, m2 = _uint32(16, 15, 0x7FEB352D, 0x846CA68B)
    x = x ^ tf.bitwise.right_shift(x, s16)
    x = x * m1
    x = x ^ tf.bitwise.right_shift(x, s15)
    x = x * m2
    return x ^ tf.bitwise.right_shift(x, s16)


def seed_words(seed) -> tuple[tf.Tensor, tf.Tensor]:
    """(low, high) uint32 words of int64 values, elementwise."""
    seed = tf.cast(seed, tf.int64)
    return (tf.cast(tf.bitwise.bitwise_and(seed, 0xFFFFFFFF), tf.uint32),
            tf.cast(tf.bitwise.right_shift(seed, 32), tf.uint32))


def hash_uniform(shape, seed, salt: int = 0, row_offset=0) -> tf.Tensor:
    """Uniform [0, 1) numbers that depend only on (seed [2] ints, salt, element position).

    A counter-based hash in plain integer ops: identical on CPU, GPU and under XLA, which TF's
    stateless random ops are not (XLA uses another Philox mapping). Element (i, j) of a [rows, cols]
    tensor is numbered (row_offset + i) * cols + j, so a replica drawing its own rows of a global
    batch gets exactly that slice of the global draw. A static `shape` (ints) builds fewer ops.
    """
    if isinstance(shape, (list, tuple)) and all(isinstance(d, int) for d in shape):
        cols = math.prod(shape[1:])
        index = tf.reshape(tf.range(math.prod(shape)), shape)
        if not (isinstance(row_offset, int) and row_offset == 0):
            index = index + tf.cast(row_offset, tf.int32) * cols
    else:
        shape = tf.convert_to_tensor(shape, tf.int32)
        cols = tf.reduce_prod(shape[1:])
        rows = tf.range(shape[0]) + tf.cast(row_offset, tf.int32)
        index = tf.reshape(rows[:, None] * cols + tf.range(cols)[None, :], shape)
    lo, hi = (tf.unstack(w) for w in seed_words(seed))
    key = _mix32(lo[0] ^ _uint32((0x9E3779B9 * (salt + 1)) & 0xFFFFFFFF)[0])
    for part in (hi[0], lo[1], hi[1]):
        key = _mix32(key ^ part)
    h = _mix32(_mix32(tf.cast(index, tf.uint32) ^ key) + key)
    return tf.cast(tf.bitwise.right_shift(h, _uint32(8)[0]), tf.float32) * (1.0 / (1 << 24))


class GRULayer(tf.Module):
    """One GRU layer, gates ordered (update z, reset r, candidate). `x_proj` is x @ Wx (precomputed or gathered)."""

    def __init__(self, in_dim: int, units: int, rng: tf.random.Generator, name=None):
        super().__init__(name=name)
        self.units = units
        # in onehot mode in_dim = n_items: Wx is then a lookup table with one row per item
        self.Wx = tf.Variable(glorot(rng, in_dim, units, gates=3), name="Wx")
        self.Wrz = tf.Variable(glorot(rng, units, units, gates=2), name="Wrz")  # recurrent weights of z, r
        self.Wh = tf.Variable(glorot(rng, units, units), name="Wh")  # recurrent weights of the candidate
        self.b = tf.Variable(tf.zeros([3 * units]), name="b")

    def __call__(self, x_proj: tf.Tensor, h: tf.Tensor) -> tf.Tensor:
        n = self.units
        x_zr, x_h = tf.split(x_proj + self.b, [2 * n, n], axis=1)  # one op each way (tracing time)
        z, r = tf.split(tf.sigmoid(x_zr + tf.matmul(h, self.Wrz)), 2, axis=1)
        cand = tf.tanh(x_h + tf.matmul(r * h, self.Wh))
        return z * h + (1.0 - z) * cand


class GRU4Rec(tf.Module):
    """The contract of docs/ARCHITECTURE.md: initial_state, step, item_scores, scores_for."""

    def __init__(self, model_cfg, n_items: int, seed: int = 42, name: str = "gru4rec"):
        super().__init__(name=name)
        self.cfg = model_cfg
        self.n_items = int(n_items)
        self.sizes = list(model_cfg.layers)
        self.input_mode = model_cfg.input
        rng = tf.random.Generator.from_seed(seed)
        last = self.sizes[-1]
        self.Wy = tf.Variable(glorot(rng, self.n_items, last), name="Wy")  # one row per item
        self.by = tf.Variable(tf.zeros([self.n_items]), name="by")
        if self.input_mode == "embedding":
            self.E = tf.Variable(glorot(rng, self.n_items, model_cfg.embedding_dim), name="E")
            in_dim = model_cfg.embedding_dim
        else:
            in_dim = last
        self.layers = []
        for i, units in enumerate(self.sizes):
            onehot = self.input_mode == "onehot" and i == 0
            self.layers.append(GRULayer(self.n_items if onehot else in_dim, units, rng, name=f"gru_{i}"))
            in_dim = units

    # ------------------------------------------------------------------ recurrence

    def initial_state(self, batch) -> list[tf.Tensor]:
        return [tf.zeros([batch, n]) for n in self.sizes]

    def _dropout(self, x, rate, training, seed, salt, lanes):
        if not training or rate <= 0:
            return x
        if seed is None:
            return tf.nn.dropout(x, rate)
        offset = 0 if lanes is None else lanes[0]
        shape = x.shape.as_list() if x.shape.is_fully_defined() else tf.shape(x)
        u = hash_uniform(shape, seed, salt, row_offset=offset)
        return tf.where(u >= rate, x / (1.0 - rate), tf.zeros_like(x))

    def input_table(self) -> tf.Tensor:
        """The first layer's input projection of every item, [n_items, 3H]: for inference, where no
        dropout sits between the lookup and the projection, `step(..., input_table=)` then gathers
        one row per event instead of multiplying it by Wx at every step."""
        if self.input_mode == "onehot":
            return self.layers[0].Wx
        table = self.Wy if self.input_mode == "shared" else self.E
        return tf.matmul(table, self.layers[0].Wx)

    def step(self, items, state, training: bool = False, dropout_seed=None, lanes=None, input_table=None):
        """Advance every lane by one event: items [b] int32, state list of [b, H_l] -> (h [b, H_last], new_state).

        `dropout_seed` ([2] ints) makes dropout stateless; `lanes=(offset, total)` places these b lanes
        in the global batch so masks match a single-replica run; `input_table` (from `input_table()`,
        inference only) replaces the first layer's input lookup and projection.
        """
        m = self.cfg
        if input_table is not None and not training:
            x_proj, x = tf.gather(input_table, items), None
        elif self.input_mode == "onehot":
            x_proj = self._drop_rows(tf.gather(self.layers[0].Wx, items), m.dropout_embedding, training,
                                     dropout_seed, lanes)
            x = None
        else:
            table = self.Wy if self.input_mode == "shared" else self.E
            x = self._dropout(tf.gather(table, items), m.dropout_embedding, training, dropout_seed, 0, lanes)
        new_state = []
        for i, layer in enumerate(self.layers):
            if x is not None:
                x_proj = tf.matmul(x, layer.Wx)
            h = layer(x_proj, state[i])
            x = self._dropout(h, m.dropout_hidden, training, dropout_seed, i + 1, lanes)
            new_state.append(x if m.carry_dropout else h)
        return x, new_state

    def masked_step(self, items, state, mask, input_table=None):
        """Inference: advance the lanes where `mask` [b] bool is True; the others keep their state.

        `items` [b] int32 (any value where the mask is False, e.g. -1). Returns (h, new_state) with
        h = the last layer's (new or kept) state, which is what `item_scores` takes (no dropout at
        inference). Used by serving (unknown ids, padding) and batch recommendation.
        """
        _, stepped = self.step(tf.maximum(items, 0), state, training=False, input_table=input_table)
        new_state = [tf.where(mask[:, None], n, s) for n, s in zip(stepped, state)]
        return new_state[-1], new_state

    def _drop_rows(self, x, rate, training, seed, lanes):
        """Dropout on a one-hot input (one non-zero) = keep or drop each lane's whole gathered row."""
        if not training or rate <= 0:
            return x
        col = self._dropout(tf.ones_like(x[:, :1]), rate, training, seed, 0, lanes)
        return x * col

    # ------------------------------------------------------------------ scoring

    def _activate(self, scores):
        if self.cfg.final_activation == "elu":  # ELU(alpha): x > 0 ? x : alpha * (exp(x) - 1)
            return tf.where(scores > 0, scores, self.cfg.elu_param * (tf.exp(tf.minimum(scores, 0.0)) - 1.0))
        return scores

    def item_scores(self, h):
        """Scores of every item (full ranking): h @ Wy^T + by, after the final activation."""
        return self._activate(tf.matmul(h, self.Wy, transpose_b=True) + self.by)

    def scores_for(self, h, items):
        """Scores of the given columns only (sampled training): [b, n]. Gathers rows -> row-sparse gradients."""
        return self._activate(tf.matmul(h, tf.gather(self.Wy, items), transpose_b=True) + tf.gather(self.by, items))
