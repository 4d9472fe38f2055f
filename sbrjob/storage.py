"""Paths that may be local or `gs://bucket/key`: the only module that knows the difference.

Stages write their outputs into a local staging directory and `publish_dir` it as a whole, so a
killed run never leaves a half-written output under the final name (locally: one rename; on GCS:
the old marker deleted first, changed files uploaded, the marker file last). Readers that need a
real filesystem path (TensorFlow, pyarrow) take `local_copy`/`local_dir_copy`, a cached mirror that
downloads only what changed.

GCS goes through google-cloud-storage, which honours STORAGE_EMULATOR_HOST, so every gs:// path is
tested against a local emulator. TensorFlow's own gs:// filesystem is not used: it cannot be
pointed at an emulator.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

from sbrjob.errors import SbrjobError

GS = "gs://"
_WORKERS = 8  # parallel object transfers: GCS latency, not bandwidth, dominates small files


def is_remote(path: str | os.PathLike) -> bool:
    return str(path).startswith(GS)


_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")


def _split_gs(url: str) -> tuple[str, str]:
    bucket, _, key = url[len(GS):].partition("/")
    if not _BUCKET.match(bucket):
        raise SbrjobError(f"{url}: not a gs://bucket/path URL (bucket names are 3-222 characters a-z 0-9 . _ -)")
    key = key.strip("/")
    if any(part in (".", "..") for part in key.split("/")):
        raise SbrjobError(f"{url}: '.' and '..' are not allowed in gs:// paths")
    return bucket, key


_client = None
_client_key = None
_client_lock = threading.Lock()


def _gcs():
    """A google-cloud-storage client: application default credentials, or anonymous against
    STORAGE_EMULATOR_HOST (tests). Rebuilt when that variable changes."""
    global _client, _client_key
    emulator = os.environ.get("STORAGE_EMULATOR_HOST")
    with _client_lock:
        if _client is None or _client_key != emulator:
            try:
                from google.cloud import storage as gcs

                if emulator:
                    from google.auth.credentials import AnonymousCredentials

                    _client = gcs.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT", "local"),
                                         credentials=AnonymousCredentials())
                else:
                    _client = gcs.Client()
            except Exception as err:  # no default credentials, bad project
                raise _gcs_error("gs://", err) from err
            _client_key = emulator
    return _client


def _blob(url: str):
    bucket, key = _split_gs(url)
    if not key:
        raise SbrjobError(f"{url}: names a bucket, not an object")
    return _gcs().bucket(bucket).blob(key)


# Anything that could be a secret in an error message from the auth or HTTP layers.
_SECRETS = re.compile(
    r"(Bearer\s+\S+|ya29\.[\w.-]+|(access_token|refresh_token|id_token|client_secret|private_key|"
    r"token|signature|X-Goog-Signature|X-Goog-Credential)[\"']?\s*[:=]\s*[\"']?[^\s\"'&,}]+)",
    re.IGNORECASE,
)


def redact(text: str) -> str:
    """`text` with bearer tokens, OAuth tokens, keys and URL signatures replaced by <redacted>."""
    return _SECRETS.sub("<redacted>", text)


def _gcs_error(url: str, err: Exception) -> SbrjobError:
    # Only the URL and the first line of the client's message, scrubbed: never credentials.
    first = (str(err).strip().splitlines() or [""])[0][:200]
    hint = ""
    if type(err).__name__ in ("DefaultCredentialsError", "RefreshError", "Forbidden", "Unauthorized"):
        hint = " (check `gcloud auth application-default login` or the job's service account)"
    return SbrjobError(f"{url}: storage error {type(err).__name__}: {redact(first)}{hint}")


def _is_not_found(err: Exception) -> bool:
    return type(err).__name__ == "NotFound"


def _prefix(key: str) -> str:
    return key.rstrip("/") + "/" if key else ""


def _remote_blobs(prefix_url: str) -> dict:
    """{relative name: blob} for every object below a gs:// directory."""
    bucket, key = _split_gs(prefix_url)
    p = _prefix(key)
    try:
        return {b.name[len(p):]: b for b in _gcs().list_blobs(bucket, prefix=p) if not b.name.endswith("/")}
    except Exception as err:
        raise _gcs_error(prefix_url, err) from err


def _parallel(fn, items) -> None:
    items = list(items)
    if len(items) <= 1:
        for it in items:
            fn(it)
        return
    with ThreadPoolExecutor(min(_WORKERS, len(items))) as pool:
        for _ in pool.map(fn, items):  # re-raises the first failure
            pass


# ---------------------------------------------------------------- single files


def exists(path: str) -> bool:
    """A file, or a directory with something below it."""
    if not is_remote(path):
        return Path(path).exists()
    bucket, key = _split_gs(path)
    try:
        if key and _gcs().bucket(bucket).blob(key).exists():
            return True
        return any(True for _ in _gcs().list_blobs(bucket, prefix=_prefix(key), max_results=1))
    except Exception as err:  # network, auth, missing bucket
        raise _gcs_error(path, err) from err


