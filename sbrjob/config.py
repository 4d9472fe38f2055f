"""One typed YAML file describes a whole job.

Every section is a dataclass; loading checks each key and value against the type hints and the
range checks in `validate()`, so a typo or a bad value fails early with the key and file named.
"""

from __future__ import annotations

import codecs
import dataclasses
import datetime
import difflib
import hashlib
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from sbrjob.errors import SbrjobError

_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # 1e-9: YAML 1.1 reads it as text


@dataclass
class DataConfig:
    # movielens: ratings.dat[.gz] (`::`) or ratings.csv; yoochoose: clicks.dat;
    # gru4rec: SessionId\tItemId\tTime TSV; table: CSV/TSV/Parquet with `columns`; sample: embedded synthetic.
    format: Literal["movielens", "yoochoose", "gru4rec", "table", "sample"] = "sample"
    path: str | None = None  # main input file (local path or gs://)
    items_path: str | None = None  # movies.dat: titles and genres for display
    valid_path: str | None = None  # gru4rec/table: an already-split validation file
    test_path: str | None = None  # gru4rec/table: an already-split test file
    # table format: which input column holds what (session or user, item, time; rating optional)
    columns: dict[str, str] = field(default_factory=dict)
    separator: str | None = None  # table format; None = by file extension
    # how numeric times are written (movielens, gru4rec, table): epoch seconds, milli-, micro- or
    # nanoseconds; iso = ISO-8601 text (table only; yoochoose is always ISO). Times must fall in
    # 1970..2099 once converted: a column that only makes sense in another unit is reported as such.
    time_unit: Literal["s", "ms", "us", "ns", "iso"] = "s"
    time_offset: float = 0.0  # seconds added to every timestamp (GRU4Rec TSV of YOOCHOOSE is CEST: 7200)
    on_bad_lines: Literal["error", "skip"] = "error"
    # text encoding of delimited inputs (any Python codec name: utf-8, latin-1, cp1252...); bytes
    # that are not valid in it are reported with their line. movies.dat is always read as Latin-1.
    encoding: str = "utf-8"
    # a window of time, UTC, applied to the events as they are read (before sessions are built), so
    # a job sees what a job run at that moment would have seen: `since` keeps events at or after it,
    # `until` keeps events before it. A bare date (2014-09-29) means that whole day: since from its
    # 00:00, until through its 23:59:59 (the daily pattern: --set data.until=2014-09-29); a time
    # (2014-09-29T12:00:00, or with Z / +00:00) is the exact instant. null = no bound.
    since: str | None = None
    until: str | None = None


@dataclass
class SessionsConfig:
    # User-keyed data (MovieLens): a new session starts after `gap` seconds without events;
    # null keeps each user's whole history as one session (the tutorial's choice).
    gap: float | None = None
    min_rating: float | None = None
    # remove exact duplicates: the same session (or user), item and timestamp twice. They are always
    # counted (stats.json `duplicates`) and warned about above 1% of events: left in, half of them
    # become "the same item again" targets that inflate Recall/MRR. drop_repeats removes them too
    # (every exact duplicate is a consecutive repeat) and also genuine repeats at other times.
    drop_duplicates: bool = False
    drop_repeats: bool = False  # remove consecutive repeats of the same item within a session


@dataclass
class FilterConfig:
    last_days: float | None = None  # keep only the final N days of the log
    min_session_length: int = 2
    min_item_support: int = 5


@dataclass
class SplitConfig:
    # days: test = sessions ending in the last `test_days`, valid = the `valid_days` before;
    # fraction: sessions sorted by end time, last `test_fraction` test, previous `valid_fraction` valid;
    # given: train/valid/test files are passed through as they are (data.valid_path/test_path).
    scheme: Literal["days", "fraction", "given"] = "fraction"
    test_days: float = 1.0
    valid_days: float = 1.0
    test_fraction: float = 0.1
    valid_fraction: float = 0.1
    # for choosing settings without the test split: drop the test period, score on the valid period
    # as "test" and carve a new valid of the same size before it
    drop_test: bool = False
    # train on the valid sessions too (no valid split): what `train.refit` sets for its run
    merge_valid: bool = False


