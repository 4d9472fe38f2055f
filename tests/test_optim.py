"""Adagrad with momentum (dense and row-sparse) and Adam, on one device and under MirroredStrategy."""

import numpy as np
import tensorflow as tf

from sbrjob.distribute import make_strategy
from sbrjob.optim import Adam, AdagradMomentum, dedupe_rows

LR, MU, EPS = 0.1, 0.4, 1e-6


def adagrad_reference(p, acc, vel, g):
    acc = acc + g ** 2
    vel = MU * vel - LR * g / np.sqrt(acc + EPS)
    return p + vel, acc, vel


def apply(opt, grads, active=1.0):
    @tf.function
    def run():
        opt.apply(grads, tf.constant(active))

    run()


def test_dense_adagrad_momentum_matches_the_formula_over_steps():
    var = tf.Variable(np.array([[0.5, -1.0], [2.0, 0.0]], np.float32))
    opt = AdagradMomentum([var], lr=LR, momentum=MU, epsilon=EPS)
    p, acc, vel = var.numpy().astype(np.float64), np.zeros((2, 2)), np.zeros((2, 2))
    for g in (np.array([[1.0, -2.0], [0.5, 0.0]]), np.array([[0.3, 0.1], [-1.0, 2.0]])):
        apply(opt, [tf.constant(g, tf.float32)])
        p, acc, vel = adagrad_reference(p, acc, vel, g)
    np.testing.assert_allclose(var.numpy(), p, rtol=1e-5)
    np.testing.assert_allclose(opt.slots["accumulator"][0].numpy(), acc, rtol=1e-5)  # starts at 0, not 0.1
    np.testing.assert_allclose(opt.slots["velocity"][0].numpy(), vel, rtol=1e-5)


def test_row_sparse_update_touches_only_used_rows_and_sums_duplicates():
    init = np.arange(12, dtype=np.float32).reshape(6, 2)
    var = tf.Variable(init)
    opt = AdagradMomentum([var], lr=LR, momentum=MU, epsilon=EPS)
    old_velocity = np.full((6, 2), 0.25, np.float32)
    opt.slots["velocity"][0].assign(old_velocity)
    grad = tf.IndexedSlices(tf.constant([[1.0, 1.0], [2.0, -1.0], [0.5, 0.5]]), tf.constant([4, 1, 4]), tf.constant([6, 2]))
    apply(opt, [grad])
    dense_g = np.zeros((6, 2))
    dense_g[4] = [1.5, 1.5]
    dense_g[1] = [2.0, -1.0]
    p, acc, vel = adagrad_reference(init.astype(np.float64), np.zeros((6, 2)), old_velocity.astype(np.float64), dense_g)
    used = [1, 4]
    np.testing.assert_allclose(var.numpy()[used], p[used], rtol=1e-5)
    unused = [0, 2, 3, 5]
    np.testing.assert_array_equal(var.numpy()[unused], init[unused])  # no momentum step on unused rows
    np.testing.assert_array_equal(opt.slots["velocity"][0].numpy()[unused], old_velocity[unused])
    np.testing.assert_allclose(opt.slots["accumulator"][0].numpy()[used], acc[used], rtol=1e-5)


def test_all_padding_step_changes_nothing_even_with_momentum():
    dense = tf.Variable([1.0, 2.0])
    table = tf.Variable([[1.0], [2.0], [3.0]])
    opt = AdagradMomentum([dense, table], lr=LR, momentum=MU)
    opt.slots["velocity"][0].assign([0.5, 0.5])
    opt.slots["velocity"][1].assign([[0.5], [0.5], [0.5]])
    zero_rows = tf.IndexedSlices(tf.zeros([2, 1]), tf.constant([0, 2]), tf.constant([3, 1]))
    apply(opt, [tf.zeros([2]), zero_rows], active=0.0)
    np.testing.assert_array_equal(dense.numpy(), [1.0, 2.0])
    np.testing.assert_array_equal(table.numpy(), [[1.0], [2.0], [3.0]])
    assert int(opt.iterations) == 0
    apply(opt, [tf.zeros([2]), zero_rows], active=3.0)  # a real step: momentum moves the dense weights
    np.testing.assert_allclose(dense.numpy(), [1.0 + MU * 0.5, 2.0 + MU * 0.5])
    np.testing.assert_array_equal(table.numpy(), [[1.0], [2.0], [3.0]])  # rows fed only by padded lanes stay


def test_dedupe_rows_compiles_with_xla():
    grad = tf.IndexedSlices(tf.constant([[1.0], [2.0], [3.0], [4.0]]), tf.constant([7, 2, 7, 2]))
    rows, summed, touched = tf.function(dedupe_rows, jit_compile=True)(grad)
    got = {int(r): float(v) for r, v, t in zip(rows.numpy(), summed.numpy()[:, 0], touched.numpy()) if t}
    assert got == {2: 6.0, 7: 4.0}


def test_adam_matches_keras():
    import keras

    init = np.array([[0.5, -1.0], [2.0, 0.0]], np.float32)
    ours, ref = tf.Variable(init), keras.Variable(init)
    opt = Adam([ours], lr=0.01)
    kopt = keras.optimizers.Adam(learning_rate=0.01, epsilon=1e-7)
    for g in (np.array([[1.0, -2.0], [0.5, 0.0]], np.float32), np.array([[0.3, 0.1], [-1.0, 2.0]], np.float32)):
        apply(opt, [tf.IndexedSlices(tf.constant(g), tf.constant([0, 1]), tf.constant([2, 2]))])
        kopt.apply_gradients([(tf.constant(g), ref)])
    np.testing.assert_allclose(ours.numpy(), np.asarray(ref), rtol=1e-5, atol=1e-6)


