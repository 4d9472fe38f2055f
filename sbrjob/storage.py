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
import json
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sbrjob.errors import SbrjobError, io_error

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


# ---------------------------------------------------------------- write failures and debris
#
# Every local write goes to a temporary name first (`.NAME.<pid>-<host>-*.tmp` files,
# `.NAME.tmp-<pid>-<host>-*` staging directories, `.NAME.old-<pid>-<host>` during a publish):
# readers never look at dot-names, and a later write of the same NAME removes the ones whose process
# is gone (killed, disk full, power cut). <host> tags this machine, so a shared filesystem's debris
# of another machine is only removed once it is a day old. OSErrors become one-line SbrjobErrors
# naming the path and what the errno means (errors.io_error).


def _host_tag() -> str:
    import hashlib
    import socket

    return hashlib.blake2s(socket.gethostname().encode(), digest_size=4).hexdigest()


_HOST = _host_tag()


def _tag() -> str:
    """`<pid>-<host>`: who writes a temporary (see clean_stale)."""
    return f"{os.getpid()}-{_HOST}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process, or not a pid at all: leave it
    return True


_OLD_DEBRIS_S = 24 * 3600  # debris without a pid in its name (written before pids were added)


def _debris_pid(entry_name: str, name: str) -> int | None | bool:
    """For a temporary left by a write of `name` on this machine: its writer's pid; None when the
    name carries no pid of this machine (older names, other hosts); False when the entry is not
    such a temporary at all."""
    for prefix, pattern in ((f".{name}.tmp-", r"(\d+)-([0-9a-f]{8})-.*"), (f".{name}.old-", r"(\d+)-([0-9a-f]{8})"),
                            (f".{name}.", r"(\d+)-([0-9a-f]{8})-.*\.(tmp|part)")):
        if not entry_name.startswith(prefix):
            continue
        rest = entry_name[len(prefix):]
        m = re.fullmatch(pattern, rest)
        if m:
            return int(m.group(1)) if m.group(2) == _HOST else None
        if prefix.endswith(("tmp-", "old-")) or rest.endswith((".tmp", ".part")):
            return None  # a temporary without (our) pid: judged by its age
        return False
    return False


def clean_stale(directory: str | os.PathLike, name: str) -> list[str]:
    """Remove the temporaries that writes of `name` in `directory` left behind when their process
    died (or, without a pid in their name, that are over a day old); returns their names. Local
    paths only; failures to remove are ignored (the next run tries again)."""
    root = Path(directory)
    try:
        entries = list(os.scandir(root))
    except OSError:
        return []
    removed = []
    for entry in entries:
        pid = _debris_pid(entry.name, name)
        if pid is False:
            continue
        if pid is None:
            try:
                stale = time.time() - entry.stat(follow_symlinks=False).st_mtime > _OLD_DEBRIS_S
            except OSError:
                continue
        else:
            stale = not _pid_alive(pid)
        if not stale:
            continue
        path = root / entry.name
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                path.unlink()
        removed.append(entry.name)
    return removed


def _unlink_quietly(path) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            os.unlink(path)


def write_bytes(path: str, data: bytes) -> None:
    """Write a whole file atomically: temp name + rename locally; one object upload on GCS.

    A local write that fails (disk full, `ulimit -f`, read-only) leaves the old file as it was and
    raises a one-line SbrjobError naming the path."""
    if is_remote(path):
        blob = _blob(path)
        try:
            blob.upload_from_string(data, retry=_retry())
        except Exception as err:
            raise _gcs_error(path, err) from err
        return
    p = Path(path)
    tmp = None
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(p.parent, p.name)
        fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.{_tag()}-", suffix=".tmp", dir=p.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, p)
    except OSError as err:
        _unlink_quietly(tmp)
        raise io_error(err, path) from None
    except BaseException:
        _unlink_quietly(tmp)
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
    tmp = p.with_name(f".{p.name}.{_tag()}-{threading.get_ident()}.tmp")
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(p.parent, p.name)
        shutil.copyfile(local, tmp)
        os.replace(tmp, p)
    except OSError as err:
        _unlink_quietly(tmp)
        if err.errno is not None and not Path(local).is_file():  # the source is what is wrong
            raise io_error(err, local, doing="reading", atomic=False) from None
        raise io_error(OSError(err.errno, err.strerror), dest) from None  # copyfile names the source
    except BaseException:
        _unlink_quietly(tmp)
        raise


