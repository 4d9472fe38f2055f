"""GRU4Rec model: the original GRU cell, input modes, dropout, scoring."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from sbrjob.config import ModelConfig
from sbrjob.model import GRU4Rec


def make(n_items=12, **kw):
    return GRU4Rec(ModelConfig(**kw), n_items, seed=3)


def keras_reference(layer, x, h, reset_after):
    """Keras GRUCell holding our layer's weights (gates z, r, h in both)."""
    cell = keras.layers.GRUCell(layer.units, reset_after=reset_after)
    cell.build((None, x.shape[1]))
    bias = layer.b.numpy() if not reset_after else np.stack([layer.b.numpy(), np.zeros(3 * layer.units, np.float32)])
    cell.set_weights([layer.Wx.numpy(), np.concatenate([layer.Wrz.numpy(), layer.Wh.numpy()], axis=1), bias])
    out, _ = cell(tf.constant(x), [tf.constant(h)])
    return np.asarray(out)


def test_cell_is_the_original_reset_before_formulation():
    model = make(layers=[6], input="embedding", embedding_dim=5)
    layer = model.layers[0]
    layer.b.assign(tf.random.normal([18], seed=1))
    rng = np.random.default_rng(0)
    x, h = rng.normal(size=(4, 5)).astype(np.float32), rng.normal(size=(4, 6)).astype(np.float32)
    ours = layer(tf.matmul(x, layer.Wx), tf.constant(h)).numpy()
    np.testing.assert_allclose(ours, keras_reference(layer, x, h, reset_after=False), rtol=1e-5, atol=1e-6)
    # and it is NOT the cuDNN/Keras-default model (reset applied after the recurrent matmul)
    assert np.abs(ours - keras_reference(layer, x, h, reset_after=True)).max() > 1e-3


def test_glorot_uniform_per_gate():
    model = make(n_items=50, layers=[40], input="embedding", embedding_dim=30)
    wx = model.layers[0].Wx.numpy()
    limit = np.sqrt(6.0 / (30 + 40))  # per gate: fan_in 30, fan_out 40 (not 3*40)
    assert wx.shape == (30, 120)
    assert np.abs(wx).max() <= limit and np.abs(wx).max() > 0.9 * limit
    for gate in range(3):  # each gate block drawn on its own, not the same numbers
        assert np.std(wx[:, gate * 40:(gate + 1) * 40]) > 0.4 * limit
    assert not np.allclose(wx[:, :40], wx[:, 40:80])


def grad_of(model, items, var):
    with tf.GradientTape() as tape:
        h, _ = model.step(tf.constant(items, tf.int32), model.initial_state(len(items)), training=False)
        loss = tf.reduce_sum(model.scores_for(h, tf.constant([0, 1], tf.int32)))
    return tape.gradient(loss, var)


def test_shared_mode_input_is_the_output_matrix():
    model = make(layers=[8, 6], input="shared")
    names = {v.name.split(":")[0] for v in model.trainable_variables}
    assert "E" not in names and model.layers[0].Wx.shape == (6, 24)  # input width = last layer
    grad = grad_of(model, [3, 5], model.Wy)
    assert isinstance(grad, tf.IndexedSlices)  # row-sparse: only looked-up / scored rows
    assert set(grad.indices.numpy().tolist()) == {0, 1, 3, 5}


def test_onehot_mode_is_a_row_lookup_of_the_input_weights():
    model = make(n_items=12, layers=[7], input="onehot")
    items = np.array([4, 0, 11])
    wx = model.layers[0].Wx
    assert wx.shape == (12, 21)
    h, _ = model.step(tf.constant(items, tf.int32), model.initial_state(3))
    dense = model.layers[0](tf.matmul(tf.one_hot(items, 12), wx), tf.zeros([3, 7]))
    np.testing.assert_allclose(h.numpy(), dense.numpy(), rtol=1e-6)
    grad = grad_of(model, items, wx)
    assert isinstance(grad, tf.IndexedSlices) and sorted(grad.indices.numpy().tolist()) == [0, 4, 11]