def read_bytes(path: str) -> bytes:
    """Raises FileNotFoundError when missing, locally and on GCS alike."""
    if not is_remote(path):
        return Path(path).read_bytes()
    blob = _blob(path)
    try:
        return blob.download_as_bytes()
    except Exception as err:
        if _is_not_found(err):
            raise FileNotFoundError(path) from None
        raise _gcs_error(path, err) from err


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file atomically: temp name + rename locally; one object upload on GCS."""
    if is_remote(path):
        blob = _blob(path)
        try:
            blob.upload_from_string(data, retry=_retry())
        except Exception as err:
            raise _gcs_error(path, err) from err
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _retry():
    # Our uploads rewrite whole objects with the same content, so retrying them is safe.
    from google.cloud.storage.retry import DEFAULT_RETRY

    return DEFAULT_RETRY


def _upload(local: Path, url: str) -> None:
    blob = _blob(url)
    try:
        blob.upload_from_filename(str(local), retry=_retry())
    except Exception as err:
        raise _gcs_error(url, err) from err


def put_file(local: str | os.PathLike, dest: str) -> None:
    """Copy one local file to `dest` (local path or gs://), atomically."""
    if is_remote(dest):
        _upload(Path(local), dest)
        return
    p = Path(dest)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
    shutil.copyfile(local, tmp)
    os.replace(tmp, p)


def content_id(path: str) -> dict:
    """What identifies a file's content without reading it: local {size, mtime_ns}; gs:// {size,
    generation, crc32c}. Raises FileNotFoundError when missing."""
    if not is_remote(path):
        st = Path(path).stat()
        if not Path(path).is_file():
            raise IsADirectoryError(path)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    bucket, key = _split_gs(path)
    try:
        blob = _gcs().bucket(bucket).get_blob(key) if key else None
    except Exception as err:
        raise _gcs_error(path, err) from err
    if blob is None:
        raise FileNotFoundError(path)
    return {"size": blob.size, "generation": str(blob.generation), "crc32c": blob.crc32c}


def create_exclusive(path: str, text: str) -> bool:
    """Create `path` with `text` only if it does not exist (locally O_EXCL; on GCS a precondition
    `if_generation_match=0`); False when it already exists."""
    if not is_remote(path):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return True
    blob = _blob(path)
    try:
        blob.upload_from_string(text.encode("utf-8"), if_generation_match=0)
    except Exception as err:
        if type(err).__name__ == "PreconditionFailed":
            return False
        raise _gcs_error(path, err) from err
    return True


def delete(path: str) -> None:
    """Remove one file; missing is fine."""
    if not is_remote(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    _delete(_blob(path), path)


# ---------------------------------------------------------------- directories


def list_files(prefix: str) -> list[str]:
    """All files below a directory (relative paths, sorted)."""
    if not is_remote(prefix):
        root = Path(prefix)
        if not root.is_dir():
            return []
        return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return sorted(_remote_blobs(prefix))


def move_tree(src: str, dest: str) -> None:
    """Move a directory (locally one rename; on GCS copy every object, then delete the source)."""
    if not is_remote(src):
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
        return
    base, target = src.rstrip("/"), dest.rstrip("/")
    blobs = _remote_blobs(src)

    def copy(item):
        rel, blob = item
        dest_bucket, dest_key = _split_gs(f"{target}/{rel}")
        try:
            blob.bucket.copy_blob(blob, _gcs().bucket(dest_bucket), dest_key)
        except Exception as err:
            raise _gcs_error(f"{base}/{rel}", err) from err

    _parallel(copy, blobs.items())
    _parallel(lambda b: _delete(b, base), blobs.values())


def remove_tree(path: str) -> None:
    if not is_remote(path):
        shutil.rmtree(path, ignore_errors=True)
        return
    _parallel(lambda b: _delete(b, path), _remote_blobs(path).values())


def _delete(blob, where: str) -> None:
    try:
        blob.delete()
    except Exception as err:
        if not _is_not_found(err):  # already gone: what we wanted
            raise _gcs_error(where, err) from err


def _crc32c(path: Path) -> str:
    """Base64 CRC32C of a file, as GCS reports it in blob.crc32c."""
    import base64

    import google_crc32c

    c = google_crc32c.Checksum()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            c.update(chunk)
    return base64.b64encode(c.digest()).decode()


def sync_dir(local_dir: str | Path, dest: str, last: str | None = None) -> None:
    """Make `dest` hold exactly the files of `local_dir`, which stays in place (e.g. a training
    run's working checkpoint or TensorBoard directory, synced after each save).

    On GCS only new or changed files are uploaded (compared by size and CRC32C) and files gone
    locally are deleted. `last` names the marker file readers trust: it is deleted before anything
    else changes and uploaded after everything else, so an interrupted sync leaves no marker.
    """
    local_dir = Path(local_dir)
    if not is_remote(dest):
        if local_dir.resolve() == Path(dest).resolve():
            return
        with staging_dir(dest) as tmp:
            shutil.copytree(local_dir, tmp, dirs_exist_ok=True)
            publish_dir(tmp, dest)
        return
    files = sorted(str(p.relative_to(local_dir)) for p in local_dir.rglob("*") if p.is_file())
    if last is not None and last not in files:
        raise SbrjobError(f"{local_dir}: marker file {last!r} missing, nothing published to {dest}")
    base = dest.rstrip("/")
    remote = _remote_blobs(dest)
    if last is not None and last in remote:
        _delete(remote.pop(last), f"{base}/{last}")  # a crash from here on leaves no trusted marker

    def changed(rel: str) -> bool:
        b = remote.get(rel)
        p = local_dir / rel
        return b is None or b.size != p.stat().st_size or b.crc32c != _crc32c(p)

    _parallel(lambda rel: _upload(local_dir / rel, f"{base}/{rel}"),
              [r for r in files if r != last and changed(r)])
    _parallel(lambda b: _delete(b, base), [b for r, b in remote.items() if r not in files])
    if last is not None:
        _upload(local_dir / last, f"{base}/{last}")


def publish_dir(local_dir: str | Path, dest: str, last: str | None = None) -> None:
    """Make `local_dir` appear as `dest`, replacing what was there; `local_dir` is consumed.

    `last` names a file (relative) written after all others: the marker readers trust.
    Locally the whole directory is renamed into place, so readers see all of it or none; on GCS
    see `sync_dir` (marker deleted first, uploaded last).
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
    sync_dir(local_dir, dest, last=last)
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
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the published directory is renamed as is
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- local mirrors for readers


def cache_root(cache_dir: str | None = None) -> Path:
    """Where gs:// objects are mirrored: `cache_dir`, $SBRJOB_CACHE, or <tmp>/sbrjob-cache."""
    return Path(cache_dir or os.environ.get("SBRJOB_CACHE") or Path(tempfile.gettempdir()) / "sbrjob-cache")


def _mirror_path(url: str, cache_dir: str | None) -> Path:
    bucket, key = _split_gs(url)
    return cache_root(cache_dir) / bucket / key


def _fetch(blob, url: str, local: Path) -> None:
    """Download `blob` to `local` unless the cached copy is this very generation."""
    stamp = local.with_name(f".{local.name}.generation")
    version = f"{blob.generation}:{blob.size}"  # read now: a download may reset blob's properties
    if local.is_file() and stamp.is_file() and stamp.read_text() == version:
        return
    local.parent.mkdir(parents=True, exist_ok=True)
    tmp = local.with_name(f".{local.name}.{os.getpid()}.{threading.get_ident()}.part")
    try:
        # pinned to the listed generation; the client verifies the checksum of what it got
        blob.download_to_filename(str(tmp), if_generation_match=blob.generation)
        os.replace(tmp, local)
        stamp.write_text(version)
    except Exception as err:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if _is_not_found(err):
            raise SbrjobError(f"{url}: file not found") from None
        raise _gcs_error(url, err) from err


def local_copy(path: str, cache_dir: str | None = None) -> str:
    """A local filesystem path for reading `path`; gs:// objects are downloaded to a cache first
    (again only when the object changed)."""
    if not is_remote(path):
        return path
    bucket, key = _split_gs(path)
    try:
        blob = _gcs().bucket(bucket).get_blob(key) if key else None
    except Exception as err:
        raise _gcs_error(path, err) from err
    if blob is None:
        raise SbrjobError(f"{path}: file not found")
    local = _mirror_path(path, cache_dir)
    _fetch(blob, path, local)
    return str(local)


def local_dir_copy(prefix: str, cache_dir: str | None = None, missing_ok: bool = False) -> str:
    """A local directory mirroring a gs:// prefix (all files below it, changed ones downloaded in
    parallel, local files no longer on GCS removed); local paths pass through.

    Raises SbrjobError when nothing is there, unless `missing_ok` (then an empty directory).
    """
    if not is_remote(prefix):
        return prefix
    blobs = _remote_blobs(prefix)
    if not blobs and not missing_ok:
        raise SbrjobError(f"{prefix}: nothing found under this prefix")
    root = _mirror_path(prefix, cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    base = prefix.rstrip("/")
    _parallel(lambda item: _fetch(item[1], f"{base}/{item[0]}", root / item[0]), blobs.items())
    for p in list(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_file() and not p.name.startswith(".") and rel not in blobs:
            p.unlink()
            with contextlib.suppress(FileNotFoundError):
                p.with_name(f".{p.name}.generation").unlink()
    return str(root)


def work_dir(dest: str, cache_dir: str | None = None) -> str:
    """A local directory to write `dest` incrementally (checkpoints, TensorBoard): `dest` itself
    when local; for gs:// a local mirror of what is already there (to resume from), which the
    writer pushes back with `sync_dir(work, dest, last=...)` after each save."""
    return local_dir_copy(dest, cache_dir, missing_ok=True)
