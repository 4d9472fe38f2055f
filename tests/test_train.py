"""The training loop: learning, reset semantics, MirroredStrategy equivalence, XLA, checkpoints."""

import json

import numpy as np
import pytest
import tensorflow as tf

from sbrjob import export, train
from sbrjob.config import config_from_dict
from sbrjob.distribute import make_strategy
from sbrjob.shards import distribute_blocks

from conftest import chain_sessions, split_evaluators

N_ITEMS = 30


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    extra = {"n_items": N_ITEMS}
    export.write_split(*chain_sessions(300, N_ITEMS, 0), root / "train", split="train", lanes=8, n_shards=2,
                       block_steps=8, extra=extra)
    export.write_split(*chain_sessions(60, N_ITEMS, 1), root / "valid", split="valid", lanes=8, n_shards=1,
                       block_steps=8, extra=extra)
    return root


def config(tmp_path, **train_kw):
    model = train_kw.pop("model", {"layers": [24]})
    return config_from_dict({"output_dir": str(tmp_path / "run"), "seed": 7, "model": model,
                             "train": {"n_sample": 8, "epochs": 2, "momentum": 0.2, "lr": 0.1, **train_kw}})


def test_learns_a_deterministic_chain_and_writes_checkpoints_and_metrics(shards, tmp_path):
    cfg = config(tmp_path, checkpoint_every_steps=64)
    metrics = train.fit(cfg, tf.distribute.get_strategy(), "default", str(shards / "train"), N_ITEMS,
                        np.ones(N_ITEMS), evaluators=split_evaluators(cfg, shards / "valid", shards / "valid"))
    assert metrics["test"]["recall@1"] > 0.95  # ring successor learned: Recall@1 ~ 1
    epochs = metrics["epochs"]
    # per-epoch validation ranks only; the top-K lists of coverage/popularity are for the test split
    assert "mrr@20" in epochs[0]["valid"] and "coverage@20" not in epochs[0]["valid"]
    assert "coverage@20" in metrics["test"]
    assert [e["epoch"] for e in epochs] == [1, 2] and epochs[1]["train_loss"] < epochs[0]["train_loss"]
    manifest = json.loads((shards / "train" / "manifest.json").read_text())
    assert all(e["train_events"] == manifest["pairs"] for e in epochs)  # every pair trained, padding not
    assert metrics["best_epoch"] in (1, 2) and metrics["strategy"] == "default" and metrics["replicas"] == 1
    assert json.loads((tmp_path / "run" / "metrics.json").read_text()) == json.loads(json.dumps(metrics))
    last = tf.train.CheckpointManager(tf.train.Checkpoint(), str(tmp_path / "run/checkpoints/last"), 10)
    steps = sorted(int(p.rsplit("-", 1)[1]) for p in last.checkpoints)
    per_epoch = manifest["steps"]
    # mid-epoch every 64 steps and at each epoch end, keeping the last 3
    assert steps[-1] == 2 * per_epoch and len(steps) == 3
    assert tf.train.latest_checkpoint(str(tmp_path / "run/checkpoints/best"))
    assert list((tmp_path / "run/tensorboard").iterdir())


def frozen_trainer(tmp_path, lanes=3, steps=4):
    cfg = config(tmp_path, n_sample=2)
    trainer = train.Trainer(cfg, tf.distribute.get_strategy(), N_ITEMS, np.ones(N_ITEMS), lanes, steps)
    trainer.optimizer.apply = lambda grads, active: None  # freeze the weights: only the state moves
    trainer.optimizer.apply_local = lambda *args, **kwargs: None  # (jit_compile dense: its two parts)
    return trainer


def test_state_is_zeroed_exactly_where_reset_is_set(tmp_path):
    trainer = frozen_trainer(tmp_path)
    model = trainer.model
    inputs = np.array([[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]], np.int32)
    reset = np.array([[1, 0, 0, 0], [0, 0, 0, 0], [0, 0, 1, 0]], np.float32)
    block = {"input": tf.constant(inputs), "target": tf.constant(inputs + 1), "reset": tf.constant(reset),
             "weight": tf.ones([3, 4])}
    carried = [tf.random.normal([3, 24], seed=1)]
    state, _ = trainer.train_block(block, carried, tf.constant(0, tf.int64))

    def run(lane, first, start_state):
        s = [start_state]
        for t in range(first, 4):
            _, s = model.step(tf.constant([inputs[lane, t]]), s)
        return s[0].numpy()[0]

    fresh = tf.zeros([1, 24])
    got = state[0].numpy()
    np.testing.assert_allclose(got[0], run(0, 0, fresh), rtol=1e-5, atol=1e-6)  # reset at step 0
    np.testing.assert_allclose(got[1], run(1, 0, carried[0][1:2]), rtol=1e-5, atol=1e-6)  # no reset: carried on
    np.testing.assert_allclose(got[2], run(2, 2, fresh), rtol=1e-5, atol=1e-6)  # reset at step 2: history gone
    assert np.abs(got[1] - run(1, 0, fresh)).max() > 1e-3  # the carried state did matter


