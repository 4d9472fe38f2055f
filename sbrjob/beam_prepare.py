"""`sbrjob prepare --runner beam|dataflow`: the prepare stage as Apache Beam pipelines.

Same config, same outputs as prepare.py (tests/test_beam_prepare.py compares them byte for byte).
The work that grows with the log runs in parallel on Beam workers, the rest on compact data:

1. read: every input is cut into line-aligned chunks (`beam.chunk_mb`; compressed files and
   Parquet are one chunk), each parsed by the in-process readers, with the same bad-line rules; a
   bad line is reported with its file and line in the file (the first one of the file wins).
   Events are shuffled into `beam.buckets` buckets by a hash of their user or session key.
2. sessionize: per bucket, the in-process functions (`prepare.sessionize`, duplicates, repeats,
   `min_rating`) on whole users/sessions; each bucket is written to the work directory.
3. filter rounds (split.scheme days/fraction): `filter.last_days` and then the fixed point of
   `min_session_length` / `min_item_support`, one pipeline per round: per bucket the session
   length pass, the item supports summed over all buckets (a global combine, a few bytes per
   item), then per bucket the support pass with those supports as a side input. Rounds run until
   one removes nothing; their count is `filter_rounds` in stats.json, as in-process.
4. publish: the filtered buckets are put in session-key order and cut into splits, the vocabulary,
   Parquet files, stats and manifest written by `prepare.write_prepared` (one writer: the run
   directory contract has one Parquet file per split).

Intermediate data travels as Arrow IPC bytes (no pickled arrays); nothing here imports TensorFlow.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import math
import os
import re
import shutil
import tempfile
import time as clock
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sbrjob import beam_runner, storage
from sbrjob import prepare as P
from sbrjob.config import JobConfig
from sbrjob.errors import SbrjobError
from sbrjob.readers import Events, input_path, read_events

log = logging.getLogger("sbrjob.beam")
SPLIT_KEYS = ("path", "valid_path", "test_path")  # data.* of the train / valid / test input (scheme given)


# ---------------------------------------------------------------- packing arrays (Arrow IPC, no pickle)


def pack(columns: dict[str, np.ndarray]) -> bytes:
    batch = pa.record_batch({k: pa.array(v, pa.string()) if v.dtype == object else pa.array(v)
                             for k, v in columns.items()})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema) as writer:
        writer.write_batch(batch)
    return sink.getvalue().to_pybytes()


def unpack(data: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(data)).read_all()


def _np(table: pa.Table, name: str) -> np.ndarray:
    col = table.column(name)
    if pa.types.is_string(col.type) or pa.types.is_large_string(col.type):
        return np.asarray(col.to_numpy(zero_copy_only=False), dtype=object)
    return col.to_numpy()


def _write(path: str, data: bytes) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as fh:
        fh.write(data)


def _read(path: str) -> bytes:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as fh:
        return fh.read()


def _list(pattern: str) -> list[str]:
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def _join(base: str, name: str) -> str:
    return f"{base.rstrip('/')}/{name}"


# ---------------------------------------------------------------- what the inputs are


@dataclasses.dataclass(frozen=True)
class Kinds:
    """How keys and items compare, as the in-process readers code them: integer ids numerically,
    string ids as text (which decides the order of ties and of sessions)."""

    key_numeric: bool
    item_numeric: bool
    keyed_by: str  # "session" or "user"


def input_kinds(cfg: JobConfig) -> Kinds:
    d = cfg.data
    if d.format in ("movielens", "sample"):
        return Kinds(True, True, "user")
    if d.format in ("yoochoose", "gru4rec"):
        return Kinds(True, True, "session")
    key = d.columns.get("session") or d.columns.get("user")
    keyed_by = "session" if "session" in d.columns else "user"
    if Path(str(d.path)).name.lower().endswith((".parquet", ".pq")):
        schema = pq.read_schema(_local(d.path))
        return Kinds(pa.types.is_integer(schema.field(key).type), pa.types.is_integer(schema.field(d.columns["item"]).type),
                     keyed_by)
    return Kinds(False, False, keyed_by)


def _local(path: str) -> str:
    return storage.local_copy(path) if storage.is_remote(path) else path


def _inputs(cfg: JobConfig) -> list[tuple[int, str, str]]:
    """(split index, config attribute, path) of each input file, in the in-process order."""
    if cfg.split.scheme != "given":
        return [(0, "path", input_path(cfg.data))]
    return [(i, attr, getattr(cfg.data, attr)) for i, attr in enumerate(SPLIT_KEYS) if getattr(cfg.data, attr)]


def _has_header(cfg: JobConfig, path: str) -> bool:
    name = Path(path).name
    return cfg.data.format in ("gru4rec", "table") or (cfg.data.format == "movielens" and ".csv" in name)


def plan_chunks(cfg: JobConfig, chunk_bytes: Optional[int] = None) -> list[dict]:
    """Line-aligned byte ranges of every input; whole files where they cannot be cut."""
    chunk_bytes = chunk_bytes or int(cfg.beam.chunk_mb * 1e6)
    specs = []
    for split, attr, path in _inputs(cfg):
        base = {"split": split, "attr": attr, "path": path}
        name = path.lower()
        whole = (cfg.data.format == "sample" or storage.is_remote(path) or name.endswith((".gz", ".bz2", ".parquet", ".pq"))
                 or not os.path.isfile(path))
        size = 0 if whole else os.path.getsize(path)
        n = max(1, math.ceil(size / chunk_bytes)) if size else 1
        if whole or n == 1:
            specs.append({**base, "k": 0, "start": None, "end": None, "header": ""})
            continue
        with open(path, "rb") as fh:
            header = fh.readline() if _has_header(cfg, path) else b""
            cuts = [0]
            for i in range(1, n):
                fh.seek(max(i * size // n, len(header)))
                fh.readline()  # to the start of the next line
                pos = fh.tell()
                if cuts[-1] < pos < size:
                    cuts.append(pos)
        cuts.append(size)
        for k, (s, e) in enumerate(zip(cuts[:-1], cuts[1:])):
            specs.append({**base, "k": k, "start": s, "end": e,
                          "header": base64.b64encode(header if s else b"").decode()})
    return specs


# ---------------------------------------------------------------- 1. read (one chunk)


_LINE = re.compile(r", line (\d+):")
_EMPTY = re.compile(r"no (valid )?data lines(?: \((\d+) bad lines skipped\))?")


def _relocate(message: str, tmp: str, spec: dict) -> str:
    """A reader's message about the chunk file, told about the real file and its real line."""
    message = message.replace(tmp, spec["path"])
    m = _LINE.search(message)
    if m is None or not spec["start"]:
        return message
    with open(spec["path"], "rb") as fh:  # lines before the chunk: counted only when there is an error
        before = fh.read(spec["start"]).count(b"\n")
    line = before + int(m.group(1)) - (1 if spec["header"] else 0)
    return message[:m.start()] + f", line {line}:" + message[m.end():]


