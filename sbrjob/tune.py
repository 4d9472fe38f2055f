"""Hyperparameter search: `sbrjob tune` with Optuna on this machine (Vertex AI: `sbrjob.tune_vertex`).

Every trial is an ordinary training run (`sbrjob.train.train`) in OUTPUT_DIR/tune/trial-NNN with
its own metrics.json, scored by its best VALIDATION metric (`eval.metric`); test metrics are only
reported next to it, never used to choose. The study lives in OUTPUT_DIR/tune/study.db (SQLite),
so a killed search resumes and counts the trials already finished.

A search space maps dotted config keys to ranges; the value type comes from the config schema:

    train.lr: {low: 0.01, high: 0.25, log: true}
    export.batch_size: {low: 32, high: 256, step: 16}
    train.loss: {choices: [xe, bpr-max]}
    train.bpreg: {low: 0.0, high: 2.0, when: {train.loss: bpr-max}}
    model.dropout_embedding: 0.0     # pinned: not searched
    train.momentum: null             # not searched: keep the config's value

`model.layers` takes one size and means a single GRU layer of that size.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import tempfile
import time
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Optional


from sbrjob import storage
from sbrjob.config import JobConfig, dump_config, join, parse_config, parse_yaml
from sbrjob.errors import SbrjobError

TUNABLE_SECTIONS = ("export", "model", "train")  # data/split sections must not vary: same validation split
SPEC_FIELDS = ("low", "high", "log", "step", "choices", "when")

# The ranges the GRU4Rec authors searched (~200 Optuna trials per dataset and loss).
# `when` keeps each loss's own parameters: bpreg only matters for BPR-max, and full softmax draws
# no samples. Conditions are read from the trial's config, so they work whether the loss is fixed
# by the config or searched itself.
DEFAULT_SPACE: dict[str, Any] = {
    "model.layers": {"low": 64, "high": 512, "step": 32},
    "export.batch_size": {"low": 32, "high": 256, "step": 16},
    "train.lr": {"low": 0.01, "high": 0.25, "log": True},
    "model.dropout_embedding": {"low": 0.0, "high": 0.7},
    "model.dropout_hidden": {"low": 0.0, "high": 0.7},
    "train.momentum": {"low": 0.0, "high": 0.9},
    "train.sample_alpha": {"low": 0.0, "high": 1.0, "when": {"train.loss": ["xe", "bpr-max", "top1-max"]}},
    "train.bpreg": {"low": 0.0, "high": 2.0, "when": {"train.loss": ["bpr-max"]}},
}

# `--space local`: a neighbourhood of the config's own values, for a config that is already good
# (at 20 trials the wide space above found nothing better than the shipped configs; this one did
# on YOOCHOOSE: BENCHMARKS.md, #14 round 4). Half-widths: "x" multiplies, "+" adds.
LOCAL_WIDTHS: dict[str, tuple[str, float]] = {
    "train.lr": ("x", 2.0),
    "model.dropout_embedding": ("+", 0.15),
    "model.dropout_hidden": ("+", 0.15),
    "train.momentum": ("+", 0.2),
    "train.sample_alpha": ("+", 0.25),
    "train.bpreg": ("+", 0.5),
}
LOCAL_SPACE = "local"


def local_space(cfg: JobConfig) -> dict[str, Any]:
    """`--space local`: the default keys, each over a range around the config's value (layer size
    0.75-1.5x and batch 0.5-1x in steps of 32 through the value, lr /2..x2 on a log scale, dropouts
    +-0.15, momentum +-0.2, sample_alpha +-0.25, bpreg +-0.5), within the default ranges, so the
    config itself is trial 000."""
    raw: dict[str, Any] = {}
    base = cfg.to_dict()
    for key, spec in DEFAULT_SPACE.items():
        value = _get(base, key)
        when = {"when": spec["when"]} if "when" in spec else {}
        if key in ("model.layers", "export.batch_size"):  # steps of 32 from the config's value (trial 000)
            value = value[0] if isinstance(value, list) else value
            lo, hi = (0.75, 1.5) if key == "model.layers" else (0.5, 1.0)
            down = min(int(value * (1 - lo)) // 32, (value - spec["low"]) // 32)
            up = min(int(value * (hi - 1)) // 32, (spec["high"] - value) // 32)
            if down > 0 or up > 0:
                raw[key] = {"low": value - 32 * max(down, 0), "high": value + 32 * max(up, 0), "step": 32, **when}
            continue
        kind, width = LOCAL_WIDTHS[key]
        low, high = (value / width, value * width) if kind == "x" else (value - width, value + width)
        low, high = round(max(spec["low"], low), 6), round(min(spec["high"], high), 6)
        raw[key] = {"low": low, "high": high, **({"log": True} if kind == "x" else {}), **when}
    return raw


# ---------------------------------------------------------------- search space


@dataclass(frozen=True)
class Param:
    key: str  # dotted config key, e.g. "train.lr"
    kind: Literal["float", "int", "categorical"]
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    step: Optional[float] = None
    choices: tuple = ()
    when: tuple[tuple[str, tuple], ...] = ()  # ((key, allowed values), ...): searched only then

    def is_active(self, raw: dict) -> bool:
        return all(_get(raw, k) in allowed for k, allowed in self.when)

    def grid(self) -> list:
        """All values of a stepped range (for services that want discrete values)."""
        n = int(round((self.high - self.low) / self.step))
        vals = [self.low + i * self.step for i in range(n + 1)]
        return [int(v) for v in vals] if self.kind == "int" else [round(v, 12) for v in vals]


def _get(raw: dict, key: str) -> Any:
    section, _, name = key.partition(".")
    return raw[section][name]


def _field_type(key: str) -> Any:
    """The config schema's type for a dotted key, or None when there is no such key."""
    section, _, name = key.partition(".")
    cls_hints = typing.get_type_hints(JobConfig)
    if section not in cls_hints or not dataclasses.is_dataclass(cls_hints[section]) or not name:
        return None
    return typing.get_type_hints(cls_hints[section]).get(name)


