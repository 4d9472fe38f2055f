"""TFRecord shards: round trip, manifest and corruption checks, per-replica reading under tf.distribute."""

import json

import numpy as np
import pytest
import tensorflow as tf

from sbrjob import batching, export, shards
from sbrjob.errors import SbrjobError

LANES, T = 8, 4


def split_events(n_sessions=60, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 10, n_sessions)
    session = np.repeat(np.arange(n_sessions), lengths)
    return session, rng.integers(0, 500, session.size).astype(np.int32)


def write(tmp_path, name="train", lanes=LANES, n_shards=2, seed=0, n_sessions=60):
    session, item = split_events(n_sessions, seed=seed)
    dest = tmp_path / name
    manifest = export.write_split(session, item, dest, split=name, lanes=lanes, n_shards=n_shards, block_steps=T)
    return str(dest), manifest, batching.layout(session, item, lanes, T)


def blocks_of(lay, lanes=slice(None)):
    """Expected elements: the layout cut into [lanes, T] blocks, reset/weight as float32."""
    out = []
    for r in range(lay.steps // T):
        cols = slice(r * T, (r + 1) * T)
        out.append({"input": lay.input[lanes, cols], "target": lay.target[lanes, cols],
                    "reset": lay.reset[lanes, cols].astype(np.float32),
                    "weight": lay.weight[lanes, cols].astype(np.float32)})
    return out


def assert_blocks_equal(got, expected):
    assert len(got) == len(expected) > 0
    for g, e in zip(got, expected):
        for k in shards.FEATURES:
            assert g[k].dtype == e[k].dtype and g[k].shape == e[k].shape, k
            np.testing.assert_array_equal(g[k], e[k])


def numpy_blocks(ds):
    return [{k: v.numpy() for k, v in b.items()} for b in ds]


@pytest.mark.parametrize("n_sessions", [60, 300])  # fewer / more blocks than one read batch
def test_round_trip_all_shards_and_single_shards(tmp_path, n_sessions):
    split_dir, manifest, lay = write(tmp_path, n_sessions=n_sessions)
    assert manifest["blocks"] == lay.steps // T and manifest["lanes_per_shard"] == LANES // 2
    assert_blocks_equal(numpy_blocks(shards.block_dataset(split_dir)), blocks_of(lay))
    assert_blocks_equal(numpy_blocks(shards.block_dataset(split_dir, [1])), blocks_of(lay, slice(4, 8)))
    spec = shards.block_dataset(split_dir, [0]).element_spec
    assert spec["input"].dtype == tf.int32 and spec["reset"].dtype == tf.float32
    assert spec["weight"].shape == (LANES // 2, T)  # static shapes, as XLA/TPU want


def test_record_encoding_is_the_deterministic_tf_example():
    rng = np.random.default_rng(4)
    block = {"input": rng.integers(0, 2**31 - 1, (3, 5)).astype(np.int32),
             "target": rng.integers(0, 9, (3, 5)).astype(np.int32),
             "reset": (rng.random((3, 5)) < 0.3).astype(np.uint8), "weight": np.ones((3, 5), np.uint8)}
    feature = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.astype(shards.FEATURES[k]).tobytes()]))
               for k, v in block.items()}
    expected = tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)
    assert shards.encode_block(block) == expected


def test_read_manifest_matches_written_one(tmp_path):
    split_dir, manifest, _ = write(tmp_path)
    assert shards.read_manifest(split_dir) == manifest
    assert sorted(manifest["files"]) == ["part-00000-of-00002.tfrecord", "part-00001-of-00002.tfrecord"]
    for name, digest in manifest["files"].items():
        assert shards.file_sha256(f"{split_dir}/{name}") == digest


def edit_manifest(split_dir, reseal=True, **changes):
    path = f"{split_dir}/manifest.json"
    m = json.loads(open(path).read())
    m.update(changes)
    for k, v in changes.items():
        if v is None:
            del m[k]
    open(path, "w").write(json.dumps(shards.sealed(m) if reseal else m))


@pytest.mark.parametrize("change,message", [
    ({"version": 99}, "format version 99"),
    ({"pairs": None}, "lacks pairs"),
    ({"shards": 3}, "expected"),
])
def test_manifest_checks(tmp_path, change, message):
    split_dir, _, _ = write(tmp_path)
    edit_manifest(split_dir, **change)
    with pytest.raises(SbrjobError, match=message):
        shards.read_manifest(split_dir)


def test_hand_edited_manifest_is_refused(tmp_path):
    split_dir, manifest, _ = write(tmp_path)
    edit_manifest(split_dir, reseal=False, block_steps=manifest["block_steps"] * 2)
    with pytest.raises(SbrjobError, match="manifest was edited after export .*run `sbrjob export --force`"):
        shards.read_manifest(split_dir)