def _read_chunk(spec: dict, data_cfg) -> tuple[Optional[Events], dict]:
    """The chunk's events (None when it has none) and its record: rows, bad lines or the error."""
    meta = {"split": spec["split"], "k": spec["k"], "rows": 0, "bad": 0, "error": None}
    tmp = None
    try:
        if spec["start"] is None:
            ev = read_events(data_cfg, getattr(data_cfg, spec["attr"]) if spec["attr"] != "path" else None)
        else:
            folder = tempfile.mkdtemp(prefix="sbrjob-chunk-")
            tmp = os.path.join(folder, f"c{spec['k']}-{Path(spec['path']).name}")
            with open(spec["path"], "rb") as src, open(tmp, "wb") as out:
                out.write(base64.b64decode(spec["header"]))
                src.seek(spec["start"])
                remaining = spec["end"] - spec["start"]
                while remaining > 0:
                    block = src.read(min(remaining, 1 << 24))
                    if not block:
                        break
                    out.write(block)
                    remaining -= len(block)
            ev = read_events(dataclasses.replace(data_cfg, **{spec["attr"]: tmp}), tmp)
    except SbrjobError as err:
        message = _relocate(str(err), tmp, spec) if tmp else str(err)
        empty = _EMPTY.search(message)
        if empty:  # a chunk without data lines: only an error when the whole file has none
            meta["bad"] = int(empty.group(2) or 0)
            return None, meta
        meta["error"] = message
        return None, meta
    finally:
        if tmp:
            shutil.rmtree(os.path.dirname(tmp), ignore_errors=True)
    meta.update(rows=len(ev), bad=ev.bad_lines, has_rating=ev.rating is not None)
    return ev, meta


