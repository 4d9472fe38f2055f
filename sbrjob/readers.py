"""Raw interaction logs -> one events table (`Events`).

Every format ends up as the same columns: `key` (the session id for session-keyed data, the user
id for user-keyed data, which `prepare` cuts into sessions), `item` (codes into `item_ids`, the
original ids as strings), `time` (float64 epoch seconds, UTC, `data.time_offset` added) and an
optional `rating`.

Parsing is pyarrow.csv with explicit column types (multi-threaded, no Python per row). Only when
that fails is the file scanned line by line, to name the offending line (`on_bad_lines: error`)
or to drop and count the bad lines (`skip`). So the fast path stays fast and errors stay exact.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import io
import itertools
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sbrjob import storage
from sbrjob.config import DataConfig
from sbrjob.errors import SbrjobError


@dataclass
class Events:
    """One row per interaction, as parallel numpy arrays (compact at 33M rows)."""

    key: np.ndarray  # int64: session id (keyed_by == "session") or user id ("user")
    item: np.ndarray  # int32 codes into item_ids
    item_ids: np.ndarray  # object array of str: the original item ids
    time: np.ndarray  # float64 epoch seconds, UTC
    rating: Optional[np.ndarray]  # float32, or None when the format has no ratings
    keyed_by: str  # "session" or "user"
    bad_lines: int = 0
    sources: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.key)

    def frame(self) -> pd.DataFrame:
        """A DataFrame view (item as original-id strings); for inspection and tests."""
        out = {"key": self.key, "item": self.item_ids[self.item], "time": self.time}
        if self.rating is not None:
            out["rating"] = self.rating
        return pd.DataFrame(out)


# ---------------------------------------------------------------- field kinds

_INT = re.compile(r"\s*-?\d+\s*")
_ISO = re.compile(r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d{1,6})?)?")
_ZONE = re.compile(r"(Z|[+-]\d{2}:?\d{2})$")

# kind -> (arrow type, what a valid value looks like)
_ARROW = {
    "int": pa.int64(),
    "float": pa.float64(),
    "str": pa.string(),
    "iso": pa.timestamp("us", tz="UTC"),  # with a zone: ...T10:51:09.277Z or +02:00
    "iso_naive": pa.timestamp("us"),  # without a zone: taken as UTC
    "empty": pa.string(),  # the gaps between the colons of MovieLens' `::`
}
_DESCRIBE = {
    "int": "an integer",
    "float": "a finite number",
    "str": "a non-empty value",
    "iso": "an ISO-8601 time with zone, e.g. 2014-04-07T10:51:09.277Z",
    "iso_naive": "an ISO-8601 time without zone, e.g. 2014-04-07 10:51:09",
    "empty": "empty",
}


def _valid_iso(v: str, zoned: bool) -> bool:
    v = v.strip()
    zone = _ZONE.search(v)
    if bool(zone) != zoned:
        return False
    body = v[: zone.start()] if zone else v
    if not _ISO.fullmatch(body):
        return False
    try:
        datetime.fromisoformat(body)
    except ValueError:
        return False
    return True


def _valid_float(v: str) -> bool:
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


_VALID = {
    "int": lambda v: bool(_INT.fullmatch(v)),
    "float": _valid_float,
    "str": lambda v: v != "",
    "iso": lambda v: _valid_iso(v, True),
    "iso_naive": lambda v: _valid_iso(v, False),
    "empty": lambda v: v == "",
}


# ---------------------------------------------------------------- delimited text


@dataclass(frozen=True)
class Layout:
    """How a delimited text file is written and which of its columns we read."""

    sep: str  # the real separator; a run of one character (MovieLens' `::`) is allowed
    kinds: dict[str, str]  # column name -> kind, for the columns we read
    names: Optional[tuple[str, ...]] = None  # header-less files: all column names; None = header line
    quoted: bool = False  # generic CSV may quote fields; the fixed formats never do

    @property
    def arrow_sep(self) -> str:
        return self.sep[0]

    def arrow_names(self) -> Optional[list[str]]:
        """Column names as pyarrow sees them: `a::b` is `a`, ``, `b` with delimiter `:`."""
        if self.names is None:
            return None
        if len(self.sep) == 1:
            return list(self.names)
        out = []
        for i, n in enumerate(self.names):
            if i:
                out += [f"_gap{i}_{j}" for j in range(len(self.sep) - 1)]
            out.append(n)
        return out

    def arrow_kinds(self) -> dict[str, str]:
        kinds = dict(self.kinds)
        for n in self.arrow_names() or []:
            if n.startswith("_gap"):
                kinds[n] = "empty"
        return kinds


def _open_lines(path: str) -> Iterator[bytes]:
    opener = gzip.open if path.endswith(".gz") else bz2.open if path.endswith(".bz2") else open
    with opener(path, "rb") as fh:
        yield from fh


def _split_line(text: str, layout: Layout) -> list[str]:
    if layout.quoted:
        return next(csv.reader([text], delimiter=layout.sep), [])
    return text.split(layout.sep)


def _scan(path: str, layout: Layout, stop_at_first: bool, keep: Optional[io.BufferedWriter]):
    """Check every line in Python. Returns (bad count, first (line, reason) or None, data lines).

    Writes the good lines (and the header) to `keep` when given. Only used when the fast parse failed.
    """
    names = list(layout.names) if layout.names else None
    bad, first, n_data = 0, None, 0
    for line_no, raw in enumerate(_open_lines(path), start=1):
        text = raw.decode("utf-8", errors="replace").rstrip("\r\n")
        if names is None:  # header line
            names = _split_line(text.lstrip("\ufeff"), layout)
            if keep:
                keep.write(raw)
            continue
        if not text:  # pyarrow skips empty lines too (but not lines of blanks)
            continue
        fields = _split_line(text, layout)
        reason = None
        if len(fields) != len(names):
            reason = f"expected {len(names)} fields separated by {layout.sep!r}, found {len(fields)}"
        else:
            for name, kind in layout.kinds.items():
                value = fields[names.index(name)]
                if not _VALID[kind](value):
                    reason = f"column {name!r} should be {_DESCRIBE[kind]}, got {value[:40]!r}"
                    break
        if reason is None:
            n_data += 1
            if keep:
                keep.write(raw if raw.endswith(b"\n") else raw + b"\n")
            continue
        bad += 1
        if first is None:
            first = (line_no, reason)
            if stop_at_first:
                break
    return bad, first, n_data


def _memory_pool() -> pa.MemoryPool:
    """jemalloc returning freed pages at once (decay 0): the parsed table is dropped column by column
    right after conversion, and the default pool would keep those pages (+1 GB RSS at 33M rows)."""
    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
        return pool
    except (NotImplementedError, pa.ArrowNotImplementedError):  # builds without jemalloc
        return pa.default_memory_pool()


def _arrow_read(path: str, layout: Layout, skip: bool) -> tuple[pa.Table, int]:
    """The fast path. Rows with the wrong field count are skipped and counted when `skip`."""
    bad = 0

    def on_invalid(row) -> str:
        nonlocal bad
        if skip:
            bad += 1
            return "skip"
        return "error"

    kinds = layout.arrow_kinds()
    table = pacsv.read_csv(
        path,
        read_options=pacsv.ReadOptions(column_names=layout.arrow_names(), block_size=1 << 24),
        parse_options=pacsv.ParseOptions(delimiter=layout.arrow_sep, quote_char='"' if layout.quoted else False,
                                         invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={n: _ARROW[k] for n, k in kinds.items()}, include_columns=list(kinds),
            null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False),
        memory_pool=_memory_pool(),
    )
    return table, bad


def _values_ok(table: pa.Table, layout: Layout) -> bool:
    """What pyarrow accepts but we do not: NaN/inf numbers, empty strings, text between `:` and `:`."""
    for name, kind in layout.arrow_kinds().items():
        col = table.column(name)
        if kind == "float" and len(col) and not pc.all(pc.is_finite(col)).as_py():
            return False
        if kind == "str" and len(col) and pc.any(pc.equal(pc.utf8_length(col), 0)).as_py():
            return False
        if kind == "empty" and len(col) and pc.max(pc.utf8_length(col)).as_py() != 0:
            return False
    return True


def read_delimited(path: str, layout: Layout, on_bad_lines: str = "error") -> tuple[pa.Table, int]:
    """Read the `layout.kinds` columns of a delimited file. Returns (table, number of bad lines skipped)."""
    local = _local_input(path)
    if os.path.getsize(local) == 0:
        raise SbrjobError(f"{path}: empty input file; point data.path at the log file")
    skip = on_bad_lines == "skip"
    arrow_msg = ""
    try:
        table, bad = _arrow_read(local, layout, skip)
        if _values_ok(table, layout):
            if table.num_rows == 0:
                raise SbrjobError(f"{path}: no data lines (empty input{' after skipping bad lines' if bad else ''})")
            return table, bad
    except pa.ArrowInvalid as err:
        arrow_msg = str(err).splitlines()[0]
    # Slow path: find the bad lines in Python.
    if not skip:
        _, first, n_data = _scan(local, layout, stop_at_first=True, keep=None)
        if first:
            raise SbrjobError(f"{path}, line {first[0]}: {first[1]}; fix the line or set "
                              "data.on_bad_lines: skip (--on-bad-lines skip) to drop such lines")
        if n_data == 0:
            raise SbrjobError(f"{path}: no data lines (empty input)")
        raise SbrjobError(f"{path}: cannot parse ({arrow_msg or 'unexpected values'})")
    fd, tmp = tempfile.mkstemp(prefix="sbrjob-clean-", suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as keep:
            bad, _, n_data = _scan(local, layout, stop_at_first=False, keep=keep)
        if n_data == 0:
            raise SbrjobError(f"{path}: no valid data lines ({bad} bad lines skipped)")
        try:
            table, _ = _arrow_read(tmp, layout, skip=False)
        except pa.ArrowInvalid as err:
            raise SbrjobError(f"{path}: cannot parse even after skipping {bad} bad lines "
                              f"({str(err).splitlines()[0]})") from None
        return table, bad
    finally:
        os.unlink(tmp)


def _local_input(path: str) -> str:
    if not storage.is_remote(path) and not Path(path).is_file():
        raise SbrjobError(f"{path}: input file not found (cwd {os.getcwd()}); set data.path "
                          "(or --set data.path=...) to the raw log")
    return storage.local_copy(path)


def _header(path: str) -> list[str]:
    for raw in _open_lines(_local_input(path)):
        return raw.decode("utf-8", errors="replace").lstrip("\ufeff").rstrip("\r\n").split("\t" if b"\t" in raw else ",")
    raise SbrjobError(f"{path}: empty input file")


def _first_line(path: str) -> str:
    for raw in _open_lines(_local_input(path)):
        if raw.strip():
            return raw.decode("utf-8", errors="replace").rstrip("\r\n")
    raise SbrjobError(f"{path}: empty input file; point data.path at the log file")


# ---------------------------------------------------------------- arrow columns -> numpy


def _numpy(col: pa.ChunkedArray, dtype) -> np.ndarray:
    """A numpy-owned copy filled chunk by chunk. `ChunkedArray.to_numpy()` would first concatenate in
    Arrow's memory pool, which keeps freed pages: at 33M rows that inflates the peak by a GB."""
    out = np.empty(len(col), dtype=dtype)
    pos = 0
    for chunk in col.chunks:
        if pa.types.is_timestamp(chunk.type):
            chunk = chunk.cast(pa.timestamp("us", tz=chunk.type.tz)).view(pa.int64())
        out[pos:pos + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
        pos += len(chunk)
    return out


def _codes(col: pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """Dense int32 codes and the original values as strings; codes follow the id order (numeric for
    integer ids), so sorting by code within a timestamp means sorting by item id."""
    if pa.types.is_integer(col.type):
        codes, uniques = pd.factorize(_numpy(col, np.int64), sort=True)
        return codes.astype(np.int32), uniques.astype(str).astype(object)
    codes, uniques = pd.factorize(col.cast(pa.string()).to_numpy(zero_copy_only=False), sort=True)
    return codes.astype(np.int32), np.asarray(uniques, dtype=object)


def _seconds(col: pa.ChunkedArray, unit: str) -> np.ndarray:
    t = _numpy(col, np.float64)  # timestamps arrive as epoch microseconds
    if pa.types.is_timestamp(col.type):
        t /= 1e6
    elif unit == "ms":
        t /= 1000.0
    return t


def _events(table: pa.Table, bad: int, source: str, key: str, item: str, time: str, rating: Optional[str],
            keyed_by: str, time_unit: str = "s", offset: float = 0.0) -> Events:
    """Convert the parsed columns one at a time, dropping each from the table as soon as it is
    converted (the caller must not keep a reference): at 33M rows this halves the peak memory."""

    def take(name: str) -> pa.ChunkedArray:
        nonlocal table
        col = table.column(name)
        table = table.drop_columns([name])
        return col

    col = take(key)
    if pa.types.is_integer(col.type):
        k = _numpy(col, np.int64)
    else:  # string keys: dense codes group the same way
        k = _codes(col)[0].astype(np.int64)
    del col
    codes, ids = _codes(take(item))
    t = _seconds(take(time), time_unit)
    if offset:
        t += offset
    r = _numpy(take(rating).cast(pa.float32()), np.float32) if rating else None
    del table
    return Events(key=k, item=codes, item_ids=ids, time=t, rating=r, keyed_by=keyed_by, bad_lines=bad,
                  sources=[source])


# ---------------------------------------------------------------- the formats


def read_movielens(path: str, cfg: DataConfig) -> Events:
    """ML-1M `UserID::MovieID::Rating::Timestamp` (.dat, .dat.gz) or ml-latest `ratings.csv` (header)."""
    if ".csv" in Path(path).name:
        header = _header(path)
        need = {"userId", "movieId", "rating", "timestamp"}
        if not need <= set(header):
            raise SbrjobError(f"{path}, line 1: expected a header with {sorted(need)}, got {header}")
        layout = Layout(",", {"userId": "int", "movieId": "int", "rating": "float", "timestamp": "float"})
        return _events(*read_delimited(path, layout, cfg.on_bad_lines), path, "userId", "movieId", "timestamp",
                       "rating", "user", offset=cfg.time_offset)
    layout = Layout("::", {"user": "int", "item": "int", "rating": "float", "time": "float"},
                    names=("user", "item", "rating", "time"))
    return _events(*read_delimited(path, layout, cfg.on_bad_lines), path, "user", "item", "time", "rating", "user",
                   offset=cfg.time_offset)


def read_yoochoose(path: str, cfg: DataConfig) -> Events:
    """YOOCHOOSE clicks/test: `SessionID,Timestamp,ItemID[,Category]`, ISO-8601 UTC with milliseconds."""
    n_fields = len(_first_line(path).split(","))
    if n_fields not in (3, 4):
        raise SbrjobError(f"{path}, line 1: expected SessionID,Timestamp,ItemID[,Category] "
                          f"(3 or 4 comma-separated fields), found {n_fields}")
    names = ("session", "time", "item", "category")[:n_fields]
    layout = Layout(",", {"session": "int", "time": "iso", "item": "int"}, names=names)
    return _events(*read_delimited(path, layout, cfg.on_bad_lines), path, "session", "item", "time", None,
                   "session", offset=cfg.time_offset)


def read_gru4rec(path: str, cfg: DataConfig) -> Events:
    """GRU4Rec TSV: header `SessionId\\tItemId\\tTime` (any column order; extra columns ignored)."""
    header = _header(path)
    need = ["SessionId", "ItemId", "Time"]
    if not set(need) <= set(header):
        raise SbrjobError(f"{path}, line 1: expected a tab-separated header with {need}, got {header}")
    layout = Layout("\t", {"SessionId": "int", "ItemId": "int", "Time": "float"})
    return _events(*read_delimited(path, layout, cfg.on_bad_lines), path, "SessionId", "ItemId", "Time", None,
                   "session", offset=cfg.time_offset)


def _table_separator(path: str, cfg: DataConfig) -> str:
    if cfg.separator:
        return cfg.separator.replace("\\t", "\t")
    name = Path(path).name.lower().removesuffix(".gz").removesuffix(".bz2")
    return "\t" if name.endswith((".tsv", ".tab", ".txt")) else ","


def read_table(path: str, cfg: DataConfig) -> Events:
    """Generic CSV/TSV (header line) or Parquet; `data.columns` maps roles to column names."""
    cols = cfg.columns
    keyed_by = "session" if "session" in cols else "user"
    key = cols.get("session") or cols.get("user")
    if not key:
        raise SbrjobError("data.columns: the table format needs a 'session' or a 'user' column")
    wanted = {key: "str", cols["item"]: "str", cols["time"]: "float"}
    if cfg.time_unit == "iso":
        wanted[cols["time"]] = "iso"
    if "rating" in cols:
        wanted[cols["rating"]] = "float"
    if Path(path).name.lower().endswith((".parquet", ".pq")):
        parsed = (_read_parquet(path, list(wanted)), 0)
    else:
        sep = _table_separator(path, cfg)
        header = next(csv.reader([_first_line(path).lstrip("\ufeff")], delimiter=sep))
        missing = [c for c in wanted if c not in header]
        if missing:
            hint = "" if len(header) > 1 else f" (is data.separator {sep!r} right?)"
            raise SbrjobError(f"{path}, line 1: column(s) {missing} from data.columns not in the header {header}{hint}")
        if cfg.time_unit == "iso":
            # zone or not is decided by the first data value; mixed files show up as bad lines
            idx = header.index(cols["time"])
            for raw in itertools.islice(_open_lines(_local_input(path)), 1, 2):
                first = next(csv.reader([raw.decode("utf-8", "replace").rstrip("\r\n")], delimiter=sep))
                if idx < len(first) and not _ZONE.search(first[idx].strip()):
                    wanted[cols["time"]] = "iso_naive"
        parsed = read_delimited(path, Layout(sep, wanted, quoted=True), cfg.on_bad_lines)
    return _events(*parsed, path, key, cols["item"], cols["time"], cols.get("rating"), keyed_by,
                   cfg.time_unit, cfg.time_offset)


def _read_parquet(path: str, columns: list[str]) -> pa.Table:
    local = _local_input(path)
    try:
        schema = pq.read_schema(local)
    except (pa.ArrowInvalid, OSError) as err:
        raise SbrjobError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise SbrjobError(f"{path}: column(s) {missing} from data.columns not in the file {schema.names}")
    table = pq.read_table(local, columns=columns)
    if table.num_rows == 0:
        raise SbrjobError(f"{path}: no rows (empty input)")
    for c in columns:
        nulls = table.column(c).null_count
        if nulls:
            row = pc.index(pc.is_null(table.column(c)), True).as_py()
            raise SbrjobError(f"{path}: column {c!r} has {nulls} null value(s), first at row {row}; "
                              "clean the file (Parquet rows cannot be skipped)")
    return table


_READERS = {"movielens": read_movielens, "sample": read_movielens, "yoochoose": read_yoochoose,
            "gru4rec": read_gru4rec, "table": read_table}


def input_path(cfg: DataConfig) -> str:
    if cfg.format == "sample":
        from sbrjob.sample import sample_dir

        return str(Path(sample_dir()) / "ratings.dat.gz")
    return str(cfg.path)


def read_events(cfg: DataConfig, path: Optional[str] = None) -> Events:
    """Read one input file (default `data.path`) in the configured format."""
    return _READERS[cfg.format](path or input_path(cfg), cfg)


# ---------------------------------------------------------------- item metadata


def read_items(cfg: DataConfig) -> Optional[pd.DataFrame]:
    """Titles and genres for display: `item_id`, `title`, `genres` (strings), or None when unknown."""
    path = cfg.items_path
    if cfg.format == "sample":
        from sbrjob.sample import sample_dir

        path = str(Path(sample_dir()) / "movies.dat")
    if not path:
        return None
    local = _local_input(path)
    if ".csv" in Path(path).name:  # ml-latest movies.csv: movieId,title,genres with quoted titles
        df = pd.read_csv(local, dtype=str, keep_default_na=False)
        if not {"movieId", "title"} <= set(df.columns):
            raise SbrjobError(f"{path}, line 1: expected a header with movieId,title[,genres]")
        genres = df["genres"] if "genres" in df else None
        return pd.DataFrame({"item_id": df["movieId"], "title": df["title"],
                             "genres": genres if genres is not None else None})
    # movies.dat is Latin-1; titles may contain ':' but never '::'
    rows = []
    for line_no, raw in enumerate(_open_lines(local), start=1):
        text = raw.decode("latin-1").rstrip("\r\n")
        if not text.strip():
            continue
        parts = text.split("::")
        if len(parts) != 3 or not parts[0].strip().isdigit():
            raise SbrjobError(f"{path}, line {line_no}: expected MovieID::Title::Genres, got {text[:60]!r}")
        rows.append((parts[0].strip(), parts[1], parts[2]))
    if not rows:
        raise SbrjobError(f"{path}: empty items file")
    return pd.DataFrame(rows, columns=["item_id", "title", "genres"])
