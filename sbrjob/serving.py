"""`sbrjob export-model`: a self-contained SavedModel for serving next-item recommendations.

The SavedModel holds the trained weights, the item vocabulary (`assets/items.txt`, one original id
per line in index order) and the recurrence, so plain `tf.saved_model.load(path)` or TF Serving runs
it without sbrjob. Signatures (docs/serving.md has the request shapes):

- `serving_default(items)`: histories -> the export's top-k (`-k`, default 20), as before:
  `items` string [batch, len], "" = padding -> `item_ids` string [batch, k], `scores` float32
  [batch, k], `known` int32 [batch] (how many ids of the row were in the vocabulary). The run's
  seen bias (`eval.seen_bias`, model_card.json `seen_bias`; none for most runs) is added to the
  scores of the history's own items, as the run's test was scored.
- `recommend(items, k, exclude_seen)`: the same with `k` int32 scalar and `exclude_seen` bool
  scalar given at call time (True: the history's items are left out; False: the seen bias as in
  `serving_default`), plus `state` float32 [batch, S]: the session's state after the history
  (hand it to `step` to go on click by click).
- `step(item_id, state, k)`: one click per session. `item_id` string [batch], `state` float32
  [batch, S] (zeros for a new session) -> `item_ids`, `scores` [batch, k], `state` [batch, S] (store
  it with the session), `known` bool [batch]: False = the id is not in the vocabulary (or ""), the
  state is returned unchanged and the scores come from it.
- `step_exclude_seen(item_id, state, k, seen)`: `step` that also drops `seen` (string [batch, n],
  "" = padding: the session's earlier items, which the caller keeps) and `item_id` itself.
- `step_seen(item_id, state, k, seen)`: `step` with the seen bias added to `seen` and `item_id`:
  click by click what `serving_default` gives for the whole history.

The state is every GRU layer's hidden state side by side, layer 0 first: S = sum(model.layers),
columns [offset_l, offset_l + H_l) for layer l. `k` is bounded by the catalogue (k > n_items gives
n_items); with `exclude_seen` fewer than k items may remain: those slots are "" with score -inf.
Feeding a session's clicks one by one through `step` gives the same top-k and scores as its history
through `recommend` (tested to 1e-5). A row with no known item is scored from the zero state.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import tensorflow as tf

from sbrjob import storage
from sbrjob.config import bias_text, join
from sbrjob.errors import SbrjobError

MARKER = "saved_model.pb"
VOCABULARY = "items.txt"
CARD = "model_card.json"
SIGNATURES = ("serving_default", "recommend", "step", "step_exclude_seen", "step_seen")


class Recommender(tf.Module):
    """Wraps a model with the contract initial_state/step/item_scores and a string-id vocabulary.

    `vocabulary_file` (one id per line, index order) makes the lookup tables read it as a SavedModel
    asset; without it the ids are held as constants (in-process use). `seen_bias` is added to the
    scores of a session's own items (`runs.seen_bias`; -inf leaves them out; 0 = none).
    """

    def __init__(self, model, item_ids: list[str], k: int = 20, vocabulary_file: str | None = None,
                 seen_bias: float = 0.0):
        super().__init__(name="sbrjob_recommender")
        self.model = model
        self.seen_bias = float(seen_bias)
        n = len(item_ids)
        self.n_items = n
        self.k = min(int(k), n)
        self.sizes = [int(s) for s in model.sizes]
        self.state_size = sum(self.sizes)
        self._ids = np.asarray(item_ids, dtype=object)
        if vocabulary_file is None:
            ids, index = tf.constant(list(item_ids), tf.string), tf.range(n, dtype=tf.int64)
            by_id = tf.lookup.KeyValueTensorInitializer(ids, index)
            by_index = tf.lookup.KeyValueTensorInitializer(index, ids)
        else:
            self.vocabulary = tf.saved_model.Asset(vocabulary_file)
            line, whole = tf.lookup.TextFileIndex.LINE_NUMBER, tf.lookup.TextFileIndex.WHOLE_LINE
            by_id = tf.lookup.TextFileInitializer(self.vocabulary, tf.string, whole, tf.int64, line)
            by_index = tf.lookup.TextFileInitializer(self.vocabulary, tf.int64, line, tf.string, whole)
        self.index_of = tf.lookup.StaticHashTable(by_id, default_value=-1)
        self.id_of = tf.lookup.StaticHashTable(by_index, default_value="")
        S, default_k = self.state_size, tf.constant(self.k, tf.int32)
        no = tf.constant(False)

        # Module functions with defaults (k = the export's k, exclude_seen off): `m.recommend(items)`,
        # `m.step(item_id, state)` work from Python; the signatures of the same name need every input.
        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="items"),
                                      tf.TensorSpec([], tf.int32, name="k"),
                                      tf.TensorSpec([], tf.bool, name="exclude_seen")])
        def recommend(items, k=default_k, exclude_seen=no):
            index = self.index_of.lookup(items)
            state = self.history_state(index)
            bias = tf.where(exclude_seen, tf.constant(-np.inf), tf.constant(self.seen_bias))
            ids, scores = self.top(state[-1], k, index, bias)
            return {"item_ids": ids, "scores": scores, "known": _count_known(index),
                    "state": tf.concat(state, axis=1)}

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_id"),
                                      tf.TensorSpec([None, S], tf.float32, name="state"),
                                      tf.TensorSpec([], tf.int32, name="k")])
        def step(item_id, state, k=default_k):
            return self._step(item_id, state, k, None)

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_id"),
                                      tf.TensorSpec([None, S], tf.float32, name="state"),
                                      tf.TensorSpec([], tf.int32, name="k"),
                                      tf.TensorSpec([None, None], tf.string, name="seen")])
        def step_exclude_seen(item_id, state, k, seen):
            return self._step(item_id, state, k, self.index_of.lookup(seen))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="item_id"),
                                      tf.TensorSpec([None, S], tf.float32, name="state"),
                                      tf.TensorSpec([], tf.int32, name="k"),
                                      tf.TensorSpec([None, None], tf.string, name="seen")])
        def step_seen(item_id, state, k, seen):
            return self._step(item_id, state, k, self.index_of.lookup(seen), self.seen_bias)

        self.recommend, self.step, self.step_exclude_seen, self.step_seen = recommend, step, step_exclude_seen, step_seen

    # ---------------------------------------------------------------- graph pieces (index level)

    def history_state(self, index, input_table=None) -> list:
        """The state after each row of `index` [b, L] (int, -1 = padding/unknown: skipped), from zero."""
        state = self.model.initial_state(tf.shape(index)[0])
        for t in tf.range(tf.shape(index)[1]):
            column = index[:, t]
            _, state = self.model.masked_step(tf.cast(column, tf.int32), state, column >= 0, input_table)
        return state

    def top_indices(self, h, k, seen=None, bias=-np.inf):
        """(indices [b, k'], scores [b, k']) of the best items for h [b, H]; the items of `seen`
        [b, m] int (-1 = none) get `bias` added once each (-inf: left out). k' = min(k, n_items);
        k < 1 is an InvalidArgumentError."""
        scores = self.model.item_scores(h)
        if seen is not None:
            seen = tf.cast(seen, tf.int64)
            where = tf.where(seen >= 0)  # [N, 2]: (row, position)
            cells = tf.stack([where[:, 0], tf.gather_nd(seen, where)], axis=1)
            # an update, not an add: an item seen twice gets the bias once
            scores = tf.tensor_scatter_nd_update(scores, cells, tf.gather_nd(scores, cells) + bias)
        tf.debugging.assert_greater_equal(k, 1, message="k must be >= 1")
        top = tf.math.top_k(scores, k=tf.minimum(k, self.n_items))
        return top.indices, top.values

    def top(self, h, k, seen=None, bias=-np.inf):
        """Like `top_indices` with original ids; slots left out by a -inf bias are "" with score -inf."""
        indices, scores = self.top_indices(h, k, seen, bias)
        ids = self.id_of.lookup(tf.cast(indices, tf.int64))
        return tf.where(scores == -np.inf, tf.constant(""), ids), scores

    def _step(self, item_id, state, k, seen, bias=-np.inf):
        index = self.index_of.lookup(item_id)
        known = index >= 0
        h, new = self.model.masked_step(tf.cast(index, tf.int32), tf.split(state, self.sizes, axis=1), known)
        seen = None if seen is None else tf.concat([seen, index[:, None]], axis=1)
        ids, scores = self.top(h, k, seen, bias)
        return {"item_ids": ids, "scores": scores, "state": tf.concat(new, axis=1), "known": known}

    # ---------------------------------------------------------------- the history signature

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="items")])
    def history(self, items):
        index = self.index_of.lookup(items)
        seen = index if self.seen_bias else None
        ids, scores = self.top(self.history_state(index)[-1], tf.constant(self.k, tf.int32), seen, self.seen_bias)
        return {"item_ids": ids, "scores": scores, "known": _count_known(index)}

    @tf.function(input_signature=[tf.RaggedTensorSpec([None, None], tf.string)])
    def recommend_ragged(self, items):
        return self.history(items.to_tensor(default_value=""))

    def signatures(self) -> dict:
        return {"serving_default": self.history, "recommend": self.recommend, "step": self.step,
                "step_exclude_seen": self.step_exclude_seen, "step_seen": self.step_seen}

    def state_layout(self) -> list[dict]:
        out, offset = [], 0
        for layer, size in enumerate(self.sizes):
            out.append({"layer": layer, "units": size, "columns": [offset, offset + size]})
            offset += size
        return out


def _count_known(index):
    return tf.reduce_sum(tf.cast(index >= 0, tf.int32), axis=1)


# ---------------------------------------------------------------- describing and saving


def _spec(tensor_or_spec) -> dict:
    shape = [-1 if d is None else int(d) for d in tensor_or_spec.shape.as_list()]
    return {"dtype": tensor_or_spec.dtype.name, "shape": shape}


def describe_signatures(module: Recommender) -> dict:
    """{name: {"inputs": {name: {dtype, shape}}, "outputs": {...}}}, -1 = any size."""
    out = {}
    for name, fn in module.signatures().items():
        concrete = fn.get_concrete_function()
        args, kwargs = concrete.structured_input_signature
        specs = list(args) + list(kwargs.values())
        inputs = {s.name: _spec(s) for s in specs}
        outputs = {k: _spec(v) for k, v in sorted(concrete.structured_outputs.items())}
        out[name] = {"inputs": inputs, "outputs": outputs}
    return out


def example_requests(module: Recommender, name: str, item_id: str) -> dict:
    """REST request bodies (TF Serving's columnar "inputs" format) for each signature."""
    zeros = [[0.0] * module.state_size]
    return {
        "url": f"POST http://HOST:8501/v1/models/{name}:predict",
        "serving_default": {"signature_name": "serving_default", "inputs": {"items": [[item_id]]}},
        "recommend": {"signature_name": "recommend",
                      "inputs": {"items": [[item_id]], "k": 10, "exclude_seen": True}},
        "step": {"signature_name": "step", "inputs": {"item_id": [item_id], "state": zeros, "k": 10}},
        "step_exclude_seen": {"signature_name": "step_exclude_seen",
                              "inputs": {"item_id": [item_id], "state": zeros, "k": 10, "seen": [[""]]}},
        "step_seen": {"signature_name": "step_seen",
                      "inputs": {"item_id": [item_id], "state": zeros, "k": 10, "seen": [[""]]}},
    }


def _vocabulary_text(ids) -> str:
    ids = [str(i) for i in ids]
    for index, i in enumerate(ids):
        if i == "" or "\n" in i or "\r" in i:
            raise SbrjobError(f"item {index} has the id {i!r}: an exported vocabulary cannot hold empty ids "
                              "or line breaks (one id per line in assets/items.txt)")
    if len(set(ids)) != len(ids):
        raise SbrjobError("the item vocabulary has duplicate ids; re-run `sbrjob prepare --force`")
    return "".join(i + "\n" for i in ids)


def _save_into(module: Recommender, tmp: Path, info: dict | None, card: dict | None) -> None:
    with tempfile.TemporaryDirectory(prefix="sbrjob-vocab-") as src:
        vocab = Path(src) / VOCABULARY
        vocab.write_text(_vocabulary_text(module._ids), encoding="utf-8")
        export = Recommender(module.model, list(module._ids), module.k, vocabulary_file=str(vocab),
                             seen_bias=module.seen_bias)
        tf.saved_model.save(export, str(tmp), signatures=export.signatures())
    signatures = describe_signatures(export)
    (tmp / "sbrjob_serving.json").write_text(json.dumps({
        "k": export.k, "n_items": export.n_items, "state_size": export.state_size,
        "seen_bias": bias_text(export.seen_bias),
        "state_layout": export.state_layout(),
        "signature": "serving_default(items: string [batch, len], '' = padding) -> "
                     "item_ids string [batch, k], scores float32 [batch, k], known int32 [batch]",
        "signatures": signatures, **(info or {})}, indent=2) + "\n")
    if card is not None:
        card = {**card, "signatures": signatures}
        (tmp / CARD).write_text(json.dumps(card, indent=2, default=str) + "\n")


def save_recommender(module: Recommender, dest: str, info: dict | None = None, card: dict | None = None) -> str:
    """Save `module` to `dest` (local or gs://) whole, replacing what is there: staged locally,
    published with the .pb last. `card` (when given) is written as model_card.json with the
    signatures added."""
    with storage.staging_dir(dest) as tmp:
        _save_into(module, tmp, info, card)
        storage.publish_dir(tmp, dest, last=MARKER)
    return dest


# ---------------------------------------------------------------- TF Serving layout: BASE/<version>/


def existing_versions(base: str) -> list[int]:
    """The integer version directories under `base` (TF Serving's model base path), sorted."""
    if storage.is_remote(base):
        names = {rel.split("/", 1)[0] for rel in storage.list_files(base) if "/" in rel}
    else:
        root = Path(base)
        if root.exists() and not root.is_dir():
            raise SbrjobError(f"--to {base}: is a file; give a directory (TF Serving's model base path)")
        names = {p.name for p in root.iterdir() if p.is_dir()} if root.is_dir() else set()
    return sorted(int(n) for n in names if n.isdigit())


def save_version(module: Recommender, base: str, version: int | None = None, info: dict | None = None,
                 card: dict | None = None) -> tuple[str, int]:
    """Save `module` as `base/<version>/` (next integer after the highest when None); never
    overwrites a version. Returns (path, version)."""
    have = existing_versions(base)
    following = (have[-1] + 1) if have else 1
    if version is None:
        version = following
    elif version < 1:
        raise SbrjobError(f"--version {version}: must be an integer >= 1")
    elif version in have:
        raise SbrjobError(f"{join(base, str(version))} already exists and versions are never overwritten; "
                          f"pass another --version or leave it out (next free: {following})")
    dest = join(base, str(version))
    card = {**(card or {}), "version": version}
    with storage.staging_dir(dest) as tmp:
        _save_into(module, tmp, {**(info or {}), "version": version}, card)
        if storage.is_remote(dest):
            if version in existing_versions(base):
                raise SbrjobError(f"{dest} appeared while exporting (another export?); nothing written")
            storage.publish_dir(tmp, dest, last=MARKER)
        else:
            try:  # a rename never replaces a non-empty directory: a concurrent export of N is not lost
                os.rename(tmp, dest)
            except OSError as err:
                if Path(dest).exists():
                    raise SbrjobError(f"{dest} appeared while exporting (another export?); nothing written") from None
                from sbrjob.errors import io_error

                raise io_error(err, dest, doing="publishing") from None
    return dest, version


# ---------------------------------------------------------------- from a run


def model_card(trained, module: Recommender, checkpoint: str) -> dict:
    """What a serving team needs to know about the model (signatures are added when saved)."""
    from sbrjob import __version__
    from sbrjob.runs import Prepared, stored_fingerprint

    cfg, items = trained.cfg, trained.items
    metrics = trained.run.metrics() or {}
    try:
        digest = Prepared.open(trained.run.data_dir).digest
    except SbrjobError:
        digest = None
    top = items.sort_values("support", ascending=False, kind="stable") if "support" in items else items
    example_id = str(top["item_id"].iloc[0])
    return {
        "name": cfg.name,
        "run": trained.run.dir,
        "checkpoint": checkpoint,
        "checkpoint_path": trained.checkpoint,
        "run_fingerprint": stored_fingerprint(trained.checkpoint),
        "data_digest": digest,
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sbrjob_version": __version__,
        "tensorflow_version": tf.__version__,
        "n_items": module.n_items,
        "vocabulary": f"assets/{VOCABULARY} (one original item id per line, index order)",
        "model": {"layers": module.sizes, "input": cfg.model.input, "loss": cfg.train.loss,
                  "final_activation": cfg.model.final_activation},
        "metrics": {"test": metrics.get("test"), "best_epoch": metrics.get("best_epoch"),
                    "stopped": metrics.get("stopped")},
        "k": module.k,
        "seen_bias": bias_text(module.seen_bias),
        "state": {"dtype": "float32", "size": module.state_size, "layout": module.state_layout(),
                  "new_session": "zeros [1, size]"},
        "example_request": example_requests(module, cfg.name, example_id),
    }


def export_saved_model(run_dir: str, k: int = 20, dest: str | None = None, checkpoint: str = "best",
                       to: str | None = None, version: int | None = None) -> str:
    """Export a trained run's model as a SavedModel; returns its path.

    `to` = a TF Serving model base path: written as `to/<version>/` (next integer, or `version`);
    otherwise `dest` (default RUN/saved_model), replaced whole.
    """
    from sbrjob.runs import load_trained, seen_bias

    if k < 1:
        raise SbrjobError(f"-k {k}: must be >= 1")
    if version is not None and to is None:
        raise SbrjobError("--version needs --to DIR (the TF Serving model base path that holds the versions)")
    trained = load_trained(run_dir, checkpoint)
    ids = trained.items["item_id"].astype(str).tolist()
    module = Recommender(trained.model, ids, k, seen_bias=seen_bias(trained.run, trained.cfg) or 0.0)
    info = {"run": run_dir, "checkpoint": checkpoint, "name": trained.cfg.name}
    card = model_card(trained, module, checkpoint)
    if to is not None:
        return save_version(module, to, version, info, card)[0]
    return save_recommender(module, dest or join(run_dir, "saved_model"), info, card)
