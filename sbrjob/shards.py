"""The shard format, its manifest, and the tf.data reader that hands each replica its own lanes.

A split directory holds `part-KKKKK-of-NNNNN.tfrecord` files and `manifest.json` (written last).
Shard k holds lanes [k*lanes_per_shard, (k+1)*lanes_per_shard) of the global batch; its record r is
block r (steps r*T .. r*T+T-1) of those lanes: a `tf.train.Example` whose features `input`,
`target` (little-endian int32) and `reset`, `weight` (uint8) are raw bytes of `[lanes, T]` arrays.
Raw bytes keep parsing to one decode per feature per block, so the reader does little per step.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Iterable

import numpy as np

from sbrjob import storage
from sbrjob.config import join
from sbrjob.errors import SbrjobError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
FEATURES = {"input": "<i4", "target": "<i4", "reset": "u1", "weight": "u1"}  # stored dtypes
_REQUIRED = ("version", "split", "lanes", "block_steps", "shards", "lanes_per_shard", "blocks", "steps",
             "events", "pairs", "padding", "files")


def shard_name(k: int, shards: int) -> str:
    return f"part-{k:05d}-of-{shards:05d}.tfrecord"


# ---------------------------------------------------------------- writing


def _header(number: int, length: int) -> bytes:
    """Tag and length of a length-delimited protobuf field (wire type 2)."""
    out = bytearray()
    for n in (number << 3 | 2, length):
        while n >= 0x80:
            out.append(n & 0x7F | 0x80)
            n >>= 7
        out.append(n)
    return bytes(out)


@functools.lru_cache(maxsize=64)
def _feature_prefix(name: str, size: int) -> bytes:
    """Everything before a feature's raw bytes: map entry > key, Feature > bytes_list > value."""
    value = _header(1, size)  # BytesList.value
    feature = _header(1, len(value) + size)  # Feature.bytes_list
    body = _header(1, len(name)) + name.encode() + _header(2, len(feature) + len(value) + size)  # entry key, value
    return _header(1, len(body) + len(feature) + len(value) + size) + body + feature + value  # Features.feature


def encode_block(arrays: dict[str, np.ndarray]) -> bytes:
    """One record: the `[lanes, T]` arrays of one block as a serialized tf.train.Example.

    Encoded directly, keys sorted as `SerializeToString(deterministic=True)` does: the same blocks
    give byte-identical shards, and the framing of a block shape is computed once, so a record
    costs a few microseconds instead of building protobuf objects.
    """
    parts = []
    for name, dtype in sorted(FEATURES.items()):
        data = np.ascontiguousarray(arrays[name], dtype).tobytes()
        parts += [_feature_prefix(name, len(data)), data]
    features = b"".join(parts)
    return _header(1, len(features)) + features  # Example.features


def shard_records(lay_arrays: dict[str, np.ndarray], block_steps: int) -> Iterable[bytes]:
    """The records of one shard from its `[lanes, steps]` arrays, block after block."""
    lanes, steps = lay_arrays["input"].shape
    blocks = steps // block_steps
    # block-major copies ([blocks, lanes, T], C order): each record is then a contiguous slice
    by_block = {name: np.ascontiguousarray(np.asarray(a, FEATURES[name]).reshape(lanes, blocks, block_steps)
                                           .transpose(1, 0, 2)) for name, a in lay_arrays.items()}
    for r in range(blocks):
        yield encode_block({name: a[r] for name, a in by_block.items()})


def write_shard(path: str | Path, records: Iterable[bytes]) -> str:
    """Write records to a local TFRecord file; returns its sha256 (hex)."""
    import tensorflow as tf

    with tf.io.TFRecordWriter(str(path)) as writer:
        for rec in records:
            writer.write(rec)
    return file_sha256(path)


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------- manifest


def manifest_digest(manifest: dict) -> str:
    """sha256 of a manifest without its own `digest` key, so that a hand edit is detected."""
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def sealed(manifest: dict) -> dict:
    return {**manifest, "digest": manifest_digest(manifest)}


