"""`sbrjob export-model`: a self-contained SavedModel for serving next-item recommendations.

The SavedModel holds the trained weights, the item vocabulary (original string ids) and the
recurrence, so plain `tf.saved_model.load(path)` runs it without sbrjob:

    m = tf.saved_model.load("RUN/saved_model")
    out = m.signatures["serving_default"](items=tf.constant([["1193", "661", ""], ["914", "", ""]]))
    out["item_ids"], out["scores"]          # [batch, k] strings, [batch, k] float32
    m.recommend_ragged(tf.ragged.constant([["1193", "661"], ["914"]]))   # same, ragged input

Each row is one session's history, oldest first. "" is padding and unknown ids are skipped (the
state is carried past them unchanged), so padding may be on either side. A row with no known item
is scored from the zero state; `known` says how many items of each row were used.
"""

from __future__ import annotations

import json

import tensorflow as tf

from sbrjob import storage
from sbrjob.config import join
from sbrjob.errors import SbrjobError

MARKER = "saved_model.pb"


class Recommender(tf.Module):
    """Wraps a model with the contract initial_state/step/item_scores and a string-id vocabulary."""

    def __init__(self, model, item_ids: list[str], k: int):
        super().__init__(name="sbrjob_recommender")
        self.model = model
        self.k = min(int(k), len(item_ids))
        self.item_ids = tf.constant(item_ids, tf.string)
        self.vocabulary = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(self.item_ids, tf.range(len(item_ids), dtype=tf.int64)),
            default_value=-1)

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.string, name="items")])
    def recommend(self, items):
        index = self.vocabulary.lookup(items)  # [b, L], -1 = padding or unknown
        batch = tf.shape(items)[0]
        state = self.model.initial_state(batch)
        h = tf.zeros_like(state[-1])
        for t in tf.range(tf.shape(items)[1]):
            known = index[:, t] >= 0
            h_new, new_state = self.model.step(tf.cast(tf.maximum(index[:, t], 0), tf.int32), state, training=False)
            state = [tf.where(known[:, None], n, s) for n, s in zip(new_state, state)]
            h = tf.where(known[:, None], h_new, h)
        top = tf.math.top_k(self.model.item_scores(h), k=self.k)
        return {"item_ids": tf.gather(self.item_ids, top.indices), "scores": top.values,
                "known": tf.reduce_sum(tf.cast(index >= 0, tf.int32), axis=1)}

    @tf.function(input_signature=[tf.RaggedTensorSpec([None, None], tf.string)])
    def recommend_ragged(self, items):
        return self.recommend(items.to_tensor(default_value=""))


def save_recommender(module: Recommender, dest: str, info: dict | None = None) -> str:
    """Save `module` to `dest` (local or gs://) whole: staged locally, published with the .pb last."""
    with storage.staging_dir(dest) as tmp:
        tf.saved_model.save(module, str(tmp), signatures={"serving_default": module.recommend})
        (tmp / "sbrjob_serving.json").write_text(json.dumps({
            "k": module.k, "n_items": int(module.item_ids.shape[0]),
            "signature": "serving_default(items: string [batch, len], '' = padding) -> "
                         "item_ids string [batch, k], scores float32 [batch, k], known int32 [batch]",
            **(info or {})}, indent=2) + "\n")
        storage.publish_dir(tmp, dest, last=MARKER)
    return dest


def export_saved_model(run_dir: str, k: int = 20, dest: str | None = None, checkpoint: str = "best") -> str:
    """Export a trained run's model as a SavedModel (default RUN/saved_model); returns the path."""
    from sbrjob.runs import load_trained

    if k < 1:
        raise SbrjobError(f"-k {k}: must be >= 1")
    trained = load_trained(run_dir, checkpoint)
    cfg, model = trained.cfg, trained.model
    ids = trained.items["item_id"].astype(str).tolist()
    dest = dest or join(run_dir, "saved_model")
    return save_recommender(Recommender(model, ids, k), dest,
                            {"run": run_dir, "checkpoint": checkpoint, "name": cfg.name})
