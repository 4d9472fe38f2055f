"""The job as a small DAG: prepare -> export -> train -> evaluate / baselines.

Stages do not call one another; each `*_stage` here says which outputs it needs and gets them
through `ensure_prepared` / `ensure_exported`, which reuse what is current and write what is
missing. A run with checkpoints is bound to its config and to the content of its inputs
(`guard`): whatever would change its data or shards is refused with one line naming what
differs, unless `fresh` moves the old run aside to `attic/` and starts anew.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import time
from pathlib import Path
from typing import Optional

from sbrjob import runs, storage
from sbrjob.config import JobConfig, fixed_seen_bias, join, save_config
from sbrjob.errors import SbrjobError
from sbrjob.runs import SPLITS, Prepared, Run

log = logging.getLogger("sbrjob.stages")


# ---------------------------------------------------------------- the binding of a trained run


def guard(run: Run, cfg: JobConfig, fresh: bool = False, scope: str = "model") -> Optional[str]:
    """Refuse a config or input that differs, within `scope` (`runs.SCOPES`), from what the run's
    checkpoints were trained on.

    With `fresh` the whole run (checkpoints included) is moved to `attic/<stamp>/` first; returns
    that path. A run without checkpoints has nothing to protect: its outputs are simply rebuilt.
    """
    if fresh:
        attic = run.move_aside()
        if attic:
            log.info("moved the previous outputs of %s to %s", run.dir, attic)
        return attic
    if not run.has_checkpoints():
        return None
    saved = run.saved_config()
    changes = runs.config_changes(saved, cfg, scope) if saved is not None else []
    manifest = runs.read_json_manifest(run.data_manifest_path, "run `sbrjob train --fresh`")
    if manifest is not None and manifest.get("inputs") is not None:
        changes += runs.input_changes(manifest["inputs"], runs.input_identity(cfg, manifest["inputs"]))
    if changes:
        raise SbrjobError(f"{run.dir} holds a trained run with other settings: {'; '.join(changes)}. Use another "
                          "output_dir, or --fresh to start this one anew (the old run is moved to attic/)")
    return None


def _trained_refusal(run: Run, what: str) -> SbrjobError:
    return SbrjobError(f"{what} under the trained checkpoints of {run.dir}; its data and shards are not rewritten "
                       "while checkpoints depend on them: use `--fresh` to start the run anew, or another output_dir")


def ensure_prepared(run: Run, cfg: JobConfig, force: bool = False, runner: Optional[str] = None) -> Prepared:
    """The run's prepared data, current for `cfg` and the inputs' content; prepares when missing or stale,
    in-process or on Beam (`runner`, else `beam.runner`: `beam_runner.choose`)."""
    from sbrjob import beam_runner
    from sbrjob.prepare import prepare

    try:
        manifest = runs.read_json_manifest(run.data_manifest_path, "run `sbrjob prepare --force`")
    except SbrjobError:
        if run.has_checkpoints():
            raise
        manifest = None  # an untrained run: rebuilt below
    inputs = runs.input_identity(cfg, (manifest or {}).get("inputs"))
    if not force and runs.data_is_current(manifest, cfg, inputs):
        log.info("prepare: %s is current for this config and input (kept)", run.data_dir)
        return Prepared(run.data_dir, manifest)
    if run.has_checkpoints() and (manifest is not None or force):
        raise _trained_refusal(run, f"{run.data_dir}: {'--force' if force else 'prepared data is stale'}")
    log.info("prepare: %s -> %s", ", ".join(r["path"] for r in inputs), run.data_dir)
    engine = beam_runner.choose(cfg, runner, sum(int(r.get("size") or 0) for r in inputs))
    if engine != "inprocess" and (cfg.data.since or cfg.data.until):  # not in the Beam pipeline yet
        if (runner or cfg.beam.runner) != "auto":
            raise SbrjobError(f"data.since / data.until: not applied by --runner {engine} yet; "
                              "use --runner inprocess (or leave both unset)")
        log.info("runner auto: data.since / data.until are applied in-process only: in-process")
        engine = "inprocess"
    if engine == "inprocess":
        stats = prepare(cfg, inputs)
    else:
        from sbrjob.beam_prepare import prepare_beam

        stats = prepare_beam(cfg, engine, inputs)
    log.info("prepare: %s in %.1f s", ", ".join(f"{s} {stats[s]['events']:,} events / {stats[s]['sessions']:,} sessions"
                                              for s in SPLITS) + f", {stats['n_items']:,} items", stats["seconds"])
    return Prepared.open(run.data_dir)


def ensure_exported(run: Run, cfg: JobConfig, data: Prepared, force: bool = False,
                    splits: tuple[str, ...] = SPLITS, runner: Optional[str] = None) -> dict:
    """Shard manifests of `splits`, current with the data and export settings; exports what is missing or
    stale, in-process or on Beam (`runner`, as for `ensure_prepared`)."""
    from sbrjob import beam_runner, export, shards

    stale = [s for s in splits if force or not runs.shards_are_current(run.split_dir(s), data, cfg)]
    if stale and run.has_checkpoints():
        present = [s for s in stale if storage.exists(join(run.split_dir(s), shards.MANIFEST))]
        if force or present:
            raise _trained_refusal(run, f"{run.shards_dir}: {'--force' if force else 'stale shards of ' + ', '.join(present)}")
    out = {}
    if stale:
        log.info("export: %s -> %s (%s)", data.data_dir, run.shards_dir, ", ".join(stale))
        t0 = time.perf_counter()
        engine = beam_runner.choose(cfg, runner, sum(int(r.get("size") or 0) for r in data.manifest.get("inputs") or []))
        if engine == "inprocess":
            out = export.export(cfg, data, stale)
        else:
            from sbrjob.beam_export import export_beam

            out = export_beam(cfg, data, stale, engine)
        log.info("export: %s in %.1f s", ", ".join(f"{s} {m['pairs']:,} pairs on {m['lanes']} lanes "
                                                 f"({m['padding']:.0%} padding)" for s, m in out.items()),
                 time.perf_counter() - t0)
    return {s: out[s] if s in out else shards.read_manifest(run.split_dir(s)) for s in splits}


def wait_for_export(run: Run, cfg: JobConfig, timeout_s: float = 3600.0, poll_s: float = 2.0) -> tuple[Prepared, dict]:
    """Workers other than the chief read the chief's data and shards and never write them (two
    workers publishing the same split at once could interleave): waits until all are current."""
    from sbrjob import shards

    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(SbrjobError):
            manifest = runs.read_json_manifest(run.data_manifest_path, "")
            if manifest is not None and runs.data_is_current(manifest, cfg, runs.input_identity(cfg, manifest["inputs"])):
                data = Prepared(run.data_dir, manifest)
                if all(runs.shards_are_current(run.split_dir(s), data, cfg) for s in SPLITS):
                    return data, {s: shards.read_manifest(run.split_dir(s)) for s in SPLITS}
        if time.monotonic() > deadline:
            raise SbrjobError(f"{run.shards_dir}: the chief worker did not publish current shards within "
                              f"{timeout_s:.0f} s; check the chief's log, or run `sbrjob export` before the job")
        time.sleep(poll_s)


# ---------------------------------------------------------------- the stages


def prepare_stage(cfg: JobConfig, force: bool = False, fresh: bool = False,
                  runner: Optional[str] = None) -> tuple[Prepared, bool]:
    """`sbrjob prepare`: (the prepared data, whether it was written now)."""
    run = Run(cfg.output_dir)
    with run.lock("prepare"):
        guard(run, cfg, fresh, scope="data")
        before = _digest(run)
        data = ensure_prepared(run, cfg, force=force, runner=runner)
        _save_untrained_config(run, cfg)
        return data, data.digest != before or force


def export_stage(cfg: JobConfig, force: bool = False, fresh: bool = False, runner: Optional[str] = None) -> dict:
    """`sbrjob export`: shard manifests of every split (prepares first when needed)."""
    run = Run(cfg.output_dir)
    with run.lock("export"):
        guard(run, cfg, fresh, scope="shards")
        data = ensure_prepared(run, cfg, runner=runner)
        manifests = ensure_exported(run, cfg, data, force=force, runner=runner)
        _save_untrained_config(run, cfg)
        return manifests


def _digest(run: Run) -> Optional[str]:
    with contextlib.suppress(SbrjobError):
        return (runs.read_json_manifest(run.data_manifest_path, "") or {}).get("digest")
    return None


def _save_untrained_config(run: Run, cfg: JobConfig) -> None:
    if not run.has_checkpoints():
        save_config(cfg, run.dir)


def early_stopping(metric: str, patience: int):
    """An `on_epoch_end` hook: stop after `patience` epochs without a better validation `metric`."""
    history: list[float] = []

    def hook(epoch: int, record: dict):
        value = (record.get("valid") or {}).get(metric)
        if value is None:
            return None
        history.append(float(value))
        best_at = max(range(len(history)), key=history.__getitem__)
        if len(history) - 1 - best_at >= patience:
            return f"early stopping: no better valid {metric} for {patience} epoch(s)"
        return None

    return hook


def _evaluators(run: Run, cfg: JobConfig, manifests: dict, support, data: Prepared) -> dict:
    from sbrjob.evaluate import Evaluator

    has_valid = manifests["valid"].get("pairs", 0) > 0  # a refit run has none: `best` is then the last epoch
    # eval.seen_bias auto: chosen on valid for the tested (best) weights; epochs are validated at 0
    out = {"test": Evaluator(run.split_dir("test"), cfg.eval, support, label="test",
                             choose_seen_on=run.split_dir("valid") if has_valid else None, data=data)}
    if has_valid:
        out["valid"] = Evaluator(run.split_dir("valid"), cfg.eval, support, beyond_accuracy=False, label="validation")
    return out


def refit_config(cfg: JobConfig, epochs: int, seen_bias=None) -> JobConfig:
    """`train.refit`: the same job with the valid period folded into train, `epochs` epochs, in R/refit.
    `seen_bias`: what `eval.seen_bias: auto` chose on valid for the run (the refit has no valid)."""
    out = copy.deepcopy(cfg)
    out.output_dir = Run(cfg.output_dir).refit_dir
    out.split.merge_valid = True
    out.train.epochs, out.train.refit, out.train.patience = epochs, False, 0
    if out.eval.seen_bias == "auto" and seen_bias is not None:
        out.eval.seen_bias = float(seen_bias)
    return out


def _source_path(path: str) -> str:
    return Run(path).dir if storage.is_remote(path) else str(Path(path).resolve())


def _check_start(run: Run, init_from: Optional[str], which: str, reset_optimizer: bool) -> Optional[dict]:
    """A run with checkpoints resumes from them: an --init-from that differs from how it started is
    refused (leaving it out resumes as started). Returns the run's warm-start record, if any."""
    recorded = runs.read_init_record(run)
    if init_from is None:
        return recorded
    from sbrjob.warmstart import final_model_dir

    want = {"run": _source_path(final_model_dir(init_from)), "checkpoint": which, "reset_optimizer": reset_optimizer}
    if recorded is None:
        raise SbrjobError(f"{run.dir} holds a run trained from scratch; --init-from {init_from} cannot change how "
                          "it started: use another output_dir, or --fresh to start it anew (moved to attic/)")
    had = {k: recorded.get(k) for k in want}
    if had != want:
        diff = "; ".join(f"{k}: {had[k]!r} -> {want[k]!r}" for k in want if had[k] != want[k])
        raise SbrjobError(f"{run.dir} was warm-started otherwise ({diff}); it resumes from its own checkpoints: "
                          "drop --init-from or repeat the original one, use another output_dir, or --fresh")
    return recorded