def test_missing_or_garbled_manifest(tmp_path):
    with pytest.raises(SbrjobError, match="no manifest"):
        shards.read_manifest(str(tmp_path / "nothing"))
    split_dir, _, _ = write(tmp_path)
    (tmp_path / "train" / "manifest.json").write_text("{not json")
    with pytest.raises(SbrjobError, match="not valid JSON"):
        shards.read_manifest(split_dir)


def test_flipped_bytes_detected_naming_the_shard(tmp_path):
    split_dir, _, _ = write(tmp_path)
    path = tmp_path / "train" / "part-00001-of-00002.tfrecord"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    shards.block_dataset(split_dir, [0])  # the intact shard still reads
    with pytest.raises(SbrjobError, match=r"part-00001-of-00002\.tfrecord: shard corrupted"):
        shards.block_dataset(split_dir)


def test_deleted_shard_detected_naming_it(tmp_path):
    split_dir, _, _ = write(tmp_path)
    (tmp_path / "train" / "part-00000-of-00002.tfrecord").unlink()
    with pytest.raises(SbrjobError, match=r"part-00000-of-00002\.tfrecord: shard missing"):
        shards.block_dataset(split_dir)


def test_default_strategy_gets_the_whole_batch(tmp_path):
    split_dir, _, lay = write(tmp_path)
    ds = shards.distribute_blocks(tf.distribute.get_strategy(), split_dir)
    assert_blocks_equal(numpy_blocks(ds), blocks_of(lay))


def test_block_pipelines_keep_step_order_and_run_without_the_autotune_model(tmp_path):
    # the autotune thread of TF 2.21 made a finished iterator's teardown wait out its sleep (~30 s
    # between epochs); the pipeline must not start it, in training and in evaluation alike
    split_dir, _, _ = write(tmp_path)
    ctx = tf.distribute.InputContext(1, 0, 1)
    for ds in (shards.block_dataset(split_dir), shards.pipeline_dataset(split_dir, ctx)):
        assert ds.options().deterministic is True
        assert ds.options().autotune.enabled is False


@pytest.mark.parametrize("n_shards", [2, 1])
def test_mirrored_each_replica_gets_its_lanes_in_step_order(tmp_path, n_shards):
    split_dir, manifest, lay = write(tmp_path, n_shards=n_shards, n_sessions=300)
    assert manifest["blocks"] > shards.READ_BATCH and manifest["blocks"] % shards.READ_BATCH
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    assert strategy.num_replicas_in_sync == 2
    got = [[], []]
    for element in shards.distribute_blocks(strategy, split_dir):
        for replica, value in enumerate(strategy.experimental_local_results(element)):
            got[replica].append({k: v.numpy() for k, v in value.items()})
    assert_blocks_equal(got[0], blocks_of(lay, slice(0, 4)))
    assert_blocks_equal(got[1], blocks_of(lay, slice(4, 8)))


def test_multi_worker_pipeline_reads_only_its_own_shards(tmp_path):
    # 2 workers x 2 replicas over 4 shards of 2 lanes: worker 1 serves replicas 2 and 3.
    split_dir, _, lay = write(tmp_path, n_shards=4, n_sessions=300)
    for k in (0, 1):  # worker 0's shards: worker 1 must not need them
        (tmp_path / "train" / shards.shard_name(k, 4)).unlink()
    ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=4)
    elements = numpy_blocks(shards.pipeline_dataset(split_dir, ctx))
    expected = [b for pair in zip(blocks_of(lay, slice(4, 6)), blocks_of(lay, slice(6, 8))) for b in pair]
    assert_blocks_equal(elements, expected)  # round robin: replica 2, replica 3, replica 2, ...


def test_replica_count_that_does_not_divide_the_layout_is_refused(tmp_path):
    split_dir, manifest, _ = write(tmp_path, lanes=6, n_shards=2)
    with pytest.raises(SbrjobError, match="set export.batch_size to a multiple of 4"):
        shards.check_replicas(manifest, replicas=4)
    ctx = tf.distribute.InputContext(num_input_pipelines=3, input_pipeline_id=0, num_replicas_in_sync=3)
    with pytest.raises(SbrjobError, match="set export.shards to a multiple of 3"):
        shards.pipeline_dataset(split_dir, ctx)
    eval_dir, eval_manifest, _ = write(tmp_path, name="valid", lanes=6, n_shards=1)
    with pytest.raises(SbrjobError, match="set export.eval_batch_size to a multiple of 4"):
        shards.check_replicas(eval_manifest, replicas=4)
