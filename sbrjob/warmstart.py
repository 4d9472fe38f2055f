"""Warm start: a new run begins from another run's weights, across a changed item catalogue.

The new run's vocabulary is rebuilt from its own data; the two are matched by the original item
id. Every item-indexed variable (the output table Wy and bias by, the separate embedding E, the
one-hot input weights of the first GRU layer) keeps the source's rows of the items both runs know,
new items keep the rows the new model drew with its own initializer (zero for the bias), and items
the new data no longer holds are dropped. The other variables (the GRU layers) are copied whole.
Optimizer slots (Adagrad's accumulator and velocity, Adam's m and v) follow their variable's rows
the same way (new rows start from zero, as in a fresh run) and its step counter is carried, unless
the optimizer is reset (`reset_optimizer`) or the source trained with another optimizer.

Anything whose shape cannot be carried (another layer size, input mode or embedding width) is
refused with one line naming the variable and both shapes. `apply` only runs before the first step
of a new run (`train.fit(init_from=...)`): a resumed run restores its own checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Optional

import numpy as np

from sbrjob import runs, storage
from sbrjob.config import JobConfig
from sbrjob.errors import SbrjobError

log = logging.getLogger("sbrjob.warmstart")


def named_variables(model) -> dict[str, object]:
    """The model's variables by a stable name, independent of the catalogue size."""
    out = {"Wy": model.Wy, "by": model.by}
    if getattr(model, "E", None) is not None:
        out["E"] = model.E
    for i, layer in enumerate(model.layers):
        out.update({f"gru_{i}.Wx": layer.Wx, f"gru_{i}.Wrz": layer.Wrz, f"gru_{i}.Wh": layer.Wh,
                    f"gru_{i}.b": layer.b})
    return out


def item_indexed(model) -> set[str]:
    """Names of the variables with one row per item."""
    out = {"Wy", "by"}
    if model.input_mode == "embedding":
        out.add("E")
    if model.input_mode == "onehot":
        out.add("gru_0.Wx")
    return out


@dataclasses.dataclass
class Source:
    """The run a warm start begins from: its config, vocabulary (original ids in index order) and checkpoint."""

    dir: str
    which: str
    cfg: JobConfig
    item_ids: np.ndarray
    checkpoint: str
    fingerprint: Optional[str]


def final_model_dir(run_dir: str) -> str:
    """The run that holds `run_dir`'s final model: its refit (`train.refit`, RUN/refit) once that is
    done, else the run itself. Yesterday's model in the nightly pattern is what yesterday shipped."""
    run = runs.Run(run_dir)
    try:
        refit = json.loads(storage.read_text(run.metrics_path)).get("refit") or {}
    except (FileNotFoundError, json.JSONDecodeError):
        return run_dir
    return run.refit_dir if refit.get("status") == "done" else run_dir


def open_source(run_dir: str, which: str = "best") -> Source:
    """The source run (local or gs://) and its `best` or `last` checkpoint; one line when it has none.
    A run with a finished refit is represented by it (`final_model_dir`)."""
    final = final_model_dir(run_dir)
    if final != run_dir:
        log.info("--init-from %s: starting from its final model, the refit on train + valid (%s)", run_dir, final)
    run = runs.Run(final)
    cfg = run.saved_config()
    if cfg is None:
        raise SbrjobError(f"--init-from {run_dir}: {run.config_path} not found; give the output_dir of a trained run")
    if which not in ("best", "last"):
        raise SbrjobError(f"--init-checkpoint {which!r}: use best or last")
    checkpoint = runs.find_checkpoint(run, which)
    items = runs.Prepared.open(run.data_dir).load_items()
    return Source(run.dir, which, cfg, items["item_id"].astype(str).to_numpy(), checkpoint,
                  runs.stored_fingerprint(checkpoint))