def block_losses(trainer, strategy, split_dir, blocks=None):
    state, out = trainer.zero_state(), []
    for i, block in enumerate(distribute_blocks(strategy, split_dir)):
        state, sums = trainer.train_block(block, state, tf.constant(i * trainer.block_steps, tf.int64))
        out.append(sums.numpy())
        if blocks and len(out) == blocks:
            break
    return np.array(out), state


def test_mirrored_two_replicas_follow_the_single_replica_loss_trajectory(shards, tmp_path):
    """Equivalent run = same config on one device: replicas all-gather targets, so the scored columns,
    the samples, the dropout masks (drawn for the global batch) and the summed gradients are the same."""
    cfg = config(tmp_path, model={"layers": [24], "dropout_embedding": 0.2, "dropout_hidden": 0.3})
    single = train.Trainer(cfg, tf.distribute.get_strategy(), N_ITEMS, np.arange(1, N_ITEMS + 1), 8, 8)
    mirrored_strategy, _ = make_strategy("mirrored")  # the 2 logical CPUs of conftest
    assert mirrored_strategy.num_replicas_in_sync == 2
    mirrored = train.Trainer(cfg, mirrored_strategy, N_ITEMS, np.arange(1, N_ITEMS + 1), 8, 8)
    want, _ = block_losses(single, tf.distribute.get_strategy(), str(shards / "train"))
    got, state = block_losses(mirrored, mirrored_strategy, str(shards / "train"))
    np.testing.assert_allclose(got, want, rtol=2e-5)
    # the one device runs its step under XLA (jit_compile auto = dense on a CPU), the replicas the plain
    # graph: sums are reordered, so weights of size ~1 agree to float32 rounding over the block, ~1e-6
    np.testing.assert_allclose(mirrored.model.Wy.numpy(), single.model.Wy.numpy(), rtol=1e-4, atol=1e-5)
    # hidden states survive the gather (checkpoint) / redistribute (resume) round trip
    gathered = mirrored.gather_state(state)
    assert gathered[0].shape == (8, 24)
    again = mirrored.gather_state(mirrored.distribute_state(gathered))
    np.testing.assert_array_equal(again[0].numpy(), gathered[0].numpy())


def test_train_block_compiles_with_xla(shards, tmp_path):
    plain = train.Trainer(config(tmp_path, jit_compile=False), tf.distribute.get_strategy(), N_ITEMS,
                          np.ones(N_ITEMS), 8, 8)
    xla = train.Trainer(config(tmp_path, jit_compile=True), tf.distribute.get_strategy(), N_ITEMS, np.ones(N_ITEMS), 8, 8)
    want, _ = block_losses(plain, tf.distribute.get_strategy(), str(shards / "train"), blocks=3)
    got, _ = block_losses(xla, tf.distribute.get_strategy(), str(shards / "train"), blocks=3)
    block = next(iter(distribute_blocks(tf.distribute.get_strategy(), str(shards / "train"))))
    tf.random.set_seed(0)  # get_compiler_ir runs a seeded op, refused once op determinism is on
    hlo = xla.train_block.experimental_get_compiler_ir(block, xla.zero_state(), tf.constant(0, tf.int64))(stage="hlo")
    assert "HloModule" in hlo
    np.testing.assert_allclose(got, want, rtol=1e-4)


def test_resuming_with_another_config_is_refused(shards, tmp_path):
    cfg = config(tmp_path, epochs=1)
    args = (tf.distribute.get_strategy(), "default", str(shards / "train"), N_ITEMS, np.ones(N_ITEMS))
    train.fit(cfg, *args)
    changed = config(tmp_path, epochs=1, lr=0.05)
    with pytest.raises(train.SbrjobError, match="different model/train config"):
        train.fit(changed, *args)