@dataclass
class ExportConfig:
    batch_size: int = 64  # B: lanes of the global session-parallel batch
    block_steps: int = 32  # T: consecutive steps per TFRecord record
    shards: int = 2  # train lanes are split into this many shards (a multiple of the replica count)
    eval_batch_size: int = 256  # lanes for valid/test exports
    eval_shards: int = 1
    shuffle_sessions: bool = False  # False = oldest session first (GRU4Rec default)


@dataclass
class ModelConfig:
    # shared: input embedding = output item matrix (default, most accurate); embedding: separate
    # input embedding of `embedding_dim`; onehot: row lookup into the first GRU layer's input weights.
    input: Literal["shared", "embedding", "onehot"] = "shared"
    embedding_dim: int = 0
    layers: list[int] = field(default_factory=lambda: [100])
    dropout_embedding: float = 0.0  # probability of dropping
    dropout_hidden: float = 0.0
    # auto: ELU(elu_param) for bpr-max/top1-max (the official code's setting), linear for xe/softmax
    final_activation: Literal["auto", "linear", "elu"] = "auto"
    elu_param: float = 0.5
    # True (the official code): a layer's output after dropout is also the lane's carried state;
    # False: the state carried to the next step is the undropped output (regularises less)
    carry_dropout: bool = True


@dataclass
class TrainConfig:
    loss: Literal["xe", "bpr-max", "top1-max", "softmax"] = "xe"  # softmax = full softmax over all items
    n_sample: int = 2048  # extra negatives per step drawn ∝ support**sample_alpha
    sample_alpha: float = 0.5
    logq: float = 1.0  # weight of the logQ correction for cross-entropy
    # official: subtract log c (mini-batch columns) and alpha * log c (extra samples), c = training support,
    # as the official code; normalized: log(c / N) and log(c^alpha / sum c^alpha), each group on its own
    logq_form: Literal["official", "normalized"] = "official"
    bpreg: float = 1.0  # score regularisation for BPR-max
    optimizer: Literal["adagrad", "adam"] = "adagrad"  # adagrad = Adagrad with momentum, row-sparse
    lr: float = 0.1
    momentum: float = 0.0
    epochs: int = 5
    strategy: Literal["auto", "default", "mirrored", "multi_worker", "tpu"] = "auto"
    # XLA for training (single device): true = the whole block (measured 10x slower on CPU at the
    # official settings), dense = each step's forward pass, loss, gradients and the updates that
    # compile well (large item tables' row-sparse updates stay outside), false = none; auto = true on
    # a GPU, dense on a CPU, falling back to none when XLA cannot compile. A speed setting only:
    # resuming may change it.
    jit_compile: Union[bool, Literal["auto", "dense"]] = "auto"
    # stop training after this many steps (whole blocks of export.block_steps), e.g. for a benchmark
    # or a smoke run; 0 = no cap, train all `epochs`
    max_steps: int = 0
    checkpoint_every_steps: int = 0  # 0 = only at the end of each epoch
    keep_checkpoints: int = 3
    deterministic: bool = True
    # after training: train the final model anew on train + valid for the best epoch count found on
    # valid (the official protocol trains on everything before the test period), in OUTPUT_DIR/refit
    refit: bool = False
    # early stopping: end training after this many epochs without a better validation eval.metric
    # (the best checkpoint is what evaluate/recommend use); 0 = off, train all `epochs`
    patience: int = 0


