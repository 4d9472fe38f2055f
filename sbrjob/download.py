"""Fetch public datasets: checksum-verified, safely extracted, idempotent and atomic.

`download("movielens-1m", to)` leaves `to/ml-1m/{ratings,movies,users}.dat` (the layout
`configs/movielens.yaml` reads) and returns that directory. The archive is streamed to a scratch
directory while hashed, checked against the published MD5 and our SHA-256, extracted member by
member (no absolute paths, no `..`, no links, bounded size) and published whole, with a marker
written last; a second call finds the marker and downloads nothing.

YOOCHOOSE (RecSys Challenge 2015) cannot be fetched automatically: its terms require a manual
download, so `download("yoochoose", to)` raises `ManualDownload` with instructions (the CLI prints
them and exits with code 3).
"""

from __future__ import annotations

import hashlib
import json
import logging
import stat
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from zlib import error as zlib_error

from sbrjob import storage
from sbrjob.config import join
from sbrjob.errors import SbrjobError, io_error

log = logging.getLogger("sbrjob.download")

MARKER = ".sbrjob-download.json"
_MAX_UNPACKED = 1 << 30  # refuse archives that would expand past 1 GiB (zip bombs)


@dataclass(frozen=True)
class Dataset:
    url: str
    sha256: str
    md5: str  # the checksum the publisher lists
    folder: str  # top-level folder inside the archive, kept as is under `to`
    required: tuple[str, ...]  # files that must be in `folder` after extraction


DATASETS = {
    "movielens-1m": Dataset(
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        md5="c4d9eecfca2ab87c1945afe126590906",
        folder="ml-1m",
        required=("ratings.dat", "movies.dat", "users.dat"),
    ),
}

YOOCHOOSE_HELP = """\
YOOCHOOSE (RecSys Challenge 2015) must be downloaded by hand: its terms of use do not allow
redistribution, so sbrjob does not fetch it.

1. Get yoochoose-data.7z (about 270 MB) from the RecSys Challenge 2015 page
   (https://recsys.acm.org/recsys15/challenge/, "dataset"), or from the Kaggle mirror of the
   challenge data (search "RecSys Challenge 2015 yoochoose").
2. Extract it:  7z x yoochoose-data.7z -o{to}
   which gives {to}/yoochoose-clicks.dat (1.4 GB, 33,003,944 clicks), yoochoose-buys.dat and
   yoochoose-test.dat.
3. Train:  sbrjob train --config yoochoose --set data.path={to}/yoochoose-clicks.dat
   (the path may also be a gs:// URL after `gcloud storage cp`)."""


class ManualDownload(SbrjobError):
    """The dataset needs a manual step; `instructions` says which."""

    def __init__(self, dataset: str, instructions: str):
        super().__init__(f"{dataset}: needs a manual download (see the instructions above)")
        self.instructions = instructions


def download(dataset: str, to: str, url: str | None = None, sha256: str | None = None) -> str:
    """Download and extract `dataset` into `to` (a local directory or gs:// prefix); returns the
    dataset's directory. `url` overrides the source (a mirror), `sha256` the expected checksum
    (only for a different archive than the official one, e.g. tests)."""
    if dataset == "yoochoose":
        clicks = join(to, "yoochoose-clicks.dat")
        if storage.exists(clicks):
            return to
        raise ManualDownload(dataset, YOOCHOOSE_HELP.format(to=to.rstrip("/")))
    if dataset not in DATASETS:
        raise SbrjobError(f"{dataset}: unknown dataset; use one of {', '.join([*DATASETS, 'yoochoose'])}")
    spec = DATASETS[dataset]
    want_sha = (sha256 or spec.sha256).lower()
    dest = join(to, spec.folder)
    marker = join(dest, MARKER)
    if _marker_matches(marker, want_sha):
        return dest
    with storage.staging_dir(dest) as tmp:
        archive = tmp / "archive.zip"
        got_sha, got_md5 = _fetch(url or spec.url, archive)
        if got_sha != want_sha or (sha256 is None and got_md5 != spec.md5):
            raise SbrjobError(f"{url or spec.url}: checksum mismatch (sha256 {got_sha}, expected {want_sha}); "
                              "the download is corrupt or not the official archive: nothing was extracted")
        out = tmp / "out"
        _safe_extract(archive, out, url or spec.url)
        archive.unlink()
        folder = out / spec.folder
        missing = [f for f in spec.required if not (folder / f).is_file()]
        if missing:
            raise SbrjobError(f"{url or spec.url}: archive lacks {spec.folder}/{', '.join(missing)}: "
                              "not the expected layout, nothing was extracted")
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        (folder / MARKER).write_text(json.dumps({"dataset": dataset, "url": url or spec.url,
                                                 "sha256": got_sha, "files": files}, indent=1))
        storage.publish_dir(folder, dest, last=MARKER)
    return dest