def _warm_start(run: Run, cfg: JobConfig, data: Prepared, init_from: str, which: str, reset_optimizer: bool,
                chief: bool):
    """(the `fit(init_from=)` callable, the source) for a new run, its shapes checked before anything trains."""
    from sbrjob import warmstart
    from sbrjob.model import GRU4Rec

    if _source_path(init_from) == _source_path(run.dir):
        raise SbrjobError(f"--init-from {init_from}: that is this run's own output_dir; name the run to start from")
    source = warmstart.open_source(init_from, which)
    item_ids = data.load_items()["item_id"].astype(str).to_numpy()
    warmstart.check_shapes(GRU4Rec(source.cfg.model, len(source.item_ids)), GRU4Rec(cfg.model, len(item_ids)))
    source.dir = _source_path(source.dir)

    def init(model, optimizer):
        record = warmstart.apply(model, optimizer, source, item_ids, reset_optimizer=reset_optimizer)
        record["reset_optimizer"] = reset_optimizer
        if chief:  # before the first checkpoint: a resumed run finds how it started
            storage.write_text(join(run.dir, runs.INIT_RECORD), json.dumps(record, indent=2) + "\n")
        return record

    return init


def train_stage(cfg: JobConfig, *, reexport: bool = False, fresh: bool = False, on_epoch_end=None,
                break_lock: bool = False, init_from: Optional[str] = None, init_checkpoint: str = "best",
                reset_optimizer: bool = False) -> tuple[dict, bool]:
    """`sbrjob train`: (metrics.json's content, True when the run was already complete and nothing ran).

    `on_epoch_end` hooks (tune's pruning) run after `train.patience`'s early stopping. With
    `train.refit`, a finished run is followed by its refit run (R/refit, a run directory of its
    own), whose summary goes into R/metrics.json under `refit`. `init_from`
    (a trained run's output_dir) warm-starts a NEW run from its `init_checkpoint` (best or last)
    weights, carried across the changed vocabulary by item id (`warmstart.py`); with
    `reset_optimizer` the optimizer state starts from zero. A run that has checkpoints resumes from
    them; an `init_from` other than the one it started with is refused.
    """
    metrics, complete = _train_run(cfg, reexport=reexport, fresh=fresh, on_epoch_end=on_epoch_end,
                                   break_lock=break_lock, init_from=init_from, init_checkpoint=init_checkpoint,
                                   reset_optimizer=reset_optimizer)
    if not cfg.train.refit or (metrics.get("refit") or {}).get("status") == "done":
        return metrics, complete
    if cfg.split.scheme == "given" or not (cfg.split.valid_days if cfg.split.scheme == "days"
                                           else cfg.split.valid_fraction) > 0:
        log.warning("train.refit: skipped: it needs a validation split of scheme days or fraction to choose "
                    "the epoch count and fold into train")
        return metrics, complete
    refit = refit_config(cfg, int(metrics["best_epoch"]), (metrics.get("test") or {}).get("seen_bias"))
    log.info("refit: train + valid for %d epoch(s) (the best on valid) -> %s", refit.train.epochs, refit.output_dir)
    # the refit is the same job trained anew on more data, not a continuation: it starts as the run
    # did, cold or from the same warm start
    start = runs.read_init_record(Run(cfg.output_dir)) or {}
    refit_metrics, _ = _train_run(refit, reexport=reexport, break_lock=break_lock, init_from=start.get("run"),
                                  init_checkpoint=start.get("checkpoint", "best"),
                                  reset_optimizer=bool(start.get("reset_optimizer")))
    metrics["refit"] = {"status": "done", "run": refit.output_dir, "epochs": refit.train.epochs,
                        "train_events": refit_metrics["epochs"][-1]["train_events"],
                        "train_seconds": round(sum(r.get("train_seconds", 0.0) for r in refit_metrics["epochs"]), 3),
                        "test": refit_metrics["test"]}
    from sbrjob.distribute import is_chief

    if is_chief():
        storage.write_text(Run(cfg.output_dir).metrics_path, json.dumps(metrics, indent=2, default=float) + "\n")
    return metrics, False