@dataclass
class EvalConfig:
    cutoffs: list[int] = field(default_factory=lambda: [1, 5, 10, 20])
    ties: Literal["standard", "conservative", "median"] = "conservative"
    metric: str = "mrr@20"  # selects the best checkpoint (and what `tune` optimises)
    # coverage@K and popularity@K need a top-K list per prediction (about a third of evaluation time)
    beyond_accuracy: bool = True
    # leave the items a session already holds out of its ranking, as `sbrjob recommend` does by
    # default; for data that never repeats an item in a session (MovieLens: one rating per movie).
    # Off = the official GRU4Rec protocol (every item ranked)
    exclude_seen: bool = False
    # a score added to the items a session already holds before ranking, the same in evaluate,
    # recommend and export-model: 0 = the model's own scores (the official protocol), -inf = leave
    # them out (= exclude_seen), > 0 = favour repeats (click data). `auto` chooses it on the valid
    # split after training (a grid, by eval.metric, for the best checkpoint; metrics.json records it)
    seen_bias: Union[float, Literal["auto"]] = 0.0
    # whose items seen_bias goes to: the session's own (session-based, the official protocol's
    # scope), or also every item the session's user had before it (user-keyed data such as
    # MovieLens cut at time gaps: a user rates a movie once, so none of those is ever the next)
    seen_scope: Literal["session", "user"] = "session"
    # `sbrjob baselines`: which ones, on the same splits with the same metrics
    baselines: list[Literal["pop", "spop", "itemknn", "vsknn"]] = field(
        default_factory=lambda: ["pop", "spop", "itemknn", "vsknn"])
    knn_neighbors: int = 100  # item-kNN: similar items kept per item; V-SKNN: neighbour sessions k
    knn_sample: int = 1000  # V-SKNN: only the most recent sessions sharing an item are candidates
    itemknn_lambda: float = 20.0  # item-kNN: similarity = co / (supp_i^a * supp_j^(1-a) + lambda)
    itemknn_alpha: float = 0.5  # (0.5 and lambda 0 = plain cosine)


@dataclass
class BeamConfig:
    # where prepare and export run (docs/beam.md): inprocess (numpy on this machine), beam (Apache
    # Beam's DirectRunner here; needs the sbrjob[beam] extra), dataflow (Google Cloud Dataflow), or
    # auto (beam when the inputs exceed auto_threshold_mb, else inprocess). --runner overrides it.
    runner: Literal["inprocess", "beam", "dataflow", "auto"] = "inprocess"
    auto_threshold_mb: float = 2048.0  # `auto` picks beam above this much input (docs/beam.md: measured)
    buckets: int = 64  # shuffle partitions: sessions are grouped by hash(user or session key) % buckets
    chunk_mb: float = 64.0  # uncompressed text inputs are parsed in chunks of about this size
    # DirectRunner: parallel workers (0 = one per CPU) and how they run: multi_processing (worker
    # processes) or in_memory (one worker). multi_threading is refused: under heavy load it gave
    # outputs that differ from in-process (docs/beam.md), in_memory and multi_processing never did
    direct_num_workers: int = 0
    direct_running_mode: Literal["in_memory", "multi_processing"] = "multi_processing"
    # Dataflow (`--runner dataflow`); temp_location must be gs://. The cost is workers x hours of
    # machine_type (plus disk_size_gb per worker); max_workers caps the autoscaling.
    project: str | None = None
    region: str = "us-central1"
    temp_location: str | None = None
    machine_type: str = "n2-standard-4"
    max_workers: int = 10
    disk_size_gb: int = 50
    # the container the workers run: an image with sbrjob[beam] installed (docker/Dockerfile plus the extra)
    sdk_container_image: str | None = None
    service_account: str | None = None


