"""gs:// paths against a local GCS emulator (gcp-storage-emulator on 127.0.0.1, a free port),
started here and stopped after: files, atomic publishing, interrupted uploads, cached mirrors,
no credentials in logs or errors, and the whole pipeline with every output on gs://."""

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from sbrjob import storage
from sbrjob.errors import SbrjobError


RUN_BUCKET = "sbrjob-run"  # the pipeline's own bucket: per-test cleanup of BUCKET leaves it alone
REPO = Path(__file__).resolve().parents[1]




def make_tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_files_round_trip(gcs, tmp_path):
    storage.write_text(f"{gcs}/a/b.json", '{"x": 1}')
    assert storage.read_text(f"{gcs}/a/b.json") == '{"x": 1}'
    assert storage.exists(f"{gcs}/a/b.json") and storage.exists(f"{gcs}/a")
    assert not storage.exists(f"{gcs}/a/b") and not storage.exists(f"{gcs}/ab")
    assert storage.list_files(f"{gcs}/a") == ["b.json"]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(f"{gcs}/missing")
    with pytest.raises(SbrjobError, match="file not found"):
        storage.local_copy(f"{gcs}/missing")
    local = tmp_path / "f.bin"
    local.write_bytes(b"\x00" * 1000)
    storage.put_file(local, f"{gcs}/c/f.bin")
    assert storage.read_bytes(f"{gcs}/c/f.bin") == b"\x00" * 1000
    storage.remove_tree(gcs + "/a")
    assert storage.list_files(gcs) == ["c/f.bin"]


@pytest.mark.parametrize("url", ["gs://", "gs://UPPER/x", "gs://b/x", "gs://ok-bucket/a/../b"])
def test_bad_urls_are_refused(url):
    with pytest.raises(SbrjobError, match="gs://"):
        storage._split_gs(url)


def test_missing_bucket_is_a_one_line_error(gcs):
    with pytest.raises(SbrjobError, match="gs://no-such-bucket/x: storage error") as err:
        storage.list_files("gs://no-such-bucket/x")
    assert "\n" not in str(err.value)


def test_publish_replaces_whole_directory_marker_last(gcs, tmp_path, monkeypatch):
    dest = f"{gcs}/run/shards"
    storage.publish_dir(make_tree(tmp_path / "v1", {"a": "1", "old/x": "x", "manifest.json": "v1"}), dest,
                        last="manifest.json")
    assert not (tmp_path / "v1").exists()  # consumed, as locally
    order = []
    real = storage._upload
    monkeypatch.setattr(storage, "_upload", lambda p, url: (order.append(url.rsplit("/", 1)[1]), real(p, url)))
    storage.publish_dir(make_tree(tmp_path / "v2", {"a": "2", "b": "2", "manifest.json": "v2"}), dest,
                        last="manifest.json")
    assert storage.list_files(dest) == ["a", "b", "manifest.json"]  # stale old/x removed
    assert storage.read_text(f"{dest}/a") == "2" and storage.read_text(f"{dest}/manifest.json") == "v2"
    assert order[-1] == "manifest.json" and sorted(order) == ["a", "b", "manifest.json"]


def test_sync_uploads_only_what_changed(gcs, tmp_path, monkeypatch):
    work = make_tree(tmp_path / "ckpt", {"ckpt-1.index": "i1", "ckpt-1.data": "d1" * 1000, "checkpoint": "1"})
    storage.sync_dir(work, f"{gcs}/ckpt", last="checkpoint")
    assert work.exists()  # sync keeps the working directory
    uploaded = []
    real = storage._upload
    monkeypatch.setattr(storage, "_upload", lambda p, url: (uploaded.append(url.rsplit("/", 1)[1]), real(p, url)))
    (work / "ckpt-1.index").unlink()
    (work / "ckpt-1.data").unlink()
    make_tree(work, {"ckpt-2.index": "i2", "ckpt-2.data": "d2", "checkpoint": "2"})
    (work / "same-size").write_text("aa")
    storage.sync_dir(work, f"{gcs}/ckpt", last="checkpoint")
    assert sorted(uploaded) == ["checkpoint", "ckpt-2.data", "ckpt-2.index", "same-size"]
    uploaded.clear()
    (work / "same-size").write_text("bb")  # same size, other content: the CRC32C tells
    storage.sync_dir(work, f"{gcs}/ckpt", last="checkpoint")
    assert uploaded == ["same-size", "checkpoint"]
    assert storage.list_files(f"{gcs}/ckpt") == ["checkpoint", "ckpt-2.data", "ckpt-2.index", "same-size"]