def test_embedding_mode_sizes_and_stacked_layers():
    model = make(n_items=9, layers=[5, 4, 3], input="embedding", embedding_dim=6)
    assert model.E.shape == (9, 6) and model.Wy.shape == (9, 3)
    state = model.initial_state(2)
    assert [s.shape.as_list() for s in state] == [[2, 5], [2, 4], [2, 3]]
    h, new = model.step(tf.constant([1, 2]), state)
    assert h.shape == (2, 3) and [s.shape[1] for s in new] == [5, 4, 3]
    np.testing.assert_allclose(new[-1].numpy(), h.numpy())  # without dropout the output is the last state


@pytest.mark.parametrize("carry", [True, False])
def test_dropout_drops_with_probability_and_rescales_and_carries_as_configured(carry):
    model = make(n_items=20, layers=[400], input="embedding", embedding_dim=300,
                 dropout_embedding=0.3, dropout_hidden=0.5, carry_dropout=carry)
    items = tf.constant([1, 2, 3, 4], tf.int32)
    state = model.initial_state(4)
    h, new = model.step(items, state, training=True, dropout_seed=tf.constant([1, 2], tf.int64))
    zeros = np.mean(h.numpy() == 0)
    assert 0.4 < zeros < 0.6  # probability of DROPPING, not keeping
    if carry:  # the official code: the dropped output is the next state
        np.testing.assert_array_equal(new[0].numpy(), h.numpy())
    else:  # the undropped output is carried; the kept units are the carried ones rescaled
        assert np.mean(new[0].numpy() == 0) < 0.01
        kept = h.numpy() != 0
        np.testing.assert_allclose(h.numpy()[kept], new[0].numpy()[kept] / 0.5, rtol=1e-5)
    again, _ = model.step(items, state, training=True, dropout_seed=tf.constant([1, 2], tf.int64))
    np.testing.assert_array_equal(h.numpy(), again.numpy())  # stateless: same seed, same masks
    inference, inf_state = model.step(items, state, training=False)  # no dropout at inference
    np.testing.assert_allclose(inference.numpy(), inf_state[0].numpy())
    assert np.mean(inference.numpy() == 0) < 0.01


def test_dropout_masks_of_a_lane_slice_match_the_global_batch():
    model = make(n_items=20, layers=[16], dropout_embedding=0.4, dropout_hidden=0.4)
    items = tf.constant([1, 2, 3, 4, 5, 6], tf.int32)
    seed = tf.constant([7, 9], tf.int64)
    full, _ = model.step(items, model.initial_state(6), training=True, dropout_seed=seed)
    part, _ = model.step(items[3:], model.initial_state(3), training=True, dropout_seed=seed, lanes=(3, 6))
    np.testing.assert_allclose(part.numpy(), full.numpy()[3:], rtol=1e-5, atol=1e-7)
    assert np.array_equal(part.numpy() == 0, full.numpy()[3:] == 0)


@pytest.mark.parametrize("activation", ["linear", "elu"])
def test_scores(activation):
    model = make(n_items=10, layers=[4], final_activation=activation, elu_param=0.5)
    model.by.assign(tf.range(10, dtype=tf.float32) / 10 - 0.5)
    h = tf.random.normal([3, 4], seed=2) * 3
    raw = h.numpy() @ model.Wy.numpy().T + model.by.numpy()
    want = raw if activation == "linear" else np.where(raw > 0, raw, 0.5 * (np.exp(raw) - 1))
    np.testing.assert_allclose(model.item_scores(h).numpy(), want, rtol=1e-5, atol=1e-6)
    cols = tf.constant([7, 2, 2], tf.int32)
    np.testing.assert_allclose(model.scores_for(h, cols).numpy(), want[:, [7, 2, 2]], rtol=1e-5, atol=1e-6)