def _kind(tp: Any) -> str:
    if typing.get_origin(tp) is Literal or tp is str or tp is bool:
        return "categorical"
    if tp is int or (typing.get_origin(tp) is list and typing.get_args(tp) == (int,)):
        return "int"
    if tp is float:
        return "float"
    return ""


def _to_config_value(key: str, value: Any) -> Any:
    """The value as the config stores it: `model.layers` 128 -> [128], ints stay ints."""
    tp = _field_type(key)
    if typing.get_origin(tp) is list:
        return value if isinstance(value, list) else [int(value)]
    return value


def parse_space(raw: Any, where: str, cfg: JobConfig) -> list[Param]:
    """Validate a space mapping against the config schema; conditional parameters come last."""
    if not isinstance(raw, dict):
        raise SbrjobError(f"{where}: a search space is a mapping of config keys (e.g. train.lr) to ranges")
    base = cfg.to_dict()
    params: list[Param] = []
    for key, spec in raw.items():
        key = str(key)
        tp = _field_type(key)
        if tp is None or key.partition(".")[0] not in TUNABLE_SECTIONS:
            raise SbrjobError(f"{where}: {key}: unknown key; the space takes dotted keys of the "
                              f"{', '.join(TUNABLE_SECTIONS)} sections, e.g. train.lr")
        kind = _kind(tp)
        if spec is None or not isinstance(spec, dict):
            continue  # null = keep the config's value; a plain value = pinned (applied in resolve_space)
        unknown = sorted(set(spec) - set(SPEC_FIELDS))
        if unknown:
            raise SbrjobError(f"{where}: {key}: unknown field(s) {unknown}; use {', '.join(SPEC_FIELDS)}")
        when = spec.get("when") or {}
        if not isinstance(when, dict):
            raise SbrjobError(f"{where}: {key}.when: expected a mapping such as {{train.loss: bpr-max}}")
        for wkey in when:
            if _field_type(str(wkey)) is None:
                raise SbrjobError(f"{where}: {key}.when: {wkey}: unknown config key")
        cond = tuple((str(k), tuple(v if isinstance(v, list) else [v])) for k, v in when.items())
        if "choices" in spec:
            choices = spec["choices"]
            if not isinstance(choices, list) or not choices or {"low", "high", "log", "step"} & set(spec):
                raise SbrjobError(f"{where}: {key}: choices must be a non-empty list (and no low/high)")
            params.append(Param(key, "categorical", choices=tuple(choices), when=cond))
            continue
        if kind == "categorical":
            raise SbrjobError(f"{where}: {key}: takes a list of choices, e.g. {{choices: [...]}}")
        if kind == "" or "low" not in spec or "high" not in spec:
            raise SbrjobError(f"{where}: {key}: give a range {{low: .., high: ..}} (optionally log, step)")
        low, high, step, log = spec["low"], spec["high"], spec.get("step"), bool(spec.get("log", False))
        nums = [v for v in (low, high, step) if v is not None]
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in nums):
            raise SbrjobError(f"{where}: {key}: low, high and step must be numbers")
        if kind == "int" and any(float(v) != int(v) for v in nums):
            raise SbrjobError(f"{where}: {key}: is an integer setting; low, high and step must be integers")
        if not low < high:
            raise SbrjobError(f"{where}: {key}: low ({low}) must be below high ({high})")
        if log and (low <= 0 or step is not None):
            raise SbrjobError(f"{where}: {key}: a log range needs low > 0 and no step")
        if step is not None and step <= 0:
            raise SbrjobError(f"{where}: {key}: step must be > 0")
        if step is not None and abs(round((high - low) / step) * step - (high - low)) > 1e-9:
            raise SbrjobError(f"{where}: {key}: high - low must be a multiple of step {step}")
        cast = int if kind == "int" else float
        params.append(Param(key, kind, cast(low), cast(high), log,
                            None if step is None else cast(step), when=cond))
    conditional = {p.key for p in params if p.when}
    for p in params:
        for wkey, _ in p.when:
            if wkey in conditional:
                raise SbrjobError(f"{where}: {p.key}.when: {wkey} is itself conditional; "
                                  "conditions may only name unconditional keys")
    # Every bound and choice must make a valid config: a range that cannot work fails now, not at trial 37.
    for p in params:
        for value in (p.choices or (p.low, p.high)):
            trial_raw = _with_values(base, {p.key: value})
            try:
                parse_config(trial_raw, f"{where}: {p.key}={value!r}")
            except SbrjobError as err:
                raise SbrjobError(f"{err} (adjust the range)") from None
    return sorted(params, key=lambda p: bool(p.when))