def _values(ev: Events, kinds: Kinds) -> dict[str, np.ndarray]:
    """The events with their original ids (ints or strings), comparable across chunks."""
    key = ev.key if ev.key_ids is None else np.asarray(ev.key_ids, dtype=object)[ev.key]
    ids = ev.item_ids.astype(np.int64) if kinds.item_numeric else np.asarray(ev.item_ids, dtype=object)
    out = {"key": key, "item": ids[ev.item], "time": ev.time}
    if ev.rating is not None:
        out["rating"] = ev.rating
    return out


def bucket_of(key: np.ndarray, buckets: int) -> np.ndarray:
    """A stable hash of the key (the same in every process) into 0..buckets-1."""
    return (pd.util.hash_array(np.asarray(key)) % np.uint64(buckets)).astype(np.int64)


def _bucket_parts(cols: dict[str, np.ndarray], buckets: int):
    b = bucket_of(cols["key"], buckets)
    order = np.argsort(b, kind="stable")
    sb = b[order]
    starts = np.flatnonzero(np.r_[True, sb[1:] != sb[:-1]])
    ends = np.r_[starts[1:], len(sb)]
    for s, e in zip(starts, ends):
        rows = order[s:e]
        yield int(sb[s]), {k: v[rows] for k, v in cols.items()}


def read_chunk_fn(spec: dict, data_cfg, kinds: Kinds, buckets: int, work: str):
    """Beam FlatMap: ((split, bucket), packed events) for every bucket the chunk touches."""
    ev, meta = _read_chunk(spec, data_cfg)
    _write(_join(work, f"read/{spec['split']}-{spec['k']:06d}.json"), json.dumps(meta).encode())
    if ev is None or not len(ev):
        return
    cols = _values(ev, kinds)
    del ev
    for b, part in _bucket_parts(cols, buckets):
        yield (spec["split"], b), pack(part)


# ---------------------------------------------------------------- 2. sessionize (one bucket)


def _unique(values: np.ndarray) -> np.ndarray:
    return pd.unique(values) if values.dtype == object else np.unique(values)


def _to_log(key: np.ndarray, item: np.ndarray, t: np.ndarray, kinds: Kinds, gap) -> P.Log:
    """The bucket's events sessionized exactly as in-process: local codes keep the order of the ids."""
    key_ids = None
    if kinds.key_numeric:
        k = key.astype(np.int64)
    else:
        codes, uniq = pd.factorize(key, sort=True)
        k, key_ids = codes.astype(np.int64), np.asarray(uniq, dtype=object)
    codes, uniq = pd.factorize(item, sort=True)
    ids = np.asarray(uniq, dtype=object) if not kinds.item_numeric else np.asarray(uniq, dtype=np.int64)
    ev = Events(key=k, item=codes.astype(np.int32), item_ids=ids, time=t, rating=None, keyed_by=kinds.keyed_by,
                key_ids=key_ids)
    return P.sessionize(ev, gap)


def _log_columns(log: P.Log) -> dict[str, np.ndarray]:
    """A bucket's sessions as columns with original ids: key and ordinal per row, item, time."""
    o = log.origin
    key = o.key if o.key_ids is None else np.asarray(o.key_ids, dtype=object)[o.key]
    out = {"session": log.session.astype(np.int32), "key": key[log.session],
           "item": np.asarray(log.item_ids)[log.item], "time": log.time}
    if o.ordinal is not None:
        out["ordinal"] = o.ordinal[log.session]
    return out


