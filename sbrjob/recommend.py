"""`sbrjob recommend`: the next items for a session, or for a file of sessions, from a trained run.

A session is given as original item ids or, for MovieLens, titles matched forgivingly: case,
accents and punctuation are ignored, the year is optional ("Matrix" finds "Matrix, The (1999)"),
a trailing article may be written in front ("The Matrix"), and alternative titles in parentheses
also match ("Se7en"). Several comma-separated pieces that together form one title ("Matrix, The")
are joined. A title that matches no title exactly may be the start of one or name all its words
("Star Wars" finds "Star Wars: Episode IV - A New Hope (1977)", the most-rated of those); near
misses ("Blade Runer") are not used but suggested. Unknown items are reported and skipped; a
single session with no known item is an error.

Batch (`--sessions FILE`, `BatchRecommender`): JSONL or CSV sessions -> one result per session,
from one loaded model, sessions of similar length stepped together in one compiled graph; unknown
ids are listed per session, never fatal.
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
    """Looks up original ids first, then titles (most-supported item when a title is ambiguous).

    `find` = exact id, exact title (normalised, see `title_keys`), then `loose`: the text is the
    start of a title ("Star Wars") or names all of its words ("Wars Star"); `suggest` gives near
    misses (difflib) for a text that found nothing.
    """

    items: pd.DataFrame
    by_id: dict = field(init=False)
    by_title: dict = field(init=False)

    def __post_init__(self):
        self.by_id = {str(i): int(x) for i, x in zip(self.items["item_id"], self.items["index"])}
        self.by_title = {}
        n = len(self.items)
        support = dict(zip(self.items["index"], self.items["support"] if "support" in self.items else [0] * n))
        self._support = support
        self._titles = {}
        self._names = []  # (name, its words, year, index) of every title, for loose matching
        rows = self.items.dropna(subset=["title"]) if "title" in self.items else self.items.iloc[:0]
        for index, title in zip(rows["index"], rows["title"]):
            index = int(index)
            self._titles[index] = str(title)
            names, year = title_keys(str(title))
            for name in names:
                self._names.append((name, frozenset(name.split()), year, index))
                for key in ((name, year), (name, None)):
                    best = self.by_title.get(key)
                    if best is None or support[index] > support[best]:
                        self.by_title[key] = index
        self._loose = {}

    def exact(self, text: str) -> int | None:
        """An original id, or a title as `title_keys` normalises it."""
        text = text.strip()
        if text in self.by_id:
            return self.by_id[text]
        names, year = title_keys(text)
        for name in names:
            if (name, year) in self.by_title:
                return self.by_title[(name, year)]
        return None

    def find(self, text: str) -> int | None:
        hit = self.exact(text)
        return hit if hit is not None else self.loose(text)

    def _rank(self, index: int, name: str, year: str | None):
        """Best first: most supported, then the earliest year, then the shortest title."""
        return (-self._support[index], year or "9999", len(name), index)

    def loose(self, text: str) -> int | None:
        """A title that starts with the text's words, else one that has all of them (most supported).
        Plain numbers (ids) and texts of fewer than 3 letters never match loosely."""
        text = text.strip()
        if text in self._loose:
            return self._loose[text]
        hit = None
        names, year = title_keys(text) if self._names and not text.isdigit() else (set(), None)
        queries = [n for n in names if len(n) >= 3 and set(n.split()) - set(_ARTICLES)]
        for q in sorted(queries, key=len, reverse=True):
            words = frozenset(q.split())
            prefix, contains = [], []
            for name, name_words, y, index in self._names:
                if year is not None and y != year:
                    continue
                if name.startswith(q + " "):
                    prefix.append(self._rank(index, name, y))
                elif words <= name_words:
                    contains.append(self._rank(index, name, y))
            if prefix or contains:
                hit = min(prefix or contains)[-1]
                break
        if len(self._loose) < 100_000:
            self._loose[text] = hit
        return hit

    def suggest(self, text: str, n: int = 3) -> list[str]:
        """Up to n titles close to a text that found nothing (difflib ratio >= 0.75), best first."""
        import difflib

        names, _ = title_keys(text)
        if not self._names or text.strip().isdigit():
            return []
        scored = {}
        candidates = {name for name, _, _, _ in self._names}
        for q in names:
            for name in difflib.get_close_matches(q, candidates, n=3 * n, cutoff=0.75):
                index = self.by_title[(name, None)]
                ratio = difflib.SequenceMatcher(None, q, name).ratio()
                scored[index] = max(scored.get(index, 0.0), ratio)
        best = sorted(scored, key=lambda i: (-scored[i], -self._support[i], i))[:n]
        return [self._titles[i] for i in best]

    def title(self, index: int) -> str | None:
        return self._titles.get(int(index))

    def parse(self, items_text: str) -> tuple[list[tuple[str, int]], list[str]]:
        """Split on commas (or ';' / '|' when used), joining neighbouring pieces that form one title.

        Returns ([(as given, item index)], [unknown pieces]) in session order. Joins must match
        exactly; a single piece may also match loosely.
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
                index = self.exact(text) if j > i + 1 else self.find(text)
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


