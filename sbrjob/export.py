"""`sbrjob export`: lay out every split session-parallel and write it as TFRecord shards + manifest.

Each split goes to `output_dir/shards/<split>/`: staged locally, published whole, `manifest.json`
last, so a killed export leaves nothing a reader trusts. A split is rewritten only when its manifest
does not match the prepared data's fingerprint and the export settings (or with `force`).
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np

from sbrjob import batching, shards, storage
from sbrjob.config import JobConfig, join, save_config
from sbrjob.errors import SbrjobError

SPLITS = ("train", "valid", "test")


def export_fingerprint(cfg: JobConfig) -> str:
    """What the shards depend on besides the data: the export section (and the seed when it shuffles)."""
    return cfg.section_fingerprint("export", "seed") if cfg.export.shuffle_sessions else cfg.section_fingerprint("export")


def split_layout(cfg: JobConfig, split: str) -> tuple[int, int]:
    """(lanes, shards) of a split: train uses batch_size/shards, valid and test the eval settings."""
    e = cfg.export
    return (e.batch_size, e.shards) if split == "train" else (e.eval_batch_size, e.eval_shards)


def write_split(session: np.ndarray, item: np.ndarray, dest: str | Path, *, split: str, lanes: int, n_shards: int,
                block_steps: int, order: np.ndarray | None = None, extra: dict | None = None) -> dict:
    """Lay out one split's events and write shards + manifest into the local directory `dest`.

    Returns the manifest. `extra` adds keys (fingerprints, n_items) to it.
    """
    if lanes % n_shards:
        raise SbrjobError(f"{split}: {n_shards} shards must divide {lanes} lanes")
    lay = batching.layout(session, item, lanes, block_steps, order)
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    per_shard = lanes // n_shards
    blocks = lay.steps // block_steps
    files = {}
    for k in range(n_shards):
        rows = slice(k * per_shard, (k + 1) * per_shard)
        records = shards.shard_records({name: getattr(lay, name)[rows] for name in shards.FEATURES}, block_steps)
        name = shards.shard_name(k, n_shards)
        files[name] = shards.write_shard(dest / name, records)
    manifest = {
        "version": shards.FORMAT_VERSION, "split": split,
        "lanes": lanes, "block_steps": block_steps, "shards": n_shards, "lanes_per_shard": per_shard,
        "blocks": blocks, "steps": lay.steps, "sessions": lay.sessions, "events": lay.events,
        "pairs": lay.pairs, "padding": round(lay.padding, 6),
        "lane_steps_min": int(lay.lane_steps.min()), "lane_steps_max": int(lay.lane_steps.max()),
        **(extra or {}), "files": files,
    }
    (dest / shards.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _check_items(item: np.ndarray, n_items: int, where: str) -> None:
    """Item indices must address the vocabulary: a bad one would silently train on the wrong row."""
    if len(item) and (item.min() < 0 or item.max() >= n_items):
        bad = item.min() if item.min() < 0 else item.max()
        raise SbrjobError(f"{where}: item index {bad} outside the vocabulary 0..{n_items - 1}; "
                          "the prepared data is inconsistent: delete it and re-run `sbrjob prepare`")


def _data_identity(data: dict) -> dict:
    """Keys tying shards to one prepared dataset: its config fingerprint, and a hash of its manifest
    (vocabulary size, events and sessions per split), which changes when `sbrjob prepare` is re-run
    on different raw data under the same config."""
    blob = json.dumps(data, sort_keys=True).encode()
    return {"data_fingerprint": data["fingerprint"], "data_manifest_sha256": hashlib.sha256(blob).hexdigest()[:16],
            "n_items": data["n_items"]}


def session_order(cfg: JobConfig, split: str, session: np.ndarray) -> tuple[str, np.ndarray | None]:
    """(name, order) in which a split's sessions enter the lanes.

    Train: oldest first (GRU4Rec), or one permutation per split from the seed. Valid/test: longest
    first, so the lanes finish together and evaluation steps through little padding (on ML-1M-like
    data, 2% instead of 30% at 64 lanes); every session starts from a zero state, so the order of
    sessions cannot change a metric.
    """
    if split != "train":
        return "longest-first", np.argsort(-batching.session_lengths(session), kind="stable")
    if cfg.export.shuffle_sessions:
        n = int(session.max()) + 1 if len(session) else 0
        return "shuffled", np.random.default_rng([cfg.seed, SPLITS.index(split)]).permutation(n)
    return "oldest-first", None


def is_current(split_dir: str, data: dict, cfg: JobConfig) -> bool:
    """True when the split's shards exist, in this format, for this prepared data (its manifest) and
    these export settings."""
    try:
        m = shards.read_manifest(split_dir)
    except SbrjobError:
        return False
    want = {**_data_identity(data), "export_fingerprint": export_fingerprint(cfg)}
    if any(m.get(k) != v for k, v in want.items()) or "order" not in m:  # shards from before the order key
        return False
    return set(m["files"]) <= set(storage.list_files(split_dir))


def export(cfg: JobConfig, force: bool = False) -> dict:
    """Export every split whose shards are missing or stale (all with `force`); returns manifests per split."""
    from sbrjob import prepare

    data_dir = prepare.ensure_prepared(cfg)
    data = prepare.read_manifest(data_dir)
    if data is None:
        raise SbrjobError(f"{data_dir}: no prepared data (manifest.json missing); run `sbrjob prepare`")
    extra = {**_data_identity(data), "export_fingerprint": export_fingerprint(cfg)}
    out = {}
    for split in SPLITS:
        split_dir = join(cfg.shards_dir, split)
        if not force and is_current(split_dir, data, cfg):
            out[split] = shards.read_manifest(split_dir)
            continue
        frame = prepare.load_split(data_dir, split)
        _check_items(frame["item"].to_numpy(), data["n_items"], join(data_dir, f"{split}.parquet"))
        name, order = session_order(cfg, split, frame["session"].to_numpy())
        lanes, n_shards = split_layout(cfg, split)
        with storage.staging_dir(split_dir) as tmp:
            out[split] = write_split(frame["session"].to_numpy(), frame["item"].to_numpy(), tmp, split=split,
                                     lanes=lanes, n_shards=n_shards, block_steps=cfg.export.block_steps,
                                     order=order, extra={**extra, "order": name})
            save_config(cfg, str(tmp))
            storage.publish_dir(tmp, split_dir, last=shards.MANIFEST)
    return out


def ensure_exported(cfg: JobConfig, force: bool = False) -> dict:
    """Shards for every split, current with the config: prepares and exports what is missing or stale.

    `force` re-runs both prepare and export (`sbrjob train --reexport`).
    """
    if force:
        from sbrjob import prepare

        prepare.ensure_prepared(cfg, force=True)
    return export(cfg, force=force)


def wait_for_export(cfg: JobConfig, timeout_s: float = 3600.0, poll_s: float = 2.0) -> dict:
    """Workers other than the chief read the chief's shards and never write them: two workers
    publishing the same split at once could interleave. Waits until every split is current."""
    from sbrjob import prepare

    deadline = time.monotonic() + timeout_s
    while True:
        data = prepare.read_manifest(cfg.data_dir)
        if data is not None and data.get("fingerprint") == prepare.data_fingerprint(cfg):
            dirs = {split: join(cfg.shards_dir, split) for split in SPLITS}
            if all(is_current(d, data, cfg) for d in dirs.values()):
                return {split: shards.read_manifest(d) for split, d in dirs.items()}
        if time.monotonic() > deadline:
            raise SbrjobError(f"{cfg.shards_dir}: the chief worker did not publish current shards within "
                              f"{timeout_s:.0f} s; check the chief's log, or run `sbrjob export` before the job")
        time.sleep(poll_s)