def _marker_matches(marker: str, sha: str) -> bool:
    try:
        info = json.loads(storage.read_text(marker))
    except (FileNotFoundError, ValueError):
        return False
    return info.get("sha256") == sha


def _fetch(url: str, path: Path) -> tuple[str, str]:
    """Stream `url` to `path`; returns (sha256, md5) hex digests of what arrived."""
    sha, md5 = hashlib.sha256(), hashlib.md5()
    log.info("downloading %s", url)
    try:
        fh = open(path, "wb")  # noqa: SIM115 - closed below; its errors are local, not the network's
    except OSError as err:
        raise io_error(err, path, doing=f"downloading {url}") from None
    with fh:
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    sha.update(chunk)
                    md5.update(chunk)
                    try:
                        fh.write(chunk)
                    except OSError as err:  # disk full, ulimit -f: not a network problem
                        raise io_error(err, path, doing=f"downloading {url}") from None
        except (urllib.error.URLError, OSError) as err:
            raise SbrjobError(f"{url}: download failed ({getattr(err, 'reason', err)}); "
                              "check the network or pass --url with a mirror") from None
    return sha.hexdigest(), md5.hexdigest()


def _safe_extract(archive: Path, out: Path, where: str) -> None:
    """Extract regular files only, each strictly inside `out`; refuse the whole archive otherwise."""
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile:
        raise SbrjobError(f"{where}: not a zip archive") from None
    with zf:
        members, total, files, dirs = [], 0, {}, {}
        for info in zf.infolist():
            name = info.filename
            parts = PurePosixPath(name.replace("\\", "/")).parts
            kind = stat.S_IFMT(info.external_attr >> 16)  # 0 when the archiver recorded no file type
            if name.startswith(("/", "\\")) or (parts and ":" in parts[0]) or ".." in parts:
                raise SbrjobError(f"{where}: unsafe path {name!r} in archive (absolute or '..'); nothing extracted")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise SbrjobError(f"{where}: {name!r} in archive is a link or special file; nothing extracted")
            total += info.file_size
            if total > _MAX_UNPACKED:
                raise SbrjobError(f"{where}: archive expands past {_MAX_UNPACKED >> 20} MiB; refused")
            # one name as a file and as a directory (or a file twice) cannot be extracted faithfully
            key = tuple(parts)
            for depth in range(1, len(key)):
                dirs.setdefault(key[:depth], name)
            if info.is_dir():
                dirs.setdefault(key, name)
            else:
                if key in files:
                    raise SbrjobError(f"{where}: {name!r} appears twice in the archive (also as {files[key]!r}); "
                                      "nothing extracted")
                files[key] = name
                members.append((info, out.joinpath(*parts)))
        clash = next((k for k in files if k in dirs), None)
        if clash:
            raise SbrjobError(f"{where}: archive uses {files[clash]!r} both as a file and as a directory "
                              f"({dirs[clash]!r}); not the expected archive, nothing extracted")
        root, written = out.resolve(), 0
        for info, target in members:
            if not target.resolve().is_relative_to(root):  # belt and braces
                raise SbrjobError(f"{where}: unsafe path {info.filename!r} in archive; nothing extracted")
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as dst:
                    for chunk in iter(lambda: src.read(1 << 20), b""):
                        written += len(chunk)  # headers can lie about sizes
                        if written > _MAX_UNPACKED:
                            raise SbrjobError(f"{where}: archive expands past {_MAX_UNPACKED >> 20} MiB; refused")
                        dst.write(chunk)
            except (zipfile.BadZipFile, EOFError, zlib_error) as err:  # CRC mismatch, truncated member
                raise SbrjobError(f"{where}: corrupt archive member {info.filename!r} ({err})") from None
            except OSError as err:  # disk full, ulimit -f: the staging directory is removed
                raise io_error(err, target, doing=f"extracting {where}") from None
