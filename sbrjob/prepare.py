"""`sbrjob prepare`: events -> sessions -> filters -> time-based splits -> Parquet + vocabulary + stats.

Everything is vectorised numpy over parallel arrays: rows are kept sorted by (session, time, item),
so a session is a contiguous run of rows and per-session values come from run boundaries, never
from a Python loop. Outputs follow docs/ARCHITECTURE.md (`output_dir/data/`); they are written to
a staging directory and published whole, `manifest.json` last.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time as clock
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from sbrjob import storage
from sbrjob.config import JobConfig, save_config, window_bounds
from sbrjob.errors import SbrjobError
from sbrjob.progress import BYTES, Steps
from sbrjob.readers import Events, read_events, read_items
from sbrjob.runs import PREPARED_FILES, SPLITS, data_manifest, input_identity
from sbrjob.shards import file_sha256

DAY = 86400.0
logger = logging.getLogger("sbrjob.prepare")
DUPLICATES_WARN = 0.01  # warn when more than this fraction of the events are exact duplicates


@dataclass
class Lineage:
    """Where each session came from, one entry per session: written as the `session_key` (and, for
    user-keyed data, `user`) columns of every split, so a test session can be traced back."""

    key: np.ndarray  # int64: the original session id (or user id); codes into key_ids for string ids
    ordinal: np.ndarray | None  # int32: the n-th session of its user (user-keyed data), else None
    key_ids: np.ndarray | None  # object array of the original string ids; None for integer ids
    keyed_by: str  # "session" or "user"

    def take(self, sessions: np.ndarray) -> Lineage:
        return Lineage(self.key[sessions], None if self.ordinal is None else self.ordinal[sessions], self.key_ids,
                       self.keyed_by)


@dataclass
class Log:
    """Events grouped into sessions: rows sorted by (session, time, item); `session` is 0..n-1 and contiguous."""

    session: np.ndarray  # int32 (cast to int64 on output; 2^31 sessions would not fit in memory anyway)
    item: np.ndarray  # int32 codes into item_ids
    item_ids: np.ndarray  # object array of str
    time: np.ndarray  # float64
    origin: Lineage | None = None  # per session: the original key

    def __len__(self) -> int:
        return len(self.session)

    @property
    def n_sessions(self) -> int:
        return int(self.session[-1]) + 1 if len(self) else 0

    def starts(self) -> np.ndarray:
        """Row index of each session's first event."""
        return np.flatnonzero(_run_starts(self.session))

    def lengths(self) -> np.ndarray:
        return np.bincount(self.session, minlength=self.n_sessions)

    def n_items(self) -> int:
        return int(np.count_nonzero(np.bincount(self.item, minlength=len(self.item_ids))))

    def keep(self, mask: np.ndarray) -> "Log":
        """The rows where mask is True, sessions renumbered densely (order kept)."""
        session = self.session[mask]
        origin = None if self.origin is None else self.origin.take(session[_run_starts(session)])
        return Log(_renumber(session), self.item[mask], self.item_ids, self.time[mask], origin)

    def keep_sessions(self, session_mask: np.ndarray) -> "Log":
        return self.keep(session_mask[self.session])


def _run_starts(values: np.ndarray) -> np.ndarray:
    new = np.ones(len(values), dtype=bool)
    new[1:] = values[1:] != values[:-1]
    return new


def _renumber(session: np.ndarray) -> np.ndarray:
    if not len(session):
        return session.astype(np.int32)
    return np.cumsum(_run_starts(session), dtype=np.int32) - 1


# ---------------------------------------------------------------- sessions


def sessionize(ev: Events, gap: Optional[float]) -> Log:
    """Sort by (key, time, item); session-keyed data keeps its ids, user-keyed data is cut at gaps > `gap`."""
    if _sorted_by_key_time(ev.key, ev.time):
        key, item, t = ev.key, ev.item, ev.time  # logs written session by session: skip the big sort
    else:
        order = np.lexsort((ev.item, ev.time, ev.key))
        key, item, t = ev.key[order], ev.item[order], ev.time[order]
        del order
    new = _run_starts(key)
    if ev.keyed_by == "user" and gap is not None:
        new[1:] |= np.diff(t) > gap
    session = np.cumsum(new, dtype=np.int32) - 1
    item, t = _order_ties(session, item, t)
    return Log(session, item, ev.item_ids, t, _lineage(key[new], ev))


