"""`sbrjob backtest`: time-sliding evaluation, one trained run per window.

Window i of N is the job's config with `data.until` set to a day (the last window's day, then D
days earlier each step back): it prepares the events up to the end of that day, splits them with
the config's own `split` (with `split.scheme: days`, `test_days: 1` the test is that last day) and
trains a run of its own in `OUTPUT_DIR/backtest/{cold,warm}/wNN_<day>/`, cold or (`warm`)
warm-started from the previous window's final model (`warmstart.py`; under `train.refit` that is its
refit, and each window reports its own refit's test metrics). A window that is already complete is
reused as it is, so an interrupted backtest resumes where it stopped. The results: `backtest.json`, `backtest.md` (one
row per window and the mean) and `backtest.png` (Recall@K and MRR@K per window with their means,
training time and epochs per window), written through `storage` (local or gs://).
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import time
from typing import Callable, Optional

import numpy as np

from sbrjob import storage
from sbrjob.config import JobConfig, config_from_dict, join, window_bounds
from sbrjob.errors import SbrjobError

log = logging.getLogger("sbrjob.backtest")


def last_day(cfg: JobConfig) -> dt.date:
    """The UTC day of the newest event the config reads (within data.since/until)."""
    from sbrjob.readers import read_events

    ev = read_events(cfg.data)
    since, until = window_bounds(cfg.data)
    t = ev.time
    if since is not None:
        t = t[t >= since]
    if until is not None:
        t = t[t < until]
    if not len(t):
        raise SbrjobError(f"data.path {cfg.data.path}: no events within data.since/until; nothing to backtest")
    return dt.datetime.fromtimestamp(float(t.max()), tz=dt.timezone.utc).date()


def window_days(end: dt.date, windows: int, step_days: int) -> list[dt.date]:
    """The `windows` days ending at `end`, `step_days` apart, oldest first."""
    return [end - dt.timedelta(days=step_days * (windows - 1 - i)) for i in range(windows)]


def backtest_dir(cfg: JobConfig, warm: bool) -> str:
    """OUTPUT_DIR/backtest/cold or .../warm: the windows' runs and the results."""
    return join(cfg.output_dir, "backtest", "warm" if warm else "cold")


def window_config(cfg: JobConfig, i: int, day: dt.date, warm: bool = False,
                  epochs: Optional[int] = None) -> JobConfig:
    """Window i's config: the job's with its own output_dir and data.until (and train.epochs if given)."""
    out = join(backtest_dir(cfg, warm), f"w{i:02d}_{day.isoformat()}")
    return config_from_dict(cfg.to_dict(), [f"output_dir={out}", f"data.until={day.isoformat()}",
                                            f"name={cfg.name}-w{i:02d}"]
                            + ([] if epochs is None else [f"train.epochs={epochs}"]))


def _row(i: int, day: dt.date, wcfg: JobConfig, metrics: dict, start: str, wall: Optional[float]) -> dict:
    k = wcfg.eval.metric.partition("@")[2]
    refit = metrics.get("refit") or {}
    test = refit.get("test") or metrics.get("test") or {}  # the final model's: the refit's under train.refit
    epochs = metrics.get("epochs") or []
    init = metrics.get("init_from") or {}
    stats = json.loads(storage.read_text(join(wcfg.output_dir, "data", "stats.json")))
    return {"window": i, "until": day.isoformat(), "run": wcfg.output_dir, "start": start,
            "test_range": stats["test"].get("time_range"), "train_events": stats["train"]["events"],
            "n_items": stats["n_items"], "items": init.get("items"),
            "test_events": test.get("events"), f"recall@{k}": test.get(f"recall@{k}"), f"mrr@{k}": test.get(f"mrr@{k}"),
            "epochs": len(epochs), "best_epoch": metrics.get("best_epoch"), "refit_epochs": refit.get("epochs", 0),
            "train_seconds": round(sum(r.get("train_seconds", 0.0) for r in epochs) + refit.get("train_seconds", 0.0), 2),
            "wall_seconds": None if wall is None else round(wall, 2)}


def backtest(cfg: JobConfig, windows: int, step_days: int, *, warm: bool = False, end: Optional[str] = None,
             init_checkpoint: str = "best", reset_optimizer: bool = False, warm_epochs: Optional[int] = None,
             on_window: Optional[Callable[[dict], None]] = None) -> dict:
    """Train and test the N windows; returns backtest.json's content (also written with the table and plot).

    `end`: the last window's day (ISO date; default data.until, else the day of the newest event).
    `warm_epochs`: with `warm`, the train.epochs of every window after the first (the nightly
    recipe: a few epochs from yesterday's model); default the config's.
    `on_window(row)` is called after each window (the CLI prints a line).
    """
    from sbrjob.stages import train_stage

    if windows < 1 or step_days < 1:
        raise SbrjobError(f"--windows {windows} --step-days {step_days}: both must be >= 1")
    if warm_epochs is not None and (not warm or warm_epochs < 1):
        raise SbrjobError(f"--warm-epochs {warm_epochs}: needs --warm and a value >= 1")
    if cfg.split.scheme == "given":
        raise SbrjobError("split.scheme given: a backtest re-splits each window by time; use split.scheme days "
                          "(or fraction)")
    if end is not None:
        try:
            last = dt.date.fromisoformat(end)
        except ValueError:
            raise SbrjobError(f"--until {end!r}: not an ISO date; write e.g. 2014-09-29") from None
    elif cfg.data.until is not None and len(str(cfg.data.until)) == 10:
        last = dt.date.fromisoformat(cfg.data.until)
    else:
        last = last_day(cfg)
    days = window_days(last, windows, step_days)
    since = window_bounds(cfg.data)[0]
    if since is not None and dt.datetime.combine(days[0], dt.time(), dt.timezone.utc).timestamp() + 86400 <= since:
        raise SbrjobError(f"the first window ends {days[0]}, before data.since {cfg.data.since}; fewer --windows "
                          "or a smaller --step-days")
    root = backtest_dir(cfg, warm)
    rows, previous = [], None
    for i, day in enumerate(days):
        source = previous if warm else None
        wcfg = window_config(cfg, i, day, warm, epochs=warm_epochs if source is not None else None)
        t0 = time.perf_counter()
        log.info("backtest: window %d/%d until %s -> %s (%s)", i + 1, windows, day, wcfg.output_dir,
                 f"warm from {source}" if source else "cold")
        metrics, complete = train_stage(wcfg, init_from=source, init_checkpoint=init_checkpoint,
                                        reset_optimizer=reset_optimizer)
        start = "cold" if not (metrics.get("init_from") or source) else f"warm from w{i - 1:02d}"
        row = _row(i, day, wcfg, metrics, start, None if complete else time.perf_counter() - t0)
        rows.append(row)
        if on_window is not None:
            on_window(row)
        previous = wcfg.output_dir
    result = summarise(cfg, rows, warm=warm, step_days=step_days)
    storage.write_text(join(root, "backtest.json"), json.dumps(result, indent=2) + "\n")
    storage.write_text(join(root, "backtest.md"), table(result))
    storage.write_bytes(join(root, "backtest.png"), plot(result))
    return result