def _train_run(cfg: JobConfig, *, reexport: bool = False, fresh: bool = False, on_epoch_end=None,
               break_lock: bool = False, init_from: Optional[str] = None, init_checkpoint: str = "best",
               reset_optimizer: bool = False) -> tuple[dict, bool]:
    from sbrjob.distribute import is_chief, make_strategy  # TensorFlow: imported by the stages that train
    from sbrjob.train import configure_determinism, fit

    run = Run(cfg.output_dir)
    chief = is_chief()
    with run.lock("train", break_lock) if chief else contextlib.nullcontext():
        if chief:
            guard(run, cfg, fresh)
            if run.has_checkpoints():
                _check_start(run, init_from, init_checkpoint, reset_optimizer)
            elif storage.exists(join(run.dir, runs.INIT_RECORD)):  # from a start that never checkpointed
                storage.delete(join(run.dir, runs.INIT_RECORD))
            previous = run.metrics()
            if not reexport and run.has_checkpoints() and runs.is_complete(previous, cfg):
                return previous, True
            data = ensure_prepared(run, cfg, force=reexport)
            warm = None if init_from is None or run.has_checkpoints() else \
                _warm_start(run, cfg, data, init_from, init_checkpoint, reset_optimizer, chief)
            manifests = ensure_exported(run, cfg, data, force=reexport)
            save_config(cfg, run.dir)
        else:
            data, manifests = wait_for_export(run, cfg)
            warm = None if init_from is None or run.has_checkpoints() else \
                _warm_start(run, cfg, data, init_from, init_checkpoint, reset_optimizer, chief)
        configure_determinism(cfg)
        strategy, kind = make_strategy(cfg.train.strategy)
        if chief:
            log.info("train: %s -> %s (%s, %d replica(s), %d epochs)", run.split_dir("train"), run.checkpoint_dir,
                     kind, strategy.num_replicas_in_sync, cfg.train.epochs)
        n_items = int(manifests["train"]["n_items"])
        support = data.item_support()
        if len(support) != n_items:
            raise SbrjobError(f"{data.data_dir}: items.parquet has {len(support)} items, the shards {n_items}; "
                              "run `sbrjob train --fresh`")
        hooks = ([early_stopping(cfg.eval.metric, cfg.train.patience)] if cfg.train.patience else [])
        hooks += [on_epoch_end] if callable(on_epoch_end) else list(on_epoch_end or [])
        metrics = fit(cfg, strategy, kind, run.split_dir("train"), n_items, support,
                      evaluators=_evaluators(run, cfg, manifests, support, data), on_epoch_end=hooks, init_from=warm)
        return metrics, False