def read_manifest(split_dir: str) -> dict:
    """The split's manifest, checked for format version and completeness (SbrjobError otherwise)."""
    path = join(split_dir, MANIFEST)
    try:
        manifest = json.loads(storage.read_text(path))
    except FileNotFoundError:
        raise SbrjobError(f"{path}: no manifest (export missing or interrupted); run `sbrjob export`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SbrjobError(f"{path}: manifest is not valid JSON ({err}); run `sbrjob export --force`") from None
    if not isinstance(manifest, dict):
        raise SbrjobError(f"{path}: manifest is not a JSON object; run `sbrjob export --force`")
    if manifest.get("version") != FORMAT_VERSION:
        raise SbrjobError(f"{path}: shard format version {manifest.get('version')!r}, this sbrjob reads "
                          f"{FORMAT_VERSION}; run `sbrjob export --force`")
    missing = [k for k in _REQUIRED if k not in manifest]
    if missing:
        raise SbrjobError(f"{path}: manifest lacks {', '.join(missing)}; run `sbrjob export --force`")
    names = [shard_name(k, manifest["shards"]) for k in range(manifest["shards"])]
    if sorted(manifest["files"]) != names:
        raise SbrjobError(f"{path}: manifest lists shards {sorted(manifest['files'])}, expected {names}; "
                          "run `sbrjob export --force`")
    if manifest.get("digest") != manifest_digest(manifest):
        raise SbrjobError(f"{path}: manifest was edited after export (or written by an older sbrjob): its digest "
                          "does not match; run `sbrjob export --force`")
    return manifest


def shard_paths(split_dir: str, manifest: dict, shard_ids: Iterable[int]) -> list[str]:
    """Local paths of the given shards after checking each one's sha256 against the manifest.

    gs:// shards are downloaded first (only the ones asked for). A missing or altered shard is an
    SbrjobError naming it.
    """
    out = []
    for k in shard_ids:
        if not 0 <= k < manifest["shards"]:
            raise SbrjobError(f"{split_dir}: no shard {k} (the split has {manifest['shards']})")
        name = shard_name(k, manifest["shards"])
        url = join(split_dir, name)
        local = storage.local_copy(url)  # gs://: SbrjobError naming the shard when it is not there
        if not Path(local).is_file():
            raise SbrjobError(f"{url}: shard missing; run `sbrjob export --force`")
        if file_sha256(local) != manifest["files"][name]:
            raise SbrjobError(f"{url}: shard corrupted (sha256 differs from the manifest); "
                              "run `sbrjob export --force`")
        out.append(local)
    return out


# ---------------------------------------------------------------- reading


READ_BATCH = 16  # records parsed per tf.data op: fewer per-element ops, same blocks out


def _parser(lanes: int, block_steps: int):
    import tensorflow as tf

    spec = {name: tf.io.FixedLenFeature([], tf.string) for name in FEATURES}
    tf_dtype = {"<i4": tf.int32, "u1": tf.uint8}

    def parse(records):  # a batch of records -> dict of [n, lanes, T]
        raw = tf.io.parse_example(records, spec)
        out = {}
        for name, dtype in FEATURES.items():
            x = tf.reshape(tf.io.decode_raw(raw[name], tf_dtype[dtype], little_endian=True), [-1, lanes, block_steps])
            out[name] = x if dtype == "<i4" else tf.cast(x, tf.float32)
        return out

    return parse


def _block_batches(split_dir: str, shard_ids: Iterable[int] | None, manifest: dict | None):
    """Runs of up to READ_BATCH consecutive blocks: dicts of `[n, lanes of the shards, T]`."""
    import tensorflow as tf

    manifest = manifest or read_manifest(split_dir)
    shard_ids = list(range(manifest["shards"])) if shard_ids is None else list(shard_ids)
    if not shard_ids:
        raise SbrjobError(f"{split_dir}: no shards selected")
    paths = shard_paths(split_dir, manifest, shard_ids)
    parse = _parser(manifest["lanes_per_shard"], manifest["block_steps"])
    per_shard = [tf.data.TFRecordDataset(p).batch(READ_BATCH).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
                 for p in paths]
    ds = per_shard[0]
    if len(per_shard) > 1:  # record r of every shard is block r of its lanes: put the lanes side by side
        ds = tf.data.Dataset.zip(tuple(per_shard)).map(
            lambda *runs: {name: tf.concat([run[name] for run in runs], axis=1) for name in FEATURES},
            num_parallel_calls=tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.deterministic = True  # step order is the data: parallel maps must never reorder blocks
    # No autotuning model: this pipeline only parses ready blocks, and TF 2.21's autotune thread made
    # each finished iterator's teardown wait out its sleep (up to ~30 s per epoch and per evaluation)
    options.autotune.enabled = False
    return ds.with_options(options)


def block_dataset(split_dir: str, shard_ids: Iterable[int] | None = None, manifest: dict | None = None):
    """tf.data.Dataset of blocks in step order: the given shards' lanes side by side (shard order).

    Each element is a dict: `input`, `target` int32 and `reset`, `weight` float32, all
    `[len(shard_ids) * lanes_per_shard, T]`. Default: all shards (the whole global batch).
    """
    import tensorflow as tf

    return _block_batches(split_dir, shard_ids, manifest).unbatch().prefetch(tf.data.AUTOTUNE)


def check_layout(lanes: int, shards: int, replicas: int, workers: int = 1,
                 keys: tuple[str, str] = ("export.batch_size", "export.shards"), then: str = "") -> None:
    """Refuse `lanes` lanes in `shards` shards that `replicas` replicas on `workers` workers cannot
    share lane for lane (each replica a fixed slice of lanes, each worker whole shards)."""
    lanes_key, shards_key = keys
    if lanes % replicas:
        raise SbrjobError(f"{lanes_key} {lanes}: {replicas} replicas cannot get equal lanes; set {lanes_key} "
                          f"to a multiple of {replicas}{then}")
    if shards % workers:
        raise SbrjobError(f"{shards_key} {shards}: {workers} workers cannot each read whole shards; set "
                          f"{shards_key} to a multiple of {workers}{then}")
    if replicas % workers:
        raise SbrjobError(f"{replicas} replicas are not spread evenly over {workers} workers")


def check_replicas(manifest: dict, replicas: int, pipelines: int = 1) -> None:
    """`check_layout` for exported shards."""
    keys = ("export.batch_size", "export.shards") if manifest["split"] == "train" else \
        ("export.eval_batch_size", "export.eval_shards")
    check_layout(manifest["lanes"], manifest["shards"], replicas, pipelines, keys,
                 then=f" and re-run `sbrjob export` ({manifest['split']} shards)")


def pipeline_dataset(split_dir: str, input_context, manifest: dict | None = None):
    """The blocks of one input pipeline (worker), one element per local replica per block.

    The worker reads only its own shards; their lanes are cut into equal contiguous groups, one per
    local replica, emitted in replica order for each block, which is how tf.distribute deals the
    elements of a per-worker dataset out to its replicas (round robin).
    """
    import tensorflow as tf

    manifest = manifest or read_manifest(split_dir)
    replicas, pipelines = input_context.num_replicas_in_sync, input_context.num_input_pipelines
    check_replicas(manifest, replicas, pipelines)
    per_worker = manifest["shards"] // pipelines
    first = input_context.input_pipeline_id * per_worker
    lanes = manifest["lanes"] // replicas
    shape = [-1, lanes, manifest["block_steps"]]  # [blocks * local replicas, lanes, T]: block-major
    ds = _block_batches(split_dir, range(first, first + per_worker), manifest)
    ds = ds.map(lambda run: {k: tf.reshape(v, shape) for k, v in run.items()})
    return ds.unbatch().prefetch(tf.data.AUTOTUNE)


def distribute_blocks(strategy, split_dir: str):
    """A distributed dataset giving every replica its own fixed lanes, block by block in step order.

    Replica i (global index, workers in order) gets lanes [i*B/N, (i+1)*B/N) of the global batch.
    Works with the default strategy, MirroredStrategy, MultiWorkerMirroredStrategy and TPUStrategy.
    """
    manifest = read_manifest(split_dir)
    check_replicas(manifest, strategy.num_replicas_in_sync)
    return strategy.distribute_datasets_from_function(lambda ctx: pipeline_dataset(split_dir, ctx, manifest))
