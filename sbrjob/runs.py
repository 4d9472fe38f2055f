"""The run directory: the one owner of a run's paths, manifests, fingerprints, lock and checkpoints.

```
R/config.yaml        the run's config: written by prepare/export/train, and what evaluate, baselines,
                     recommend and export-model use (a --config that disagrees is refused)
R/data/              prepare: {train,valid,test}.parquet, items.parquet, stats.json, data_report.png,
                     manifest.json last (config fingerprint, input content ids, sha256 per file, digest)
R/shards/<split>/    export: part-*.tfrecord, manifest.json last (data digest, export fingerprint, sha256s)
R/checkpoints/       train: last/ (every N steps and each epoch end) and best/ (by eval.metric on valid)
R/metrics.json       train: config, fingerprints, epochs, best epoch, test metrics; status done at the end
R/eval_<split>.json  evaluate; R/baselines.json, R/comparison.md: baselines; R/saved_model/: export-model
R/.lock              held by the process that writes the run (fcntl locally, a precondition object on gs://)
R/attic/<stamp>/     what `--fresh` moved aside (never deleted)
```

A run is bound to its config and to the content of its inputs once it has checkpoints: anything
that would change `data/` or `shards/` under them is refused (see `stages.py`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import platform
import socket
import time
from importlib import metadata
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

from sbrjob import shards, storage
from sbrjob.config import JobConfig, fingerprint_dict, fixed_seen_bias, join, load_run_config
from sbrjob.errors import SbrjobError

log = logging.getLogger("sbrjob.runs")

SPLITS = ("train", "valid", "test")
DATA_FORMAT_VERSION = 2  # 2: inputs by content, sha256 per file, manifest digest
PREPARED_FILES = ("train.parquet", "valid.parquet", "test.parquet", "items.parquet")
INPUT_KEYS = ("path", "items_path", "valid_path", "test_path")  # data.* keys naming input files
# train settings that may change between a run and its resumption without invalidating checkpoints
RESUMABLE_KEYS = ("epochs", "strategy", "jit_compile", "checkpoint_every_steps", "keep_checkpoints", "patience",
                  "refit", "max_steps")


class Run:
    """Paths of one run directory (local or gs://)."""

    def __init__(self, output_dir: str):
        self.dir = str(output_dir).rstrip("/") or "/"

    def __repr__(self) -> str:
        return f"Run({self.dir!r})"

    config_path = property(lambda self: join(self.dir, "config.yaml"))
    data_dir = property(lambda self: join(self.dir, "data"))
    shards_dir = property(lambda self: join(self.dir, "shards"))
    checkpoint_dir = property(lambda self: join(self.dir, "checkpoints"))
    metrics_path = property(lambda self: join(self.dir, "metrics.json"))
    tensorboard_dir = property(lambda self: join(self.dir, "tensorboard"))
    lock_path = property(lambda self: join(self.dir, ".lock"))
    data_manifest_path = property(lambda self: join(self.dir, "data", "manifest.json"))
    refit_dir = property(lambda self: join(self.dir, "refit"))  # train.refit's run (train + valid)

    def split_dir(self, split: str) -> str:
        return join(self.shards_dir, split)

    def eval_path(self, split: str) -> str:
        return join(self.dir, f"eval_{split}.json")

    # ---------------------------------------------------------------- what the run holds

    def saved_config(self) -> Optional[JobConfig]:
        if not storage.exists(self.config_path):
            return None
        cfg = load_run_config(self.config_path)
        cfg.output_dir = self.dir  # a run may be moved or read through another path
        return cfg

    def metrics(self) -> Optional[dict]:
        try:
            return json.loads(storage.read_text(self.metrics_path))
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise SbrjobError(f"{self.metrics_path}: not valid JSON; re-run `sbrjob train` on this run") from None

    def has_checkpoints(self) -> bool:
        return any(name.endswith(".index") for name in storage.list_files(self.checkpoint_dir))

    def move_aside(self) -> Optional[str]:
        """`--fresh`: move every output of the run (not the lock) to attic/<stamp>/; returns that path."""
        names = [n for n in _top_level(self.dir) if n not in ("attic", ".lock")]
        if not names:
            return None
        attic = join(self.dir, "attic", time.strftime("%Y%m%d-%H%M%S"))
        for name in names:
            src, dest = join(self.dir, name), join(attic, name)
            if _is_dir(src):
                storage.move_tree(src, dest)
            else:
                _move_file(src, dest)
        return attic

    @contextlib.contextmanager
    def lock(self, command: str, break_lock: bool = False) -> Iterator[None]:
        with run_lock(self, command, break_lock):
            yield


def _top_level(root: str) -> list[str]:
    return sorted({rel.split("/", 1)[0] for rel in storage.list_files(root)})


def _is_dir(path: str) -> bool:
    return Path(path).is_dir() if not storage.is_remote(path) else bool(storage.list_files(path))


def _move_file(src: str, dest: str) -> None:
    storage.write_bytes(dest, storage.read_bytes(src))
    storage.delete(src)


# ---------------------------------------------------------------- inputs by content


def input_files(cfg: JobConfig) -> list[tuple[str, str]]:
    """(config key, path) of every raw input the prepared data depends on."""
    if cfg.data.format == "sample":
        from sbrjob.sample import sample_dir

        return [("data.path", str(Path(sample_dir()) / "ratings.dat.gz")),
                ("data.items_path", str(Path(sample_dir()) / "movies.dat"))]
    out = []
    for key in INPUT_KEYS:
        path = getattr(cfg.data, key)
        if path and (key not in ("valid_path", "test_path") or cfg.split.scheme == "given"):
            out.append((f"data.{key}", str(path)))
    return out


def _sha256_file(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def input_identity(cfg: JobConfig, previous: Optional[list[dict]] = None) -> list[dict]:
    """Content ids of the inputs: local files by sha256 (recomputed only when size or mtime changed
    since `previous`), gs:// objects by generation and crc32c."""
    known = {(r.get("key"), r.get("path")): r for r in previous or []}
    out = []
    for key, path in input_files(cfg):
        try:
            stat = storage.content_id(path)
        except IsADirectoryError:
            raise SbrjobError(f"{key} {path}: is a directory; give the input file") from None
        except FileNotFoundError:
            raise SbrjobError(f"{key} {path}: input file not found; check {key}") from None
        record = {"key": key, "path": path, **stat}
        if not storage.is_remote(path):
            old = known.get((key, path))
            same = old is not None and all(old.get(k) == v for k, v in stat.items()) and old.get("sha256")
            record["sha256"] = old["sha256"] if same else _sha256_file(path)
        out.append(record)
    return out


def _content(record: dict) -> str:
    return record.get("sha256") or f"crc32c:{record.get('crc32c')}:{record.get('size')}"


def input_changes(old: list[dict], new: list[dict]) -> list[str]:
    """One phrase per input whose content differs (paths may differ: content is what counts)."""
    before = {r["key"]: r for r in old or []}
    after = {r["key"]: r for r in new}
    out = []
    for key in sorted(set(before) | set(after)):
        a, b = before.get(key), after.get(key)
        if a is None or b is None:
            out.append(f"{key}: {'none' if a is None else a['path']} -> {'none' if b is None else b['path']}")
        elif _content(a) != _content(b):
            out.append(f"{key}: the content of {b['path']} differs from the file the run was prepared from "
                       f"({a['path']}, {_content(a)[:12]} -> {_content(b)[:12]})")
    return out


# ---------------------------------------------------------------- fingerprints


def _section_hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_fingerprint(cfg: JobConfig) -> str:
    """What the prepared data depends on in the config (inputs count by content, not by path)."""
    raw = fingerprint_dict(cfg)
    data = {k: v for k, v in raw["data"].items() if k not in INPUT_KEYS}
    return _section_hash({"data": data, **{s: raw[s] for s in ("sessions", "filter", "split")}})


def export_fingerprint(cfg: JobConfig) -> str:
    """What the shards depend on besides the data: the export section (and the seed when it shuffles)."""
    raw = fingerprint_dict(cfg)
    return _section_hash({"export": raw["export"], **({"seed": cfg.seed} if cfg.export.shuffle_sessions else {})})


def run_fingerprint(cfg: JobConfig, train_manifest: dict) -> str:
    """What a checkpoint depends on: model, the train settings that change the math, seed and the shards."""
    raw = fingerprint_dict(cfg)
    train = {k: v for k, v in raw["train"].items() if k not in RESUMABLE_KEYS}
    return _section_hash({"model": raw["model"], "train": train, "seed": cfg.seed,
                          "data": train_manifest.get("data_digest"), "export": train_manifest.get("export_fingerprint")})


def code_fingerprint() -> str:
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------- config against a run


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v and k != "columns":
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


SCOPES = {  # the config sections each kind of output depends on
    "data": ("data", "sessions", "filter", "split"),
    "shards": ("data", "sessions", "filter", "split", "export", "seed"),
    "model": ("data", "sessions", "filter", "split", "export", "seed", "model", "train", "eval.metric"),
    "use": ("data", "sessions", "filter", "split", "export", "seed", "model", "train"),
}


def config_changes(old: JobConfig, new: JobConfig, scope: str = "model") -> list[str]:
    """'key: old -> new' for every setting in `scope` that differs.

    Scopes: `data` (what prepare depends on), `shards` (+ export, seed), `model` (what a checkpoint
    depends on, and eval.metric, which picks `best`), `use` (a trained run evaluated or served under
    any eval settings). Never compared: output_dir and name; the input paths (their content is
    compared instead); the train keys a run may resume with.
    """
    a, b = _flat(old.to_dict()), _flat(new.to_dict())
    skip = {f"data.{k}" for k in INPUT_KEYS} | {f"train.{k}" for k in RESUMABLE_KEYS}
    wanted = SCOPES[scope]
    out = []
    for key in sorted(set(a) | set(b)):
        if key in skip or not any(key == w or key.startswith(w + ".") for w in wanted):
            continue
        if a.get(key) != b.get(key):
            out.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


# ---------------------------------------------------------------- prepared data, as consumers read it


@dataclasses.dataclass
class Prepared:
    """A run's prepared data: its manifest (read and checked once), and readers that verify each
    file's sha256 against it on the bytes they parse."""

    data_dir: str
    manifest: dict

    @classmethod
    def open(cls, data_dir: str) -> "Prepared":
        path = join(data_dir, "manifest.json")
        manifest = read_json_manifest(path, "run `sbrjob prepare --force`")
        if manifest is None:
            raise SbrjobError(f"{data_dir}: no prepared data (manifest.json missing); run `sbrjob prepare`")
        if manifest.get("format_version") != DATA_FORMAT_VERSION:
            raise SbrjobError(f"{path}: prepared by an older sbrjob (format {manifest.get('format_version')}); "
                              "run `sbrjob prepare --force` (or `sbrjob train --fresh` on a trained run)")
        return cls(data_dir, manifest)

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    @property
    def n_items(self) -> int:
        return int(self.manifest["n_items"])

    def read_table(self, name: str):
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = join(self.data_dir, name)
        want = self.manifest["files"].get(name)
        try:
            data = storage.read_bytes(path)
        except FileNotFoundError:
            raise SbrjobError(f"{path}: missing although {self.data_dir}/manifest.json lists it; "
                              "run `sbrjob prepare --force`") from None
        if hashlib.sha256(data).hexdigest() != want:
            raise SbrjobError(f"{path}: content does not match its sha256 in manifest.json (corrupted or "
                              "edited); run `sbrjob prepare --force`")
        return pq.read_table(pa.BufferReader(data))

    def load_split(self, split: str):
        """One split: session (int64), item (int32), time (float64) and lineage columns, sorted by (session, time, item)."""
        if split not in SPLITS:
            raise SbrjobError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
        return self.read_table(f"{split}.parquet").to_pandas()

    def load_items(self):
        """The vocabulary in index order: index (int32), item_id (str), title, genres, support (int64)."""
        return self.read_table("items.parquet").to_pandas().sort_values("index").reset_index(drop=True)

    def item_support(self) -> np.ndarray:
        """Train events per item, in vocabulary index order (float64): sampler, logQ, popularity."""
        return self.load_items()["support"].to_numpy(np.float64)


def read_json_manifest(path: str, remedy: str) -> Optional[dict]:
    """A manifest.json, checked for JSON and its digest; None when absent."""
    try:
        manifest = json.loads(storage.read_text(path))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise SbrjobError(f"{path}: not valid JSON ({err}); {remedy}") from None
    if not isinstance(manifest, dict):
        raise SbrjobError(f"{path}: not a JSON object; {remedy}")
    if "digest" in manifest and manifest["digest"] != shards.manifest_digest(manifest):
        raise SbrjobError(f"{path}: edited after it was written (digest mismatch); {remedy}")
    return manifest


def data_manifest(cfg: JobConfig, inputs: list[dict], files: dict[str, str], n_items: int, splits: dict) -> dict:
    from sbrjob import __version__

    return shards.sealed({"format_version": DATA_FORMAT_VERSION, "sbrjob": __version__,
                   "fingerprint": data_fingerprint(cfg), "inputs": inputs, "files": files,
                   "n_items": n_items, "splits": splits})


def data_is_current(manifest: Optional[dict], cfg: JobConfig, inputs: list[dict]) -> bool:
    return (manifest is not None and manifest.get("format_version") == DATA_FORMAT_VERSION
            and manifest.get("fingerprint") == data_fingerprint(cfg) and not input_changes(manifest["inputs"], inputs))


def shard_identity(data: Prepared, cfg: JobConfig) -> dict:
    """Keys tying shards to one prepared dataset (its digest) and these export settings."""
    return {"data_digest": data.digest, "n_items": data.n_items, "export_fingerprint": export_fingerprint(cfg)}


def shards_are_current(split_dir: str, data: Prepared, cfg: JobConfig) -> bool:
    """True when the split's shards exist, in this format, for this prepared data and export settings."""
    try:
        m = shards.read_manifest(split_dir)
    except SbrjobError:
        return False
    if any(m.get(k) != v for k, v in shard_identity(data, cfg).items()):
        return False
    return set(m["files"]) <= set(storage.list_files(split_dir))


# ---------------------------------------------------------------- one writer per run


_HELD: dict[str, int] = {}  # lock paths this process holds -> depth (re-entrant within a process)


@contextlib.contextmanager
def run_lock(run: Run, command: str, break_lock: bool = False) -> Iterator[None]:
    """Hold the run's lock for a writing command; a second process on the same run is refused at once.

    Locally an fcntl lock on R/.lock (released by the kernel when the process dies, so it is never
    stale). On gs:// an object created with `if_generation_match=0`; a job killed without cleanup
    leaves it behind, and `--break-lock` removes it (only when that job is surely gone).
    """
    key = run.lock_path
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    holder = json.dumps({"command": command, "pid": os.getpid(), "host": socket.gethostname(),
                         "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    if storage.is_remote(key):
        if break_lock:
            storage.delete(key)
        if not storage.create_exclusive(key, holder):
            raise SbrjobError(f"{run.dir} is in use: {_holder(key)}; wait for it to finish, or if that job is "
                              "gone (killed without cleanup) re-run with --break-lock")
        release = lambda: storage.delete(key)  # noqa: E731
    else:
        Path(run.dir).mkdir(parents=True, exist_ok=True)
        fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SbrjobError(f"{run.dir} is in use: {_holder(key)}; wait for it to finish or use another "
                              "output_dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, holder.encode())

        def release():
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    _HELD[key] = 1
    try:
        yield
    finally:
        del _HELD[key]
        release()


def _holder(path: str) -> str:
    try:
        h = json.loads(storage.read_text(path))
        return f"`sbrjob {h['command']}` (pid {h['pid']} on {h['host']}, since {h['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another sbrjob process holds its lock"


# ---------------------------------------------------------------- checkpoints


def checkpoint_number(path: str) -> int:
    return int(path.rsplit("-", 1)[1])


def checkpoint_paths(directory: str) -> list[str]:
    """Checkpoint prefixes in a local directory, oldest first (from its `checkpoint` state file)."""
    import tensorflow as tf

    state = tf.train.get_checkpoint_state(directory)  # relative entries come back joined to `directory`
    return [] if state is None else list(state.all_model_checkpoint_paths)


def readable(path: str) -> Optional[str]:
    """None when every tensor of the checkpoint reads back with its checksum; else why not."""
    import tensorflow as tf

    try:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    except Exception as err:  # TF raises OpError, ValueError or IndexError ("Read less bytes") here
        return (str(err).strip().splitlines() or [type(err).__name__])[0][:160]
    return None


def newest_readable(directory: str, at_most: Optional[int] = None) -> Optional[str]:
    """The newest checkpoint in `directory` (numbered <= `at_most`) that reads back whole; older
    ones are the fallback when the newest was truncated or corrupted."""
    for path in reversed(checkpoint_paths(directory)):
        if at_most is not None and checkpoint_number(path) > at_most:
            continue
        why = readable(path)
        if why is None:
            return path
        log.warning("checkpoint %s cannot be read (%s); falling back to the previous one", path, why)
    return None


def find_checkpoint(run: Run, which: str = "best") -> str:
    """A checkpoint path of the run: `best` (falls back to `last` when validation never ran), `last`,
    or an explicit path."""
    root = storage.work_dir(run.checkpoint_dir)  # a local mirror when gs://
    if which not in ("best", "last"):
        import tensorflow as tf

        path = tf.train.latest_checkpoint(which) or which
        if not Path(path + ".index").exists():
            raise SbrjobError(f"--checkpoint {which}: no checkpoint there; use best, last or a ckpt-N prefix")
        return path
    path = newest_readable(join(root, "last")) if which == "last" else best_or_last(root)
    if path is None:
        what = "'last' checkpoint" if which == "last" else "checkpoint"
        raise SbrjobError(f"{run.dir}: no readable {what}; run `sbrjob train` first")
    return path


def best_or_last(root: str) -> Optional[str]:
    """The newest readable `best` under a checkpoint directory that is not ahead of the newest
    readable `last` (a kill between the two saves leaves one), else that `last`; None when neither."""
    last = newest_readable(join(root, "last"))
    best = newest_readable(join(root, "best"), at_most=None if last is None else checkpoint_number(last))
    return best or last


def stored_fingerprint(path: str) -> Optional[str]:
    import tensorflow as tf

    try:
        value = tf.train.load_checkpoint(path).get_tensor("progress/fingerprint/.ATTRIBUTES/VARIABLE_VALUE")
    except (tf.errors.OpError, ValueError):
        return None
    return value.decode() if isinstance(value, bytes) else str(value)


@dataclasses.dataclass
class Trained:
    run: Run
    cfg: JobConfig
    model: object
    items: object  # DataFrame in index order
    checkpoint: str


def load_trained(run_dir: str, which: str = "best") -> Trained:
    """A finished or running job's model from its own config and prepared vocabulary; `which` = best,
    last or a checkpoint path."""
    import tensorflow as tf

    from sbrjob.model import GRU4Rec

    run = Run(run_dir)
    cfg = run.saved_config()
    if cfg is None:
        raise SbrjobError(f"{run.config_path}: not found; is {run_dir} the output_dir of a `sbrjob train` run?")
    path = find_checkpoint(run, which)
    items = Prepared.open(run.data_dir).load_items()
    model = GRU4Rec(cfg.model, len(items), seed=cfg.seed)
    try:
        tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as err:
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise SbrjobError(f"{path}: does not fit the model of {run.config_path} ({first}); the run's config or "
                          "data was changed after training: retrain with `sbrjob train --fresh`") from None
    return Trained(run, cfg, model, items, path)


def seen_bias(run: Run, cfg: JobConfig) -> Optional[float]:
    """What a run's scoring adds to a session's own items, as its test was scored: `eval.seen_bias`
    (under `auto`, the value chosen on valid, from metrics.json), -inf with `eval.exclude_seen`;
    None when the run has no such rule (or `auto` has not chosen yet)."""
    fixed = fixed_seen_bias(cfg.eval)
    if fixed is not None:
        return fixed or None
    try:
        chosen = (json.loads(storage.read_text(run.metrics_path)).get("test") or {}).get("seen_bias")
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return None if chosen is None else float(chosen) or None


# ---------------------------------------------------------------- metrics.json


def _metric_value(record: dict, metric: str) -> Optional[float]:
    valid = record.get("valid") or {}
    value = valid.get(metric)
    return None if value is None or not valid.get("events", 1) else float(value)


def is_best(history: list[dict], metric: str) -> bool:
    """True when the newest epoch is the best so far by the validation metric (or there is no validation)."""
    values = [_metric_value(r, metric) for r in history]
    if values[-1] is None:
        return True
    return all(v is None or values[-1] > v for v in values[:-1])


def best_epoch(history: list[dict], metric: str) -> Optional[int]:
    best, best_value = None, None
    for r in history:
        v = _metric_value(r, metric)
        if v is None:
            best = r["epoch"]
        elif best_value is None or v > best_value:
            best, best_value = r["epoch"], v
    return best


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("sbrjob", "tensorflow", "tensorflow-cpu", "keras", "numpy", "pandas"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def _device() -> dict:
    import tensorflow as tf

    names = []
    for g in tf.config.list_physical_devices("GPU"):
        try:
            names.append(tf.config.experimental.get_device_details(g).get("device_name", g.name))
        except (ValueError, RuntimeError):
            names.append(g.name)
    return {"host": platform.node(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "gpus": names, "tpu": bool(tf.config.list_logical_devices("TPU"))}


class MetricsRecord:
    """metrics.json: rewritten whole (atomically) after every epoch and at the end."""

    def __init__(self, cfg: JobConfig, kind: str, replicas: int, manifest: dict):
        self.cfg, self.path = cfg, Run(cfg.output_dir).metrics_path
        self.static = {
            "name": cfg.name,
            "config": cfg.to_dict(),
            "fingerprints": {"data": manifest.get("data_digest"), "export": manifest.get("export_fingerprint"),
                             "run": run_fingerprint(cfg, manifest), "code": code_fingerprint()},
            "versions": _versions(),
            "device": _device(),
            "strategy": kind,
            "replicas": replicas,
            "train_shards": {k: manifest.get(k) for k in ("lanes", "block_steps", "blocks", "steps", "pairs", "padding")},
        }
        init = read_init_record(Run(cfg.output_dir))
        if init is not None:  # a warm start (warmstart.py): where the first weights came from
            self.static["init_from"] = init

    def build(self, history: list[dict], test: Optional[dict] = None, done: bool = False) -> dict:
        out = dict(self.static)
        out["status"] = "done" if done else "training"
        out["epochs"] = history
        out["eval_metric"] = self.cfg.eval.metric
        out["best_epoch"] = best_epoch(history, self.cfg.eval.metric)
        out["stopped"] = (history[-1].get("stopped") if history else None)
        out["test"] = test
        return out

    def write(self, history: list[dict], test: Optional[dict] = None, done: bool = False) -> dict:
        out = self.build(history, test, done)
        storage.write_text(self.path, json.dumps(out, indent=2, default=float) + "\n")
        return out


INIT_RECORD = "init_from.json"  # a warm-started run: the source run, checkpoint, fingerprint, item counts


def read_init_record(run: Run) -> Optional[dict]:
    """Where a warm-started run's first weights came from (None for a run trained from scratch)."""
    path = join(run.dir, INIT_RECORD)
    try:
        return json.loads(storage.read_text(path))
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise SbrjobError(f"{path}: not valid JSON; re-run `sbrjob train --fresh` on this run") from None


def is_complete(metrics: Optional[dict], cfg: JobConfig) -> bool:
    """A finished run: status done, every epoch trained (or stopped early by a hook), test evaluated."""
    if not metrics or metrics.get("status") != "done":
        return False
    history = metrics.get("epochs") or []
    return bool(history) and (len(history) >= cfg.train.epochs or bool(history[-1].get("stopped")))