def pinned_values(raw: dict) -> dict[str, Any]:
    """Plain values in a space file: fixed for every trial."""
    return {str(k): v for k, v in raw.items() if v is not None and not isinstance(v, dict)}


def resolve_space(cfg: JobConfig, space_file: Optional[str] = None) -> tuple[list[Param], dict[str, Any]]:
    """The default space, overridden key by key by a space file, or `local` (`local_space`);
    returns (params, pinned values)."""
    raw = dict(DEFAULT_SPACE)
    where = "default search space"
    if space_file == LOCAL_SPACE:
        raw, where = local_space(cfg), "local search space (around the config's values)"
    elif space_file:
        try:
            text = storage.read_text(space_file)
        except (OSError, FileNotFoundError) as err:
            raise SbrjobError(f"{space_file}: cannot read search space ({err})") from None
        over = parse_yaml(text, space_file) or {}
        if not isinstance(over, dict):
            raise SbrjobError(f"{space_file}: a search space is a mapping of config keys to ranges")
        raw.update(over)
        where = space_file
    params = parse_space(raw, where, cfg)
    pinned = pinned_values(raw)
    if pinned:
        parse_config(_with_values(cfg.to_dict(), pinned), f"{where} (pinned values)")
    return params, pinned


def _with_values(base: dict, values: dict[str, Any]) -> dict:
    raw = json.loads(json.dumps(base))  # deep copy of plain data
    for key, value in values.items():
        section, _, name = key.partition(".")
        raw[section][name] = _to_config_value(key, value)
    return raw


