"""The `sbrjob` command line: one sub-command per stage of the job.

Heavy modules (TensorFlow, pandas) are imported inside the commands so `--help` stays instant.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Annotated, Literal, Optional

import typer

from sbrjob import __version__, use_tf_env
from sbrjob.errors import SbrjobError

use_tf_env()  # before any command loads TensorFlow

app = typer.Typer(
    name="sbrjob",
    help="Train and evaluate session-based next-item recommenders (GRU4Rec) with TensorFlow.\n\n"
    "A job is one YAML config (see `configs/`; a bare name such as `movielens` finds the packaged "
    "one). The stages run in order and each reuses the previous one's output when it is still "
    "valid: prepare -> export -> train -> evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

ConfigOpt = Annotated[str, typer.Option("--config", "-c", metavar="CONFIG", help="Job config: a path, gs:// URL or packaged name (tiny, movielens, yoochoose).")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", "-s", metavar="KEY=VALUE", help="Override a config key, e.g. --set train.lr=0.05 (repeatable).")]
RunOpt = Annotated[Optional[str], typer.Option("--run", "-r", metavar="DIR", help="A run directory (a job's output_dir, local or gs://); its own config is used.")]
ConfigRunOpt = Annotated[Optional[str], typer.Option("--config", "-c", metavar="CONFIG", help="Instead of --run: a config whose output_dir is the run (it must agree with the run).")]
ForceOpt = Annotated[bool, typer.Option(help="Rewrite the output even when it is current (not on a trained run).")]
FreshOpt = Annotated[bool, typer.Option("--fresh", help="Start the run anew: its previous outputs, checkpoints included, are moved to OUTPUT_DIR/attic/<time>/.")]
RunnerOpt = Annotated[Optional[Literal["inprocess", "beam", "dataflow", "auto"]], typer.Option(help="Where the stage runs: inprocess (numpy here), beam (Apache Beam DirectRunner, needs sbrjob[beam]), dataflow (Google Cloud Dataflow, the beam: config section), auto (beam above beam.auto_threshold_mb of input). Default: beam.runner (inprocess). Same outputs either way (docs/beam.md).")]
BeamDryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the runner and its Beam pipeline options (JSON) and run nothing.")]
BreakLockOpt = Annotated[bool, typer.Option("--break-lock", help="gs:// runs: remove a lock left by a job that was killed without cleanup (only when no job is using the run).")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sbrjob {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Also show TensorFlow's own start-up and runtime logs, and debug lines (e.g. each epoch's full record).")] = False,
) -> None:
    """sbrjob: GRU4Rec as a batch job, the same on a laptop CPU, GPUs or a TPU."""
    if verbose:  # read by TensorFlow when it loads, which the commands do after this
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("sbrjob")  # library modules log; this is where their lines show
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    # TensorFlow's Python-side warnings, like its C++ ones, only with --verbose: e.g. a backtest
    # or tune builds one evaluation program per catalogue size, which TF reports as "retracing"
    logging.getLogger("tensorflow").setLevel(logging.DEBUG if verbose else logging.ERROR)


def _load(config: str, overrides: Optional[list[str]]):
    from sbrjob.config import load_config

    return load_config(config, overrides or [])


def _print_json(obj) -> None:
    typer.echo(json.dumps(obj, indent=2, sort_keys=False, default=str))


def _use_run(run: Optional[str], config: Optional[str], set_: Optional[list[str]], trained: bool = True):
    """(Run, config) for the commands that use a run: `--run DIR` (its own config; --set may change
    eval keys) or `--config` (resolves to its output_dir and must agree with the run)."""
    from sbrjob.runs import Run
    from sbrjob.stages import open_run

    if run is None and config is None:
        raise SbrjobError("name the run: --run DIR (a job's output_dir) or --config CONFIG")
    if config is None:
        cfg = _load(Run(run).config_path, [*(set_ or []), f"output_dir={run}"]) if set_ else None
        return open_run(run, cfg)
    cfg = _load(config, set_)
    target = Run(run or cfg.output_dir)
    if not trained and not target.has_checkpoints():
        cfg.output_dir = target.dir
        return target, cfg  # nothing trained to agree with: the given config rules
    return open_run(target.dir, cfg)


@app.command()
def prepare(
    config: ConfigOpt,
    set_: SetOpt = None,
    on_bad_lines: Annotated[Optional[Literal["error", "skip"]], typer.Option(help="error (default): stop at the first malformed line and name it; skip: drop such lines and count them in stats.json.")] = None,
    force: ForceOpt = False,
    fresh: FreshOpt = False,
    runner: RunnerOpt = None,
    dry_run: BeamDryRunOpt = False,
) -> None:
    """Read raw logs, build sessions, filter, split by time; write Parquet splits, item vocabulary, stats.json and data_report.png to OUTPUT_DIR/data.

    Formats (data.format): movielens (ratings.dat[.gz] or ratings.csv, titles from data.items_path),
    yoochoose (clicks/test .dat, with or without Category), gru4rec (SessionId/ItemId/Time TSV; with
    split.scheme given, data.valid_path/test_path are used as they are), table (CSV/TSV/Parquet with
    data.columns), sample (the embedded synthetic MovieLens-format data). Data that is current for
    the config and the inputs' content is kept (--force rewrites it); a trained run's data is never
    rewritten (--fresh starts the run anew). Prints a per-split summary as JSON. Example:

    \b
      sbrjob prepare --config movielens --set data.path=data/ml-1m/ratings.dat --set sessions.gap=3600
      sbrjob prepare --config yoochoose --runner beam
    """
    from sbrjob.stages import prepare_stage

    overrides = list(set_ or [])
    if on_bad_lines:
        overrides.append(f"data.on_bad_lines={on_bad_lines}")
    cfg = _load(config, overrides)
    if dry_run:
        from sbrjob.beam_runner import dry_run as beam_dry_run

        _print_json(beam_dry_run(cfg, runner, "prepare"))
        return
    data, written = prepare_stage(cfg, force=force, fresh=fresh, runner=runner)
    if not written:
        typer.echo(f"{data.data_dir} is current for this config and input; kept (--force rewrites it)", err=True)
    from sbrjob import storage

    stats = json.loads(storage.read_text(f"{data.data_dir}/stats.json"))
    summary = {"data_dir": data.data_dir, "n_items": stats["n_items"], "bad_lines": stats["bad_lines"],
               "seconds": stats["seconds"]}
    summary.update({k: {m: stats[k][m] for m in ("events", "sessions", "items")} for k in ("train", "valid", "test")})
    _print_json(summary)


@app.command("export")
def export_(
    config: ConfigOpt,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="Rewrite the shards even when the manifest says they are current (not on a trained run).")] = False,
    fresh: FreshOpt = False,
    runner: RunnerOpt = None,
    dry_run: BeamDryRunOpt = False,
) -> None:
    """Write session-parallel batches (input, target, reset, weight) of every split to TFRecord shards with a manifest.

    Runs prepare first when the prepared data is missing or stale. Each split goes to
    OUTPUT_DIR/shards/<split>/ (train: export.batch_size lanes in export.shards shards; valid/test:
    export.eval_batch_size lanes in export.eval_shards shards); splits whose manifest still matches
    the data and the export settings are kept. Prints lanes, blocks, pairs and padding per split.
    Example:

    \b
      sbrjob export --config movielens --set export.batch_size=128
      sbrjob export --config gs://B/yoochoose.yaml --runner dataflow --dry-run
    """
    from sbrjob.stages import export_stage

    cfg = _load(config, set_)
    if dry_run:
        from sbrjob.beam_runner import dry_run as beam_dry_run

        _print_json(beam_dry_run(cfg, runner, "export"))
        return
    manifests = export_stage(cfg, force=force, fresh=fresh, runner=runner)
    keys = ("lanes", "shards", "block_steps", "blocks", "steps", "sessions", "pairs", "padding")
    _print_json({split: {k: m[k] for k in keys} for split, m in manifests.items()})


@app.command()
def train(
    config: ConfigOpt,
    set_: SetOpt = None,
    reexport: Annotated[bool, typer.Option(help="Re-run prepare and export even when their outputs are current (not on a trained run).")] = False,
    fresh: FreshOpt = False,
    break_lock: BreakLockOpt = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the best epoch and test metrics as JSON instead of a summary.")] = False,
    init_from: Annotated[Optional[str], typer.Option("--init-from", metavar="RUN", help="Warm start: begin this NEW run from the weights of the trained run RUN (local or gs://), carried to this run's vocabulary by item id (new items freshly initialised, vanished ones dropped). A run that has checkpoints resumes from them.")] = None,
    init_checkpoint: Annotated[Literal["best", "last"], typer.Option("--init-checkpoint", help="With --init-from: RUN's best or last checkpoint.")] = "best",
    reset_optimizer: Annotated[bool, typer.Option("--reset-optimizer", help="With --init-from: start the optimizer state (Adagrad accumulators, momentum, Adam moments) from zero instead of carrying RUN's.")] = False,
) -> None:
    """Train GRU4Rec under tf.distribute; resumes from the last checkpoint; writes checkpoints and metrics.json.

    Runs prepare and export first when their outputs are missing or stale, so one command goes from
    raw data to a model. Once a run has checkpoints it is bound to its config and to the content of
    its inputs: a change that would alter its data, shards or model is refused with the keys that
    differ (--fresh starts it anew and moves the old run to OUTPUT_DIR/attic/). Re-running a
    finished run does nothing and says so; raising train.epochs continues it. With train.refit the
    final model is then trained on train + valid in OUTPUT_DIR/refit.

    With --init-from RUN a new run starts from RUN's weights (the nightly pattern: yesterday's run,
    today's data via --set data.until=DAY); metrics.json records the source, its fingerprint and the
    items kept, new and dropped. Examples:

    \b
      sbrjob train --config movielens --set data.path=data/ml-1m/ratings.dat --set train.epochs=10
      sbrjob train --config yoochoose --set data.until=2014-04-07 --set output_dir=runs/d0407 --init-from runs/d0406
    """
    from sbrjob.stages import train_stage

    if init_from is None and (init_checkpoint != "best" or reset_optimizer):
        raise SbrjobError("--init-checkpoint and --reset-optimizer go with --init-from RUN")
    cfg = _load(config, set_)
    metrics, complete = train_stage(cfg, reexport=reexport, fresh=fresh, break_lock=break_lock, init_from=init_from,
                                    init_checkpoint=init_checkpoint, reset_optimizer=reset_optimizer)
    if complete:
        test = metrics.get("test") or {}
        score = f"test {cfg.eval.metric.upper()} {test[cfg.eval.metric]:.4f}" if cfg.eval.metric in test else "no test metrics"
        typer.echo(f"run {cfg.output_dir} is complete: {score} (best epoch {metrics.get('best_epoch')}); nothing to do "
                   "(raise train.epochs to continue, --fresh to start anew)", err=True)
    if as_json:
        _print_json({"best_epoch": metrics.get("best_epoch"), "test": metrics.get("test"),
                     **({"refit": metrics["refit"]} if metrics.get("refit") else {})})
    elif not complete:
        typer.echo(_train_summary(cfg, metrics))


def _train_summary(cfg, metrics: dict) -> str:
    """The few lines a person reads after training: best epoch, test metrics, where things are, what next."""
    metric, best = cfg.eval.metric, metrics.get("best_epoch")
    epochs = metrics.get("epochs") or []
    record = next((r for r in epochs if r["epoch"] == best), {})
    valid = (record.get("valid") or {}).get(metric)
    lines = [f"best epoch {best} of {len(epochs)}" + (f": valid {metric} {valid:.4f}" if valid is not None else "")
             + (f" (stopped: {metrics['stopped']})" if metrics.get("stopped") else "")]
    shown = [f"recall@{metric.partition('@')[2]}", metric]

    def scores(test: dict) -> str:
        bias = f"  (seen_bias {float(test['seen_bias']):.4g})" if "seen_bias" in test else ""
        return f"({test['events']:,} events): " + "  ".join(f"{k} {test[k]:.4f}" for k in shown if k in test) + bias

    if metrics.get("test"):
        lines.append("test " + scores(metrics["test"]))
    run = cfg.output_dir
    lines.append(f"run: {run} (metrics.json, checkpoints/best, training_curves.png, tensorboard/)")
    refit = metrics.get("refit")
    if refit:  # the final model: what the next commands should use
        lines.append(f"refit on train + valid, {refit['epochs']} epoch(s): test " + scores(refit["test"]))
        run = refit["run"]
        lines.append(f"final model: {run}")
    lines.append(f"next: sbrjob evaluate --run {run}  |  sbrjob recommend --run {run} --items ID,ID  |  "
                 f"sbrjob export-model --run {run}")
    return "\n".join(lines)


@app.command()
def backtest(
    config: ConfigOpt,
    set_: SetOpt = None,
    windows: Annotated[int, typer.Option(metavar="N", help="Number of windows (runs).")] = 3,
    step_days: Annotated[int, typer.Option(metavar="D", help="Days between the ends of consecutive windows.")] = 1,
    until: Annotated[Optional[str], typer.Option(metavar="DATE", help="The last window's day (ISO date, UTC); default data.until, else the day of the newest event.")] = None,
    warm: Annotated[bool, typer.Option("--warm", help="Warm-start each window from the previous window's run (the first one trains cold).")] = False,
    init_checkpoint: Annotated[Literal["best", "last"], typer.Option("--init-checkpoint", help="With --warm: the previous window's best or last checkpoint.")] = "best",
    reset_optimizer: Annotated[bool, typer.Option("--reset-optimizer", help="With --warm: start each window's optimizer state from zero.")] = False,
    warm_epochs: Annotated[Optional[int], typer.Option("--warm-epochs", metavar="N", help="With --warm: train.epochs of every window after the first (default the config's; 2 met the warm-start benchmark, BENCHMARKS.md).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print backtest.json instead of the table.")] = False,
) -> None:
    """Time-sliding evaluation: train and test one run per window of time, cold or warm-started from the previous window.

    Window i trains on the data up to the end of its day (data.until) and tests on the config's
    split of it (split.scheme days, test_days 1: the last day). Each window is a run directory of
    its own, OUTPUT_DIR/backtest/{cold,warm}/wNN_<day>/, reused when complete (an interrupted
    backtest resumes). Writes backtest.json, backtest.md (the table: Recall@K and MRR@K per window
    and the mean, training time, epochs) and backtest.png next to them; prints the table. Example:

    \b
      sbrjob backtest --config yoochoose --windows 3 --step-days 1 --warm --warm-epochs 2
    """
    from sbrjob.backtest import backtest as run_backtest, table

    cfg = _load(config, set_)
    k = cfg.eval.metric.partition("@")[2]

    def line(row):
        typer.echo(f"window {row['window']} until {row['until']} ({row['start']}): test recall@{k} "
                   f"{row[f'recall@{k}'] or 0:.4f} mrr@{k} {row[f'mrr@{k}'] or 0:.4f}, {row['epochs']} epochs, "
                   f"{row['train_seconds']:.1f} s", err=True)

    result = run_backtest(cfg, windows, step_days, warm=warm, end=until, init_checkpoint=init_checkpoint,
                          reset_optimizer=reset_optimizer, warm_epochs=warm_epochs, on_window=line)
    if as_json:
        _print_json(result)
    else:
        typer.echo(table(result) + f"\n{result['output_dir']}: backtest.json, backtest.md, backtest.png")


@app.command()
def evaluate(
    run: RunOpt = None,
    config: ConfigRunOpt = None,
    set_: SetOpt = None,
    checkpoint: Annotated[str, typer.Option(metavar="best|last|PATH", help="best, last, or a checkpoint path.")] = "best",
    split: Annotated[Literal["test", "valid"], typer.Option(help="test or valid.")] = "test",
) -> None:
    """Full-ranking evaluation (official GRU4Rec protocol): Recall, MRR, NDCG, coverage and popularity at each cutoff.

    Every position of every session is predicted from a zero state at the session start; the true
    next item is ranked against all items (ties: eval.ties). Uses the run's own config and data
    (eval keys may be changed with --set); writes OUTPUT_DIR/eval_<split>.json. Example:

    \b
      sbrjob evaluate --run runs/movielens --checkpoint best --split test --set eval.ties=standard
    """
    from sbrjob.stages import evaluate_stage

    target, cfg = _use_run(run, config, set_)
    _print_json(evaluate_stage(target, cfg, checkpoint=checkpoint, split=split))


@app.command()
def baselines(run: RunOpt = None, config: ConfigRunOpt = None, set_: SetOpt = None) -> None:
    """Most-popular, S-POP, item-kNN and session-kNN on the same splits and metrics; prints a comparison with the trained model.

    Fits on the train split, evaluates on the test split with the same full-ranking metrics as
    `evaluate`; writes OUTPUT_DIR/baselines.json and comparison.md (with GRU4Rec's test metrics
    when the run has them). Choose baselines and kNN sizes in the config's eval section. On a run
    that is not trained yet, --config prepares its data first. Example:

    \b
      sbrjob baselines --run runs/movielens --set eval.baselines=[pop,vsknn]
    """
    from sbrjob.stages import baselines_stage

    target, cfg = _use_run(run, config, set_, trained=False)
    typer.echo(baselines_stage(target, cfg)["table"], nl=False)


@app.command()
def recommend(
    items: Annotated[Optional[str], typer.Option(help="The session so far: comma-separated original item ids (or MovieLens titles).")] = None,
    run: RunOpt = None,
    config: ConfigRunOpt = None,
    k: Annotated[int, typer.Option("-k", help="How many items to recommend (at most the catalogue).")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    include_seen: Annotated[bool, typer.Option("--include-seen", help="Rank the session's own items by the model's scores alone (by default they are left out, or scored with the run's eval.seen_bias when it has one).")] = False,
    checkpoint: Annotated[str, typer.Option(help="best, last, or a checkpoint path.")] = "best",
    sessions: Annotated[Optional[str], typer.Option("--sessions", help="Batch instead of --items: a JSONL ({\"session_id\": ..., \"items\": [...]} per line) or CSV (session_id + items, or session_id + item_id per click) file; prints JSONL, one line per session.")] = None,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Batch: write the JSONL to this file (local or gs://) instead of stdout.")] = None,
    batch_size: Annotated[int, typer.Option(help="Batch: sessions stepped together.")] = 1024,
) -> None:
    """Top-k next items for a session (--items), or for every session of a file (--sessions), with scores.

    Items are original ids or, for MovieLens, titles matched forgivingly (case, accents, punctuation,
    optional year, "The Matrix" = "Matrix, The (1999)", "Star Wars" = the most-rated title that
    starts so); separate them with commas (or ';' when titles contain commas). Unknown items are
    reported and skipped, with "did you mean" suggestions for near misses. Examples:

    \b
      sbrjob recommend --run runs/movielens --items "1193, Toy Story, matrix" -k 5
      sbrjob recommend --run runs/movielens --sessions sessions.jsonl -k 20 --out recs.jsonl

    Batch output, one JSON line per session in file order: {"session_id", "item_ids", "scores",
    "known", "unknown"}; a session with no known item gets the zero-state ranking (known 0).
    """
    import time

    from sbrjob.recommend import format_table, recommend as run_recommend

    if (items is None) == (sessions is None):
        raise SbrjobError("give the session with --items IDS, or a file of sessions with --sessions FILE (one of them)")
    if sessions is None and out is not None:
        raise SbrjobError("--out is for --sessions (batch); --items prints to stdout")
    target, _ = _use_run(run, config, None)
    if items is not None:
        result = run_recommend(target.dir, items, k=k, exclude_seen=not include_seen, checkpoint=checkpoint)
        typer.echo(json.dumps(result, indent=2) if as_json else format_table(result))
        return
    from sbrjob import storage
    from sbrjob.recommend import BatchRecommender, read_sessions

    if batch_size < 1:
        raise SbrjobError(f"--batch-size {batch_size}: must be >= 1")
    todo = read_sessions(sessions)
    batch = BatchRecommender(target.dir, k=k, exclude_seen=not include_seen, checkpoint=checkpoint,
                             batch_size=batch_size)
    t0, n, with_unknown, lines = time.perf_counter(), 0, 0, []
    for result in batch.run(todo):
        n += 1
        with_unknown += bool(result["unknown"])
        line = json.dumps(result, ensure_ascii=False)
        if out is None:
            typer.echo(line)
        else:
            lines.append(line + "\n")
    if out is not None:
        storage.write_text(out, "".join(lines))
    seconds = time.perf_counter() - t0
    typer.echo(f"{n} sessions ({with_unknown} with unknown items) in {seconds:.2f} s"
               + (f" -> {out}" if out else ""), err=True)


@app.command("export-model")
def export_model(
    run: RunOpt = None,
    config: ConfigRunOpt = None,
    k: Annotated[int, typer.Option("-k", help="Top-k of serving_default, and the default k of the other signatures' Python functions.")] = 20,
    to: Annotated[Optional[str], typer.Option(help="TF Serving model base path (local or gs://): the model goes to TO/<version>/. Default: RUN/saved_model (replaced, no versions).")] = None,
    version: Annotated[Optional[int], typer.Option(help="With --to: this version number (refused if it exists); default the next after the highest.")] = None,
    checkpoint: Annotated[str, typer.Option(help="best, last, or a checkpoint path.")] = "best",
) -> None:
    """Write a SavedModel that serves next-item recommendations: histories or one click at a time (stateful).

    Signatures: serving_default(items) (top-k of histories, "" = padding), recommend(items, k,
    exclude_seen), step(item_id, state, k), step_exclude_seen(item_id, state, k, seen) and
    step_seen(item_id, state, k, seen), where state is the session's GRU state the caller keeps
    (zeros for a new session). A run's eval.seen_bias is applied to the history's items by
    serving_default, recommend(exclude_seen=False) and step_seen. With --to DIR it
    writes DIR/<version>/ as TF Serving loads it, published whole; with the vocabulary as
    assets/items.txt and model_card.json (run, data digest, metrics, signatures, example request).
    Load it anywhere with plain TensorFlow (no sbrjob needed):

    \b
      m = tf.saved_model.load(PATH)
      out = m.signatures["serving_default"](items=tf.constant([["1193", "661", ""]]))
      out["item_ids"], out["scores"], out["known"]   # [batch, k], [batch, k], [batch]

    Prints the path written. docs/serving.md: TF Serving requests and the stateful pattern.
    """
    from sbrjob.serving import export_saved_model

    target, _ = _use_run(run, config, None)
    typer.echo(export_saved_model(target.dir, k=k, dest=None, checkpoint=checkpoint, to=to, version=version))


@app.command()
def download(
    dataset: Annotated[str, typer.Argument(help="movielens-1m, or yoochoose (prints manual instructions).")],
    to: Annotated[str, typer.Option(metavar="DIR", help="Directory to extract into.")] = "data",
    url: Annotated[Optional[str], typer.Option(metavar="URL", help="Override the archive URL (mirrors, tests).")] = None,
    sha256: Annotated[Optional[str], typer.Option(metavar="HEX", help="Expected SHA-256 when --url serves a different archive than the official one.")] = None,
) -> None:
    """Fetch a public dataset, verify its checksum and extract it safely; does nothing if already there.

    Prints the dataset directory (e.g. DIR/ml-1m). DIR may be a gs:// prefix. YOOCHOOSE needs a
    manual download: the command prints where and how, and exits with code 3 until the file is there.
    Example:

    \b
      sbrjob download movielens-1m --to data
    """
    from sbrjob.download import ManualDownload, download as run_download

    try:
        typer.echo(run_download(dataset, to, url=url, sha256=sha256))
    except ManualDownload as err:
        typer.echo(err.instructions)
        raise typer.Exit(3) from None


@app.command()
def submit(
    config: ConfigOpt,
    image: Annotated[str, typer.Option(metavar="URI", help="Container image URI with sbrjob installed (docker/Dockerfile, Dockerfile.gpu, or FLAVOUR=tpu).")],
    set_: SetOpt = None,
    accelerator: Annotated[str, typer.Option(metavar="cpu|gpu|tpu", help="cpu, gpu or tpu.")] = "gpu",
    replicas: Annotated[int, typer.Option(metavar="N", help="GPUs per machine (1, 2, 4, 8), or 8 TPU cores.")] = 1,
    workers: Annotated[int, typer.Option(metavar="N", help="Machines; with more than one the platform sets TF_CONFIG and training uses multi_worker.")] = 1,
    region: Annotated[str, typer.Option(metavar="REGION", help="Cloud region.")] = "us-central1",
    project: Annotated[Optional[str], typer.Option(metavar="PROJECT", help="Cloud project id (default: that of the application-default credentials).")] = None,
    accelerator_type: Annotated[Optional[str], typer.Option(metavar="TYPE", help="NVIDIA_TESLA_T4 (default), NVIDIA_L4, NVIDIA_TESLA_A100; TPU_V3 (default) or TPU_V2.")] = None,
    machine_type: Annotated[Optional[str], typer.Option(metavar="TYPE", help="Override the machine type chosen for the accelerator.")] = None,
    service_account: Annotated[Optional[str], typer.Option(metavar="EMAIL", help="Service account the job runs as (needs read/write on the gs:// paths).")] = None,
    name: Annotated[Optional[str], typer.Option(metavar="NAME", help="Display name; default sbrjob-<config name>.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the exact job spec (JSON) and submit nothing.")] = False,
) -> None:
    """Submit `sbrjob train` as a Vertex AI custom job: 1 GPU, several GPUs, several workers, or a TPU VM.

    output_dir and the data paths must be gs:// (checked before anything is submitted); a local
    config file is uploaded to OUTPUT_DIR/submit/. Credentials: application-default
    (`gcloud auth application-default login`, or the service account of the machine). Example:

    \b
      sbrjob submit --config gs://B/movielens.yaml --image REGION-docker.pkg.dev/P/R/sbrjob:gpu --dry-run
    """
    from sbrjob.cloud import submit as run_submit

    result = run_submit(config, image=image, overrides=set_ or [], accelerator=accelerator, replicas=replicas,
                        workers=workers, region=region, project=project, dry_run=dry_run,
                        accelerator_type=accelerator_type, machine_type=machine_type,
                        service_account=service_account, display_name=name)
    if dry_run:
        if result["upload"]:
            typer.echo(f"# a real submit first uploads {result['upload'][0]} to {result['upload'][1]}", err=True)
        _print_json(result["dry_run"])
        return
    typer.echo(f"submitted {result['job'].get('name', '')}")
    typer.echo(result["console"])


@app.command()
def tune(
    config: ConfigOpt,
    set_: SetOpt = None,
    trials: Annotated[int, typer.Option(metavar="N", help="Trials in total, counting those an earlier (interrupted) run of the same study finished.")] = 20,
    space: Annotated[Optional[str], typer.Option(metavar="FILE|local", help="YAML search space overriding the default key by key (e.g. `train.lr: {low: 0.01, high: 0.1, log: true}`; a plain value pins a key, null drops it), or `local`: the same keys around the config's own values (lr /2..x2, dropouts +-0.15, ...; docs/tune.md). Default: the GRU4Rec authors' ranges for the config's loss.")] = None,
    cloud: Annotated[bool, typer.Option("--cloud", help="Run the search as a Vertex AI hyperparameter-tuning job instead of here: every trial is a cloud training job that reports its validation metric to the service. Needs --image, a gs:// output_dir and data.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="With --cloud (implied): print the HyperparameterTuningJob spec (JSON) and submit nothing.")] = False,
    image: Annotated[Optional[str], typer.Option(metavar="URI", help="Cloud: container image URI with sbrjob installed.")] = None,
    accelerator: Annotated[str, typer.Option(metavar="cpu|gpu|tpu", help="Cloud: cpu, gpu or tpu per trial.")] = "gpu",
    accelerator_type: Annotated[Optional[str], typer.Option(metavar="TYPE", help="Cloud: e.g. NVIDIA_TESLA_T4 (default), NVIDIA_L4, TPU_V3.")] = None,
    replicas: Annotated[int, typer.Option(metavar="N", help="Cloud: GPUs (or TPU cores) per trial.")] = 1,
    parallel: Annotated[int, typer.Option(metavar="N", help="Cloud: trials the service runs at the same time.")] = 1,
    region: Annotated[str, typer.Option(metavar="REGION", help="Cloud region.")] = "us-central1",
    project: Annotated[Optional[str], typer.Option(metavar="PROJECT", help="Cloud project id (default: that of the application-default credentials).")] = None,
    break_lock: BreakLockOpt = False,
) -> None:
    """Hyperparameter search with Optuna, optimising the VALIDATION metric (eval.metric, default mrr@20).

    Every trial is a normal training run in OUTPUT_DIR/tune/trial-NNN (its own metrics.json); trials
    that are clearly worse than the others after an epoch are pruned. The study is kept in
    OUTPUT_DIR/tune/study.db, so re-running the same command after an interruption resumes it.
    Writes OUTPUT_DIR/tune/leaderboard.{csv,json} (parameters, validation and test metrics, events/s),
    best.yaml (train it with `sbrjob train --config OUTPUT_DIR/tune/best.yaml`) and tune_report.png
    (optimisation history, parameter importances). Test metrics are reported, never used to choose.
    Example:

    \b
      sbrjob tune --config movielens --trials 30 --set train.epochs=3
    """
    if cloud or dry_run:
        from sbrjob.tune_vertex import submit_tuning_job, vertex_tuning_job

        if not image:
            raise SbrjobError("--cloud/--dry-run need --image (the container image URI with sbrjob installed)")
        body, upload = vertex_tuning_job(config, trials, space=space, overrides=set_ or [], parallel=parallel,
                                         image=image, accelerator=accelerator, replicas=replicas,
                                         accelerator_type=accelerator_type)
        if dry_run:
            if upload:
                typer.echo(f"# a real submit first uploads {upload[0]} to {upload[1]}", err=True)
            _print_json(body)
            return
        job = submit_tuning_job(body, upload, region=region, project=project)
        typer.echo(f"submitted {job.get('name', '')}")
        return
    from sbrjob.tune import tune as run_tune

    run_tune(_load(config, set_), trials=trials, space=space, echo=typer.echo, break_lock=break_lock)


@app.command("config")
def show_config(
    config: Annotated[Optional[str], typer.Option("--config", "-c", metavar="CONFIG", help="Job config: a path, gs:// URL or packaged name (tiny, movielens, yoochoose).")] = None,
    set_: SetOpt = None,
    explain: Annotated[Optional[str], typer.Option("--explain", metavar="KEY", help="Print what a key means (type, default, notes), e.g. --explain train.patience.")] = None,
) -> None:
    """Print the resolved config (after validation and --set overrides), or explain one key.

    \b
      sbrjob config --config movielens --set train.lr=0.05
      sbrjob config --explain sessions.gap
    """
    from sbrjob.config import dump_config, explain as explain_key

    if explain:
        typer.echo(explain_key(explain))
        return
    if config is None:
        raise SbrjobError("give --config CONFIG (to print it) or --explain KEY")
    typer.echo(dump_config(_load(config, set_)), nl=False)


def run(hard_exit: bool = True) -> None:
    """The console-script entry point: every failure is one `error:` line on stderr and a plain
    exit code (2 bad input/config/environment, 1 a bug, with its traceback, 130 interrupted).

    Failing exits flush stdout/stderr and leave through os._exit: interpreter shutdown after an
    error could abort in pyarrow's thread pool (SIGABRT, exit 134; apache/arrow#34314) about one
    run in ten. `hard_exit=False` raises SystemExit instead (for calling run() inside a process
    that must survive, e.g. a test).
    """
    import traceback

    code: int = 0
    try:
        app()
    except SystemExit as exc:  # click/typer: --help, usage errors, typer.Exit(n)
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            typer.echo(str(exc.code), err=True)
            code = 1
    except SbrjobError as err:
        typer.echo(f"error: {err}", err=True)
        code = 2
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        code = 130
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line for I/O, a traceback for bugs
        from sbrjob.errors import io_error

        known = io_error(err, doing="running", atomic=False)
        if known is not None:
            typer.echo(f"error: {known}", err=True)
            code = 2
        else:
            traceback.print_exc()
            code = 1
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe, a full disk: the exit code still counts
            pass
    if code and hard_exit:
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
