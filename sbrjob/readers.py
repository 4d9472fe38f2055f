"""Raw interaction logs -> one events table (`Events`).

Every format ends up as the same columns: `key` (the session id for session-keyed data, the user
id for user-keyed data, which `prepare` cuts into sessions), `item` (codes into `item_ids`, the
original ids as strings), `time` (float64 epoch seconds, UTC, `data.time_offset` added) and an
optional `rating`.

Parsing is pyarrow.csv with explicit column types (multi-threaded, no Python per row). Only when
that fails is the file scanned line by line, to name the offending line (`on_bad_lines: error`)
or to drop and count the bad lines (`skip`). So the fast path stays fast and errors stay exact.

What counts as bad: a wrong field count, a value of the wrong kind, bytes that are not valid in
`data.encoding`, and a time outside 1970..2099 once converted with `data.time_unit` (a whole
column that only fits another unit, e.g. milliseconds read as seconds, is reported as such).
Unreadable files (a directory, a truncated or fake .gz) are one-line errors naming the config key.

Progress: the readers take an optional `progress(step, done, total)` callback (`progress.Steps`)
and report the bytes of the file on disk read so far (compressed bytes for .gz/.bz2), counted
where pyarrow or the line scan pulls blocks from the file: one call per block, never per line.
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
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from sbrjob import storage
from sbrjob.config import DataConfig
from sbrjob.errors import SbrjobError, io_error

Progress = Callable[[str, int, int], None]  # (step, bytes read, bytes in all)


@dataclass
class Events:
    """One row per interaction, as parallel numpy arrays (compact at 33M rows)."""

    key: np.ndarray  # int64: session id (keyed_by == "session") or user id ("user")
    item: np.ndarray  # int32 codes into item_ids
    item_ids: np.ndarray  # object array of str: the original item ids
    time: np.ndarray  # float64 epoch seconds, UTC
    rating: np.ndarray | None  # float32, or None when the format has no ratings
    keyed_by: str  # "session" or "user"
    bad_lines: int = 0
    sources: list[str] = field(default_factory=list)
    key_ids: np.ndarray | None = None  # string keys: object array of the originals (`key` codes into it)

    def __len__(self) -> int:
        return len(self.key)

    def frame(self) -> pd.DataFrame:
        """A DataFrame view (item as original-id strings); for inspection and tests."""
        key = self.key if self.key_ids is None else self.key_ids[self.key]
        out = {"key": key, "item": self.item_ids[self.item], "time": self.time}
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


# Times must fall in [1970-01-01, 2100-01-01) UTC once converted to seconds: anything else is a
# typo, an overflow or the wrong unit (data.time_unit), and would break sorting, gaps and reports.
T_MIN, T_MAX = 0.0, 4102444800.0
YEARS = "1970..2099"
SCALE = {"s": 1.0, "ms": 1e3, "us": 1e6, "ns": 1e9}
UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds", "ns": "nanoseconds", "iso": "ISO-8601"}


def _when(seconds: float) -> str:
    """A date for a message, even far outside what datetime can show."""
    if T_MIN - 1e11 < seconds < 2.5e11:
        try:
            return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%d")
        except (OverflowError, OSError, ValueError):
            pass
    return f"year {1970 + seconds / 31_556_952:.0f}"


def _time_in_range(value: str, unit: str) -> bool:
    """One time field (already of the right kind) within 1970..2099 in its unit."""
    if unit == "iso":
        year = int(value.strip()[:4])
        return 1970 <= year <= 2099
    v = float(value)
    return T_MIN * SCALE[unit] <= v < T_MAX * SCALE[unit]


def _unit_hint(name: str, raw: np.ndarray, unit: str) -> str | None:
    """When most of a numeric time column is out of range but (nearly) all of it fits another unit:
    the message saying so, else None (then single lines are to blame)."""
    raw = raw[np.isfinite(raw)]
    if unit not in SCALE or not len(raw):
        return None
    if ((raw >= T_MIN * SCALE[unit]) & (raw < T_MAX * SCALE[unit])).mean() >= 0.5:
        return None
    for other in SCALE:  # the coarsest unit that fits: 1e12 is ms (2001), not us (1970-01-12)
        if other != unit and ((raw >= T_MIN * SCALE[other]) & (raw < T_MAX * SCALE[other])).mean() >= 0.99:
            v = float(np.median(raw))
            return (f"column {name!r} looks like {UNIT_NAMES[other]}, not {UNIT_NAMES[unit]}: e.g. {v:.0f} is "
                    f"{_when(v / SCALE[unit])} as {UNIT_NAMES[unit]} but {_when(v / SCALE[other])} as "
                    f"{UNIT_NAMES[other]}; set data.time_unit: {other} (--set data.time_unit={other})")
    return None


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
    names: tuple[str, ...] | None = None  # header-less files: all column names; None = header line
    quoted: bool = False  # generic CSV may quote fields; the fixed formats never do
    time: str | None = None  # the time column, range-checked in `time_unit`
    time_unit: str = "s"  # s, ms, us, ns (numeric) or iso
    encoding: str = "utf-8"

    @property
    def arrow_sep(self) -> str:
        return self.sep[0]

    def arrow_names(self) -> list[str] | None:
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


def _read_error(where: str, local: str, err: BaseException, key: str = "data.path") -> SbrjobError:
    """A one-line error for a file that cannot be read: fake or truncated compression named as such."""
    name = local.lower()
    for suffix, magic, tool in ((".gz", b"\x1f\x8b", "gzip"), (".bz2", b"BZh", "bzip2")):
        if not name.endswith(suffix):
            continue
        try:
            with open(local, "rb") as fh:
                head = fh.read(len(magic))
        except OSError:
            break
        if head != magic:
            return SbrjobError(f"{where}: not {tool} data although the name ends in {suffix} (it starts with "
                               f"{head!r}); if it is plain text, rename it without {suffix} and set {key} to it")
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, EOFError) or "runcated" in text or "ended before" in text:
            return SbrjobError(f"{where}: truncated {tool} file (the compressed data ends early: an interrupted "
                               "download or copy?); fetch the file again")
        return SbrjobError(f"{where}: corrupt {tool} data ({text}); fetch the file again")
    return io_error(err, where, doing="reading", atomic=False) or SbrjobError(f"{where}: cannot read ({err})")


def _open_lines(path: str, where: str | None = None, key: str = "data.path",
                report: Callable[[int, int], None] | None = None) -> Iterator[bytes]:
    """The lines of a (possibly compressed) file; `report(bytes read, size)` every 64Ki lines."""
    try:
        with open(path, "rb") as raw:
            fh = gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else bz2.BZ2File(raw) \
                if path.endswith(".bz2") else raw
            with fh:
                if report is None:
                    yield from fh
                    return
                size = os.fstat(raw.fileno()).st_size
                for n, line in enumerate(fh, start=1):
                    yield line
                    if not n & 0xFFFF:
                        report(raw.tell(), size)
                report(size, size)
    except (OSError, EOFError, zlib.error) as err:
        raise _read_error(where or path, path, err, key) from None


def _split_line(text: str, layout: Layout) -> list[str]:
    if layout.quoted:
        return next(csv.reader([text], delimiter=layout.sep), [])
    return text.split(layout.sep)


_UNDECODABLE = re.compile("[\udc80-\udcff]")  # bytes surrogateescape kept: not valid in the encoding


def _field_problem(name: str, kind: str, value: str, layout: Layout) -> str | None:
    bad_byte = _UNDECODABLE.search(value)
    if bad_byte:
        return (f"column {name!r} is not valid {layout.encoding} text (byte 0x{ord(bad_byte.group()) - 0xdc00:02x}); "
                "set data.encoding to the file's encoding (e.g. latin-1 or cp1252)")
    if not _VALID[kind](value):
        return f"column {name!r} should be {_DESCRIBE[kind]}, got {value[:40]!r}"
    if name == layout.time and not _time_in_range(value, layout.time_unit):
        return (f"column {name!r} = {value.strip()[:40]!r} is outside {YEARS} as {UNIT_NAMES[layout.time_unit]} "
                f"(data.time_unit: {layout.time_unit})")
    return None


def _scan(path: str, layout: Layout, stop_at_first: bool, keep: io.BufferedWriter | None, where: str = "",
          report: Callable[[int, int], None] | None = None):
    """Check every line in Python. Returns (bad count, first (line, reason) or None, data lines).

    Writes the good lines (and the header) to `keep` when given. Only used when the fast parse failed.
    """
    names = list(layout.names) if layout.names else None
    bad, first, n_data = 0, None, 0
    for line_no, raw in enumerate(_open_lines(path, where or path, report=report), start=1):
        text = raw.decode(layout.encoding, errors="surrogateescape").rstrip("\r\n")
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
                reason = _field_problem(name, kind, fields[names.index(name)], layout)
                if reason:
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


class _Counted(io.RawIOBase):
    """A local file that reports the bytes read from it. pyarrow pulls 16 MiB blocks (64 KiB of
    compressed input), so this costs one Python call per block. It runs on pyarrow's I/O thread,
    hence `report` must not assume the main thread."""

    def __init__(self, path: str, report: Callable[[int, int], None] | None):
        super().__init__()
        self._fh = open(path, "rb", buffering=0)
        self.size, self.done, self._report = os.fstat(self._fh.fileno()).st_size, 0, report

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = self._fh.readinto(buf)
        self._advance(n or 0)
        return n

    def read(self, size: int = -1) -> bytes:
        data = self._fh.read(size) if size is not None and size >= 0 else self._fh.readall()
        self._advance(len(data or b""))
        return data

    def read_buffer(self, size: int) -> pa.Buffer:
        """What pyarrow calls instead of `read` when present: the block lands in Arrow's memory pool
        (its pages reused) as when pyarrow reads a path itself, not in a fresh bytes object per block
        (~40% more CPU for the reads of a plain file, measured)."""
        buf = pa.allocate_buffer(max(size, 0), resizable=True)
        with memoryview(buf) as view:
            n = self._fh.readinto(view) or 0
        buf.resize(n)
        self._advance(n)
        return buf

    def _advance(self, n: int) -> None:
        self.done += n
        if self._report is not None:
            self._report(self.done, self.size)

    def close(self) -> None:
        self._fh.close()
        super().close()


def _arrow_read(path: str, layout: Layout, skip: bool,
                report: Callable[[int, int], None] | None = None) -> tuple[pa.Table, int]:
    """The fast path. Rows with the wrong field count are skipped and counted when `skip`.

    The file goes to pyarrow as a stream (decompressed as pyarrow does for a path: by the name's
    suffix) so that `report(bytes read, size)` sees how far the parse is."""
    bad = 0

    def on_invalid(row) -> str:
        nonlocal bad
        if skip:
            bad += 1
            return "skip"
        return "error"

    kinds = layout.arrow_kinds()
    try:
        codec = pa.Codec.detect(path)
    except TypeError:  # no compression suffix (pyarrow's own rule for a path)
        codec = None
    with _Counted(path, report) as counted:
        raw = pa.PythonFile(counted, mode="r")
        stream = pa.CompressedInputStream(raw, codec.name) if codec else raw
        try:
            table = _parse(stream, layout, kinds, on_invalid)
        finally:
            # Closed here, on this thread: else pyarrow may close them from its I/O thread after
            # read_csv returned, taking the GIL while the interpreter exits (abort, "terminate called").
            stream.close()
            raw.close()
    return table, bad


def _parse(source, layout: Layout, kinds: dict[str, str], on_invalid) -> pa.Table:
    return pacsv.read_csv(
        source,
        read_options=pacsv.ReadOptions(column_names=layout.arrow_names(), block_size=1 << 24,
                                       encoding=layout.encoding),
        parse_options=pacsv.ParseOptions(delimiter=layout.arrow_sep, quote_char='"' if layout.quoted else False,
                                         invalid_row_handler=on_invalid),
        convert_options=pacsv.ConvertOptions(
            column_types={n: _ARROW[k] for n, k in kinds.items()}, include_columns=list(kinds),
            null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False),
        memory_pool=_memory_pool(),
    )


def _values_ok(table: pa.Table, layout: Layout) -> tuple[bool, str | None]:
    """What pyarrow accepts but we do not: NaN/inf numbers, empty strings, text between `:` and `:`,
    times out of range. Returns (ok, message when a whole time column is in another unit)."""
    for name, kind in layout.arrow_kinds().items():
        col = table.column(name)
        if kind == "float" and len(col) and not pc.all(pc.is_finite(col)).as_py():
            return False, None
        if kind == "str" and len(col) and pc.any(pc.equal(pc.utf8_length(col), 0)).as_py():
            return False, None
        if kind == "empty" and len(col) and pc.max(pc.utf8_length(col)).as_py() != 0:
            return False, None
    if layout.time and table.num_rows:
        col = table.column(layout.time)
        if pa.types.is_timestamp(col.type):
            lo, hi = T_MIN * 1e6, T_MAX * 1e6
            col = pc.cast(col, pa.timestamp("us", tz=col.type.tz)).cast(pa.int64())
        else:
            lo, hi = T_MIN * SCALE[layout.time_unit], T_MAX * SCALE[layout.time_unit]
        bounds = pc.min_max(col).as_py()
        if bounds["min"] < lo or bounds["max"] >= hi:
            if pa.types.is_floating(col.type) or pa.types.is_integer(col.type):
                hint = _unit_hint(layout.time, _numpy(col, np.float64), layout.time_unit)
                if hint and layout.kinds.get(layout.time) != "iso":
                    return False, hint
            return False, None
    return True, None


def _step(progress: Progress | None, step: str) -> Callable[[int, int], None] | None:
    return None if progress is None else lambda done, total: progress(step, done, total)


def read_delimited(path: str, layout: Layout, on_bad_lines: str = "error", key: str = "data.path",
                   progress: Progress | None = None) -> tuple[pa.Table, int]:
    """Read the `layout.kinds` columns of a delimited file. Returns (table, number of bad lines skipped)."""
    local = _local_input(path, key)
    if os.path.getsize(local) == 0:
        raise SbrjobError(f"{path}: empty input file; point {key} at the log file")
    skip = on_bad_lines == "skip"
    arrow_msg = ""
    name = os.path.basename(path)
    try:
        table, bad = _arrow_read(local, layout, skip, _step(progress, f"read {name}"))
        ok, hint = _values_ok(table, layout)
        if hint:  # a whole column in another unit: skipping lines would drop them all
            raise SbrjobError(f"{path}: {hint}")
        if ok:
            if table.num_rows == 0:
                raise SbrjobError(f"{path}: no data lines (empty input{' after skipping bad lines' if bad else ''})")
            return table, bad
        del table
    except (pa.ArrowInvalid, UnicodeError) as err:
        arrow_msg = str(err).splitlines()[0]
    except OSError as err:  # pyarrow: decompression failed, unreadable file
        raise _read_error(path, local, err, key) from None
    # Slow path: find the bad lines in Python.
    if not skip:
        _, first, n_data = _scan(local, layout, stop_at_first=True, keep=None, where=path,
                                 report=_step(progress, f"find the bad line in {name}"))
        if first:
            raise SbrjobError(f"{path}, line {first[0]}: {first[1]}; fix the line or set "
                              "data.on_bad_lines: skip (--on-bad-lines skip) to drop such lines")
        if n_data == 0:
            raise SbrjobError(f"{path}: no data lines (empty input)")
        raise SbrjobError(f"{path}: cannot parse ({arrow_msg or 'unexpected values'})")
    try:
        fd, tmp = tempfile.mkstemp(prefix="sbrjob-clean-", suffix=".txt")
    except OSError as err:
        raise io_error(err, tempfile.gettempdir(), doing="writing the cleaned copy (set TMPDIR)",
                       atomic=False) from None
    try:
        try:
            with os.fdopen(fd, "wb") as keep:
                bad, _, n_data = _scan(local, layout, stop_at_first=False, keep=keep, where=path,
                                       report=_step(progress, f"skip the bad lines of {name}"))
        except OSError as err:
            raise io_error(err, tmp, doing="writing the cleaned copy (set TMPDIR)", atomic=False) from None
        if n_data == 0:
            raise SbrjobError(f"{path}: no valid data lines ({bad} bad lines skipped)")
        try:
            table, _ = _arrow_read(tmp, layout, skip=False, report=_step(progress, f"read {name} (cleaned)"))
        except (pa.ArrowInvalid, UnicodeError) as err:
            raise SbrjobError(f"{path}: cannot parse even after skipping {bad} bad lines "
                              f"({str(err).splitlines()[0]})") from None
        return table, bad
    finally:
        os.unlink(tmp)


_WHAT = {"data.path": "the raw log", "data.valid_path": "the validation file", "data.test_path": "the test file",
         "data.items_path": "the items file (e.g. movies.dat), or null to go without titles"}


def _local_input(path: str, key: str = "data.path") -> str:
    """A readable local file for `path` (gs:// objects are cached first); errors name `key`."""
    if not storage.is_remote(path):
        p = Path(path)
        if p.is_dir():
            try:
                inside = sorted(c.name for c in p.iterdir() if c.is_file() and not c.name.startswith("."))
            except OSError:
                inside = []
            some = f" (it holds {', '.join(inside[:4])}{', ...' if len(inside) > 4 else ''})" if inside else ""
            raise SbrjobError(f"{path}: is a directory, not a file{some}; set {key} to {_WHAT.get(key, 'a file')} "
                              "inside it")
        if not p.is_file():
            raise SbrjobError(f"{path}: input file not found (cwd {os.getcwd()}); set {key} "
                              f"(or --set {key}=...) to {_WHAT.get(key, 'the file')}")
        if not os.access(p, os.R_OK):
            raise SbrjobError(f"{path}: permission denied; make it readable or set {key} to a copy you can read")
        return path
    return storage.local_copy(path)


def _header(path: str, encoding: str = "utf-8", key: str = "data.path") -> list[str]:
    for raw in _open_lines(_local_input(path, key), path, key):
        return raw.decode(encoding, errors="replace").lstrip("\ufeff").rstrip("\r\n").split("\t" if b"\t" in raw else ",")
    raise SbrjobError(f"{path}: empty input file; point {key} at the log file")


def _first_line(path: str, encoding: str = "utf-8", key: str = "data.path") -> str:
    for raw in _open_lines(_local_input(path, key), path, key):
        if raw.strip():
            return raw.decode(encoding, errors="replace").rstrip("\r\n")
    raise SbrjobError(f"{path}: empty input file; point {key} at the log file")


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
    elif SCALE.get(unit, 1.0) != 1.0:
        t /= SCALE[unit]
    return t


def _check_times(t: np.ndarray, source: str, name: str, unit: str) -> None:
    """Every time (seconds, before data.time_offset) within 1970..2099. Delimited files were checked
    line by line already; this names the row of a Parquet input."""
    bad = ~((t >= T_MIN) & (t < T_MAX))  # NaN is bad too
    if not bad.any():
        return
    scale = 1.0 if unit == "iso" else SCALE.get(unit, 1.0)
    hint = _unit_hint(name, t * scale, unit)
    if hint:
        raise SbrjobError(f"{source}: {hint}")
    row = int(np.flatnonzero(bad)[0])
    raise SbrjobError(f"{source}, row {row + 1}: column {name!r} = {float(t[row] * scale)!r} is outside {YEARS} as "
                      f"{UNIT_NAMES.get(unit, unit)} (data.time_unit: {unit}); clean the file")


def _events(table: pa.Table, bad: int, source: str, key: str, item: str, time: str, rating: str | None,
            keyed_by: str, time_unit: str = "s", offset: float = 0.0) -> Events:
    """Convert the parsed columns one at a time, dropping each from the table as soon as it is
    converted (the caller must not keep a reference): at 33M rows this halves the peak memory."""

    def take(name: str) -> pa.ChunkedArray:
        nonlocal table
        col = table.column(name)
        table = table.drop_columns([name])
        return col

    col = take(key)
    key_ids = None
    if pa.types.is_integer(col.type):
        k = _numpy(col, np.int64)
    else:  # string keys: dense codes group the same way; the originals are kept for lineage
        k, key_ids = _codes(col)
        k = k.astype(np.int64)
    del col
    codes, ids = _codes(take(item))
    t = _seconds(take(time), time_unit)
    _check_times(t, source, time, time_unit)
    if offset:
        t += offset
    r = _numpy(take(rating).cast(pa.float32()), np.float32) if rating else None
    del table
    return Events(key=k, item=codes, item_ids=ids, time=t, rating=r, keyed_by=keyed_by, bad_lines=bad,
                  sources=[source], key_ids=key_ids)


# ---------------------------------------------------------------- the formats


def _unit(cfg: DataConfig) -> str:
    return cfg.time_unit if cfg.time_unit in SCALE else "s"


def read_movielens(path: str, cfg: DataConfig, key: str = "data.path", progress: Progress | None = None) -> Events:
    """ML-1M `UserID::MovieID::Rating::Timestamp` (.dat, .dat.gz) or ml-latest `ratings.csv` (header)."""
    unit, enc = _unit(cfg), cfg.encoding
    if ".csv" in Path(path).name:
        header = _header(path, enc, key)
        need = {"userId", "movieId", "rating", "timestamp"}
        if not need <= set(header):
            raise SbrjobError(f"{path}, line 1: expected a header with {sorted(need)}, got {header}")
        layout = Layout(",", {"userId": "int", "movieId": "int", "rating": "float", "timestamp": "float"},
                        time="timestamp", time_unit=unit, encoding=enc)
        return _events(*read_delimited(path, layout, cfg.on_bad_lines, key, progress), path, "userId", "movieId", "timestamp",
                       "rating", "user", unit, cfg.time_offset)
    layout = Layout("::", {"user": "int", "item": "int", "rating": "float", "time": "float"},
                    names=("user", "item", "rating", "time"), time="time", time_unit=unit, encoding=enc)
    return _events(*read_delimited(path, layout, cfg.on_bad_lines, key, progress), path, "user", "item", "time", "rating",
                   "user", unit, cfg.time_offset)


def read_yoochoose(path: str, cfg: DataConfig, key: str = "data.path", progress: Progress | None = None) -> Events:
    """YOOCHOOSE clicks/test: `SessionID,Timestamp,ItemID[,Category]`, ISO-8601 UTC with milliseconds."""
    n_fields = len(_first_line(path, cfg.encoding, key).split(","))
    if n_fields not in (3, 4):
        raise SbrjobError(f"{path}, line 1: expected SessionID,Timestamp,ItemID[,Category] "
                          f"(3 or 4 comma-separated fields), found {n_fields}")
    names = ("session", "time", "item", "category")[:n_fields]
    layout = Layout(",", {"session": "int", "time": "iso", "item": "int"}, names=names, time="time",
                    time_unit="iso", encoding=cfg.encoding)
    return _events(*read_delimited(path, layout, cfg.on_bad_lines, key, progress), path, "session", "item", "time", None,
                   "session", "iso", cfg.time_offset)


def read_gru4rec(path: str, cfg: DataConfig, key: str = "data.path", progress: Progress | None = None) -> Events:
    """GRU4Rec TSV: header `SessionId\\tItemId\\tTime` (any column order; extra columns ignored)."""
    header = _header(path, cfg.encoding, key)
    need = ["SessionId", "ItemId", "Time"]
    if not set(need) <= set(header):
        raise SbrjobError(f"{path}, line 1: expected a tab-separated header with {need}, got {header}")
    unit = _unit(cfg)
    layout = Layout("\t", {"SessionId": "int", "ItemId": "int", "Time": "float"}, time="Time", time_unit=unit,
                    encoding=cfg.encoding)
    return _events(*read_delimited(path, layout, cfg.on_bad_lines, key, progress), path, "SessionId", "ItemId", "Time", None,
                   "session", unit, cfg.time_offset)


def _table_separator(path: str, cfg: DataConfig) -> str:
    if cfg.separator:
        return cfg.separator.replace("\\t", "\t")
    name = Path(path).name.lower().removesuffix(".gz").removesuffix(".bz2")
    return "\t" if name.endswith((".tsv", ".tab", ".txt")) else ","


def read_table(path: str, cfg: DataConfig, key_name: str = "data.path", progress: Progress | None = None) -> Events:
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
        parsed = (_read_parquet(path, list(wanted), key_name), 0)
    else:
        sep = _table_separator(path, cfg)
        header = next(csv.reader([_first_line(path, cfg.encoding, key_name).lstrip("\ufeff")], delimiter=sep))
        missing = [c for c in wanted if c not in header]
        if missing:
            hint = "" if len(header) > 1 else f" (is data.separator {sep!r} right?)"
            raise SbrjobError(f"{path}, line 1: column(s) {missing} from data.columns not in the header {header}{hint}")
        if cfg.time_unit == "iso":
            # zone or not is decided by the first data value; mixed files show up as bad lines
            idx = header.index(cols["time"])
            for raw in itertools.islice(_open_lines(_local_input(path, key_name), path, key_name), 1, 2):
                first = next(csv.reader([raw.decode(cfg.encoding, "replace").rstrip("\r\n")], delimiter=sep))
                if idx < len(first) and not _ZONE.search(first[idx].strip()):
                    wanted[cols["time"]] = "iso_naive"
        layout = Layout(sep, wanted, quoted=True, time=cols["time"], time_unit=cfg.time_unit, encoding=cfg.encoding)
        parsed = read_delimited(path, layout, cfg.on_bad_lines, key_name, progress)
    return _events(*parsed, path, key, cols["item"], cols["time"], cols.get("rating"), keyed_by,
                   cfg.time_unit, cfg.time_offset)


def _read_parquet(path: str, columns: list[str], key: str = "data.path") -> pa.Table:
    local = _local_input(path, key)
    try:
        schema = pq.read_schema(local)
    except (pa.ArrowInvalid, OSError) as err:
        raise SbrjobError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
    missing = [c for c in columns if c not in schema.names]
    if missing:
        raise SbrjobError(f"{path}: column(s) {missing} from data.columns not in the file {schema.names}")
    try:
        table = pq.read_table(local, columns=columns)
    except (pa.ArrowInvalid, OSError) as err:
        raise SbrjobError(f"{path}: not a readable Parquet file ({str(err).splitlines()[0]})") from None
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


def _key_of(cfg: DataConfig, path: str | None) -> str:
    """Which config key names `path` (for messages)."""
    if path and path != cfg.path:
        if path == cfg.test_path:
            return "data.test_path"
        if path == cfg.valid_path:
            return "data.valid_path"
    return "data.path"


def read_events(cfg: DataConfig, path: str | None = None, progress: Progress | None = None) -> Events:
    """Read one input file (default `data.path`) in the configured format; `progress(step, bytes
    read, bytes in all)` as the parse advances (delimited text; Parquet is read at once)."""
    key = _key_of(cfg, path)
    path = path or input_path(cfg)
    _local_input(path, key)  # a directory, a missing file: named with its key before any parsing
    return _READERS[cfg.format](path, cfg, key, progress)


# ---------------------------------------------------------------- item metadata


def read_items(cfg: DataConfig) -> pd.DataFrame | None:
    """Titles and genres for display: `item_id`, `title`, `genres` (strings), or None when unknown."""
    path = cfg.items_path
    if cfg.format == "sample":
        from sbrjob.sample import sample_dir

        path = str(Path(sample_dir()) / "movies.dat")
    if not path:
        return None
    key = "data.items_path"
    local = _local_input(path, key)
    if ".csv" in Path(path).name:  # ml-latest movies.csv: movieId,title,genres with quoted titles
        try:
            df = pd.read_csv(local, dtype=str, keep_default_na=False, encoding=cfg.encoding)
        except UnicodeDecodeError as err:
            raise SbrjobError(f"{path}: not valid {cfg.encoding} text ({err.reason} at byte {err.start}); "
                              "set data.encoding to the file's encoding") from None
        except (pd.errors.ParserError, pd.errors.EmptyDataError) as err:
            raise SbrjobError(f"{path}: cannot parse as CSV ({str(err).splitlines()[0]}); "
                              "set data.items_path to movies.csv, or null") from None
        except (OSError, EOFError, zlib.error) as err:
            raise _read_error(path, local, err, key) from None
        if not {"movieId", "title"} <= set(df.columns):
            raise SbrjobError(f"{path}, line 1: expected a header with movieId,title[,genres]")
        return pd.DataFrame({"item_id": df["movieId"], "title": df["title"], "genres": df.get("genres")})
    # movies.dat is Latin-1; titles may contain ':' but never '::'
    rows = []
    for line_no, raw in enumerate(_open_lines(local, path, key), start=1):
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