def trial_config(cfg: JobConfig, values: dict[str, Any], output_dir: str) -> JobConfig:
    """`cfg` with the trial's values applied, writing to its own output_dir."""
    raw = _with_values(cfg.to_dict(), values)
    raw["output_dir"] = output_dir
    return parse_config(raw, f"trial config {output_dir}")


def suggest(trial, params: list[Param], cfg: JobConfig, pinned: dict[str, Any]) -> dict[str, Any]:
    """Ask Optuna for one value per active parameter (conditions read from the config so far)."""
    values = dict(pinned)
    raw = _with_values(cfg.to_dict(), values)
    for p in params:
        if not p.is_active(raw):
            continue
        if p.kind == "categorical":
            v = trial.suggest_categorical(p.key, list(p.choices))
        elif p.kind == "int":
            v = trial.suggest_int(p.key, p.low, p.high, step=p.step or 1, log=p.log)
        else:
            v = trial.suggest_float(p.key, p.low, p.high, step=p.step, log=p.log)
        values[p.key] = v
        raw = _with_values(raw, {p.key: v})
    return values


# ---------------------------------------------------------------- reading a trial's metrics


def _metric_key(metric: str) -> tuple[str, int]:
    name, _, k = metric.partition("@")
    return name, int(k)


def summarize_metrics(metrics: dict, metric: str) -> dict[str, Any]:
    """Best validation value of `metric` over epochs, the validation/test metrics, events/s.

    Reads the training contract's metrics.json: `epochs` (per-epoch dicts with `valid` and
    `train_events_per_s`), `best_epoch`, `test`.
    """
    epochs = metrics.get("epochs") or []
    curve = [(int(e.get("epoch", i + 1)), float(e["valid"][metric]))
             for i, e in enumerate(epochs) if isinstance(e.get("valid"), dict) and metric in e["valid"]]
    best = metrics.get("best_epoch")
    valid = metrics.get("valid")
    if not isinstance(valid, dict) and epochs:
        chosen = [e for e in epochs if e.get("epoch") == best] or epochs[-1:]
        valid = chosen[0].get("valid")
    valid = valid if isinstance(valid, dict) else {}
    if metric in valid:
        value = float(valid[metric])
    elif curve:
        value = max(v for _, v in curve)
    else:
        raise SbrjobError(f"metrics.json has no validation {metric}: is the validation split empty? "
                          "tune needs split.valid_fraction > 0 (or valid_days > 0)")
    rates = [e.get("train_events_per_s") for e in epochs if e.get("train_events_per_s")]
    eps = sum(rates) / len(rates) if rates else None
    return {"value": value, "curve": curve, "valid": _numbers(valid), "test": _numbers(metrics.get("test") or {}),
            "events_per_s": eps, "best_epoch": best, "epochs": len(epochs)}