# ---------------------------------------------------------------- using a run


def open_run(run_dir: Optional[str] = None, cfg: Optional[JobConfig] = None) -> tuple[Run, JobConfig]:
    """A run named by `--run DIR` or by a config's output_dir, with the run's own saved config.

    A given config must agree with the run on everything but the eval section (which it supplies)
    and the input paths (compared by content); otherwise it is refused, naming the keys.
    """
    if run_dir is None and cfg is None:
        raise SbrjobError("name the run: --run DIR (a job's output_dir) or --config CONFIG")
    run = Run(run_dir or cfg.output_dir)
    saved = run.saved_config()
    if saved is None:
        raise SbrjobError(f"{run.config_path}: not found; is {run.dir} the output_dir of a `sbrjob train` run? "
                          "(train it first, or give --run the right directory)")
    if cfg is None:
        return run, saved
    changes = runs.config_changes(saved, cfg, "use")
    paths = [k for k in runs.INPUT_KEYS if getattr(saved.data, k) != getattr(cfg.data, k)]
    if paths:
        manifest = Prepared.open(run.data_dir).manifest
        try:
            changes += runs.input_changes(manifest["inputs"], runs.input_identity(cfg, manifest["inputs"]))
        except SbrjobError:
            changes += [f"data.{k}: {getattr(saved.data, k)!r} -> {getattr(cfg.data, k)!r}" for k in paths]
    if changes:
        raise SbrjobError(f"{run.dir} was run with other settings than the given config: {'; '.join(changes)}. "
                          f"Use `--run {run.dir}` alone (the run's own config), or another output_dir")
    saved.eval = cfg.eval
    return run, saved