@dataclass
class JobConfig:
    name: str = "job"
    output_dir: str = "runs/job"  # local path or gs://; data/, shards/, checkpoints/, metrics.json go here
    seed: int = 42
    data: DataConfig = field(default_factory=DataConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    beam: BeamConfig = field(default_factory=BeamConfig)

    # -- derived locations (one place that says where each stage writes) --
    @property
    def data_dir(self) -> str:
        return join(self.output_dir, "data")

    @property
    def shards_dir(self) -> str:
        return join(self.output_dir, "shards")

    @property
    def checkpoint_dir(self) -> str:
        return join(self.output_dir, "checkpoints")

    @property
    def metrics_path(self) -> str:
        return join(self.output_dir, "metrics.json")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def section_fingerprint(self, *sections: str) -> str:
        """Stable hash of some sections: tells whether an earlier stage's output is still valid."""
        blob = json.dumps({s: self.to_dict()[s] for s in sections}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


def join(base: str, *parts: str) -> str:
    """Join path parts for local paths and gs:// URLs alike."""
    out = base.rstrip("/")
    for p in parts:
        out = f"{out}/{p.strip('/')}"
    return out


# ---------------------------------------------------------------- validation of values


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise ValueError(f"{key}: {msg}")


def _window_bound(text: str | None, key: str, end: bool) -> float | None:
    """data.since / data.until as epoch seconds (UTC): a bare date is its day's start (since) or the
    next day's start (until: the whole day is kept); a time with no zone is UTC. ValueError('key: why')."""
    if text is None:
        return None
    text = str(text).strip()
    utc = datetime.timezone.utc
    try:
        if len(text) == 10:
            day = datetime.date.fromisoformat(text)
            at = datetime.datetime(day.year, day.month, day.day, tzinfo=utc) + datetime.timedelta(days=int(end))
        else:
            at = datetime.datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
            at = at.replace(tzinfo=utc) if at.tzinfo is None else at
    except ValueError:
        raise ValueError(f"{key}: {text!r} is not an ISO date or time; write e.g. 2014-09-29 or "
                         "2014-09-29T12:00:00Z (UTC)") from None
    _check(1970 <= at.year <= 2099, key, f"{text!r} is outside 1970..2099")
    return at.timestamp()


def window_bounds(data_cfg) -> tuple[float | None, float | None]:
    """(since, until) of `data` as epoch seconds UTC: keep events with since <= time < until."""
    return (_window_bound(data_cfg.since, "data.since", end=False),
            _window_bound(data_cfg.until, "data.until", end=True))


def validate(cfg: JobConfig) -> None:
    """Range and consistency checks that types alone cannot express. Raises ValueError('key: why')."""
    d, f, s, e, m, t, ev = cfg.data, cfg.filter, cfg.split, cfg.export, cfg.model, cfg.train, cfg.eval
    _check(d.format == "sample" or bool(d.path), "data.path", f"required for format {d.format!r}")
    _check(d.format != "table" or {"item", "time"} <= set(d.columns), "data.columns",
           "table format needs at least 'item' and 'time' plus 'session' or 'user'")
    _check(set(d.columns) <= {"session", "user", "item", "time", "rating"}, "data.columns",
           f"unknown role(s) {sorted(set(d.columns) - {'session', 'user', 'item', 'time', 'rating'})}; "
           "use session, user, item, time, rating")
    _check(cfg.sessions.gap is None or cfg.sessions.gap > 0, "sessions.gap", "must be > 0 seconds or null")
    _check(f.last_days is None or f.last_days > 0, "filter.last_days", "must be > 0 or null")
    _check(f.min_session_length >= 2, "filter.min_session_length", "must be >= 2 (a session needs a next item)")
    _check(f.min_item_support >= 1, "filter.min_item_support", "must be >= 1")
    _check(s.test_days > 0 and s.valid_days >= 0, "split.test_days", "test_days must be > 0, valid_days >= 0")
    _check(0 < s.test_fraction < 1, "split.test_fraction", "must be between 0 and 1")
    _check(0 <= s.valid_fraction < 1 and s.test_fraction + s.valid_fraction < 1, "split.valid_fraction",
           "must be >= 0 and test_fraction + valid_fraction < 1")
    _check(not s.drop_test or (s.scheme != "given" and (s.valid_days if s.scheme == "days" else s.valid_fraction) > 0),
           "split.drop_test", "needs split.scheme days or fraction with a validation split (valid_days/valid_fraction > 0)")
    _check(s.scheme != "given" or d.format in ("gru4rec", "table"), "split.scheme",
           "'given' needs data.format gru4rec or table with data.test_path")
    _check(s.scheme != "given" or bool(d.test_path), "data.test_path", "required by split.scheme 'given'")
    for key in ("test_path", "valid_path"):
        _check(s.scheme == "given" or not getattr(d, key), f"data.{key}",
               f"is only read with split.scheme 'given', but split.scheme is {s.scheme!r} (the train file would be "
               f"re-split and data.{key} ignored); set split.scheme: given, or remove data.{key}")
    _check(d.time_unit != "iso" or d.format == "table", "data.time_unit",
           "'iso' is only for data.format table (yoochoose times are always ISO-8601); use s, ms, us or ns")
    bounds = {k: _window_bound(getattr(d, k), f"data.{k}", end=k == "until") for k in ("since", "until")}
    _check(None in bounds.values() or bounds["since"] < bounds["until"], "data.until",
           f"must be after data.since ({d.since} .. {d.until} keeps nothing)")
    _check(abs(d.time_offset) < 100 * 365.25 * 86400, "data.time_offset", "must be seconds within +-100 years")
    try:
        codecs.lookup(d.encoding)
    except LookupError:
        _check(False, "data.encoding", f"unknown encoding {d.encoding!r}; use a Python codec name such as "
                                       "utf-8, latin-1 or cp1252")
    for key in ("batch_size", "block_steps", "shards", "eval_batch_size", "eval_shards"):
        _check(getattr(e, key) >= 1, f"export.{key}", "must be >= 1")
    _check(e.batch_size % e.shards == 0, "export.shards",
           f"must divide export.batch_size ({e.batch_size}) so every shard holds whole lanes")
    _check(e.eval_batch_size % e.eval_shards == 0, "export.eval_shards", "must divide export.eval_batch_size")
    _check(len(m.layers) >= 1 and all(h >= 1 for h in m.layers), "model.layers", "a non-empty list of sizes >= 1")
    _check(m.input != "embedding" or m.embedding_dim >= 1, "model.embedding_dim",
           "must be >= 1 when model.input is 'embedding'")
    for key in ("dropout_embedding", "dropout_hidden"):
        _check(0 <= getattr(m, key) < 1, f"model.{key}", "a drop probability in [0, 1)")
    _check(m.elu_param > 0, "model.elu_param", "must be > 0")
    _check(t.n_sample >= 0, "train.n_sample", "must be >= 0")
    _check(0 <= t.sample_alpha <= 1, "train.sample_alpha", "must be in [0, 1]")
    _check(t.lr > 0, "train.lr", "must be > 0")
    _check(0 <= t.momentum < 1, "train.momentum", "must be in [0, 1)")
    _check(t.epochs >= 1, "train.epochs", "must be >= 1")
    _check(t.max_steps >= 0, "train.max_steps", "must be >= 0 (0 = no cap)")
    _check(t.checkpoint_every_steps >= 0, "train.checkpoint_every_steps", "must be >= 0")
    _check(t.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
    _check(t.patience >= 0, "train.patience", "must be >= 0 (0 = no early stopping)")
    _check(t.logq >= 0 and t.bpreg >= 0, "train.logq", "logq and bpreg must be >= 0")
    _check(bool(ev.cutoffs) and all(k >= 1 for k in ev.cutoffs), "eval.cutoffs", "a non-empty list of ints >= 1")
    name, _, k = ev.metric.partition("@")
    _check(name in ("recall", "mrr", "ndcg") and k.isdigit() and int(k) in ev.cutoffs, "eval.metric",
           f"use recall@K, mrr@K or ndcg@K with K in eval.cutoffs {ev.cutoffs}")
    _check(ev.seen_bias == "auto" or -math.inf <= ev.seen_bias < math.inf, "eval.seen_bias",
           "must be a number (-inf leaves the session's items out) or auto")
    _check(not ev.exclude_seen or ev.seen_bias == 0, "eval.exclude_seen",
           f"and eval.seen_bias {ev.seen_bias} both say how to score a session's own items; keep one "
           "(exclude_seen: true is seen_bias: -inf)")
    _check(ev.knn_neighbors >= 1 and ev.knn_sample >= 1, "eval.knn_neighbors", "knn_neighbors and knn_sample must be >= 1")
    _check(ev.itemknn_lambda >= 0 and 0 <= ev.itemknn_alpha <= 1, "eval.itemknn_lambda",
           "itemknn_lambda must be >= 0 and itemknn_alpha in [0, 1]")
    b = cfg.beam
    _check(b.auto_threshold_mb >= 0, "beam.auto_threshold_mb", "must be >= 0 (megabytes of input)")
    _check(b.buckets >= 1, "beam.buckets", "must be >= 1")
    _check(b.chunk_mb > 0, "beam.chunk_mb", "must be > 0")
    _check(b.direct_num_workers >= 0, "beam.direct_num_workers", "must be >= 0 (0 = one per CPU)")
    _check(b.max_workers >= 1, "beam.max_workers", "must be >= 1")
    _check(b.disk_size_gb >= 10, "beam.disk_size_gb", "must be >= 10")
    _check(b.temp_location is None or b.temp_location.startswith("gs://"), "beam.temp_location",
           f"must be a gs:// URL (Dataflow stages files there), got {b.temp_location!r}")


# ---------------------------------------------------------------- building from mappings


def _coerce(value: Any, tp: Any, key: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _coerce(value, inner[0], key)
        for alternative in inner:  # e.g. Union[bool, Literal["auto"]]: the first that fits
            try:
                return _coerce(value, alternative, key)
            except ValueError:
                pass
        raise ValueError(f"{key}: expected {_type_text(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            hint = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            more = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise ValueError(f"{key}: {value!r} is not one of {list(args)}{more}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{key}: expected a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{key}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str) and (_EXPONENT.fullmatch(value.strip()) or value.strip().lower() in ("inf", "-inf")):
            return float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ValueError(f"{key}: expected a string, got {value!r}")
        return str(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    raise TypeError(f"unsupported config type {tp} at {key}")


def _build(cls: type, raw: Any, prefix: str = "") -> Any:
    where = prefix or "the top level"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping of keys, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in raw.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if k not in names:
            hint = difflib.get_close_matches(str(k), names, n=1)
            more = f" (did you mean {(prefix + '.' if prefix else '') + hint[0]!r}?)" if hint else ""
            raise ValueError(f"{key}: unknown key{more}")
        kwargs[k] = _coerce(v, hints[k], key)
    return cls(**kwargs)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _apply_override(raw: dict, assignment: str) -> None:
    if "=" not in assignment:
        raise SbrjobError(f"--set {assignment!r}: expected KEY=VALUE, e.g. --set train.lr=0.05")
    key, _, text = assignment.partition("=")
    parts = key.strip().split(".")
    if not all(parts):
        raise SbrjobError(f"--set {assignment!r}: {key.strip()!r} is not a key; use dotted names, "
                          "e.g. --set train.lr=0.05")
    node = raw
    for p in parts[:-1]:
        nxt = node.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise SbrjobError(f"--set {key}: {p!r} is not a section")
        node = nxt
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader) if text.strip() else None
    except yaml.YAMLError as err:
        raise SbrjobError(f"--set {assignment!r}: the value is not valid YAML ({_yaml_problem(err)}); "
                          "write lists as [1, 2] and quote text with brackets or colons, e.g. "
                          "--set 'name=\"a: b\"'") from None
    node[parts[-1]] = value


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """The same key twice in one mapping (YAML forbids it; PyYAML would keep the last silently)."""


class _UniqueKeyLoader(yaml.SafeLoader):
    """yaml.safe_load that refuses duplicate keys at every level, naming both lines."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` merges are overridden on purpose
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            first = seen.get(key)
        except TypeError:  # unhashable key: the base constructor reports it
            continue
        if first is not None:
            raise DuplicateKeyError(
                None, None, f"duplicate key {key!r} (first at line {first.line + 1}, again at line "
                f"{key_node.start_mark.line + 1}); keep one of them", key_node.start_mark)
        seen[key] = key_node.start_mark
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)
# dates stay text (data.until: 2014-09-29 is checked by the config, not turned into a date, or a
# traceback for 2014-13-01, by YAML); a copy, so yaml.SafeLoader itself is untouched
_UniqueKeyLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}


def _yaml_problem(err: yaml.YAMLError) -> str:
    return str(getattr(err, "problem", None) or err).splitlines()[0]


# ---------------------------------------------------------------- loading


def packaged_configs() -> list[str]:
    return sorted(p.name for p in resources.files("sbrjob.configs").iterdir() if p.name.endswith(".yaml"))


def _read_config_text(name: str) -> tuple[str, str]:
    """Return (text, where) for a path, gs:// URL, or the bare name of a packaged config."""
    from sbrjob import storage

    if storage.is_remote(name) or Path(name).exists():
        if not storage.is_remote(name) and Path(name).is_dir():
            raise SbrjobError(f"{name}: is a directory; --config takes a YAML file (e.g. {name}/config.yaml)")
        try:
            data = storage.read_bytes(name)
        except OSError as err:
            raise SbrjobError(f"{name}: cannot read config ({err.strerror or err})") from None
        try:
            return data.decode("utf-8").removeprefix("\ufeff"), name
        except UnicodeDecodeError as err:
            line = data[:err.start].count(b"\n") + 1
            raise SbrjobError(f"{name} line {line}: not UTF-8 text (byte 0x{data[err.start]:02x}); "
                              "save the config as UTF-8") from None
    bare = name if name.endswith(".yaml") else f"{name}.yaml"
    if "/" not in name or name.startswith("reference/"):
        packaged = resources.files("sbrjob.configs").joinpath(*bare.split("/"))
        if packaged.is_file():
            return packaged.read_text(), f"packaged config {bare}"
    raise SbrjobError(f"{name}: config file not found; give a path or one of the packaged configs "
                      f"{', '.join(packaged_configs())}")


def parse_config(raw: dict, where: str = "<config>") -> JobConfig:
    """Build and validate a JobConfig from a plain mapping; errors name the key and `where`."""
    try:
        cfg = _build(JobConfig, raw)
        validate(cfg)
    except ValueError as err:
        raise SbrjobError(f"{where}: {err}") from None
    if cfg.model.final_activation == "auto":  # resolved here, so a run's config.yaml says what it trained
        cfg.model.final_activation = "elu" if cfg.train.loss in ("bpr-max", "top1-max") else "linear"
    return cfg


def fixed_seen_bias(eval_cfg: EvalConfig) -> float | None:
    """The bias `eval_cfg` adds to a session's own items: -inf with exclude_seen, None under `auto`
    (chosen per run: `evaluate.choose_seen_bias`)."""
    if eval_cfg.exclude_seen:
        return -math.inf
    return None if eval_cfg.seen_bias == "auto" else float(eval_cfg.seen_bias)


def bias_text(value: float):
    """JSON for a bias: a number, or the string "-inf" (JSON has no infinity)."""
    return "-inf" if value == -math.inf else float(value)


# Keys added after runs existed, each with the value that behaves as before it: a run's config.yaml
# written earlier is read with that value (a new default never changes a run on resume), and the
# fingerprints leave a key out at that value (so an upgrade does not make every run stale).
ADDED_KEYS = {
    ("data", "since"): None,
    ("data", "until"): None,
    ("model", "carry_dropout"): False,
    ("train", "logq_form"): "normalized",
    ("split", "drop_test"): False,
    ("split", "merge_valid"): False,
    ("eval", "exclude_seen"): False,
    ("eval", "seen_bias"): 0.0,
    ("eval", "seen_scope"): "session",
}


def fingerprint_dict(cfg: JobConfig) -> dict[str, Any]:
    """`cfg.to_dict()` without the ADDED_KEYS that hold their before-the-key value."""
    raw = cfg.to_dict()
    for (section, key), value in ADDED_KEYS.items():
        if raw[section].get(key) == value:
            del raw[section][key]
    return raw


def load_run_config(path: str) -> JobConfig:
    """A run's stored config.yaml, with the values it was trained with for keys it predates."""
    raw, where = _read_sections(path)
    for (section, key), value in ADDED_KEYS.items():
        if isinstance(raw.get(section), dict) and key not in raw[section]:
            raw[section][key] = value
    return parse_config(raw, where)


def parse_yaml(text: str, where: str) -> Any:
    """yaml.safe_load with a one-line error that names the file and line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except DuplicateKeyError as err:
        raise SbrjobError(f"{where}: {err.problem}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise SbrjobError(f"{where}{line}: not valid YAML ({_yaml_problem(err)})") from None


def _read_sections(name: str) -> tuple[dict, str]:
    """A config file's top-level mapping and where it came from (for error lines)."""
    text, where = _read_config_text(name)
    raw = parse_yaml(text, where) or {}
    if not isinstance(raw, dict):
        raise SbrjobError(f"{where}: expected a mapping of sections at the top level")
    return raw, where


def load_config(name: str, overrides: list[str] | None = None) -> JobConfig:
    raw, where = _read_sections(name)
    for assignment in overrides or []:
        _apply_override(raw, assignment)
    if overrides:
        where = f"{where} with --set {' '.join(overrides)}"
    return parse_config(raw, where)


def config_from_dict(raw: dict, overrides: list[str] | None = None) -> JobConfig:
    raw = _deep_merge({}, raw)
    for assignment in overrides or []:
        _apply_override(raw, assignment)
    return parse_config(raw)


def dump_config(cfg: JobConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def save_config(cfg: JobConfig, directory: str) -> None:
    """Write the resolved config as `config.yaml` next to a stage's outputs."""
    from sbrjob import storage

    storage.write_text(join(directory, "config.yaml"), dump_config(cfg))


# ---------------------------------------------------------------- documentation of keys


def explain(key: str) -> str:
    """`sbrjob config --explain KEY`: the key's type, default and the schema's own comment for it."""
    import inspect

    section, _, name = key.partition(".")
    hints = typing.get_type_hints(JobConfig)
    names = [f.name for f in dataclasses.fields(JobConfig)]
    cls, owner = JobConfig, None
    if name:
        cls = hints.get(section)
        if cls is None or not dataclasses.is_dataclass(cls):
            hint = difflib.get_close_matches(section, [n for n in names if dataclasses.is_dataclass(hints[n])], n=1)
            raise SbrjobError(f"--explain {key}: unknown section {section!r}"
                              + (f" (did you mean {hint[0]!r}?)" if hint else ""))
        owner = section
    else:
        name = section
    fields = {f.name: f for f in dataclasses.fields(cls)}
    if name not in fields:
        full = [f"{owner}.{n}" if owner else n for n in fields]
        hint = difflib.get_close_matches(key, full, n=1)
        raise SbrjobError(f"--explain {key}: unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
    f = fields[name]
    default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    lines = inspect.getsource(cls).splitlines()
    at = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{name}:"))
    notes = []
    for line in reversed(lines[:at]):  # the comment block right above the field
        if not line.strip().startswith("#"):
            break
        notes.insert(0, line.strip()[1:].strip())
    if "#" in lines[at]:
        notes.append(lines[at].split("#", 1)[1].strip())
    text = f"{key}: {_type_text(typing.get_type_hints(cls)[name])} = {default!r}"
    return text + ("\n  " + "\n  ".join(notes) if notes else "")


def _type_text(tp: Any) -> str:
    """A type as a user reads it: `one of xe|bpr-max`, `float or null`, `list of int`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return " or ".join(_type_text(a) for a in inner) + (" or null" if len(inner) < len(args) else "")
    if origin is list:
        return f"list of {_type_text(args[0])}"
    if origin is dict:
        return f"mapping of {_type_text(args[0])} to {_type_text(args[1])}"
    return getattr(tp, "__name__", str(tp))