def seen_rule(trained, exclude_seen: bool) -> float:
    """The bias for a session's own items in recommendations: with `exclude_seen` (the default) the
    run's own rule (`runs.seen_bias`: what its test was scored with), or -inf (left out) for a run
    without one; otherwise 0 (the model's scores alone)."""
    from sbrjob.runs import seen_bias

    if not exclude_seen:
        return 0.0
    bias = seen_bias(trained.run, trained.cfg)
    return -np.inf if bias is None else bias


def recommend(run_dir: str, items_text: str, k: int = 10, exclude_seen: bool = True, checkpoint: str = "best") -> dict:
    """The top-k next items for a session given as ids or titles: {"session", "unknown", "recommendations"}.
    `exclude_seen`: the session's items are scored by `seen_rule` (left out, unless the run has a seen bias)."""
    from sbrjob.runs import load_trained

    if k < 1:
        raise SbrjobError(f"-k {k}: must be >= 1")
    trained = load_trained(run_dir, checkpoint)
    model, items = trained.model, trained.items
    matcher = ItemMatcher(items)
    found, unknown = matcher.parse(items_text or "")
    suggestions = {text: s for text in unknown if (s := matcher.suggest(text))}
    if not found:
        why = f"none of {unknown} is in the model's vocabulary" if unknown else "no items were given"
        hints = "".join(f"; {text!r}: did you mean {' or '.join(map(repr, s))}?" for text, s in suggestions.items())
        raise SbrjobError(f"--items: the session is empty ({why}{hints}); give original item ids or titles, "
                          "e.g. --items 1193,661,914")
    indices = [index for _, index in found]
    scores = session_scores(model, indices)
    scores[indices] = scores[indices] + seen_rule(trained, exclude_seen)  # once per item, however often seen
    top = np.argsort(-scores, kind="stable")[:min(k, int(np.isfinite(scores).sum()))]

    def row(i):
        return {"item_id": str(items.at[i, "item_id"]), "title": _text(items.at[i, "title"]),
                "genres": _text(items.at[i, "genres"])}

    result = {
        "session": [{"given": text, **row(i)} for text, i in found],
        "unknown": unknown,
        "suggestions": suggestions,
        "recommendations": [{"rank": r + 1, **row(int(i)), "score": float(scores[i])} for r, i in enumerate(top)],
    }
    return result