def evaluate_stage(run: Run, cfg: JobConfig, checkpoint: str = "best", split: str = "test") -> dict:
    """`sbrjob evaluate`: a checkpoint of the run on one split; writes `eval_<split>.json`."""
    from sbrjob.evaluate import Evaluator

    if split not in ("test", "valid"):
        raise SbrjobError(f"--split {split!r}: use test or valid")
    trained = runs.load_trained(run.dir, checkpoint)
    data = Prepared.open(run.data_dir)
    choose = fixed_seen_bias(cfg.eval) is None  # eval.seen_bias auto: chosen on valid for this checkpoint
    splits = tuple(dict.fromkeys(("train", split) + (("valid",) if choose else ())))
    manifests = ensure_exported(run, trained.cfg, data, splits=splits)
    want = runs.run_fingerprint(trained.cfg, manifests["train"])
    if runs.stored_fingerprint(trained.checkpoint) not in (want, None):
        raise SbrjobError(f"{trained.checkpoint}: trained on other data or shards than {run.dir} holds now; "
                          "retrain with `sbrjob train --fresh`")
    if choose:
        if not manifests["valid"].get("pairs", 0):
            raise SbrjobError(f"eval.seen_bias: auto chooses on the valid split, and {run.dir} has none (a refit "
                              "run takes its parent's choice); give a number, e.g. --set eval.seen_bias=-inf")
    log.info("evaluate: %s on %s", trained.checkpoint, run.split_dir(split))
    t0 = time.perf_counter()
    result = Evaluator(run.split_dir(split), cfg.eval, data.item_support(), label=f"evaluate {split}",
                       choose_seen_on=run.split_dir("valid") if choose else None, data=data)(trained.model)
    log.info("evaluate: %s events in %.1f s -> %s", f"{result['events']:,}", time.perf_counter() - t0,
             run.eval_path(split))
    result["checkpoint"] = checkpoint
    storage.write_text(run.eval_path(split), json.dumps(result, indent=2) + "\n")
    return result