def _present(values: np.ndarray) -> str:
    """The distinct items of a bucket (to count distinct items over all buckets), packed."""
    return base64.b64encode(pack({"item": _unique(values)})).decode()


def _step(summary: dict, name: str, before: tuple[int, int], log: P.Log) -> None:
    after = (len(log), log.n_sessions)
    summary["steps"][name] = {"events": before[0] - after[0], "sessions": before[1] - after[1],
                              "present": _present(np.asarray(log.item_ids)[np.unique(log.item)])}


def sessionize_fn(kv, scfg, given: bool, kinds: Kinds, work: str) -> None:
    """Beam Map over one (split, bucket): sessions, duplicates, repeats; writes the bucket and its summary."""
    (split, b), payloads = kv
    t = pa.concat_tables([unpack(p) for p in payloads])
    cols = {name: _np(t, name) for name in t.column_names}
    del t
    summary: dict = {"split": split, "bucket": b, "steps": {}, "rows": int(len(cols["key"]))}
    summary["present_read"] = _present(cols["item"])
    if scfg.min_rating is not None and "rating" in cols:
        keep = cols["rating"] >= scfg.min_rating
        n_keys = len(_unique(cols["key"]))
        cols = {k: v[keep] for k, v in cols.items()}
        summary["steps"]["min_rating"] = {"events": int((~keep).sum()),
                                          "sessions": n_keys - len(_unique(cols["key"])),
                                          "present": _present(cols["item"])}
    summary["events_after_rating"] = int(len(cols["key"]))
    name = f"{split}-{b:05d}"
    if not len(cols["key"]):
        _write(_join(work, f"s0/{name}.json"), json.dumps(summary).encode())
        return
    lg = _to_log(cols["key"], cols["item"], cols["time"], kinds, scfg.gap)
    del cols
    dup = P.exact_duplicates(lg)
    summary["duplicates"] = n_dup = int(dup.sum())
    if scfg.drop_duplicates and n_dup:
        before = (len(lg), lg.n_sessions)
        lg = lg.keep(~dup)
        _step(summary, "drop_duplicates", before, lg)
    del dup
    if scfg.drop_repeats:
        before = (len(lg), lg.n_sessions)
        lg = P.drop_repeats(lg)
        _step(summary, "drop_repeats", before, lg)
    if given:
        before = (len(lg), lg.n_sessions)
        lg = lg.keep_sessions(lg.lengths() >= 2)
        _step(summary, "min_session_length", before, lg)
    out = _log_columns(lg)
    _write(_join(work, f"s0/{name}.arrow"), pack(out))
    summary.update(file=_join(work, f"s0/{name}.arrow"), events=len(lg), sessions=lg.n_sessions,
                   support=base64.b64encode(_support(out["item"])).decode())
    if len(lg):
        summary["max_end"] = float(P.session_bounds(lg)[1].max())
    _write(_join(work, f"s0/{name}.json"), json.dumps(summary).encode())


def _support(item: np.ndarray) -> bytes:
    s = pd.Series(item).value_counts(sort=False)
    return pack({"item": s.index.to_numpy(), "count": s.to_numpy().astype(np.int64)})


# ---------------------------------------------------------------- 3. filter rounds (one bucket)


def _bucket(path: str) -> dict[str, np.ndarray]:
    t = unpack(_read(path))
    return {name: _np(t, name) for name in t.column_names}


def _keep(cols: dict, mask: np.ndarray) -> dict:
    return {k: v[mask] for k, v in cols.items()}


def _n_sessions(cols: dict) -> int:
    return len(np.unique(cols["session"]))