def test_block_sample_store_trains_exactly_as_per_step_draws(shards, tmp_path, monkeypatch):
    """The block's one-shot sample store must not change the random stream: same losses, same weights."""
    cfg = config(tmp_path, loss="bpr-max", bpreg=1.0)
    stored = train.Trainer(cfg, tf.distribute.get_strategy(), N_ITEMS, np.arange(1, N_ITEMS + 1), 8, 8)
    want, _ = block_losses(stored, tf.distribute.get_strategy(), str(shards / "train"), blocks=3)
    import contextlib

    from sbrjob.losses import NegativeSampler
    monkeypatch.setattr(NegativeSampler, "block_store", lambda self, samples, first: contextlib.nullcontext())
    per_step = train.Trainer(cfg, tf.distribute.get_strategy(), N_ITEMS, np.arange(1, N_ITEMS + 1), 8, 8)
    got, _ = block_losses(per_step, tf.distribute.get_strategy(), str(shards / "train"), blocks=3)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(per_step.model.Wy.numpy(), stored.model.Wy.numpy())
    block = next(iter(distribute_blocks(tf.distribute.get_strategy(), str(shards / "train"))))

    def searchsorted_in_step_loop(trainer):
        graph = trainer.train_block.get_concrete_function(block, trainer.zero_state(),
                                                          tf.constant(0, tf.int64)).graph.as_graph_def()
        return sum(n.op == "UpperBound" for f in graph.library.function if "body" in f.signature.name
                   for n in f.node_def)

    assert searchsorted_in_step_loop(stored) == 0 and searchsorted_in_step_loop(per_step) == 1  # drawn per block


def test_max_steps_caps_training_mid_epoch_and_the_run_counts_as_complete(shards, tmp_path):
    manifest = json.loads((shards / "train" / "manifest.json").read_text())
    assert manifest["blocks"] > 2
    cfg = config(tmp_path, epochs=3, max_steps=10)  # blocks of 8 steps: stops after the 2nd block
    args = (tf.distribute.get_strategy(), "default", str(shards / "train"), N_ITEMS, np.ones(N_ITEMS))
    metrics = train.fit(cfg, *args)
    (epoch,) = metrics["epochs"]
    assert "max_steps" in epoch["stopped"] and metrics["stopped"] == epoch["stopped"]
    layout_weight = sum(float(b["weight"].numpy().sum()) for _, b in
                        zip(range(2), distribute_blocks(tf.distribute.get_strategy(), str(shards / "train"))))
    assert epoch["train_events"] == layout_weight < manifest["pairs"]
    last = tf.train.latest_checkpoint(str(tmp_path / "run/checkpoints/last"))
    assert last.endswith("-16")
    again = train.fit(cfg, *args)  # complete: nothing more is trained
    assert again["epochs"] == metrics["epochs"]
    assert tf.train.latest_checkpoint(str(tmp_path / "run/checkpoints/last")) == last