def vocabulary_map(source_ids: np.ndarray, new_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
    """(rows in the new vocabulary, their rows in the source, counts kept/new/dropped), matched by original id."""
    import pandas as pd

    at = pd.Index(np.asarray(source_ids, dtype=object)).get_indexer(pd.Index(np.asarray(new_ids, dtype=object)))
    new_rows = np.flatnonzero(at >= 0)
    src_rows = at[new_rows]
    kept = len(new_rows)
    return new_rows, src_rows, {"kept": kept, "new": len(new_ids) - kept, "dropped": len(source_ids) - kept}


def _source_values(source: Source):
    """The source model and optimizer, restored from its checkpoint (plain variables, no strategy)."""
    import tensorflow as tf

    from sbrjob.model import GRU4Rec
    from sbrjob.optim import make_optimizer

    model = GRU4Rec(source.cfg.model, len(source.item_ids), seed=source.cfg.seed)
    optimizer = make_optimizer(source.cfg.train, model.trainable_variables)
    try:
        tf.train.Checkpoint(model=model, optimizer=optimizer).restore(source.checkpoint).expect_partial() \
            .assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError) as err:
        first = (str(err).strip().splitlines() or [""])[0][:160]
        raise SbrjobError(f"--init-from {source.dir}: {source.checkpoint} does not fit that run's own config "
                          f"({first})") from None
    return model, optimizer


def check_shapes(source_model, model) -> None:
    """Refuse, in one line, a source whose variables cannot be carried into `model`."""
    src, dst = named_variables(source_model), named_variables(model)
    rows = item_indexed(model)
    for name in sorted(set(src) | set(dst)):
        if name not in src or name not in dst:
            raise SbrjobError(f"--init-from: the source model has {'no' if name not in src else 'a'} variable {name} "
                              f"and this one {'has' if name in dst else 'has not'} (model.input "
                              f"{source_model.input_mode!r} -> {model.input_mode!r}, model.layers "
                              f"{list(source_model.sizes)} -> {list(model.sizes)}); a warm start needs the same architecture")
        a, b = tuple(src[name].shape), tuple(dst[name].shape)
        same = a[1:] == b[1:] if name in rows else a == b
        if not same:
            raise SbrjobError(f"--init-from: cannot carry {name}: source shape {list(a)}, this run {list(b)} "
                              f"(model.layers {list(source_model.sizes)} -> {list(model.sizes)}, model.embedding_dim "
                              f"{source_model.cfg.embedding_dim} -> {model.cfg.embedding_dim}); use the source's "
                              "model settings or train cold")


def _carry(fresh: np.ndarray, value: np.ndarray, new_rows, src_rows) -> np.ndarray:
    out = np.array(fresh, copy=True)
    out[new_rows] = value[src_rows]
    return out


def apply(model, optimizer, source: Source, new_ids: np.ndarray, reset_optimizer: bool = False) -> dict:
    """Carry the source's weights (and optimizer slots) into a freshly built `model`/`optimizer`;
    returns the record metrics.json keeps under `init_from`."""
    src_model, src_opt = _source_values(source)
    check_shapes(src_model, model)
    new_rows, src_rows, counts = vocabulary_map(source.item_ids, new_ids)
    rows = item_indexed(model)
    src_vars, dst_vars = named_variables(src_model), named_variables(model)
    same_optimizer = type(src_opt) is type(optimizer)
    keep_slots = same_optimizer and not reset_optimizer
    slot_of = {id(v): i for i, v in enumerate(optimizer.variables_)}
    src_slot_of = {id(v): i for i, v in enumerate(src_opt.variables_)}
    for name, var in dst_vars.items():
        value = src_vars[name].numpy()
        var.assign(_carry(var.numpy(), value, new_rows, src_rows) if name in rows else value)
        if not keep_slots:
            continue
        i, j = slot_of[id(var)], src_slot_of[id(src_vars[name])]
        for slot in optimizer.slot_names:
            dst, src = optimizer.slots[slot][i], src_opt.slots[slot][j].numpy()
            dst.assign(_carry(np.zeros(dst.shape, src.dtype), src, new_rows, src_rows) if name in rows else src)
    if keep_slots:
        optimizer.iterations.assign(src_opt.iterations.numpy())
        state = "kept"
    elif not same_optimizer:
        state = f"reset (the source trained with {source.cfg.train.optimizer}, this run with another optimizer)"
    else:
        state = "reset"
    record = {"run": source.dir, "checkpoint": source.which, "checkpoint_path": source.checkpoint,
              "fingerprint": source.fingerprint, "items": counts, "optimizer": state}
    log.info("warm start from %s (%s): %d items kept, %d new, %d dropped; optimizer state %s",
             source.checkpoint, source.which, counts["kept"], counts["new"], counts["dropped"], state)
    return record