def _cut_and_short(cols: dict, cut: Optional[float], min_length: int, counts: dict) -> dict:
    """filter.last_days (round 1: whole sessions ending before `cut` go), then the length pass."""
    s = cols["session"]
    if cut is not None:
        ends = pd.Series(cols["time"]).groupby(s).max()
        keep_ids = ends.index.to_numpy()[ends.to_numpy() >= cut]
        before = (len(s), _n_sessions(cols))
        cols = _keep(cols, np.isin(s, keep_ids))
        counts["last_days"] = {"events": before[0] - len(cols["session"]), "sessions": before[1] - _n_sessions(cols)}
        s = cols["session"]
    ids, inverse, lengths = np.unique(s, return_inverse=True, return_counts=True)
    short = (lengths < min_length)[inverse]
    counts["min_session_length"] = {"events": int(short.sum()), "sessions": int((lengths < min_length).sum())}
    return _keep(cols, ~short) if short.any() else cols


def round_support_fn(path: str, cut: Optional[float], min_length: int) -> bytes:
    """Beam Map: the bucket's item supports after the length pass (and after last_days, round 1)."""
    cols = _bucket(path)
    counts: dict = {}
    if cut is not None:
        s = cols["session"]
        ends = pd.Series(cols["time"]).groupby(s).max()
        after_cut = _keep(cols, np.isin(s, ends.index.to_numpy()[ends.to_numpy() >= cut]))
        cut_support = unpack(_support(after_cut["item"]))
        cols = _cut_and_short(after_cut, None, min_length, counts)
        a = unpack(_support(cols["item"]))
        frame = pd.concat([pd.DataFrame({"item": _np(cut_support, "item"), "cut": _np(cut_support, "count")}),
                           pd.DataFrame({"item": _np(a, "item"), "a": _np(a, "count")})])
        frame = frame.groupby("item", sort=False).sum()
        return pack({"item": frame.index.to_numpy(), "cut": frame["cut"].to_numpy().astype(np.int64),
                     "a": frame["a"].to_numpy().astype(np.int64)})
    cols = _cut_and_short(cols, None, min_length, counts)
    a = unpack(_support(cols["item"]))
    return pack({"item": _np(a, "item"), "a": _np(a, "count")})


def _sum_supports(parts: list[bytes]) -> bytes:
    frames = [unpack(p).to_pandas() for p in parts if p]
    if not frames:
        return b""
    frame = pd.concat(frames).fillna(0).groupby("item", sort=False).sum()
    return pack({"item": frame.index.to_numpy(), **{c: frame[c].to_numpy().astype(np.int64) for c in frame.columns}})


def round_apply_fn(path: str, dest: str, cut: Optional[float], min_length: int, min_support: int,
                   support: bytes) -> None:
    """Beam Map: last_days and the length pass again, then the support pass with the global
    supports (side input); writes the bucket for the next round and its counts."""
    cols = _bucket(path)
    counts: dict = {}
    cols = _cut_and_short(cols, cut, min_length, counts)
    sup = unpack(support) if support else None
    before = (len(cols["session"]), _n_sessions(cols))
    if sup is not None and len(cols["session"]):
        items, a = _np(sup, "item"), _np(sup, "a")
        rare = items[a < min_support]
        if len(rare):
            cols = _keep(cols, ~np.isin(cols["item"], rare))
    counts["min_item_support"] = {"events": before[0] - len(cols["session"]), "sessions": before[1] - _n_sessions(cols)}
    _write(dest, pack(cols))
    _write(dest.removesuffix(".arrow") + ".json", json.dumps({"counts": counts, "events": len(cols["session"])}).encode())


class SumSupports:
    """A Beam CombineFn (built lazily: apache_beam is imported only when a pipeline runs)."""

    @staticmethod
    def make():
        import apache_beam as beam

        class _Fn(beam.CombineFn):
            def create_accumulator(self):
                return []

            def add_input(self, acc, x):
                acc.append(x)
                return acc if len(acc) < 16 else [_sum_supports(acc)]

            def merge_accumulators(self, accs):
                return [_sum_supports([x for a in accs for x in a])]

            def extract_output(self, acc):
                return _sum_supports(acc)

        return _Fn()


# ---------------------------------------------------------------- 4. publish


def _nnz(support: Optional[pa.Table], column: str) -> int:
    return 0 if support is None else int(np.count_nonzero(_np(support, column)))