KILLED_PUBLISH = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from sbrjob import storage
    real, calls = storage._upload, []
    def upload(path, url):
        calls.append(url)
        if len(calls) == 3:
            os._exit(9)  # killed mid-upload: no cleanup, no finally
        real(path, url)
    storage._upload = upload
    storage._WORKERS = 1  # sequential, so exactly two new files are up when it dies
    storage.publish_dir(Path(sys.argv[1]), sys.argv[2], last="manifest.json")
""")


def test_killed_upload_leaves_no_trusted_output(gcs, tmp_path):
    dest = f"{gcs}/run/data"
    storage.publish_dir(make_tree(tmp_path / "v1", {f"part-{i}": "old" for i in range(3)} | {"manifest.json": "v1"}),
                        dest, last="manifest.json")
    new = make_tree(tmp_path / "v2", {f"part-{i}": f"new{i}" for i in range(6)} | {"manifest.json": "v2"})
    proc = subprocess.run([sys.executable, "-c", KILLED_PUBLISH, str(new), dest], env=os.environ.copy(),
                          capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert proc.returncode == 9, proc.stderr
    files = storage.list_files(dest)
    assert "manifest.json" not in files  # the old marker went first, the new one never came
    assert sum(storage.read_text(f"{dest}/{f}").startswith("new") for f in files) == 2  # it died midway
    # a later run publishes cleanly over the debris
    storage.publish_dir(new, dest, last="manifest.json")
    assert storage.read_text(f"{dest}/manifest.json") == "v2"
    assert storage.list_files(dest) == sorted([f"part-{i}" for i in range(6)] + ["manifest.json"])


def test_local_dir_copy_mirrors_and_downloads_only_changes(gcs, tmp_path):
    src = f"{gcs}/run/shards/train"
    storage.write_text(f"{src}/part-0", "zero")
    storage.write_text(f"{src}/sub/part-1", "one")
    root = Path(storage.local_dir_copy(src))
    assert (root / "part-0").read_text() == "zero" and (root / "sub/part-1").read_text() == "one"
    first = (root / "part-0").stat().st_mtime_ns
    os.utime(root / "part-0", ns=(first - 10**9, first - 10**9))
    assert storage.local_dir_copy(src) == str(root)
    assert (root / "part-0").stat().st_mtime_ns == first - 10**9  # unchanged object: not downloaded again
    storage.write_text(f"{src}/part-0", "ZERO")
    storage.remove_tree(f"{src}/sub")
    storage.local_dir_copy(src)
    assert (root / "part-0").read_text() == "ZERO"  # new generation fetched
    assert not (root / "sub/part-1").exists()  # gone remotely, gone locally
    assert storage.local_copy(f"{src}/part-0") == str(root / "part-0")
    with pytest.raises(SbrjobError, match="nothing found"):
        storage.local_dir_copy(f"{gcs}/nothing")
    assert os.listdir(storage.local_dir_copy(f"{gcs}/nothing", missing_ok=True)) == []


def test_credentials_are_never_logged(gcs, caplog, capsys):
    """A real bearer token goes to the server but into no log line, output or error message."""
    from google.cloud import storage as gcs_lib
    from google.oauth2.credentials import Credentials

    secret = "ya29.SECRET-TOKEN-abc123"
    caplog.set_level(logging.DEBUG)
    storage._client = gcs_lib.Client(project="p", credentials=Credentials(token=secret))
    storage._client_key = os.environ["STORAGE_EMULATOR_HOST"]
    try:
        storage.write_text(f"{gcs}/k", "v")
        assert storage.read_text(f"{gcs}/k") == "v"
        with pytest.raises(SbrjobError) as err:
            storage.list_files("gs://no-such-bucket/x")
    finally:
        storage._client = None
    out = capsys.readouterr()
    assert secret not in caplog.text + out.out + out.err + str(err.value)
    # error texts from the auth layer are scrubbed too
    msg = str(storage._gcs_error("gs://b/k", RuntimeError(f"401 Authorization: Bearer {secret} refused")))
    assert "SECRET" not in msg and "<redacted>" in msg
    assert "SECRET" not in storage.redact(f'{{"access_token": "{secret}", "private_key": "-----BEGIN"}}')


def test_download_to_gcs_is_verified_and_idempotent(gcs, tmp_path):
    import hashlib
    import zipfile

    from sbrjob.download import download

    archive = tmp_path / "ml-1m.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name in ("ratings.dat", "movies.dat", "users.dat"):
            zf.writestr(f"ml-1m/{name}", f"{name}\n")
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    out = download("movielens-1m", f"{gcs}/data", url=archive.as_uri(), sha256=sha)
    assert out == f"{gcs}/data/ml-1m"
    assert storage.list_files(out) == [".sbrjob-download.json", "movies.dat", "ratings.dat", "users.dat"]
    assert storage.read_text(f"{out}/ratings.dat") == "ratings.dat\n"
    before = _generation(f"{out}/ratings.dat")
    archive.unlink()  # a second call must not even try to fetch
    assert download("movielens-1m", f"{gcs}/data", url=archive.as_uri(), sha256=sha) == out
    assert _generation(f"{out}/ratings.dat") == before


# ---------------------------------------------------------------- the whole job on gs://


@pytest.fixture(scope="module")
def gcs_run(emulator, tmp_path_factory):
    """prepare + export of configs/tiny.yaml with output_dir on gs://, run once for the module
    from an empty working directory (anything written locally by mistake would show there)."""
    pytest.importorskip("sbrjob.export")
    from typer.testing import CliRunner

    from sbrjob.cli import app

    storage._gcs().create_bucket(RUN_BUCKET)
    cwd = tmp_path_factory.mktemp("cwd")
    run = f"gs://{RUN_BUCKET}/runs/tiny"
    args = ["--config", "tiny", "--set", f"output_dir={run}", "--set", "train.epochs=1"]
    old = os.getcwd()
    os.chdir(cwd)
    try:
        def invoke(*stage):
            res = CliRunner().invoke(app, [*stage, *args])
            assert res.exit_code == 0, f"{stage}: {res.output}\n{res.exception!r}"
            return res
        invoke("prepare")
        invoke("export")
        yield run, cwd, invoke
    finally:
        os.chdir(old)


def _generation(url: str) -> int:
    bucket, key = storage._split_gs(url)
    return storage._gcs().bucket(bucket).get_blob(key).generation


def test_prepare_and_export_write_only_to_gcs(gcs_run):
    run, cwd, invoke = gcs_run
    files = storage.list_files(run)
    for expected in ("data/manifest.json", "data/train.parquet", "data/valid.parquet", "data/test.parquet",
                     "data/items.parquet", "data/stats.json", "shards/train/manifest.json",
                     "shards/valid/manifest.json", "shards/test/manifest.json"):
        assert expected in files, (expected, files)
    manifest = json.loads(storage.read_text(f"{run}/shards/train/manifest.json"))
    assert sum(f.startswith("shards/train/") and f.endswith(".tfrecord") for f in files) == manifest["shards"]
    assert list(cwd.iterdir()) == []
    # current outputs on gs:// are trusted and reused, not rewritten
    before = {f: _generation(f"{run}/{f}") for f in ("data/manifest.json", "shards/train/manifest.json")}
    invoke("export")
    assert {f: _generation(f"{run}/{f}") for f in before} == before


def test_train_and_evaluate_write_only_to_gcs(gcs_run):
    run, cwd, invoke = gcs_run
    invoke("train")
    invoke("evaluate")
    files = storage.list_files(run)
    for expected in ("metrics.json", "eval_test.json", "config.yaml"):
        assert expected in files, (expected, files)
    assert any(f.startswith("checkpoints/last/") and f.endswith(".index") for f in files)
    assert any(f.startswith("tensorboard/") for f in files)
    metrics = json.loads(storage.read_text(f"{run}/metrics.json"))
    assert 0 <= metrics["test"]["recall@20"] <= 1
    assert json.loads(storage.read_text(f"{run}/eval_test.json"))["events"] == metrics["test"]["events"]
    assert list(cwd.iterdir()) == []


# ---------------------------------------------------------------- the gs:// cache: per user, verified


def test_default_cache_is_per_user_and_private(tmp_path, monkeypatch):
    monkeypatch.delenv("SBRJOB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = storage.cache_root()
    assert root == tmp_path / "xdg" / "sbrjob" and root.is_dir()
    assert (root.stat().st_mode & 0o777) == 0o700
    os.chmod(root, 0o777)  # loosened by someone: tightened again
    assert (storage.cache_root().stat().st_mode & 0o777) == 0o700
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert storage.cache_root() == tmp_path / "home" / ".cache" / "sbrjob"
    monkeypatch.setenv("SBRJOB_CACHE", str(tmp_path / "mine"))  # the explicit choice still wins
    assert storage.cache_root() == tmp_path / "mine" and (tmp_path / "mine").is_dir()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to chown")
def test_default_cache_owned_by_someone_else_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("SBRJOB_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    (tmp_path / "sbrjob").mkdir(mode=0o777)
    os.chown(tmp_path / "sbrjob", 65534, 65534)
    with pytest.raises(SbrjobError, match="belongs to another user; set SBRJOB_CACHE"):
        storage.cache_root()


def test_cached_copy_is_checked_against_generation_and_crc32c(gcs, monkeypatch):
    from google.cloud.storage import Blob

    url = f"{gcs}/in/ratings.dat"
    storage.write_text(url, "1::1::5::978300760\n")
    local = Path(storage.local_copy(url))
    downloads = []
    real = Blob.download_to_filename
    monkeypatch.setattr(Blob, "download_to_filename", lambda self, *a, **k: (downloads.append(1), real(self, *a, **k))[1])
    assert storage.local_copy(url) == str(local) and not downloads  # stamp and file agree: trusted
    local.write_text("9::9::9::978300760\n")  # changed in place, same size: the CRC32C tells
    assert storage.local_copy(url) == str(local) and len(downloads) == 1
    assert local.read_text() == "1::1::5::978300760\n"
    stamp = local.with_name(f".{local.name}.generation")
    stamp.write_text(json.dumps({"forged": True}))  # a stamp that does not match: the content decides
    assert storage.local_copy(url) == str(local) and len(downloads) == 1  # same bytes: no download
    assert json.loads(stamp.read_text())["object"]["crc32c"]
    storage.write_text(url, "2::2::5::978300760\n")  # a new generation: fetched
    assert Path(storage.local_copy(url)).read_text() == "2::2::5::978300760\n" and len(downloads) == 2


def test_a_download_that_does_not_match_the_crc32c_is_not_cached(gcs, monkeypatch):
    from google.cloud.storage import Blob

    url = f"{gcs}/in/bad.dat"
    storage.write_text(url, "the real content\n")

    def corrupt(self, filename, **kwargs):
        Path(filename).write_text("corrupted bytes!\n")

    monkeypatch.setattr(Blob, "download_to_filename", corrupt)
    with pytest.raises(SbrjobError, match="does not match the object's CRC32C; nothing was cached"):
        storage.local_copy(url)
    local = storage._mirror_path(url, None)
    assert not local.exists() and not [p for p in local.parent.iterdir() if p.name.endswith(".part")]


# ---------------------------------------------------------------- write failures, debris


@pytest.fixture
def small_fs(tmp_path):
    """A real 64 KiB tmpfs (skipped when mounting is not permitted)."""
    where = tmp_path / "fs"
    where.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)], capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); run as root or in a privileged container")
    yield where
    subprocess.run(["umount", "-l", str(where)], check=False)


def test_disk_full_is_one_line_and_leaves_the_old_file(small_fs):
    target = small_fs / "out" / "metrics.json"
    storage.write_text(str(target), "old")
    with pytest.raises(SbrjobError) as err:
        storage.write_bytes(str(target), b"x" * (1 << 20))
    msg = str(err.value)
    assert msg.startswith(f"{target}: no space left on device [ENOSPC] while writing; free space") and "\n" not in msg
    assert target.read_text() == "old" and os.listdir(target.parent) == ["metrics.json"]
    local = small_fs / "big.bin"
    with pytest.raises(SbrjobError, match=r"dest\.bin: no space left on device \[ENOSPC\]"):
        big = Path(small_fs.parent / "big.bin")
        big.write_bytes(b"y" * (1 << 20))
        storage.put_file(big, str(small_fs / "dest.bin"))
    assert not local.exists() and sorted(os.listdir(small_fs)) == ["out"]
    # a stage writing into its staging directory: nothing published, no staging left
    with pytest.raises(SbrjobError, match=r"/fs/data: no space left on device \[ENOSPC\] while writing"), \
            storage.staging_dir(str(small_fs / "data")) as tmp:
        (tmp / "train.parquet").write_bytes(b"z" * (1 << 20))
        storage.publish_dir(tmp, str(small_fs / "data"))
    assert sorted(os.listdir(small_fs)) == ["out"]


def test_read_only_output_is_one_line(small_fs):
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    with pytest.raises(SbrjobError, match=r"read-only file system \[EROFS\] while creating the staging directory; "
                                          r"choose a writable output_dir"), storage.staging_dir(str(small_fs / "run" / "data")):
        pass
    with pytest.raises(SbrjobError, match=r"read-only file system \[EROFS\]"):
        storage.write_text(str(small_fs / "x.json"), "{}")
    with pytest.raises(SbrjobError, match=r"read-only file system \[EROFS\]"):
        storage.create_exclusive(str(small_fs / ".lock"), "me")


def test_debris_of_dead_writers_is_cleaned_and_live_ones_kept(tmp_path):
    dead, me, host = 2**22 + 12345, os.getpid(), storage._HOST  # dead: above any pid_max, no such process
    other = "0" * 8 if host != "0" * 8 else "1" * 8  # another machine sharing the filesystem
    dirs = (f".data.tmp-{dead}-{host}-abc", f".data.tmp-{me}-{host}-live", f".data.old-{dead}-{host}",
            ".data.tmp-oldstyle", f".data.tmp-{dead}-{other}-theirs")
    for name in dirs:
        (tmp_path / name).mkdir()
    for name in (f".metrics.json.{dead}-{host}-x.tmp", f".metrics.json.{me}-{host}-y.tmp", ".data.lock", "data.txt"):
        (tmp_path / name).write_text("x")
    old = (tmp_path / ".data.tmp-oldstyle").stat().st_mtime - 2 * 86400
    os.utime(tmp_path / ".data.tmp-oldstyle", (old, old))
    with storage.staging_dir(str(tmp_path / "data")) as staging:
        assert staging.name.startswith(f".data.tmp-{me}-{host}-")
    storage.write_text(str(tmp_path / "metrics.json"), "{}")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [f".data.tmp-{me}-{host}-live", f".data.tmp-{dead}-{other}-theirs", f".metrics.json.{me}-{host}-y.tmp",
         ".data.lock", "data.txt", "metrics.json"])
    theirs = tmp_path / f".data.tmp-{dead}-{other}-theirs"  # another machine's: removed once a day old
    os.utime(theirs, (old, old))
    assert storage.clean_stale(tmp_path, "data") == [theirs.name]


def test_failed_publish_puts_the_previous_output_back(tmp_path, monkeypatch):
    dest = tmp_path / "data"
    dest.mkdir()
    (dest / "manifest.json").write_text("v1")
    new = make_tree(tmp_path / "new", {"manifest.json": "v2"})
    real = os.replace

    def failing(src, dst):
        if Path(src) == new:
            raise OSError(28, "No space left on device")
        return real(src, dst)

    monkeypatch.setattr(storage.os, "replace", failing)
    with pytest.raises(SbrjobError, match=r"no space left on device \[ENOSPC\] while publishing"):
        storage.publish_dir(new, str(dest))
    assert (dest / "manifest.json").read_text() == "v1"