def _lineage(session_key: np.ndarray, ev: Events) -> Lineage:
    """Per session its key; for user-keyed data also its ordinal among the user's sessions."""
    ordinal = None
    if ev.keyed_by == "user":
        idx = np.arange(len(session_key))
        first = _run_starts(session_key)  # sessions of one user are contiguous
        ordinal = (idx - np.maximum.accumulate(np.where(first, idx, 0))).astype(np.int32)
    return Lineage(session_key, ordinal, ev.key_ids, ev.keyed_by)


def exact_duplicates(log: Log) -> np.ndarray:
    """Rows that repeat the previous row exactly: same session (hence user), item and time. Rows
    are sorted by (session, time, item), so every exact duplicate follows its original."""
    dup = np.zeros(len(log), dtype=bool)
    dup[1:] = (log.session[1:] == log.session[:-1]) & (log.time[1:] == log.time[:-1]) & (log.item[1:] == log.item[:-1])
    return dup


def _order_ties(session: np.ndarray, item: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows sorted by (session, time): order equal timestamps by item, sorting only the sessions that need it."""
    unordered = (session[1:] == session[:-1]) & (t[1:] == t[:-1]) & (item[1:] < item[:-1])
    if not unordered.any():
        return item, t
    touched = np.zeros(int(session[-1]) + 1, dtype=bool)
    touched[session[1:][unordered]] = True
    rows = np.flatnonzero(touched[session])
    order = rows[np.lexsort((item[rows], t[rows], session[rows]))]
    item, t = item.copy(), t.copy()
    item[rows], t[rows] = item[order], t[order]
    return item, t


def _sorted_by_key_time(key: np.ndarray, t: np.ndarray) -> bool:
    if len(key) < 2:
        return True
    dk = np.diff(key)
    if (dk < 0).any():
        return False
    return not ((dk == 0) & (np.diff(t) < 0)).any()


def drop_repeats(log: Log) -> Log:
    """Remove an event when the previous event of the same session has the same item."""
    repeat = np.zeros(len(log), dtype=bool)
    repeat[1:] = (log.session[1:] == log.session[:-1]) & (log.item[1:] == log.item[:-1])
    return log.keep(~repeat)


# ---------------------------------------------------------------- filters


def _counts(log: Log) -> dict[str, int]:
    return {"events": len(log), "sessions": log.n_sessions, "items": log.n_items()}


def _removed(before: dict, after: dict) -> dict[str, int]:
    return {k: before[k] - after[k] for k in before}


def _add(total: dict, part: dict) -> None:
    for k, v in part.items():
        total[k] = total.get(k, 0) + v


def filter_sessions_items(log: Log, min_length: int, min_support: int, removed: dict,
                          info: dict | None = None) -> Log:
    """Drop short sessions and rare items, repeated until neither removes anything (a fixed point).

    Works on a mask of live rows and copies the log once at the end: at 33M events each copy costs
    ~0.7 GB, the mask 33 MB. `info["filter_rounds"]`: the rounds run, the last one removing nothing.
    """
    n_items = len(log.item_ids)
    alive = np.ones(len(log), dtype=bool)
    lengths = log.lengths()
    support = np.bincount(log.item, minlength=n_items)
    totals = {"min_session_length": dict.fromkeys(("events", "sessions", "items"), 0),
              "min_item_support": dict.fromkeys(("events", "sessions", "items"), 0)}

    def count() -> tuple[int, int, int]:
        return int(lengths.sum()), int(np.count_nonzero(lengths)), int(np.count_nonzero(support))

    rounds = 0
    while True:
        rounds += 1
        changed = False
        for name, drop in (("min_session_length", lambda: alive & (lengths < min_length)[log.session]),
                           ("min_item_support", lambda: alive & (support < min_support)[log.item])):
            gone = drop()
            if not gone.any():
                continue
            before = count()
            alive &= ~gone
            lengths -= np.bincount(log.session[gone], minlength=len(lengths))
            support -= np.bincount(log.item[gone], minlength=n_items)
            for key, b, a in zip(("events", "sessions", "items"), before, count()):
                totals[name][key] += b - a
            changed = True
        if not changed:
            break
    removed.update(totals)
    if info is not None:
        info["filter_rounds"] = rounds
    return log if alive.all() else log.keep(alive)


def keep_last_days(log: Log, days: float) -> Log:
    """Keep whole sessions whose last event lies in the final `days` days of the log."""
    starts = log.starts()
    ends = np.append(starts[1:], len(log)) - 1
    end_time = log.time[ends]
    return log.keep_sessions(end_time >= end_time.max() - days * DAY)


# ---------------------------------------------------------------- splits


def session_bounds(log: Log) -> tuple[np.ndarray, np.ndarray]:
    """First and last event time of every session."""
    starts = log.starts()
    ends = np.append(starts[1:], len(log)) - 1
    return log.time[starts], log.time[ends]


def _carve(out: np.ndarray, start, end, split_cfg, pool: int, code: int, days: float, fraction: float,
           n_total: int, at_least: int = 0) -> None:
    """Mark the latest sessions of `pool` (by end time) as `code`: the last `days`, or `fraction` of
    all `n_total` sessions (at least `at_least` of them)."""
    inside = out == pool
    if not inside.any():
        return
    if split_cfg.scheme == "days":
        out[inside & (end >= end[inside].max() - days * DAY)] = code
        return
    idx = np.flatnonzero(inside)
    order = idx[np.lexsort((idx, start[idx], end[idx]))]  # by end time; ties by start, then session
    n = max(at_least, int(round(n_total * fraction)))
    if n:
        out[order[-n:]] = code


def assign_splits(log: Log, split_cfg) -> np.ndarray:
    """Per session: 0 train, 1 valid, 2 test (the days or fraction scheme); 3 dropped (`drop_test`).

    days: the GRU4Rec tutorial: test = sessions ending in the final test_days; valid is carved out
    of the remaining (train) sessions the same way, measured from their own latest event.
    fraction: sessions sorted by end time, the last test_fraction test, the valid_fraction before valid.
    `drop_test`: the test period is dropped, valid becomes the test and a new valid of the same
    size is carved out before it, so settings (refit, epochs) can be chosen without the test split.
    `merge_valid`: the valid sessions stay in train (train.refit's run).
    """
    start, end = session_bounds(log)
    out = np.zeros(len(end), dtype=np.int8)
    n, s = len(end), split_cfg
    _carve(out, start, end, s, 0, 2, s.test_days, s.test_fraction, n, at_least=1)
    if s.drop_test:
        out[out == 2] = 3
        _carve(out, start, end, s, 0, 2, s.valid_days, s.valid_fraction, n, at_least=1)
    if (s.valid_days if s.scheme == "days" else s.valid_fraction) > 0 and not s.merge_valid:
        _carve(out, start, end, s, 0, 1, s.valid_days, s.valid_fraction, n)
    return out


def split_by(log: Log, which: np.ndarray) -> dict[str, Log]:
    """One Log per split, sessions renumbered in order of their first event (ties: last event, then
    old number). A single gather of all rows; the splits are slices of it."""
    if not len(log):
        return {name: log for name in SPLITS}
    starts = log.starts()
    lengths = np.diff(np.append(starts, len(log)))
    first, last = session_bounds(log)
    order = np.lexsort((np.arange(len(starts)), last, first, which))
    new_lengths = lengths[order]
    new_starts = np.concatenate([[0], np.cumsum(new_lengths)[:-1]])
    index = np.int32 if len(log) < 2**31 else np.int64  # halves the row index at 33M events
    rows = np.repeat((starts[order] - new_starts).astype(index), new_lengths)
    rows += np.arange(len(log), dtype=index)
    item, t = log.item[rows], log.time[rows]
    del rows
    n_sessions = np.bincount(which, minlength=len(SPLITS))
    out, s0, r0 = {}, 0, 0
    for code, name in enumerate(SPLITS):
        s1 = s0 + int(n_sessions[code])
        r1 = r0 + int(new_lengths[s0:s1].sum())
        session = np.repeat(np.arange(s1 - s0, dtype=np.int32), new_lengths[s0:s1])
        origin = None if log.origin is None else log.origin.take(order[s0:s1])
        out[name] = Log(session, item[r0:r1], log.item_ids, t[r0:r1], origin)
        s0, r0 = s1, r1
    return out


def order_by_first_event(log: Log) -> Log:
    return split_by(log, np.zeros(log.n_sessions, dtype=np.int8))["train"]


def to_vocabulary(log: Log, vocab: pd.Index) -> tuple[Log, np.ndarray]:
    """Re-code items as vocabulary indices; returns (log, mask of rows whose item is known)."""
    code_map = vocab.get_indexer(pd.Index(log.item_ids)).astype(np.int32)
    idx = code_map[log.item]
    known = idx >= 0
    return Log(log.session, idx, np.asarray(vocab, dtype=object), log.time, log.origin), known


# ---------------------------------------------------------------- the stage


def _within_window(ev: Events, data_cfg, removed: dict) -> Events:
    """The events with data.since <= time < data.until (UTC), cut before sessions are built: a
    session that runs past `until` is seen as far as a job run at that instant would have seen it."""
    since, until = window_bounds(data_cfg)
    if since is None and until is None:
        return ev
    keep = np.ones(len(ev), dtype=bool)
    if since is not None:
        keep &= ev.time >= since
    if until is not None:
        keep &= ev.time < until
    if keep.all():
        return ev
    before = (len(pd.unique(ev.key)), len(pd.unique(ev.item)))
    out = dataclasses.replace(ev, key=ev.key[keep], item=ev.item[keep], time=ev.time[keep],
                              rating=None if ev.rating is None else ev.rating[keep])
    _add(removed.setdefault("since_until", {}),
         {"events": int((~keep).sum()), "sessions": before[0] - len(pd.unique(out.key)),
          "items": before[1] - len(pd.unique(out.item))})
    if not len(out):
        source = ev.sources[0] if ev.sources else "the input"
        span = (f"{_iso(float(ev.time.min()))} .. {_iso(float(ev.time.max()))}" if len(ev) else "no events")
        raise SbrjobError(f"data.since={data_cfg.since} / data.until={data_cfg.until}: no event of {source} "
                          f"falls in that window (its events span {span}); move the window")
    return out


def _split_logs(cfg: JobConfig, removed: dict, inputs: dict, info: dict) -> dict[str, Log]:
    """Read, sessionize, clean and split; returns one Log per split (items still as input codes)."""
    scfg = cfg.sessions
    paths = {"train": None}
    if cfg.split.scheme == "given":
        paths = {"train": cfg.data.path, "valid": cfg.data.valid_path, "test": cfg.data.test_path}
    logs = {}
    for split, path in paths.items():
        if split != "train" and not path:
            continue
        t_read = clock.perf_counter()
        with Steps(BYTES) as progress:  # a bar (TTY) or a line every 30 s while the file is parsed
            ev = read_events(cfg.data, path, progress)
        logger.info("prepare: read %s events from %s in %.1f s", f"{len(ev):,}", ", ".join(ev.sources),
                 clock.perf_counter() - t_read)
        inputs["files"] += ev.sources
        inputs["rows"] += len(ev)
        inputs["bad_lines"] += ev.bad_lines
        inputs["keyed_by"] = ev.keyed_by
        ev = _within_window(ev, cfg.data, removed)
        if scfg.min_rating is not None:
            if ev.rating is None:
                raise SbrjobError(f"sessions.min_rating: {ev.sources[0]} has no ratings; set it to null")
            keep = ev.rating >= scfg.min_rating
            before = (len(pd.unique(ev.key)), len(pd.unique(ev.item)))  # sessions here: users or session ids
            ev = dataclasses.replace(ev, key=ev.key[keep], item=ev.item[keep], time=ev.time[keep],
                                     rating=ev.rating[keep])
            _add(removed.setdefault("min_rating", {}),
                 {"events": int((~keep).sum()), "sessions": before[0] - len(pd.unique(ev.key)),
                  "items": before[1] - len(pd.unique(ev.item))})
            if not len(ev):
                raise SbrjobError(f"sessions.min_rating={scfg.min_rating} removed every event of {ev.sources[0]}; "
                                  "lower it or set it to null")
        source = ev.sources[0] if ev.sources else str(path)
        log = sessionize(ev, scfg.gap)
        del ev
        dup = exact_duplicates(log)
        n_dup = int(dup.sum())
        inputs["duplicates"] = inputs.get("duplicates", 0) + n_dup
        if scfg.drop_duplicates and n_dup:
            before = _counts(log)
            log = log.keep(~dup)
            _add(removed.setdefault("drop_duplicates", {}), _removed(before, _counts(log)))
        elif n_dup > DUPLICATES_WARN * len(log) and not scfg.drop_repeats:
            who = "session" if inputs["keyed_by"] == "session" else "user"
            logger.warning(f"warning: {source}: {n_dup:,} of {len(log):,} events ({n_dup / len(log):.1%}) are exact "
                           f"duplicates (same {who}, item and time); left in, they become 'the same item again' "
                           "targets that inflate Recall/MRR: set sessions.drop_duplicates: true (stats.json counts "
                           "them under 'duplicates')")
        del dup
        if scfg.drop_repeats:
            before = _counts(log)
            log = drop_repeats(log)
            _add(removed.setdefault("drop_repeats", {}), _removed(before, _counts(log)))
        logs[split] = log
    if cfg.split.scheme == "given":
        # passed through as given: no last_days / length / support filters, only sessions < 2 dropped
        for name, log in logs.items():
            before = _counts(log)
            logs[name] = order_by_first_event(log.keep_sessions(log.lengths() >= 2))
            _add(removed.setdefault("min_session_length", {}), _removed(before, _counts(logs[name])))
        return logs

    log = logs["train"]
    f = cfg.filter
    if f.last_days is not None:
        before = _counts(log)
        log = keep_last_days(log, f.last_days)
        removed["last_days"] = _removed(before, _counts(log))
    log = filter_sessions_items(log, f.min_session_length, f.min_item_support, removed, info)
    return split_filtered(cfg, log)


def split_filtered(cfg: JobConfig, log: Log) -> dict[str, Log]:
    """The filtered log cut into train/valid/test (`split.scheme` days or fraction)."""
    f = cfg.filter
    if not len(log):
        raise SbrjobError(f"no sessions left after filter.min_session_length={f.min_session_length} and "
                          f"filter.min_item_support={f.min_item_support} (applied until nothing changes); "
                          "lower them")
    return split_by(log, assign_splits(log, cfg.split))


def _split_stats(log: Log) -> dict:
    lengths = log.lengths()
    out = {"events": len(log), "sessions": log.n_sessions, "items": log.n_items()}
    if len(log):
        lo, hi = float(log.time.min()), float(log.time.max())
        q = np.quantile(lengths, [0.5, 0.9, 0.99, 0.999])
        out["time_min"], out["time_max"] = lo, hi
        out["time_range"] = [_iso(lo), _iso(hi)]
        out["session_length"] = {"mean": round(float(lengths.mean()), 3), "50%": float(q[0]), "90%": float(q[1]),
                                 "99%": float(q[2]), "99.9%": float(q[3]), "max": int(lengths.max())}
    return out


def _iso(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):  # readers keep times in 1970..2099; time_offset may push
        return repr(t)


def _empty_split_error(cfg: JobConfig, split: str, stage: str) -> SbrjobError:
    s = cfg.split
    why = {
        "split": {"days": f"no session falls there with split.scheme days (test_days={s.test_days}, "
                          f"valid_days={s.valid_days})",
                  "fraction": f"split.scheme fraction (test_fraction={s.test_fraction}, "
                              f"valid_fraction={s.valid_fraction}) leaves it no session",
                  "given": "its input file has no session of 2 or more events"}[s.scheme],
        "vocabulary": "every session lost its items when items not in the train split were removed and "
                      "sessions shorter than 2 dropped (filter.min_item_support / split sizes too strict?)",
    }[stage]
    return SbrjobError(f"the {split} split is empty: {why}")


def _dictionary(codes: np.ndarray, values: np.ndarray) -> pa.DictionaryArray:
    """Per row values[codes] as a dictionary column: read back as a pandas Categorical, not one
    Python string per row."""
    uniq, inverse = np.unique(codes, return_inverse=True)
    return pa.DictionaryArray.from_arrays(pa.array(inverse.astype(np.int32)),
                                          pa.array(np.asarray(values, dtype=object)[uniq].tolist(), pa.string()))


def lineage_columns(log: Log) -> dict[str, pa.Array]:
    """`session_key`: the original session id (int64, or string for string ids); for user-keyed data
    `"<user>#<n>"` (the user's n-th session, from 0, in time order) and `user`, the original user id."""
    o = log.origin
    if o is None:
        return {}
    rows = log.session
    if o.keyed_by == "session":
        if o.key_ids is None:
            return {"session_key": pa.array(o.key[rows], pa.int64())}
        return {"session_key": _dictionary(o.key[rows], o.key_ids)}
    user_text = o.key.astype(str).astype(object) if o.key_ids is None else np.asarray(o.key_ids, dtype=object)[o.key]
    names = pd.Series(user_text, dtype=object).str.cat(pd.Series(o.ordinal).astype(str), sep="#").to_numpy(object)
    keys = pa.DictionaryArray.from_arrays(pa.array(rows, pa.int32()), pa.array(names.tolist(), pa.string()))
    if o.key_ids is None:
        user = pa.array(o.key[rows], pa.int64())
    else:
        user = _dictionary(o.key[rows], o.key_ids)
    return {"session_key": keys, "user": user}


def _write_split(path: str, log: Log) -> None:
    columns = {"session": pa.array(log.session, pa.int64()), "item": pa.array(log.item, pa.int32()),
               "time": pa.array(log.time, pa.float64())}
    lineage = lineage_columns(log)
    if log.origin is None:  # an empty split made without lineage: the same columns as train, no rows
        train = Path(path).with_name("train.parquet")
        schema = pq.read_schema(train) if train.name != Path(path).name and train.exists() else None
        lineage = {f.name: pa.array([], f.type) for f in schema if f.name not in columns} if schema else {}
    table = pa.table({**columns, **lineage})
    # sorted session ids delta-encode to almost nothing; raw float times barely compress, so skip it
    pq.write_table(table, path, use_dictionary=["item", *(n for n, c in lineage.items()
                                                          if pa.types.is_dictionary(c.type))],
                   column_encoding={"session": "DELTA_BINARY_PACKED"},
                   compression={"session": "none", "item": "snappy", "time": "none",
                                **dict.fromkeys(lineage, "snappy")})


def prepare(cfg: JobConfig, inputs_id: Optional[list[dict]] = None) -> dict:
    """Run the prepare stage; writes `cfg.data_dir` and returns the stats dict (also stats.json).

    `inputs_id` (`runs.input_identity`, when the caller already has it) goes into the manifest.
    """
    t0 = clock.perf_counter()
    removed: dict = {}
    inputs = {"format": cfg.data.format, "files": [], "rows": 0, "bad_lines": 0, "keyed_by": None}
    info: dict = {}
    logs = _split_logs(cfg, removed, inputs, info)
    return write_prepared(cfg, logs, removed, inputs, info, t0, inputs_id)


def write_prepared(cfg: JobConfig, logs: dict[str, Log], removed: dict, inputs: dict, info: dict, t0: float,
                   inputs_id: Optional[list[dict]] = None) -> dict:
    """From the split logs (items still as input codes) to `cfg.data_dir`: vocabulary, splits,
    stats, report, manifest last. Shared by the in-process and the Beam prepare."""
    valid_wanted = (cfg.split.scheme == "given" and bool(cfg.data.valid_path)) or not cfg.split.merge_valid and (
        cfg.split.scheme == "fraction" and cfg.split.valid_fraction > 0 or
        cfg.split.scheme == "days" and cfg.split.valid_days > 0)
    for split in SPLITS:
        if split in logs and (split != "valid" or valid_wanted) and not len(logs[split]):
            raise _empty_split_error(cfg, split, "split")

    # vocabulary from train only, indexed in order of first appearance (sessions by first event)
    train = logs.pop("train")
    first_codes = pd.unique(train.item)
    vocab = pd.Index(train.item_ids[first_codes].astype(str), dtype=object)
    out = {"train": to_vocabulary(train, vocab)[0]}
    for split in ("valid", "test"):
        log = logs.get(split)
        if log is None or not len(log):
            out[split] = Log(np.zeros(0, np.int32), np.zeros(0, np.int32), vocab.to_numpy(), np.zeros(0))
            continue
        before = _counts(log)
        log, known = to_vocabulary(log, vocab)
        if not known.all():  # removing events can move a session's first event: renumber again
            log = log.keep(known)
            log = order_by_first_event(log.keep_sessions(log.lengths() >= 2)) if len(log) else log
        removed[f"unknown_items_{split}"] = _removed(before, _counts(log))
        if not len(log) and (split != "valid" or valid_wanted):
            raise _empty_split_error(cfg, split, "vocabulary")
        out[split] = log

    support = np.bincount(out["train"].item, minlength=len(vocab)).astype(np.int64)
    items = _items_table(cfg, vocab, support)
    stats = {split: _split_stats(out[split]) for split in SPLITS}
    stats.update(n_items=len(vocab), input=inputs, removed=removed, bad_lines=inputs["bad_lines"], **info)
    n_dup = inputs.get("duplicates", 0)
    stats["duplicates"] = {"events": n_dup, "fraction": round(n_dup / max(inputs["rows"], 1), 6),
                           "dropped": bool(n_dup) and (cfg.sessions.drop_duplicates or cfg.sessions.drop_repeats)}

    with storage.staging_dir(cfg.data_dir) as tmp:
        for split in SPLITS:
            _write_split(str(tmp / f"{split}.parquet"), out[split])
        pq.write_table(items, str(tmp / "items.parquet"))
        from sbrjob.report import write_report

        write_report(str(tmp / "data_report.png"), {s: out[s] for s in SPLITS}, title=cfg.name)
        save_config(cfg, str(tmp))
        stats["seconds"] = round(clock.perf_counter() - t0, 2)
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2))
        files = {name: file_sha256(tmp / name) for name in PREPARED_FILES}
        splits = {s: {"events": stats[s]["events"], "sessions": stats[s]["sessions"]} for s in SPLITS}
        manifest = data_manifest(cfg, inputs_id if inputs_id is not None else input_identity(cfg), files,
                                 len(vocab), splits)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        storage.publish_dir(tmp, cfg.data_dir, last="manifest.json")
    return stats


def _items_table(cfg: JobConfig, vocab: pd.Index, support: np.ndarray) -> pa.Table:
    meta = read_items(cfg.data)
    title = genres = pa.nulls(len(vocab), pa.string())
    if meta is not None:
        meta = meta.drop_duplicates("item_id").set_index("item_id")
        pos = meta.index.get_indexer(vocab)
        found = pos >= 0
        for name in ("title", "genres"):
            if name in meta and meta[name] is not None:
                vals = np.where(found, meta[name].to_numpy(dtype=object)[np.maximum(pos, 0)], None)
                arr = pa.array(vals.tolist(), pa.string())
                if name == "title":
                    title = arr
                else:
                    genres = arr
    return pa.table({"index": pa.array(np.arange(len(vocab), dtype=np.int32)),
                     "item_id": pa.array(vocab.to_numpy().tolist(), pa.string()),
                     "title": title, "genres": genres, "support": pa.array(support, pa.int64())})