def _items_in(tables: list[bytes]) -> int:
    arrays = [_np(unpack(base64.b64decode(t)), "item") for t in tables]
    arrays = [a for a in arrays if len(a)]
    if not arrays:
        return 0
    return len(_unique(np.concatenate(arrays)))


def assemble(files: list[str], kinds: Kinds) -> P.Log:
    """The buckets' sessions as one Log, sessions in the order in-process sessionize gives them:
    by key (then, for user-keyed data, by the n-th session of the user)."""
    parts = [_bucket(f) for f in files]
    parts = [p for p in parts if len(p["session"])]
    if not parts:
        return P.Log(np.zeros(0, np.int32), np.zeros(0, np.int32), np.zeros(0, object), np.zeros(0),
                     P.Lineage(np.zeros(0, np.int64), np.zeros(0, np.int32) if kinds.keyed_by == "user" else None,
                               None if kinds.key_numeric else np.zeros(0, object), kinds.keyed_by))
    # a session id unique over buckets: (bucket, local session), rows of a session contiguous
    offset, sess = 0, []
    for p in parts:
        local = P._renumber(p["session"])
        sess.append(local.astype(np.int64) + offset)
        offset += int(local[-1]) + 1
    cols = {k: np.concatenate([p[k] for p in parts]) for k in parts[0] if k != "session"}
    session = np.concatenate(sess)
    del parts, sess
    starts = np.flatnonzero(P._run_starts(session))
    lengths = np.diff(np.append(starts, len(session)))
    key = cols["key"][starts]
    key_ids = None
    if not kinds.key_numeric:
        codes, uniq = pd.factorize(key, sort=True)
        key, key_ids = codes.astype(np.int64), np.asarray(uniq, dtype=object)
    else:
        key = key.astype(np.int64)
    ordinal = cols["ordinal"][starts].astype(np.int32) if "ordinal" in cols else None
    order = np.lexsort((ordinal if ordinal is not None else np.zeros(len(key)), key))
    new_lengths = lengths[order]
    new_starts = np.concatenate([[0], np.cumsum(new_lengths)[:-1]])
    rows = np.repeat(starts[order] - new_starts, new_lengths) + np.arange(len(session))
    codes, uniq = pd.factorize(cols["item"][rows], sort=True)
    item_ids = np.asarray(uniq.astype(str) if kinds.item_numeric else uniq, dtype=object)
    origin = P.Lineage(key[order], None if ordinal is None else ordinal[order], key_ids, kinds.keyed_by)
    return P.Log(np.repeat(np.arange(len(order), dtype=np.int32), new_lengths), codes.astype(np.int32), item_ids,
                 cols["time"][rows].astype(np.float64), origin)


# ---------------------------------------------------------------- the stage


def _run(pipeline_fn, options: dict) -> None:
    import apache_beam as beam

    with beam.Pipeline(options=beam_runner.make_options(options)) as p:
        pipeline_fn(p)


def prepare_beam(cfg: JobConfig, runner: str = "beam", inputs_id: Optional[list[dict]] = None,
                 chunk_bytes: Optional[int] = None) -> dict:
    """Run the prepare stage as Beam pipelines; writes `cfg.data_dir` like `prepare.prepare`, returns the stats."""
    import apache_beam as beam

    t0 = clock.perf_counter()
    options = beam_runner.pipeline_options(cfg, runner, "prepare")
    kinds = input_kinds(cfg)
    specs = plan_chunks(cfg, chunk_bytes)
    given = cfg.split.scheme == "given"
    local_tmp = tempfile.mkdtemp(prefix="sbrjob-beam-")
    work = beam_runner.work_dir(cfg, runner, local_tmp)
    try:
        data_cfg, scfg, buckets = cfg.data, cfg.sessions, cfg.beam.buckets

        def stage0(p):
            (p | "chunks" >> beam.Create(specs, reshuffle=True)
               | "read" >> beam.FlatMap(read_chunk_fn, data_cfg, kinds, buckets, work)
               | "shuffle" >> beam.GroupByKey()
               | "sessionize" >> beam.Map(sessionize_fn, scfg, given, kinds, work))

        _run(stage0, options)
        metas = [json.loads(_read(f)) for f in _list(_join(work, "read/*.json"))]
        summaries = [json.loads(_read(f)) for f in _list(_join(work, "s0/*.json"))]
        removed: dict = {}
        inputs = {"format": cfg.data.format, "files": [], "rows": 0, "bad_lines": 0, "keyed_by": None}
        info: dict = {}
        files_by_split = _after_read(cfg, kinds, specs, metas, summaries, removed, inputs)
        if given:
            logs = {P.SPLITS[s]: P.order_by_first_event(assemble(files, kinds)) for s, files in files_by_split.items()}
        else:
            files = _filter_rounds(cfg, files_by_split[0], summaries, removed, info, options, work)
            logs = P.split_filtered(cfg, assemble(files, kinds))
        log.info("prepare (beam): %d chunks, %d buckets, %s", len(specs), len(summaries),
                 f"{info['filter_rounds']} filter rounds" if info else "no filter rounds (scheme given)")
        return P.write_prepared(cfg, logs, removed, inputs, info, t0, inputs_id)
    finally:
        shutil.rmtree(local_tmp, ignore_errors=True)
        if work != local_tmp:
            _remove_remote(work)