def test_adam_all_padding_step_moves_nothing_and_mirrored_copies_match_one_device():
    init = np.array([[0.5, -1.0], [2.0, 0.0]], np.float32)
    g = np.array([[1.0, -2.0], [0.5, 0.0]], np.float32)
    single = tf.Variable(init)
    opt = Adam([single], lr=0.01)
    apply(opt, [tf.constant(g)], active=0.0)  # every lane padding: no moment decay, no step
    np.testing.assert_array_equal(single.numpy(), init)
    np.testing.assert_array_equal(opt.slots["m"][0].numpy(), 0.0)
    apply(opt, [tf.constant(g)])

    strategy, _ = make_strategy("mirrored")  # the 2 logical CPUs of conftest
    with strategy.scope():
        table = tf.Variable(init)
        mirrored = Adam([table], lr=0.01)

    def replica_fn():  # each replica sends half: the summed gradient is g
        mirrored.apply([tf.constant(g / 2)], tf.constant(1.0))

    tf.function(lambda: strategy.run(replica_fn))()
    for copy in strategy.experimental_local_results(table):
        np.testing.assert_allclose(copy.numpy(), single.numpy(), rtol=1e-6)


def test_mirrored_strategy_sums_replica_gradients_and_keeps_copies_identical():
    strategy, _ = make_strategy("mirrored")  # the 2 logical CPUs of conftest; one strategy per process
    assert strategy.num_replicas_in_sync == 2
    init = np.arange(8, dtype=np.float32).reshape(4, 2)
    with strategy.scope():
        table, bias = tf.Variable(init), tf.Variable([1.0, 1.0])
        opt = AdagradMomentum([table, bias], lr=LR, momentum=MU, epsilon=EPS)

    def replica_fn():
        r = tf.cast(tf.distribute.get_replica_context().replica_id_in_sync_group, tf.float32)
        rows = tf.IndexedSlices(tf.fill([1, 2], r + 1.0), tf.reshape(tf.cast(r, tf.int32) + 1, [1]), tf.constant([4, 2]))
        opt.apply([rows, tf.fill([2], r + 1.0)], tf.constant(1.0))

    tf.function(lambda: strategy.run(replica_fn))()
    # replica 0 sends row 1 with 1.0, replica 1 sends row 2 with 2.0; bias gets 1 + 2
    g = np.zeros((4, 2))
    g[1], g[2] = 1.0, 2.0
    p, _, _ = adagrad_reference(init.astype(np.float64), np.zeros((4, 2)), np.zeros((4, 2)), g)
    pb, _, _ = adagrad_reference(np.ones(2), np.zeros(2), np.zeros(2), np.full(2, 3.0))
    for copy in strategy.experimental_local_results(table):
        np.testing.assert_allclose(copy.numpy(), p, rtol=1e-5)
    for copy in strategy.experimental_local_results(bias):
        np.testing.assert_allclose(copy.numpy(), pb, rtol=1e-5)


def test_whole_table_update_under_xla_equals_the_row_sparse_update():
    """`train.jit_compile: dense` updates a small table in one masked pass inside XLA: duplicates summed,
    only rows with a non-zero summed gradient move (momentum included), an all-padding step moves nothing."""
    rng = np.random.default_rng(3)
    init = rng.standard_normal((7, 3)).astype(np.float32)
    steps = [(np.array([1, 4, 1, 6, 2], np.int32), rng.standard_normal((5, 3)).astype(np.float32)),
             (np.array([4, 0, 4, 3, 3], np.int32), rng.standard_normal((5, 3)).astype(np.float32)),
             (np.array([5, 5, 2, 1, 0], np.int32), np.zeros((5, 3), np.float32))]  # all padding
    steps[1][1][3:] = 0.0  # row 3 gathered only by padded lanes: a zero summed gradient
    bias_init = rng.standard_normal(7).astype(np.float32)
    results = []
    for whole in (False, True):
        var, bias = tf.Variable(init), tf.Variable(bias_init)
        opt = AdagradMomentum([var, bias], lr=LR, momentum=MU, epsilon=EPS)
        assert opt.fuses(tf.IndexedSlices(tf.zeros([5, 3]), tf.zeros([5], tf.int32)), var)  # 7 <= 2 * 5
        assert not opt.fuses(tf.IndexedSlices(tf.zeros([3, 3]), tf.zeros([3], tf.int32)), var)

        @tf.function(jit_compile=whole)
        def step(idx, values, active):
            grads = [tf.IndexedSlices(values, idx, tf.shape(var)), tf.IndexedSlices(values[:, 0], idx, tf.shape(bias))]
            opt.apply_local(grads, active, whole_tables=whole)

        for idx, values in steps:
            step(tf.constant(idx), tf.constant(values), tf.constant(float(np.any(values))))
        results.append([var.numpy(), bias.numpy()] + [s.numpy() for n in opt.slot_names for s in opt.slots[n]])
        assert int(opt.iterations.numpy()) == 2
    for sparse, whole in zip(*results):
        np.testing.assert_allclose(whole, sparse, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(results[1][0][3], init[3])  # zero summed gradient: not moved
    velocity = results[1][4]
    assert np.all(velocity[3] == 0) and np.any(velocity[4] != 0)
