"""A faithful reference of the Keras GRU4Rec tutorial's training loop, for speed comparisons only.

What the tutorial does, step by step (and so does this file):
- a Keras model `Input(batch_shape=(B, 1, n_items))` -> stateful `GRU(H)` (Keras defaults, so
  `reset_after=True`) -> `Dropout` -> `Dense(n_items, softmax)`, compiled with categorical
  cross-entropy and Adam;
- for every session-parallel step, in Python: read the GRU's state, zero the lanes whose session
  just started, write the state back, build dense one-hot inputs and one-hot targets with numpy,
  and call `model.train_on_batch`.
It consumes the same session-parallel layout (`sbrjob.batching.layout`) as sbrjob's shards, so both
train on exactly the same (input, target) pairs. Padding steps are fed too (the tutorial's loader
drops the end instead; feeding them only makes the reference do slightly more work per real event,
so its events/s is counted on real events only).
"""

from __future__ import annotations

import time

import keras
import numpy as np


def build_tutorial_model(n_items: int, hidden: int, batch: int, dropout: float = 0.25, lr: float = 0.001):
    inputs = keras.Input(batch_shape=(batch, 1, n_items))
    gru = keras.layers.GRU(hidden, stateful=True, name="GRU")(inputs)
    drop = keras.layers.Dropout(dropout)(gru)
    predictions = keras.layers.Dense(n_items, activation="softmax")(drop)
    model = keras.Model(inputs=inputs, outputs=predictions)
    model.compile(loss=keras.losses.categorical_crossentropy, optimizer=keras.optimizers.Adam(learning_rate=lr))
    return model


def one_hot(indices: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros((len(indices), n), np.float32)
    out[np.arange(len(indices)), indices] = 1.0
    return out


def train_steps(model, layout, n_items: int, first: int, steps: int) -> int:
    """Train on steps [first, first+steps) of the layout the tutorial's way; returns the real events seen."""
    gru = model.get_layer("GRU")
    events = 0
    for t in range(first, first + steps):
        hidden = np.array(gru.states[0])
        hidden[layout.reset[:, t] == 1, :] = 0  # lanes whose session starts now
        gru.states[0].assign(hidden)
        x = one_hot(layout.input[:, t], n_items)[:, None, :]
        y = one_hot(layout.target[:, t], n_items)
        model.train_on_batch(x, y)
        events += int(layout.weight[:, t].sum())
    return events


def events_per_second(layout, n_items: int, hidden: int, warmup: int = 3, budget_s: float = 20.0,
                      max_steps: int = 400) -> tuple[float, int]:
    """(training events/s, steps measured) of the tutorial loop on this layout."""
    model = build_tutorial_model(n_items, hidden, layout.lanes)
    train_steps(model, layout, n_items, 0, warmup)  # compile / first call outside the clock
    start, t, events = time.perf_counter(), warmup, 0
    while t < min(layout.steps, warmup + max_steps) and time.perf_counter() - start < budget_s:
        events += train_steps(model, layout, n_items, t, 1)
        t += 1
    return events / (time.perf_counter() - start), t - warmup