def _remove_remote(work: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    try:
        FileSystems.delete([work])
    except Exception:  # a leftover temp folder is only clutter: never hide the real result for it
        log.warning("could not remove the work folder %s", work)


def _after_read(cfg: JobConfig, kinds: Kinds, specs: list[dict], metas: list[dict], summaries: list[dict],
                removed: dict, inputs: dict) -> dict[int, list[str]]:
    """Checks and counts of the read and sessionize pipeline, per input as in-process; returns the
    bucket files of each input."""
    errors = sorted((m["split"], m["k"], m["error"]) for m in metas if m["error"])
    if errors:
        raise SbrjobError(errors[0][2])
    out = {}
    for split, attr, path in _inputs(cfg):
        mine = [m for m in metas if m["split"] == split]
        rows, bad = sum(m["rows"] for m in mine), sum(m["bad"] for m in mine)
        if rows == 0:
            raise SbrjobError(f"{path}: no valid data lines ({bad} bad lines skipped)" if bad else
                              f"{path}: no data lines (empty input)")
        inputs["files"].append(path)
        inputs["rows"] += rows
        inputs["bad_lines"] += bad
        inputs["keyed_by"] = kinds.keyed_by
        parts = [s for s in summaries if s["split"] == split]
        scfg = cfg.sessions
        if scfg.min_rating is not None:
            if not all(m.get("has_rating") for m in mine if m["rows"]):
                raise SbrjobError(f"sessions.min_rating: {path} has no ratings; set it to null")
            _add_step(removed, "min_rating", parts)
            if sum(s["events_after_rating"] for s in parts) == 0:
                raise SbrjobError(f"sessions.min_rating={scfg.min_rating} removed every event of {path}; "
                                  "lower it or set it to null")
        n_dup = sum(s.get("duplicates", 0) for s in parts)
        n_events = sum(s["events_after_rating"] for s in parts)
        inputs["duplicates"] = inputs.get("duplicates", 0) + n_dup
        if scfg.drop_duplicates and n_dup:
            _add_step(removed, "drop_duplicates", parts)
        elif n_dup > P.DUPLICATES_WARN * n_events and not scfg.drop_repeats:
            who = "session" if kinds.keyed_by == "session" else "user"
            log.warning(f"warning: {path}: {n_dup:,} of {n_events:,} events ({n_dup / n_events:.1%}) are exact "
                        f"duplicates (same {who}, item and time); left in, they become 'the same item again' "
                        "targets that inflate Recall/MRR: set sessions.drop_duplicates: true (stats.json counts "
                        "them under 'duplicates')")
        if scfg.drop_repeats:
            _add_step(removed, "drop_repeats", parts)
        out[split] = sorted(s["file"] for s in parts if "file" in s)
    if cfg.split.scheme == "given":
        for split in out:
            _add_step(removed, "min_session_length", [s for s in summaries if s["split"] == split])
    return out


_ORDER = ("min_rating", "drop_duplicates", "drop_repeats", "min_session_length")


def _add_step(removed: dict, name: str, parts: list[dict]) -> None:
    """Add one step's removals over all buckets of an input: events and sessions are sums (a key's
    events are all in one bucket); items are the distinct items before minus after the step."""
    def present(s: dict, upto: int) -> str:  # the bucket's items after the last step before `upto`
        for prev in reversed(_ORDER[:upto]):
            if prev in s["steps"]:
                return s["steps"][prev]["present"]
        return s["present_read"]

    i = _ORDER.index(name)
    steps = [s["steps"].get(name, {}) for s in parts]
    total = {"events": sum(st.get("events", 0) for st in steps), "sessions": sum(st.get("sessions", 0) for st in steps),
             "items": _items_in([present(s, i) for s in parts]) - _items_in([present(s, i + 1) for s in parts])}
    P._add(removed.setdefault(name, {}), total)


def _filter_rounds(cfg: JobConfig, files: list[str], summaries: list[dict], removed: dict, info: dict,
                   options: dict, work: str) -> list[str]:
    """last_days and the fixed point of the length and support filters, one pipeline per round."""
    import apache_beam as beam

    f = cfg.filter
    parts = [s for s in summaries if s["split"] == 0]
    support = _sum_supports([base64.b64decode(s["support"]) for s in parts if "support" in s])
    present = _nnz(unpack(support), "count") if support else 0
    cut = None
    if f.last_days is not None:
        ends = [s["max_end"] for s in parts if "max_end" in s]
        cut = (max(ends) if ends else 0.0) - f.last_days * P.DAY
    totals = {"min_session_length": dict.fromkeys(("events", "sessions", "items"), 0),
              "min_item_support": dict.fromkeys(("events", "sessions", "items"), 0)}
    rounds = 0
    while True:
        rounds += 1
        dest = _join(work, f"r{rounds}")
        names = {src: _join(dest, Path(src).name) for src in files}
        sup_path = _join(dest, "support.arrow")
        ms, mi = f.min_session_length, f.min_item_support

        def one_round(p, files=files, names=names, cut=cut, sup_path=sup_path):
            ids = p | "buckets" >> beam.Create(files, reshuffle=True)
            total = (ids | "support" >> beam.Map(round_support_fn, cut, ms)
                     | "sum" >> beam.CombineGlobally(SumSupports.make()))
            total | "keep" >> beam.Map(lambda b: _write(sup_path, b))
            ids | "apply" >> beam.Map(lambda src, sup: round_apply_fn(src, names[src], cut, ms, mi, sup),
                                      beam.pvalue.AsSingleton(total))

        _run(one_round, options)
        sup = _read(sup_path)
        sup = unpack(sup) if sup else None
        results = [json.loads(_read(n.removesuffix(".arrow") + ".json")) for n in names.values()]

        def total_of(step: str, key: str) -> int:
            return sum(r["counts"].get(step, {}).get(key, 0) for r in results)

        if cut is not None:
            after_cut = _nnz(sup, "cut")
            removed["last_days"] = {"events": total_of("last_days", "events"),
                                    "sessions": total_of("last_days", "sessions"), "items": present - after_cut}
            present = after_cut
        after_a = _nnz(sup, "a")
        a = sup.column("a").to_numpy() if sup is not None else np.zeros(0, np.int64)
        rare = int(((a > 0) & (a < mi)).sum())
        changed = False
        for step, items in (("min_session_length", present - after_a), ("min_item_support", rare)):
            ev, se = total_of(step, "events"), total_of(step, "sessions")
            if ev:
                changed = True
                for k, v in (("events", ev), ("sessions", se), ("items", items)):
                    totals[step][k] += v
        present = after_a - rare
        files = list(names.values())
        cut = None
        if not changed:
            break
        if not total_of("min_item_support", "events"):
            # the support pass removed nothing: the next round would find no short session and no
            # rare item either, so it is counted (as in-process) but not run
            rounds += 1
            break
    removed.update(totals)
    info["filter_rounds"] = rounds
    return files
