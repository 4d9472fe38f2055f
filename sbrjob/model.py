"""GRU4Rec: a stack of original (Cho et al.) GRU cells between an item embedding and an item matrix.

One call of `step` advances every lane by one event. The cell applies the reset gate to the state
BEFORE the recurrent matmul, `h~ = tanh(W x + U (r * h))` (Keras `reset_after=False`); the cuDNN
default (`reset_after=True`) is a different model. Input modes:

- shared: the input embedding IS the output item matrix Wy (so its width is the last layer's);
- embedding: a separate table of `embedding_dim` columns;
- onehot: the one-hot input times the first layer's input weights, done as a row gather of that
  [n_items, 3H] matrix (a dense one-hot matmul would cost n_items x 3H per event).

Dropout (probability of dropping) is applied to the input embedding and to every layer's output
that flows upwards; the carried hidden state itself is never dropped. Randomness is stateless
(seeded per step) so a resumed run draws the same masks, and masks are drawn for the global batch
then sliced, so a replica's lanes see exactly what they would see in a single-replica run.
"""

from __future__ import annotations

import math

import tensorflow as tf


def glorot(rng: tf.random.Generator, fan_in: int, fan_out: int, gates: int = 1) -> tf.Tensor:
    """Glorot-uniform per gate: each [fan_in, fan_out] gate block gets its own limit, blocks side by side."""
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return tf.concat([rng.uniform((fan_in, fan_out), -limit, limit) for _ in range(gates)], axis=1)


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
        x_proj = x_proj + self.b
        zr = tf.sigmoid(x_proj[:, : 2 * n] + tf.matmul(h, self.Wrz))
        z, r = zr[:, :n], zr[:, n:]
        cand = tf.tanh(x_proj[:, 2 * n:] + tf.matmul(r * h, self.Wh))
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
        offset, total = lanes if lanes is not None else (0, tf.shape(x)[0])
        seed = tf.cast(seed, tf.int64) + tf.constant([0, 1_000_003], tf.int64) * salt
        u = tf.random.stateless_uniform(tf.stack([total, tf.shape(x)[1]]), seed=seed)
        keep = tf.slice(u, tf.stack([offset, 0]), tf.shape(x)) >= rate
        return tf.where(keep, x / (1.0 - rate), tf.zeros_like(x))

    def step(self, items, state, training: bool = False, dropout_seed=None, lanes=None):
        """Advance every lane by one event: items [b] int32, state list of [b, H_l] -> (h [b, H_last], new_state).

        `dropout_seed` ([2] ints) makes dropout stateless; `lanes=(offset, total)` places these b lanes
        in the global batch so masks match a single-replica run.
        """
        m = self.cfg
        if self.input_mode == "onehot":
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
            new_state.append(h)
            x = self._dropout(h, m.dropout_hidden, training, dropout_seed, i + 1, lanes)
        return x, new_state

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
