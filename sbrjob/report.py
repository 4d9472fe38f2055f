"""`data_report.png`: what the prepared data looks like, at a glance.

Left: the cumulative session-length distribution per split (fraction of sessions with length <= L,
log x axis, as the GRU4Rec tutorial plots it). Right: events per day per split (log scale), which shows
where the time-based split cuts and how unevenly the days are filled.
"""

from __future__ import annotations

import numpy as np

COLORS = {"train": "tab:blue", "valid": "tab:orange", "test": "tab:green"}
DAY = 86400.0


def write_report(path: str, logs: dict, title: str = "") -> None:
    """`logs`: split name -> object with `session` (int64, 0..n-1) and `time` (epoch seconds) arrays."""
    from matplotlib.figure import (
        Figure,  # no pyplot: no GUI backend, no global state, faster import
    )

    fig = Figure(figsize=(12, 4.2))
    ax_len, ax_day = fig.subplots(1, 2)
    present = {name: log for name, log in logs.items() if len(log.session)}

    for name, log in present.items():
        counts = np.bincount(np.bincount(log.session))  # sessions per length
        lengths = np.flatnonzero(counts)
        cumulative = np.cumsum(counts[lengths]) / counts.sum()
        ax_len.step(lengths, cumulative, where="post", label=f"{name} ({int(counts.sum()):,} sessions)",
                    color=COLORS.get(name))
    ax_len.set_xscale("log")
    _plain_log_ticks(ax_len.xaxis)
    ax_len.set_xlabel("session length (events)")
    ax_len.set_ylabel("fraction of sessions with length <= x")
    ax_len.set_ylim(0, 1.01)
    ax_len.grid(alpha=0.3)
    ax_len.legend(loc="lower right")
    ax_len.set_title("cumulative session-length distribution")

    if present:
        day0 = np.floor(min(float(log.time.min()) for log in present.values()) / DAY)
        n_days = int(np.floor(max(float(log.time.max()) for log in present.values()) / DAY) - day0) + 1
        for name, log in present.items():
            per_day = np.bincount((np.floor(log.time / DAY) - day0).astype(np.int64), minlength=n_days)
            # one step line per split, log scale: days are often very unevenly filled (MovieLens)
            ax_day.step(np.arange(n_days), np.where(per_day > 0, per_day, np.nan), where="mid", linewidth=0.8,
                        color=COLORS.get(name), label=name)
        ax_day.set_yscale("log")
        _plain_log_ticks(ax_day.yaxis)
        ax_day.set_xlabel(f"day since {np.datetime64(int(day0 * DAY), 's').astype('datetime64[D]')} (UTC)")
    ax_day.set_ylabel("events per day")
    ax_day.grid(alpha=0.3)
    # below the axes: over the plot it hides the busiest days of some split whatever the corner
    ax_day.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    ax_day.set_title("events per day by split")

    if title:
        fig.suptitle(f"{title}: prepared data")
    fig.subplots_adjust(left=0.06, right=0.98, bottom=0.24, top=0.85, wspace=0.22)  # fixed: tight_layout is slow
    fig.savefig(path, dpi=90)


def _plain_log_ticks(axis) -> None:
    """Log-axis labels as plain numbers at 1-2-5 steps and no minor labels: matplotlib's default
    labels minor ticks too on short ranges, and they overlap."""
    from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    axis.set_minor_formatter(NullFormatter())


def training_curves(history: list[dict], metric: str, title: str = "") -> bytes:
    """`training_curves.png` of a run: train loss and the validation `metric` per epoch (left, two
    axes), steady-state train events/s per epoch (right). Returns the PNG bytes."""
    import io

    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig = Figure(figsize=(10, 3.8))
    ax_loss, ax_speed = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", color="tab:blue", label="train loss")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("train loss", color="tab:blue")
    ax_loss.grid(alpha=0.3)
    valid = [(r["epoch"], r["valid"][metric]) for r in history if (r.get("valid") or {}).get(metric) is not None]
    if valid:
        ax_valid = ax_loss.twinx()
        ax_valid.plot(*zip(*valid), "s-", color="tab:orange", label=f"valid {metric}")
        ax_valid.set_ylabel(f"valid {metric}", color="tab:orange")
        best = max(valid, key=lambda v: v[1])
        ax_valid.annotate(f"best {best[1]:.4f}", best, textcoords="offset points", xytext=(0, -14), ha="center",
                          fontsize=8, color="tab:orange")
    ax_loss.set_title("loss and validation metric")
    ax_speed.bar(epochs, [r["train_events_per_s"] for r in history], color="tab:green")
    ax_speed.set_xlabel("epoch")
    ax_speed.set_ylabel("train events/s (steady state)")
    ax_speed.grid(alpha=0.3, axis="y")
    ax_speed.set_title("training throughput")
    for ax in (ax_loss, ax_speed):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if title:
        fig.suptitle(f"{title}: training")
    fig.subplots_adjust(left=0.08, right=0.97, bottom=0.14, top=0.84, wspace=0.5)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80)
    return buf.getvalue()