def format_table(result: dict) -> str:
    lines = ["session: " + "; ".join(f"{s['item_id']} {s['title'] or ''}".strip() for s in result["session"])]
    if result["unknown"]:
        hints = result.get("suggestions") or {}
        lines.append("unknown (skipped): " + "; ".join(
            text + (f" (did you mean {' or '.join(hints[text])}?)" if text in hints else "") for text in result["unknown"]))
    recs = result["recommendations"]
    id_w = max([len("item")] + [len(r["item_id"]) for r in recs])
    title_w = max([len("title")] + [len(r["title"] or "") for r in recs])
    lines.append(f"{'rank':>4}  {'item':<{id_w}}  {'score':>9}  {'title':<{title_w}}  genres")
    for r in recs:
        lines.append(f"{r['rank']:>4}  {r['item_id']:<{id_w}}  {r['score']:>9.4f}  "
                     f"{r['title'] or '':<{title_w}}  {r['genres'] or ''}".rstrip())
    return "\n".join(lines)


# ---------------------------------------------------------------- batch: a file of sessions

SESSION_KEYS = ("session_id", "session", "id")
_JSONL_HELP = 'each line: {"session_id": "s1", "items": ["1193", "661"]}'
_CSV_HELP = ("a header naming session_id and either items (one session per row, ids separated by ';', '|' "
             "or ',') or item_id (one row per click, in order)")


@dataclass
class Session:
    """One session of a --sessions file: its id, its items (a list, or a string to split like
    --items) and the line it starts on."""

    session_id: str
    items: list | str
    line: int


def _jsonl_sessions(path: str, text: str) -> list[Session]:
    import json

    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {n}"
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise SbrjobError(f"{where}: not valid JSON ({err.msg} at column {err.colno}); {_JSONL_HELP}") from None
        if not isinstance(obj, dict):
            raise SbrjobError(f"{where}: a JSON {type(obj).__name__}, not an object; {_JSONL_HELP}")
        key = next((k for k in SESSION_KEYS if k in obj), None)
        if key is None:
            raise SbrjobError(f"{where}: no \"session_id\" key; {_JSONL_HELP}")
        sid = obj[key]
        if isinstance(sid, bool) or not isinstance(sid, (str, int)):
            raise SbrjobError(f"{where}: \"{key}\" must be a string or an integer, not {json.dumps(sid)}")
        if "items" not in obj:
            raise SbrjobError(f"{where}: no \"items\" key; {_JSONL_HELP}")
        items = obj["items"]
        if isinstance(items, list):
            bad = [x for x in items if isinstance(x, bool) or not isinstance(x, (str, int))]
            if bad:
                bad = bad[0]
                raise SbrjobError(f"{where}: \"items\" holds {json.dumps(bad)}; items are ids or titles "
                                  "(strings or integers)")
            items = [str(x) for x in items]
        elif not isinstance(items, str):
            raise SbrjobError(f"{where}: \"items\" must be a list of ids or one comma-separated string, "
                              f"not {json.dumps(items)}")
        out.append(Session(str(sid), items, n))
    return out


def _csv_sessions(path: str, text: str) -> list[Session]:
    import csv

    first = text.split("\n", 1)[0]
    reader = csv.reader(text.splitlines(), delimiter="\t" if "\t" in first else ",")
    try:
        header = [h.strip().lower() for h in next(reader)]
    except StopIteration:
        return []
    sid_col = next((header.index(k) for k in SESSION_KEYS if k in header), None)
    wide = header.index("items") if "items" in header else None
    long = next((header.index(k) for k in ("item_id", "item") if k in header), None)
    if sid_col is None or (wide is None and long is None):
        raise SbrjobError(f"{path} line 1: header {first.strip()!r} lacks the columns; {_CSV_HELP}")
    col = wide if wide is not None else long
    sessions: dict[str, Session] = {}
    out = []
    try:
        for row in reader:
            n = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise SbrjobError(f"{path} line {n}: {len(row)} fields where the header has {len(header)} "
                                  "(quote fields that hold the separator)")
            sid, value = row[sid_col].strip(), row[col].strip()
            if not sid:
                raise SbrjobError(f"{path} line {n}: empty {header[sid_col]}")
            if wide is not None:
                out.append(Session(sid, value, n))
            elif sid in sessions:
                sessions[sid].items.append(value)
            else:
                sessions[sid] = Session(sid, [value], n)
                out.append(sessions[sid])
    except csv.Error as err:
        raise SbrjobError(f"{path} line {reader.line_num}: {err}") from None
    return out