def _get_blob(url: str):
    """The object's metadata (size, generation, crc32c), or None when there is none."""
    bucket, key = _split_gs(url)
    try:
        return _gcs().bucket(bucket).get_blob(key) if key else None
    except Exception as err:
        raise _gcs_error(url, err) from err


def content_id(path: str) -> dict:
    """What identifies a file's content without reading it: local {size, mtime_ns}; gs:// {size,
    generation, crc32c}. Raises FileNotFoundError when missing."""
    if not is_remote(path):
        st = Path(path).stat()
        if not Path(path).is_file():
            raise IsADirectoryError(path)
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    blob = _get_blob(path)
    if blob is None:
        raise FileNotFoundError(path)
    return {"size": blob.size, "generation": str(blob.generation), "crc32c": blob.crc32c}


def create_exclusive(path: str, text: str) -> bool:
    """Create `path` with `text` only if it does not exist (locally O_EXCL; on GCS a precondition
    `if_generation_match=0`); False when it already exists."""
    if not is_remote(path):
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        except OSError as err:
            raise io_error(err, path) from None
        try:
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        except OSError as err:  # created but not written: do not leave a half-written file behind
            _unlink_quietly(path)
            raise io_error(err, path) from None
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
        try:
            Path(dest).parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dest)
        except OSError as err:
            raise io_error(err, dest, doing=f"moving {src}", atomic=False) from None
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
        old = target.with_name(f".{target.name}.old-{_tag()}")
        moved = False
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists():
                os.replace(target, old)
                moved = True
            os.replace(local_dir, target)
        except OSError as err:
            if moved and not target.exists():  # put the previous output back
                with contextlib.suppress(OSError):
                    os.replace(old, target)
            raise io_error(err, dest, doing="publishing") from None
        shutil.rmtree(old, ignore_errors=True)
        return
    sync_dir(local_dir, dest, last=last)
    shutil.rmtree(local_dir, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(dest: str) -> Iterator[Path]:
    """A local scratch directory for a stage's outputs; removed if the stage fails.

    Locally it sits beside `dest` (same filesystem, so publishing is a rename); staging left by
    killed runs of the same `dest` is removed first. An OSError (or TensorFlow I/O error) while
    the stage writes into it becomes a one-line SbrjobError naming `dest` and the errno.
    """
    name = Path(dest).name
    try:
        if is_remote(dest):
            base = None
        else:
            base = Path(dest).parent
            base.mkdir(parents=True, exist_ok=True)
            clean_stale(base, name)
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-{_tag()}-", dir=base))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the published directory is renamed as is
    except OSError as err:
        raise io_error(err, dest, doing="creating the staging directory") from None
    try:
        yield tmp
    except SbrjobError:
        raise
    except Exception as err:
        converted = io_error(err, dest, doing=f"writing {dest}")
        if converted is None:
            raise
        raise converted from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------- local mirrors for readers


def default_cache_dir() -> Path:
    """The per-user cache: $XDG_CACHE_HOME/sbrjob, or ~/.cache/sbrjob."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".cache"
    return base / "sbrjob"


def cache_root(cache_dir: str | None = None) -> Path:
    """Where gs:// objects are mirrored: `cache_dir`, $SBRJOB_CACHE, or the per-user
    `default_cache_dir()`. A directory created here is 0700; the default one must belong to the
    user (a shared, predictable path could be planted by someone else) and is kept 0700."""
    explicit = cache_dir or os.environ.get("SBRJOB_CACHE")
    root = Path(explicit) if explicit else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        st = root.stat()
        if not explicit:
            if hasattr(os, "getuid") and st.st_uid != os.getuid():
                raise SbrjobError(f"{root}: the gs:// cache directory belongs to another user; "
                                  "set SBRJOB_CACHE to a directory of your own")
            if stat.S_IMODE(st.st_mode) & 0o077:
                os.chmod(root, 0o700)
    except OSError as err:
        raise io_error(err, root, doing="creating the gs:// cache (SBRJOB_CACHE chooses another directory)",
                       atomic=False) from None
    return root


def _mirror_path(url: str, cache_dir: str | None) -> Path:
    bucket, key = _split_gs(url)
    return cache_root(cache_dir) / bucket / key


def _stamp_path(local: Path) -> Path:
    return local.with_name(f".{local.name}.generation")


def _object_id(blob) -> dict:
    return {"generation": str(blob.generation), "size": blob.size, "crc32c": blob.crc32c}


def _write_stamp(local: Path, object_id: dict) -> None:
    st = local.stat()
    stamp = _stamp_path(local)
    tmp = stamp.with_name(f"{stamp.name}.{_tag()}-{threading.get_ident()}.part")
    tmp.write_text(json.dumps({"object": object_id, "size": st.st_size, "mtime_ns": st.st_mtime_ns}))
    os.replace(tmp, stamp)


def _cached_copy_ok(blob, local: Path) -> bool:
    """Whether `local` holds this very object: its stamp names the same generation and CRC32C and
    the file is unchanged since (size, mtime); else the CRC32C of the file itself decides."""
    want = _object_id(blob)
    try:
        st = local.stat()
    except OSError:
        return False
    if not stat.S_ISREG(st.st_mode) or st.st_size != blob.size:
        return False
    try:
        saved = json.loads(_stamp_path(local).read_text())
    except (OSError, ValueError):
        saved = None
    if (isinstance(saved, dict) and saved.get("object") == want and saved.get("size") == st.st_size
            and saved.get("mtime_ns") == st.st_mtime_ns):
        return True
    if blob.crc32c is None or _crc32c(local) != blob.crc32c:
        return False
    _write_stamp(local, want)  # same content (e.g. touched, or a new generation of the same bytes)
    return True


def _fetch(blob, url: str, local: Path) -> None:
    """Download `blob` to `local` unless the cached copy is verifiably this object (generation
    and CRC32C); a download is checked against the object's CRC32C before it replaces anything."""
    object_id = _object_id(blob)  # read now: a download may reset blob's properties
    tmp = local.with_name(f".{local.name}.{_tag()}-{threading.get_ident()}.part")
    try:
        if _cached_copy_ok(blob, local):
            return
        local.parent.mkdir(parents=True, exist_ok=True)
        clean_stale(local.parent, local.name)
        try:
            # pinned to the listed generation; the client verifies the checksum of what it got
            blob.download_to_filename(str(tmp), if_generation_match=blob.generation)
        except Exception as err:
            if isinstance(err, OSError) and err.errno is not None:
                raise  # a local write failed (disk full...): reported below
            _unlink_quietly(tmp)
            if _is_not_found(err):
                raise SbrjobError(f"{url}: file not found") from None
            raise _gcs_error(url, err) from err
        if object_id["crc32c"] is not None and _crc32c(tmp) != object_id["crc32c"]:
            _unlink_quietly(tmp)
            raise SbrjobError(f"{url}: the downloaded copy does not match the object's CRC32C; "
                              "nothing was cached, run again")
        with contextlib.suppress(FileNotFoundError):
            _stamp_path(local).unlink()  # no stamp while the file changes
        os.replace(tmp, local)
        _write_stamp(local, object_id)
    except OSError as err:
        _unlink_quietly(tmp)
        raise io_error(err, local, doing=f"caching {url} (SBRJOB_CACHE chooses another directory)") from None


def local_copy(path: str, cache_dir: str | None = None) -> str:
    """A local filesystem path for reading `path`; gs:// objects are downloaded to a cache first
    (again only when the object changed)."""
    if not is_remote(path):
        return path
    blob = _get_blob(path)
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
                _stamp_path(p).unlink()
    return str(root)


def work_dir(dest: str, cache_dir: str | None = None) -> str:
    """A local directory to write `dest` incrementally (checkpoints, TensorBoard): `dest` itself
    when local; for gs:// a local mirror of what is already there (to resume from), which the
    writer pushes back with `sync_dir(work, dest, last=...)` after each save."""
    return local_dir_copy(dest, cache_dir, missing_ok=True)