def _trained_test_metrics(run: Run) -> Optional[dict]:
    for path in (run.eval_path("test"), run.metrics_path):
        try:
            data = json.loads(storage.read_text(path))
        except (FileNotFoundError, json.JSONDecodeError):
            continue
        test = data.get("test") if "test" in data else data if "events" in data else None
        if isinstance(test, dict) and "events" in test:
            return test
    return None


def baselines_stage(run: Run, cfg: JobConfig) -> dict:
    """`sbrjob baselines`: most-popular, S-POP, item-kNN, V-SKNN on the run's test split; writes
    baselines.json and comparison.md (with the trained GRU4Rec's test metrics when present)."""
    from sbrjob.baselines import Sessions, comparison_table, run_baselines

    with run.lock("baselines"):
        guard(run, cfg, scope="data")
        data = ensure_prepared(run, cfg)
        _save_untrained_config(run, cfg)
        support = data.item_support()
        results = run_baselines(cfg.eval, Sessions.from_frame(data.load_split("train")),
                                Sessions.from_frame(data.load_split("test")), support)
        storage.write_text(join(run.dir, "baselines.json"), json.dumps(results, indent=2) + "\n")
        trained = _trained_test_metrics(run)
        rows = {"gru4rec": trained, **results} if trained is not None else dict(results)
        note = "" if trained else "\n(no trained GRU4Rec test metrics found in this run's output_dir yet)\n"
        header = f"# {cfg.name}: test split, full ranking over {len(support)} items, ties {cfg.eval.ties}\n\n"
        table = header + comparison_table(rows, cfg.eval.cutoffs) + note
        storage.write_text(join(run.dir, "comparison.md"), table)
        return {"baselines": results, "table": table}