def read_sessions(path: str) -> list[Session]:
    """The sessions of a JSONL (.jsonl/.json/.ndjson) or CSV/TSV file (local or gs://); other names
    are told apart by their first character ('{' = JSONL). A malformed line is an error naming it."""
    from sbrjob import storage

    try:
        text = storage.read_text(path)
    except FileNotFoundError:
        raise SbrjobError(f"--sessions {path}: no such file") from None
    except IsADirectoryError:
        raise SbrjobError(f"--sessions {path}: is a directory; give a JSONL or CSV file") from None
    except UnicodeDecodeError as err:
        line = _text_line(err)
        raise SbrjobError(f"--sessions {path}: not UTF-8 text (byte {err.start}{line})") from None
    suffix = path.lower().rsplit(".", 1)[-1] if "." in path.rsplit("/", 1)[-1] else ""
    if suffix in ("jsonl", "json", "ndjson") or (suffix not in ("csv", "tsv") and text.lstrip().startswith("{")):
        return _jsonl_sessions(path, text)
    return _csv_sessions(path, text)


def _text_line(err: UnicodeDecodeError) -> str:
    if not isinstance(err.object, bytes):
        return ""
    return f", line {err.object[:err.start].count(10) + 1}"  # 10 = b"\n"


class BatchRecommender:
    """One loaded model for many sessions: `run(sessions)` yields, per session in the given order,
    {"session_id", "item_ids", "scores", "known", "unknown"} (the top-k, best first; `known` = how
    many of its items were in the vocabulary; a session with none is scored from the zero state).

    Sessions are taken in windows of `window` (default 8 x batch_size), sorted by length within the
    window and stepped `batch_size` at a time through one compiled graph (`serving.Recommender`'s,
    so the same numbers as the exported `recommend` signature). On a CPU with numba (`kernel`
    None = auto) the top-k is taken by `kernels.rank_and_top` from slices of SCORE_CELLS scores:
    TF's TopK cost more than scoring (3.7k items: 23 ms per 1,024 rows against 7 ms; 37k items:
    235 ms against 47 ms); it gives the same lists (ties: lower index first, as tf.math.top_k).
    """

    SCORE_CELLS = 4 * 1024 * 1024  # scores per slice: 1,133 rows at 3.7k items

    def __init__(self, run_dir: str, k: int = 10, exclude_seen: bool = True, checkpoint: str = "best",
                 batch_size: int = 1024, trained=None, kernel: bool | None = None):
        from sbrjob import kernels
        from sbrjob.runs import load_trained
        from sbrjob.serving import Recommender

        if k < 1:
            raise SbrjobError(f"-k {k}: must be >= 1")
        trained = trained or load_trained(run_dir, checkpoint)
        self.items = trained.items
        self.matcher = ItemMatcher(trained.items)
        self.ids = trained.items["item_id"].astype(str).to_numpy()
        self.k, self.batch_size = int(k), int(batch_size)
        self.seen_bias = seen_rule(trained, exclude_seen)
        rec = Recommender(trained.model, self.ids.tolist(), k)
        table = trained.model.input_table()  # inference: one row gather per event instead of a matmul

        model = trained.model
        self._kernel = (kernels.available and not tf.config.list_logical_devices("GPU")) if kernel is None \
            else bool(kernel)
        self._rank_and_top = kernels.rank_and_top

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32), tf.TensorSpec([], tf.int32),
                                      tf.TensorSpec([], tf.float32)])
        def top(index, k, bias):
            state = rec.history_state(index, table)
            return rec.top_indices(state[-1], k, index, bias)

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
        def last_state(index):
            return rec.history_state(index, table)[-1]

        @tf.function(input_signature=[tf.TensorSpec([None, sum(model.sizes)], tf.float32)])
        def scores(h):
            return model.item_scores(h)

        self._top, self._last_state, self._item_scores = top, last_state, scores
        self._k = min(self.k, len(self.ids))

    def resolve(self, items) -> tuple[list[int], list[str]]:
        """(indices, unknown) of a session's items (a list of ids/titles, or a string like --items)."""
        if isinstance(items, str):
            found, unknown = self.matcher.parse(items)
            return [i for _, i in found], unknown
        indices, unknown, by_id, find = [], [], self.matcher.by_id, self.matcher.find
        for text in items:
            index = by_id.get(text)
            if index is None:
                index = find(text)
            if index is None:
                unknown.append(text)
            else:
                indices.append(index)
        return indices, unknown

    def _scores(self, sessions: list[list[int]]):
        length = max(1, max(len(s) for s in sessions))
        index = np.full((len(sessions), length), -1, np.int32)
        for row, s in enumerate(sessions):
            index[row, :len(s)] = s
        if not self._kernel:
            top, scores = self._top(index, self.k, self.seen_bias)
            return top.numpy(), scores.numpy()
        h = self._last_state(index)
        rows = max(1, self.SCORE_CELLS // len(self.ids))
        tops, values = [], []
        for lo in range(0, len(index), rows):
            s = self._item_scores(h[lo:lo + rows]).numpy()
            if not s.flags.writeable:
                s = s.copy()
            if self.seen_bias:
                part = index[lo:lo + rows]
                r, c = np.nonzero(part >= 0)
                s[r, part[r, c]] = s[r, part[r, c]] + self.seen_bias  # an assignment: once per seen item
            top = self._rank_and_top(s, np.zeros(len(s), np.int64), "standard", self._k)[1]
            tops.append(top)
            values.append(np.take_along_axis(s, top, axis=1))
        return np.concatenate(tops), np.concatenate(values)

    def run(self, sessions, window: int | None = None):
        """Yield one result per session (a `Session` or a (session_id, items) pair), in order."""
        window = window or 8 * self.batch_size
        chunk = []
        for s in sessions:
            chunk.append(s if isinstance(s, Session) else Session(str(s[0]), s[1], 0))
            if len(chunk) == window:
                yield from self._window(chunk)
                chunk = []
        if chunk:
            yield from self._window(chunk)

    def _window(self, chunk: list[Session]):
        resolved = [self.resolve(s.items) for s in chunk]
        order = sorted(range(len(chunk)), key=lambda i: len(resolved[i][0]))
        out = [None] * len(chunk)
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            top, scores = self._scores([resolved[i][0] for i in rows])
            id_rows = self.ids[top].tolist()  # whole batch at once: per-row numpy calls cost more
            score_rows = np.round(scores.astype(np.float64), 6).tolist()
            short = set(np.flatnonzero(np.isneginf(scores).any(axis=1)).tolist())  # excluded slots at the end
            for r, i in enumerate(rows):
                ids_, scores_ = id_rows[r], score_rows[r]
                if r in short:
                    n = int(np.isfinite(scores[r]).sum())
                    ids_, scores_ = ids_[:n], scores_[:n]
                out[i] = {"session_id": chunk[i].session_id, "item_ids": ids_, "scores": scores_,
                          "known": len(resolved[i][0]), "unknown": resolved[i][1]}
        return out


def recommend_batch(run_dir: str, sessions_path: str, k: int = 10, exclude_seen: bool = True,
                    checkpoint: str = "best", batch_size: int = 1024):
    """The top-k of every session of a JSONL/CSV file: an iterator of result dicts, in file order."""
    sessions = read_sessions(sessions_path)
    return BatchRecommender(run_dir, k, exclude_seen, checkpoint, batch_size).run(sessions)