def summarise(cfg: JobConfig, rows: list[dict], *, warm: bool, step_days: int) -> dict:
    k = cfg.eval.metric.partition("@")[2]
    keys = (f"recall@{k}", f"mrr@{k}", "epochs", "train_seconds")
    mean = {key: float(np.mean([r[key] for r in rows if r[key] is not None])) for key in keys
            if any(r[key] is not None for r in rows)}
    std = {key: float(np.std([r[key] for r in rows if r[key] is not None])) for key in keys[:2] if key in mean}
    return {"name": cfg.name, "output_dir": backtest_dir(cfg, warm), "cutoff": int(k), "warm": warm,
            "step_days": step_days, "windows": rows, "mean": mean, "std": std}


def table(result: dict) -> str:
    """backtest.md: one row per window, then the mean."""
    k = result["cutoff"]
    head = (f"# {result['name']}: backtest, {len(result['windows'])} windows, step {result['step_days']} day(s), "
            f"{'warm' if result['warm'] else 'cold'} start\n\n")
    cols = ["window", "until", "start", "items (kept/new/dropped)", "train events", "test events",
            f"Recall@{k}", f"MRR@{k}", "epochs (+refit)", "train s"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---:" if i > 2 else "---" for i in range(len(cols))) + "|"]
    for r in result["windows"]:
        items = r["items"]
        carried = f"{r['n_items']:,} ({items['kept']:,}/{items['new']:,}/{items['dropped']:,})" if items else f"{r['n_items']:,}"
        lines.append("| " + " | ".join([
            f"w{r['window']:02d}", r["until"], r["start"], carried, f"{r['train_events']:,}",
            f"{r['test_events']:,}" if r["test_events"] is not None else "-",
            _num(r[f"recall@{k}"]), _num(r[f"mrr@{k}"]),
            f"{r['epochs']}+{r['refit_epochs']}" if r.get("refit_epochs") else str(r["epochs"]),
            f"{r['train_seconds']:.1f}"]) + " |")
    m, s = result["mean"], result["std"]
    lines.append("| " + " | ".join([
        "**mean**", "", "", "", "", "", f"**{_num(m.get(f'recall@{k}'))}** ± {_num(s.get(f'recall@{k}'))}",
        f"**{_num(m.get(f'mrr@{k}'))}** ± {_num(s.get(f'mrr@{k}'))}", f"{m.get('epochs', 0):.1f}",
        f"{m.get('train_seconds', 0):.1f}"]) + " |")
    return head + "\n".join(lines) + "\n\n(± is the standard deviation over the windows)\n"


def _num(v) -> str:
    return "-" if v is None else f"{v:.4f}"


def plot(result: dict) -> bytes:
    """backtest.png: Recall@K and MRR@K per window with their means (left), train seconds and epochs (right)."""
    from matplotlib.figure import Figure

    k, rows = result["cutoff"], result["windows"]
    x = np.arange(len(rows))
    labels = [r["until"] for r in rows]
    fig = Figure(figsize=(11, 3.8))
    ax, ax_time = fig.subplots(1, 2)
    for key, color in ((f"recall@{k}", "tab:blue"), (f"mrr@{k}", "tab:orange")):
        values = [np.nan if r[key] is None else r[key] for r in rows]
        ax.plot(x, values, "o-", color=color, label=key.replace("recall", "Recall").replace("mrr", "MRR"))
        if key in result["mean"]:
            ax.axhline(result["mean"][key], color=color, linestyle="--", alpha=0.6,
                       label=f"mean {result['mean'][key]:.4f}")
    ax.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax.set_xlabel("window (data until)")
    ax.set_ylabel("test metric")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{'warm' if result['warm'] else 'cold'} start: test metrics per window")
    bars = ax_time.bar(x, [r["train_seconds"] for r in rows], color="tab:green")
    for bar, r in zip(bars, rows):
        ax_time.annotate(f"{r['epochs']} ep", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                         textcoords="offset points", xytext=(0, 2), ha="center", fontsize=8)
    ax_time.set_xticks(x, labels, rotation=30, ha="right", fontsize=8)
    ax_time.set_ylabel("training seconds")
    ax_time.grid(alpha=0.3, axis="y")
    ax_time.set_title("training time (epochs) per window")
    fig.suptitle(result["name"])
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()
