"""Paths that may be local or `gs://bucket/key`: the only module that knows the difference.

Stages write their outputs into a local staging directory and `publish_dir` it as a whole, so a
killed run never leaves a half-written output under the final name (locally: one rename; on GCS:
every file uploaded first, the marker file last).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from sbrjob.errors import SbrjobError

GS = "gs://"


def is_remote(path: str | os.PathLike) -> bool:
    return str(path).startswith(GS)


def _split_gs(url: str) -> tuple[str, str]:
    bucket, _, key = url[len(GS):].partition("/")
    if not bucket:
        raise SbrjobError(f"{url}: not a gs://bucket/path URL")
    return bucket, key.strip("/")


_client = None


def _gcs():
    """A google-cloud-storage client; honours STORAGE_EMULATOR_HOST (tests) without credentials."""
    global _client
    if _client is None:
        from google.cloud import storage as gcs

        if os.environ.get("STORAGE_EMULATOR_HOST"):
            from google.auth.credentials import AnonymousCredentials

            _client = gcs.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local"),
                                 credentials=AnonymousCredentials())
        else:
            _client = gcs.Client()
    return _client


def _blob(url: str):
    bucket, key = _split_gs(url)
    return _gcs().bucket(bucket).blob(key)


def _gcs_error(url: str, err: Exception) -> SbrjobError:
    # Never include credentials: only the URL and the error class/message from the client.
    return SbrjobError(f"{url}: storage error {type(err).__name__}: {str(err).splitlines()[0][:200]}")


def exists(path: str) -> bool:
    if not is_remote(path):
        return Path(path).exists()
    try:
        if _blob(path).exists():
            return True
        bucket, key = _split_gs(path)
        return any(True for _ in _gcs().list_blobs(bucket, prefix=key.rstrip("/") + "/", max_results=1))
    except Exception as err:  # network, auth, missing bucket
        raise _gcs_error(path, err) from err


def read_bytes(path: str) -> bytes:
    if not is_remote(path):
        return Path(path).read_bytes()
    try:
        return _blob(path).download_as_bytes()
    except Exception as err:
        if type(err).__name__ == "NotFound":
            raise FileNotFoundError(path) from err
        raise _gcs_error(path, err) from err


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file atomically: temp name + rename locally; GCS uploads are atomic per object."""
    if is_remote(path):
        try:
            _blob(path).upload_from_string(data)
        except Exception as err:
            raise _gcs_error(path, err) from err
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def list_files(prefix: str) -> list[str]:
    """All files below a directory (relative paths, sorted)."""
    if not is_remote(prefix):
        root = Path(prefix)
        if not root.is_dir():
            return []
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    bucket, key = _split_gs(prefix)
    key = key.rstrip("/") + "/" if key else ""
    try:
        return sorted(b.name[len(key):] for b in _gcs().list_blobs(bucket, prefix=key))
    except Exception as err:
        raise _gcs_error(prefix, err) from err


def remove_tree(path: str) -> None:
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    bucket, key = _split_gs(path)
    try:
        for b in _gcs().list_blobs(bucket, prefix=key.rstrip("/") + "/"):
            b.delete()
    except Exception as err:
        raise _gcs_error(path, err) from err


def publish_dir(local_dir: str | Path, dest: str, last: str | None = None) -> None:
    """Make `local_dir` appear as `dest`, replacing what was there.

    `last` names a file (relative) uploaded after all others: the marker readers trust.
    Locally the whole directory is renamed into place, so readers see all of it or none.
    """
    local_dir = Path(local_dir)
    if not is_remote(dest):
        target = Path(dest)
        target.parent.mkdir(parents=True, exist_ok=True)
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():
            os.replace(target, old)
        os.replace(local_dir, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    files = sorted(str(p.relative_to(local_dir)) for p in local_dir.rglob("*") if p.is_file())
    if last in files:
        files.remove(last)
        files.append(last)
    if last and exists(f"{dest.rstrip('/')}/{last}"):
        # invalidate the old marker first: a crash mid-upload must not leave it trusted
        _blob(f"{dest.rstrip('/')}/{last}").delete()
    remove_tree(dest)
    for rel in files:
        try:
            _blob(f"{dest.rstrip('/')}/{rel}").upload_from_filename(str(local_dir / rel))
        except Exception as err:
            raise _gcs_error(f"{dest.rstrip('/')}/{rel}", err) from err
    shutil.rmtree(local_dir, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(dest: str) -> Iterator[Path]:
    """A local scratch directory for a stage's outputs; removed if the stage fails.

    Locally it sits beside `dest` (same filesystem, so publishing is a rename).
    """
    if is_remote(dest):
        base = None
    else:
        base = Path(dest).parent
        base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{Path(dest).name}.tmp-", dir=base))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def local_copy(path: str, cache_dir: str | None = None) -> str:
    """A local filesystem path for reading `path`; gs:// objects are downloaded to a cache first."""
    if not is_remote(path):
        return path
    bucket, key = _split_gs(path)
    root = Path(cache_dir or os.environ.get("SBRJOB_CACHE", Path(tempfile.gettempdir()) / "sbrjob-cache"))
    local = root / bucket / key
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.part")
    try:
        _blob(path).download_to_filename(str(tmp))
    except Exception as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if type(err).__name__ == "NotFound":
            raise SbrjobError(f"{path}: file not found") from err
        raise _gcs_error(path, err) from err
    os.replace(tmp, local)
    return str(local)


def local_dir_copy(prefix: str, cache_dir: str | None = None) -> str:
    """A local directory mirroring a gs:// prefix (all files below it); local paths pass through."""
    if not is_remote(prefix):
        return prefix
    root = None
    for rel in list_files(prefix):
        got = local_copy(f"{prefix.rstrip('/')}/{rel}", cache_dir)
        root = got[: -len(rel)].rstrip("/")
    if root is None:
        raise SbrjobError(f"{prefix}: nothing found under this prefix")
    return root
