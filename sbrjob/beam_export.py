"""`sbrjob export --runner beam|dataflow`: the shards of each split written by parallel Beam workers.

The session-parallel lane assignment is sequential (the next session takes the lane that frees up
first) but needs only the session lengths, a few bytes per session: it is computed once
(`export.shard_plan`), then every shard's lanes are filled and written by its own worker
(`batching.fill` on the lanes of that shard, records framed by `tfrecord.write_records`, no
TensorFlow). The shards are byte-identical to the in-process exporter's (tests/test_beam_export.py)
and the manifest is built by the same `export.split_manifest`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import shutil
import tempfile
import time as clock

import numpy as np

from sbrjob import beam_runner, shards, storage, tfrecord
from sbrjob import export as X
from sbrjob.beam_prepare import _read, _write, _join, pack, unpack, _np
from sbrjob.config import JobConfig, save_config
from sbrjob.runs import SPLITS, Prepared, Run, shard_identity

log = logging.getLogger("sbrjob.beam")


def _load_plan(work: str, lanes: int, n_steps: int):
    from sbrjob import batching

    lengths = _np(unpack(_read(_join(work, "lengths.arrow"))), "lengths")
    t = unpack(_read(_join(work, "lanes.arrow")))
    return batching.Plan(lengths=lengths, order=_np(t, "order"), lane=_np(t, "lane"), start=_np(t, "start"),
                         lane_steps=np.zeros(lanes, np.int64), lanes=lanes, n_steps=n_steps)


def write_shard_fn(k: int, *, work: str, lanes: int, n_steps: int, n_shards: int, block_steps: int,
                   dest: str) -> tuple[str, str]:
    """Beam Map: fill and write shard k from the plan and the split's items; returns (name, sha256)."""
    from apache_beam.io.filesystems import FileSystems

    plan = _load_plan(work, lanes, n_steps)
    item = _np(unpack(_read(_join(work, "item.arrow"))), "item")
    name = shards.shard_name(k, n_shards)
    digest = hashlib.sha256()

    class _Tee:  # the sha256 as the bytes go out: no second read of the shard
        def __init__(self, fh):
            self.fh = fh

        def write(self, data: bytes) -> None:
            digest.update(data)
            self.fh.write(data)

    with FileSystems.create(_join(dest, name)) as fh:
        tfrecord.write_records(_Tee(fh), X.shard_records(plan, item, k, n_shards, block_steps))
    return name, digest.hexdigest()


def export_beam(cfg: JobConfig, data: Prepared, splits=SPLITS, runner: str = "beam") -> dict:
    """Write the shards of `splits` as `export.export` does, one Beam worker per shard (all splits in
    one pipeline); returns the manifests."""
    import apache_beam as beam

    t0 = clock.perf_counter()
    options = beam_runner.pipeline_options(cfg, runner, "export")
    run, extra = Run(cfg.output_dir), shard_identity(data, cfg)
    local_tmp = tempfile.mkdtemp(prefix="sbrjob-beam-export-")
    root = beam_runner.work_dir(cfg, runner, local_tmp)
    jobs, plans = [], {}
    try:
        with contextlib.ExitStack() as stack:
            staged = {}
            for split in splits:
                frame = data.load_split(split)
                session, item = frame["session"].to_numpy(), frame["item"].to_numpy()
                del frame
                X._check_items(item, data.n_items, f"{data.data_dir}/{split}.parquet")
                name, order = X.session_order(cfg, split, session)
                lanes, n_shards = X.split_layout(cfg, split)
                plan = X.shard_plan(session, split=split, lanes=lanes, n_shards=n_shards,
                                    block_steps=cfg.export.block_steps, order=order)
                work = _join(root, split)
                # the plan (a few bytes per session) and the items, where every worker reads them
                _write(_join(work, "lengths.arrow"), pack({"lengths": plan.lengths.astype(np.int64)}))
                _write(_join(work, "lanes.arrow"), pack({k: np.asarray(getattr(plan, k), np.int64)
                                                         for k in ("order", "lane", "start")}))
                _write(_join(work, "item.arrow"), pack({"item": item.astype(np.int32)}))
                del item, session
                staged[split] = stack.enter_context(storage.staging_dir(run.split_dir(split)))
                dest = str(staged[split]) if runner != "dataflow" else _join(work, "shards")
                plans[split] = (plan, name, n_shards, dest)
                jobs += [dict(k=k, work=work, lanes=lanes, n_steps=plan.n_steps, n_shards=n_shards,
                              block_steps=cfg.export.block_steps, dest=dest, split=split) for k in range(n_shards)]
            listing = _join(root, "files.json")
            with beam.Pipeline(options=beam_runner.make_options(options)) as p:
                (p | "shards" >> beam.Create(jobs, reshuffle=True)
                   | "write" >> beam.Map(lambda j: (j["split"], *write_shard_fn(**{k: v for k, v in j.items()
                                                                                     if k != "split"})))
                   | "list" >> beam.combiners.ToList()
                   | "keep" >> beam.Map(lambda r: _write(listing, json.dumps(r).encode())))
            results = json.loads(_read(listing))
            out = {}
            for split in splits:
                plan, name, n_shards, dest = plans[split]
                tmp = staged[split]
                mine = sorted((shard, sha) for s, shard, sha in results if s == split)
                if dest != str(tmp):  # Dataflow wrote to gs://: bring the shards into the staged split
                    for shard, _ in mine:
                        (tmp / shard).write_bytes(_read(_join(dest, shard)))
                manifest = X.split_manifest(plan, split=split, n_shards=n_shards, block_steps=cfg.export.block_steps,
                                            extra={**extra, "order": name}, files=dict(mine))
                (tmp / shards.MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
                save_config(cfg, str(tmp))
                storage.publish_dir(tmp, run.split_dir(split), last=shards.MANIFEST)
                out[split] = manifest
    finally:
        shutil.rmtree(local_tmp, ignore_errors=True)
    log.info("export (beam): %d shards of %s in %.1f s", len(jobs), ", ".join(splits), clock.perf_counter() - t0)
    return out
