"""`sbrjob recommend`: the next items for one session, from a trained run.

The session is given as original item ids or, for MovieLens, titles matched forgivingly: case,
accents and punctuation are ignored, the year is optional ("Matrix" finds "Matrix, The (1999)"),
a trailing article may be written in front ("The Matrix"), and alternative titles in parentheses
also match ("Se7en"). Several comma-separated pieces that together form one title ("Matrix, The")
are joined. Unknown items are reported and skipped; a session with no known item is an error.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import tensorflow as tf

from sbrjob.errors import SbrjobError

_ARTICLES = ("the", "a", "an", "les", "la", "le", "l'", "il", "die", "das", "der", "el", "los", "las", "lo",
             "i", "gli", "un", "une", "det", "den", "en", "o", "os", "as")
_TRAILING_ARTICLE = re.compile(r"^(.*),\s*(" + "|".join(re.escape(a) for a in _ARTICLES) + r")$")
_YEAR = re.compile(r"\(\s*(\d{4})\s*\)\s*$")


def _plain(text: str) -> str:
    """Lower case, accents and apostrophes removed, other punctuation as spaces, articles in front."""
    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower().strip()
    m = _TRAILING_ARTICLE.match(text)
    if m:
        text = f"{m.group(2)} {m.group(1)}"
    return " ".join(re.sub(r"[^a-z0-9]+", " ", re.sub(r"['\u2019]", "", text)).split())  # cuckoo's = cuckoos


def title_keys(title: str) -> tuple[set[str], str | None]:
    """Normalised names a title answers to (main title, alternative titles) and its year."""
    year = None
    m = _YEAR.search(title)
    if m:
        year, title = m.group(1), title[:m.start()]
    alts = re.findall(r"\(([^()]*)\)", title)
    main = re.sub(r"\([^()]*\)", " ", title)
    names = {_plain(main), _plain(title)} | {_plain(re.sub(r"^(a\.k\.a\.|aka)\s*", "", a, flags=re.I)) for a in alts}
    # "Matrix" finds "Matrix, The": every name also answers without its leading article
    names |= {n.split(" ", 1)[1] for n in names if " " in n and n.split(" ", 1)[0] in _ARTICLES}
    return {n for n in names if n}, year


@dataclass
class ItemMatcher:
    """Looks up original ids first, then titles (most-supported item when a title is ambiguous)."""

    items: pd.DataFrame
    by_id: dict = field(init=False)
    by_title: dict = field(init=False)

    def __post_init__(self):
        self.by_id = {str(i): int(x) for i, x in zip(self.items["item_id"], self.items["index"])}
        self.by_title = {}
        support = dict(zip(self.items["index"], self.items["support"]))
        rows = self.items.dropna(subset=["title"]) if "title" in self.items else self.items.iloc[:0]
        for index, title in zip(rows["index"], rows["title"]):
            names, year = title_keys(str(title))
            for name in names:
                for key in ((name, year), (name, None)):
                    best = self.by_title.get(key)
                    if best is None or support[index] > support[best]:
                        self.by_title[key] = int(index)

    def find(self, text: str) -> int | None:
        text = text.strip()
        if text in self.by_id:
            return self.by_id[text]
        names, year = title_keys(text)
        for name in names:
            if (name, year) in self.by_title:
                return self.by_title[(name, year)]
        return None

    def parse(self, items_text: str) -> tuple[list[tuple[str, int]], list[str]]:
        """Split on commas (or ';' / '|' when used), joining neighbouring pieces that form one title.

        Returns ([(as given, item index)], [unknown pieces]) in session order.
        """
        sep = ";" if ";" in items_text else "|" if "|" in items_text else ","
        pieces = [p.strip() for p in items_text.split(sep)]
        found, unknown, i = [], [], 0
        while i < len(pieces):
            if not pieces[i]:
                i += 1
                continue
            for j in range(min(len(pieces), i + 4), i, -1):  # longest join first: "Matrix, The (1999)"
                text = sep.join(pieces[i:j]) if sep != "," else ", ".join(pieces[i:j])
                index = self.find(text)
                if index is not None:
                    found.append((text, index))
                    i = j
                    break
            else:
                unknown.append(pieces[i])
                i += 1
        return found, unknown


def session_scores(model, indices: list[int]) -> np.ndarray:
    """Scores of all items after feeding the session (one lane, from a zero state)."""
    state = model.initial_state(1)
    h = None
    for index in indices:
        h, state = model.step(tf.constant([index], tf.int32), state, training=False)
    return model.item_scores(h).numpy()[0]


def _text(value) -> str | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else str(value)


def recommend(run_dir: str, items_text: str, k: int = 10, exclude_seen: bool = True, checkpoint: str = "best") -> dict:
    """The top-k next items for a session given as ids or titles: {"session", "unknown", "recommendations"}."""
    from sbrjob.runs import load_trained

    if k < 1:
        raise SbrjobError(f"-k {k}: must be >= 1")
    trained = load_trained(run_dir, checkpoint)
    model, items = trained.model, trained.items
    matcher = ItemMatcher(items)
    found, unknown = matcher.parse(items_text or "")
    if not found:
        why = f"none of {unknown} is in the model's vocabulary" if unknown else "no items were given"
        raise SbrjobError(f"--items: the session is empty ({why}); give original item ids or titles, "
                          "e.g. --items 1193,661,914")
    indices = [index for _, index in found]
    scores = session_scores(model, indices)
    if exclude_seen:
        scores[indices] = -np.inf
    top = np.argsort(-scores, kind="stable")[:min(k, int(np.isfinite(scores).sum()))]
    row = lambda i: {"item_id": str(items.at[i, "item_id"]), "title": _text(items.at[i, "title"]),
                     "genres": _text(items.at[i, "genres"])}
    result = {
        "session": [{"given": text, **row(i)} for text, i in found],
        "unknown": unknown,
        "recommendations": [{"rank": r + 1, **row(int(i)), "score": float(scores[i])} for r, i in enumerate(top)],
    }
    return result


def format_table(result: dict) -> str:
    lines = ["session: " + "; ".join(f"{s['item_id']} {s['title'] or ''}".strip() for s in result["session"])]
    if result["unknown"]:
        lines.append("unknown (skipped): " + "; ".join(result["unknown"]))
    recs = result["recommendations"]
    id_w = max([len("item")] + [len(r["item_id"]) for r in recs])
    title_w = max([len("title")] + [len(r["title"] or "") for r in recs])
    lines.append(f"{'rank':>4}  {'item':<{id_w}}  {'score':>9}  {'title':<{title_w}}  genres")
    for r in recs:
        lines.append(f"{r['rank']:>4}  {r['item_id']:<{id_w}}  {r['score']:>9.4f}  "
                     f"{r['title'] or '':<{title_w}}  {r['genres'] or ''}".rstrip())
    return "\n".join(lines)