def test_jit_compile_auto_is_dense_on_cpu_and_falls_back_when_xla_cannot_compile(shards, tmp_path, monkeypatch,
                                                                                 caplog):
    assert not tf.config.list_logical_devices("GPU")
    assert train.jit_choice("auto", True) == "dense" and train.jit_choice(True, True) == "block"
    assert train.jit_choice("dense", True) == "dense" and train.jit_choice(False, True) == "off"
    assert train.jit_choice(True, False) == "off" and train.jit_choice("auto", False) == "off"  # several replicas
    # a run too short to repay the compile (a smoke run) skips it; a forced choice does not
    assert train.jit_choice("auto", True, work=train.DENSE_MIN_WORK - 1) == "off"
    assert train.jit_choice("auto", True, work=train.DENSE_MIN_WORK) == "dense"
    assert train.jit_choice("dense", True, work=1) == "dense"
    short = train.Trainer(config(tmp_path), tf.distribute.get_strategy(), N_ITEMS, np.ones(N_ITEMS), 8, 8,
                          planned_steps=10)
    assert not short.dense_jit and not short.jit
    plain = train.Trainer(config(tmp_path, jit_compile=False), tf.distribute.get_strategy(), N_ITEMS,
                          np.ones(N_ITEMS), 8, 8)
    assert plain.jit is False and plain.dense_jit is False
    dense = train.Trainer(config(tmp_path), tf.distribute.get_strategy(), N_ITEMS, np.ones(N_ITEMS), 8, 8)
    assert dense.dense_jit and not dense.jit and not dense.optimizer.static_shapes
    monkeypatch.setattr(train, "jit_choice", lambda setting, single, work=None: "block")  # as on a GPU
    auto = train.Trainer(config(tmp_path), tf.distribute.get_strategy(), N_ITEMS, np.ones(N_ITEMS), 8, 8)
    assert auto.jit and auto.optimizer.static_shapes
    block = auto._block

    def uncompilable(*args):  # a py_function: XLA refuses it, the plain graph runs it
        tf.py_function(lambda: 0.0, [], tf.float32)
        return block(*args)

    auto._block = uncompilable
    want, _ = block_losses(plain, tf.distribute.get_strategy(), str(shards / "train"), blocks=2)
    with caplog.at_level("WARNING", logger="sbrjob.train"):
        got, _ = block_losses(auto, tf.distribute.get_strategy(), str(shards / "train"), blocks=2)
    assert "XLA cannot compile" in caplog.text and not auto.jit and not auto.optimizer.static_shapes
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_dense_xla_part_falls_back_when_xla_cannot_compile_it(shards, tmp_path, caplog):
    plain = train.Trainer(config(tmp_path, jit_compile=False), tf.distribute.get_strategy(), N_ITEMS,
                          np.ones(N_ITEMS), 8, 8)
    auto = train.Trainer(config(tmp_path), tf.distribute.get_strategy(), N_ITEMS, np.ones(N_ITEMS), 8, 8)
    assert auto.dense_jit
    part = auto._dense_part

    def uncompilable(*args):
        tf.py_function(lambda: 0.0, [], tf.float32)
        return part(*args)

    auto._dense_part = uncompilable
    auto._set_jit("dense")
    auto.train_block = auto._compile_or_fall_back
    want, _ = block_losses(plain, tf.distribute.get_strategy(), str(shards / "train"), blocks=2)
    with caplog.at_level("WARNING", logger="sbrjob.train"):
        got, _ = block_losses(auto, tf.distribute.get_strategy(), str(shards / "train"), blocks=2)
    assert "XLA cannot compile the training step's dense part" in caplog.text and not auto.dense_jit
    np.testing.assert_array_equal(got, want)  # the failed first try moved nothing
    np.testing.assert_array_equal(auto.model.Wy.numpy(), plain.model.Wy.numpy())


@pytest.mark.parametrize("setting", [
    {"loss": "bpr-max", "bpreg": 1.0, "model": {"layers": [24], "dropout_embedding": 0.2, "dropout_hidden": 0.1,
                                                "final_activation": "elu"}},
    {"loss": "xe", "model": {"layers": [24], "input": "embedding", "embedding_dim": 12}},
    {"loss": "softmax", "optimizer": "adam", "lr": 0.01, "model": {"layers": [16], "input": "onehot"}},
], ids=["bpr-max-shared", "xe-embedding", "softmax-onehot-adam"])
def test_dense_xla_part_trains_as_the_plain_graph_and_deterministically(shards, tmp_path, setting):
    """`jit_compile: dense`: XLA fuses the forward pass, loss, gradients and dense updates, the row-sparse
    updates stay outside; same losses and weights as without XLA up to float rounding, and the same
    numbers again for the same config and seed."""
    def run(jit):
        trainer = train.Trainer(config(tmp_path, jit_compile=jit, **dict(setting)), tf.distribute.get_strategy(),
                                N_ITEMS, np.arange(1, N_ITEMS + 1), 8, 8)
        assert trainer.dense_jit == (jit == "dense")
        losses, _ = block_losses(trainer, tf.distribute.get_strategy(), str(shards / "train"), blocks=4)
        slots = [s.numpy() for name in trainer.optimizer.slot_names for s in trainer.optimizer.slots[name]]
        return losses, [v.numpy() for v in trainer.model.trainable_variables], slots, trainer
    want, want_vars, want_slots, _ = run(False)
    got, got_vars, got_slots, dense = run("dense")
    again, again_vars, _, _ = run("dense")
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for a, b in zip(got_vars + got_slots, want_vars + want_slots):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)
    np.testing.assert_array_equal(again, got)
    for a, b in zip(again_vars, got_vars):
        np.testing.assert_array_equal(a, b)
    assert int(dense.optimizer.iterations.numpy()) == 4 * 8