def _numbers(d: dict) -> dict:
    return {k: v for k, v in d.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


# ---------------------------------------------------------------- sharing prepared data


def _share_outputs(cfg: JobConfig, tcfg: JobConfig, cache: str) -> None:
    """Point the trial at the parent's prepared data and at cached shards with its export settings.

    Locally these are symlinks (free); a trial whose settings do not match simply rebuilds its own
    (prepare/export check fingerprints). Remote output_dirs prepare per trial.
    """
    if storage.is_remote(tcfg.output_dir):
        return
    out = Path(tcfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    links = {"data": Path(cfg.data_dir), "shards": Path(cache) / _shards_key(tcfg)}
    for name, target in links.items():
        link = out / name
        if target.is_dir() and not link.exists() and not link.is_symlink():
            link.symlink_to(target.resolve(), target_is_directory=True)


def _shards_key(cfg: JobConfig) -> str:
    return "shards-" + cfg.section_fingerprint("data", "sessions", "filter", "split", "export")


def _cache_shards(tcfg: JobConfig, cache: str) -> None:
    """Move a trial's freshly exported shards into the cache so later trials can link them."""
    if storage.is_remote(tcfg.output_dir):
        return
    shards, target = Path(tcfg.shards_dir), Path(cache) / _shards_key(tcfg)
    if shards.is_dir() and not shards.is_symlink() and not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(shards, target)
        shards.symlink_to(target.resolve(), target_is_directory=True)


# ---------------------------------------------------------------- the local study


def _storage_url(tune_dir: str) -> tuple[str, Optional[Path]]:
    """SQLite URL for the study; for gs:// runs a local working copy synced after every trial."""
    if not storage.is_remote(tune_dir):
        Path(tune_dir).mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{Path(tune_dir).resolve() / 'study.db'}", None
    local = Path(tempfile.mkdtemp(prefix="sbrjob-tune-")) / "study.db"
    remote = join(tune_dir, "study.db")
    if storage.exists(remote):
        local.write_bytes(storage.read_bytes(remote))
    return f"sqlite:///{local}", local


def _train_fn() -> Callable:
    """One trial: `stages.train_stage(tcfg, on_epoch_end=hook)`, returning metrics.json's content."""
    from sbrjob.stages import train_stage

    return lambda tcfg, on_epoch_end: train_stage(tcfg, on_epoch_end=on_epoch_end)[0]


def tune(cfg: JobConfig, trials: int, space: Optional[str] = None, *,
         train_fn: Optional[Callable] = None, echo: Callable[[str], None] = print, break_lock: bool = False) -> dict:
    """Run (or resume) the search until `trials` trials have finished; write the reports.

    Holds the lock of `cfg.output_dir` (one tune or train at a time); `train_fn(tcfg, on_epoch_end)`
    replaces the real trial training in tests. Returns {"best", "finished", "leaderboard", "files"}.
    """
    from sbrjob.runs import Run

    with Run(cfg.output_dir).lock("tune", break_lock):
        return _tune(cfg, trials, space, train_fn=train_fn, echo=echo)


def _tune(cfg: JobConfig, trials: int, space: Optional[str] = None, *,
         train_fn: Optional[Callable] = None, echo: Callable[[str], None] = print) -> dict:
    """The search itself (see `tune`)."""
    import optuna

    if trials < 1:
        raise SbrjobError("--trials must be >= 1")
    params, pinned = resolve_space(cfg, space)
    real_training = train_fn is None
    train_fn = train_fn or _train_fn()
    tune_dir = join(cfg.output_dir, "tune")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url, local_db = _storage_url(tune_dir)
    rdb = optuna.storages.RDBStorage(url)
    study = optuna.create_study(
        storage=rdb, study_name=cfg.name, direction="maximize", load_if_exists=True,
        sampler=optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=max(3, min(10, trials // 3))),
        # "clearly bad": below the lower quartile of earlier trials at the same epoch
        pruner=optuna.pruners.PercentilePruner(25.0, n_startup_trials=3, n_warmup_steps=0))
    if study.user_attrs.get("metric", cfg.eval.metric) != cfg.eval.metric:
        raise SbrjobError(f"{tune_dir}: this study optimised {study.user_attrs['metric']}, not "
                          f"{cfg.eval.metric}; use another output_dir or remove {tune_dir}")
    study.set_user_attr("metric", cfg.eval.metric)
    if not study.trials:
        start = incumbent(cfg, params, pinned)
        if start is not None:
            study.enqueue_trial(start, user_attrs={"incumbent": True})
        else:
            echo("the config's own values lie outside the search space: it is not tried as trial 000")
    _retry_interrupted(study, rdb, echo)

    done = _finished(study)
    todo = max(0, trials - done)
    echo(f"tune {cfg.name}: {done} trial(s) finished, {todo} to run; optimising validation "
         f"{cfg.eval.metric} over {', '.join(p.key for p in params)}")
    if todo and real_training:
        _prepare_parent(cfg)
    cache = join(tune_dir, "cache")
    metric = cfg.eval.metric

    def objective(trial) -> float:
        values = suggest(trial, params, cfg, pinned)
        tcfg = trial_config(cfg, values, join(tune_dir, f"trial-{trial.number:03d}"))
        tcfg.train.refit = False  # judged on valid, which a refit cannot change; best.yaml keeps it
        trial.set_user_attr("output_dir", tcfg.output_dir)
        _share_outputs(cfg, tcfg, cache)
        echo(f"trial {trial.number:03d} starts: " + " ".join(f"{k}={_fmt(v)}" for k, v in values.items()))
        stopped = []

        def on_epoch_end(epoch: int, epoch_metrics: dict) -> Optional[str]:
            value = (epoch_metrics.get("valid") or epoch_metrics).get(metric)
            if value is None:
                return None
            trial.report(float(value), int(epoch))
            if epoch < tcfg.train.epochs and trial.should_prune():  # after the last epoch nothing is saved
                stopped.append(epoch)
                return f"pruned by tune after epoch {epoch}"
            return None

        t0 = time.time()
        metrics = train_fn(tcfg, on_epoch_end=on_epoch_end)
        _cache_shards(tcfg, cache)
        s = summarize_metrics(metrics, metric)
        trial.set_user_attr("valid", s["valid"])
        trial.set_user_attr("test", s["test"])
        trial.set_user_attr("events_per_s", s["events_per_s"])
        trial.set_user_attr("seconds", round(time.time() - t0, 1))
        trial.set_user_attr("epochs", s["epochs"])
        trial.set_user_attr("finished", True)
        if stopped:
            trial.set_user_attr("pruned_at_epoch", stopped[0])
            raise optuna.TrialPruned(f"{metric} {s['value']:.4f} after epoch {stopped[0]}")
        return s["value"]

    def progress(study, trial) -> None:
        n = _finished(study)
        state = trial.state.name.lower()
        value = f"{metric}={trial.value:.4f}" if trial.value is not None else state
        best = _best(study)
        best_txt = f"best {best.value:.4f} (trial {best.number})" if best else "no complete trial yet"
        params_txt = " ".join(f"{k.split('.')[-1]}={_fmt(v)}" for k, v in trial.params.items())
        echo(f"[{n}/{trials}] trial {trial.number:03d} {state:8s} {value}  {best_txt}  "
             f"{trial.user_attrs.get('seconds', '?')}s  {params_txt}")
        if local_db is not None:
            storage.put_file(local_db, join(tune_dir, "study.db"))

    if todo:
        study.optimize(objective, n_trials=todo, callbacks=[progress], gc_after_trial=True)
    return write_reports(study, cfg, tune_dir, echo)


def incumbent(cfg: JobConfig, params: list[Param], pinned: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The config's own values of the searched keys, or None when any lies outside the space.

    Tried first, so the best trial is never worse on validation than the config you started from.
    """
    raw = _with_values(cfg.to_dict(), pinned)
    values: dict[str, Any] = {}
    for p in params:
        if not p.is_active(raw):
            continue
        v = _get(raw, p.key)
        if isinstance(v, list):
            if len(v) != 1:
                return None
            v = v[0]
        if p.kind == "categorical":
            if v not in p.choices:
                return None
        elif not p.low <= v <= p.high or (p.step and abs((v - p.low) / p.step - round((v - p.low) / p.step)) > 1e-9):
            return None
        values[p.key] = v
    return values


def _finished(study) -> int:
    from optuna.trial import TrialState

    return sum(1 for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and t.user_attrs.get("finished")))


def _best(study):
    from optuna.trial import TrialState

    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    return max(done, key=lambda t: (t.value, -t.number)) if done else None


def _retry_interrupted(study, rdb, echo) -> None:
    """Trials killed mid-run (left RUNNING) or stopped by an error are run again, once, same values."""
    from optuna.trial import TrialState

    retried = {t.user_attrs.get("retry_of") for t in study.trials}
    for t in study.trials:
        if t.state == TrialState.RUNNING:
            rdb.set_trial_state_values(t._trial_id, TrialState.FAIL)  # only one tune runs per output_dir
        if t.state in (TrialState.RUNNING, TrialState.FAIL) and not t.user_attrs.get("finished") \
                and t.number not in retried and "retry_of" not in t.user_attrs and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            echo(f"trial {t.number:03d} was interrupted: it runs again with the same values")


def _prepare_parent(cfg: JobConfig) -> None:
    """Prepare the data once in the parent run; trials link to it instead of preparing again."""
    from sbrjob.stages import prepare_stage

    prepare_stage(cfg)


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


# ---------------------------------------------------------------- reports


def leaderboard(study, metric: str) -> list[dict]:
    """One row per trial, best validation value first (pruned and failed trials last)."""
    _, k = _metric_key(metric)
    rows = []
    for t in study.trials:
        valid, test = t.user_attrs.get("valid", {}), t.user_attrs.get("test", {})
        row = {"trial": t.number, "state": t.state.name.lower(), f"valid_{metric}": t.value}
        for split, m in (("valid", valid), ("test", test)):
            for name in ("recall", "mrr", "ndcg"):
                if f"{name}@{k}" in m:
                    row[f"{split}_{name}@{k}"] = m[f"{name}@{k}"]
        row["events_per_s"] = t.user_attrs.get("events_per_s")
        row["seconds"] = t.user_attrs.get("seconds")
        row["epochs"] = t.user_attrs.get("epochs")
        row.update({k2: v for k2, v in t.params.items()})
        row["output_dir"] = t.user_attrs.get("output_dir")
        rows.append(row)
    rank = {"complete": 0, "pruned": 1}
    rows.sort(key=lambda r: (rank.get(r["state"], 2), -(r[f"valid_{metric}"] or -math.inf), r["trial"]))
    return rows


def _table(rows: list[dict], limit: int = 20) -> str:
    if not rows:
        return "(no trials)"
    cols = [c for c in rows[0] if c != "output_dir"]
    for r in rows:
        cols += [c for c in r if c not in cols and c != "output_dir"]
    cells = [[c.replace("train.", "").replace("model.", "").replace("export.", "") for c in cols]]
    for r in rows[:limit]:
        cells.append(["-" if r.get(c) is None else _fmt(r[c]) for c in cols])
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in cells]
    if len(rows) > limit:
        lines.append(f"... {len(rows) - limit} more in leaderboard.csv")
    return "\n".join(lines)


def _csv(rows: list[dict]) -> str:
    import csv

    cols: list[str] = []
    for r in rows:
        cols += [c for c in r if c not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def best_config_yaml(cfg: JobConfig, trial, tune_dir: str) -> str:
    """The parent config with the best trial's values, training into OUTPUT_DIR/tuned."""
    values = {k: v for k, v in trial.params.items()}
    best = trial_config(cfg, values, join(cfg.output_dir, "tuned"))
    header = (f"# Best of `sbrjob tune` on {cfg.name}: trial {trial.number:03d}, validation "
              f"{cfg.eval.metric} {trial.value:.4f} ({trial.user_attrs.get('output_dir')}).\n"
              f"# Train it with: sbrjob train --config {join(tune_dir, 'best.yaml')}\n")
    return header + dump_config(best)


MIN_TRIALS_FOR_IMPORTANCE = 10  # below that, importances mostly rank noise


def intermediate_plot(study, metric: str) -> bytes:
    """Optuna's own intermediate-value plot: each trial's validation metric per epoch (pruned ones end early)."""
    import warnings

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from matplotlib.ticker import MaxNLocator

    buf = io.BytesIO()
    with warnings.catch_warnings(), matplotlib.rc_context():  # optuna switches the global style to ggplot
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = optuna.visualization.matplotlib.plot_intermediate_values(study)
        ax.set(xlabel="epoch", ylabel=f"validation {metric}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        legend = ax.get_legend()
        if legend is not None and len(study.trials) > 12:
            legend.remove()  # one entry per trial: past a dozen it covers the lines
        fig = ax.figure
        fig.set_size_inches(7, 4.5)
        fig.tight_layout()
        fig.savefig(buf, format="png", dpi=100)
        plt.close(fig)
    return buf.getvalue()


def plot(study, metric: str) -> bytes:
    """Optimisation history and parameter importances as one PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    done = [t for t in study.trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if done:
        ax1.scatter([t.number for t in done], [t.value for t in done], label="complete", color="C0")
        best, xs, ys = -math.inf, [], []
        for t in sorted(done, key=lambda t: t.number):
            best = max(best, t.value)
            xs.append(t.number)
            ys.append(best)
        ax1.step(xs, ys, where="post", color="C1", label="best so far")
    if pruned:
        ax1.scatter([t.number for t in pruned],
                    [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                    marker="x", color="C3", label="pruned (last epoch seen)")
    ax1.set(title="Optimisation history", xlabel="trial", ylabel=f"validation {metric}")
    from matplotlib.ticker import MaxNLocator

    ax1.xaxis.set_major_locator(MaxNLocator(integer=True))  # trials are numbered
    if done or pruned:
        ax1.legend(loc="best")
    importances: dict[str, float] = {}
    reason = f"parameter importances need >= {MIN_TRIALS_FOR_IMPORTANCE} complete trials ({len(done)} so far)"
    if len(done) >= MIN_TRIALS_FOR_IMPORTANCE:
        try:
            # PED-ANOVA: Optuna's default, deterministic, no scikit-learn needed (fANOVA needs it)
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
        except (RuntimeError, ValueError) as err:  # e.g. no parameter varied between trials
            reason = f"importances unavailable: {str(err).splitlines()[0][:80]}"
    if importances:
        names = list(importances)[::-1]
        ax2.barh(names, [importances[n] for n in names], color="C2")
        ax2.set(title="Parameter importance (PED-ANOVA)", xlabel="importance")
    else:
        ax2.text(0.5, 0.5, reason, ha="center", va="center", wrap=True, transform=ax2.transAxes)
        ax2.set_axis_off()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_reports(study, cfg: JobConfig, tune_dir: str, echo: Callable[[str], None] = print) -> dict:
    """Leaderboard (printed, CSV, JSON), best.yaml and the history/importance plot."""
    metric = cfg.eval.metric
    rows = leaderboard(study, metric)
    files = {"leaderboard_csv": join(tune_dir, "leaderboard.csv"),
             "leaderboard_json": join(tune_dir, "leaderboard.json"),
             "plot": join(tune_dir, "tune_report.png"), "intermediate": join(tune_dir, "tune_intermediate.png")}
    storage.write_text(files["leaderboard_csv"], _csv(rows))
    storage.write_text(files["leaderboard_json"], json.dumps(rows, indent=2, default=str))
    storage.write_bytes(files["plot"], plot(study, metric))
    storage.write_bytes(files["intermediate"], intermediate_plot(study, metric))
    best = _best(study)
    summary: dict[str, Any] = {"finished": _finished(study), "leaderboard": rows, "files": files, "best": None}
    echo(_table(rows))
    if best is not None:
        files["best_config"] = join(tune_dir, "best.yaml")
        storage.write_text(files["best_config"], best_config_yaml(cfg, best, tune_dir))
        summary["best"] = {"trial": best.number, f"valid_{metric}": best.value, "params": best.params,
                           "test": best.user_attrs.get("test", {}), "output_dir": best.user_attrs.get("output_dir")}
        echo(f"best: trial {best.number:03d} validation {metric} {best.value:.4f} -> {files['best_config']}")
    else:
        echo("no trial completed: no best.yaml written")
    echo(f"leaderboard: {files['leaderboard_csv']}  plots: {files['plot']}, {files['intermediate']}")
    return summary
