"""`sbrjob download`: against a local HTTP server on 127.0.0.1 serving small archives we make here."""

import hashlib
import http.server
import io
import stat
import threading
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from sbrjob import download as dl
from sbrjob.cli import app
from sbrjob.errors import SbrjobError

ML1M_FILES = {
    "ml-1m/ratings.dat": b"1::1193::5::978300760\n1::661::3::978302109\n",
    "ml-1m/movies.dat": "1::Toy Story (1995)::Animation|Children's|Comedy\n".encode("latin-1"),
    "ml-1m/users.dat": b"1::F::1::10::48067\n",
    "ml-1m/README": b"readme\n",
}


def make_zip(entries: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return buf.getvalue()


@pytest.fixture
def server():
    """Serves `server.files[path] = bytes` on 127.0.0.1 at a free port; counts GETs per path."""
    files: dict[str, bytes] = {}
    hits: dict[str, int] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits[self.path] = hits.get(self.path, 0) + 1
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"

    class S:
        def serve(self, path: str, body: bytes) -> str:
            files[path] = body
            return base + path

    s = S()
    s.hits = hits
    yield s
    httpd.shutdown()
    httpd.server_close()


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def test_download_extracts_verified_archive_once(server, tmp_path):
    archive = make_zip(ML1M_FILES)
    url = server.serve("/ml-1m.zip", archive)
    out = dl.download("movielens-1m", str(tmp_path / "data"), url=url, sha256=sha(archive))
    assert out == str(tmp_path / "data" / "ml-1m")
    for name, body in ML1M_FILES.items():
        assert (tmp_path / "data" / name).read_bytes() == body
    # idempotent: the second call finds the marker and fetches nothing
    mtime = (tmp_path / "data/ml-1m/ratings.dat").stat().st_mtime_ns
    assert dl.download("movielens-1m", str(tmp_path / "data"), url=url, sha256=sha(archive)) == out
    assert server.hits["/ml-1m.zip"] == 1
    assert (tmp_path / "data/ml-1m/ratings.dat").stat().st_mtime_ns == mtime
    # nothing but the dataset folder is left in `to` (no temp dirs)
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["ml-1m"]


def test_checksum_mismatch_extracts_nothing(server, tmp_path):
    url = server.serve("/ml-1m.zip", make_zip(ML1M_FILES))
    # without --sha256 the official checksum is expected: our small archive must be refused
    with pytest.raises(SbrjobError, match="checksum mismatch"):
        dl.download("movielens-1m", str(tmp_path), url=url)
    assert list(tmp_path.iterdir()) == []


def test_failed_update_keeps_previous_copy(server, tmp_path):
    good = make_zip(ML1M_FILES)
    dl.download("movielens-1m", str(tmp_path), url=server.serve("/a.zip", good), sha256=sha(good))
    with pytest.raises(SbrjobError, match="checksum mismatch"):
        dl.download("movielens-1m", str(tmp_path), url=server.serve("/b.zip", b"corrupt"), sha256="0" * 64)
    assert (tmp_path / "ml-1m/ratings.dat").read_bytes() == ML1M_FILES["ml-1m/ratings.dat"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml-1m"]


@pytest.mark.parametrize("evil", ["../evil.txt", "ml-1m/../../evil.txt", "/tmp/evil-abs.txt", "C:/evil.txt"])
def test_path_traversal_archive_is_refused(server, tmp_path, evil):
    archive = make_zip({**ML1M_FILES, evil: b"pwned"})
    url = server.serve("/evil.zip", archive)
    to = tmp_path / "to"
    with pytest.raises(SbrjobError, match="unsafe path"):
        dl.download("movielens-1m", str(to), url=url, sha256=sha(archive))
    assert not list(tmp_path.rglob("evil*"))
    assert not Path("/tmp/evil-abs.txt").exists()
    assert not (to / "ml-1m").exists()


def test_symlink_member_is_refused(server, tmp_path):
    archive = make_zip(ML1M_FILES, links={"ml-1m/link": "/etc/passwd"})
    url = server.serve("/link.zip", archive)
    with pytest.raises(SbrjobError, match="link or special file"):
        dl.download("movielens-1m", str(tmp_path), url=url, sha256=sha(archive))
    assert not (tmp_path / "ml-1m").exists()


def test_wrong_layout_is_refused(server, tmp_path):
    archive = make_zip({"other/ratings.dat": b"x"})
    url = server.serve("/x.zip", archive)
    with pytest.raises(SbrjobError, match="lacks ml-1m/ratings.dat"):
        dl.download("movielens-1m", str(tmp_path), url=url, sha256=sha(archive))
    assert list(tmp_path.iterdir()) == []


def test_http_error_is_one_line(server, tmp_path):
    with pytest.raises(SbrjobError, match="download failed") as err:
        dl.download("movielens-1m", str(tmp_path), url=server.serve("/x", b"") + "missing")
    assert "\n" not in str(err.value)


def test_cli_download_and_yoochoose_instructions(server, tmp_path):
    archive = make_zip(ML1M_FILES)
    url = server.serve("/ml-1m.zip", archive)
    runner = CliRunner()
    res = runner.invoke(app, ["download", "movielens-1m", "--to", str(tmp_path), "--url", url, "--sha256", sha(archive)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() == str(tmp_path / "ml-1m")
    # YOOCHOOSE: instructions, exit code 3 while the file is missing, the directory once it is there
    res = runner.invoke(app, ["download", "yoochoose", "--to", str(tmp_path / "yc")])
    assert res.exit_code == 3
    assert "RecSys Challenge 2015" in res.output and f"{tmp_path}/yc/yoochoose-clicks.dat" in res.output
    (tmp_path / "yc").mkdir()
    (tmp_path / "yc/yoochoose-clicks.dat").write_text("1,2014-04-07T10:51:09.277Z,214536502,0\n")
    res = runner.invoke(app, ["download", "yoochoose", "--to", str(tmp_path / "yc")])
    assert res.exit_code == 0 and res.stdout.strip() == str(tmp_path / "yc")


@pytest.mark.parametrize("extra, match", [
    ({"ml-1m/users.dat/inner": b"x"}, (r"archive uses 'ml-1m/users\.dat' both as a file and as a directory "
                                       r"\('ml-1m/users\.dat/inner'\)")),
    ({"ml-1m": b"a file where the folder goes"}, r"archive uses 'ml-1m' both as a file and as a directory"),
])
def test_a_name_used_as_file_and_directory_is_refused(server, tmp_path, extra, match):
    archive = make_zip({**ML1M_FILES, **extra})
    url = server.serve("/clash.zip", archive)
    with pytest.raises(SbrjobError, match=match + r".*nothing extracted") as err:
        dl.download("movielens-1m", str(tmp_path / "to"), url=url, sha256=sha(archive))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "to" / "ml-1m").exists()


def test_a_member_twice_is_refused(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in ML1M_FILES.items():
            zf.writestr(name, data)
        with pytest.warns(UserWarning, match="Duplicate name"):
            zf.writestr("ml-1m/ratings.dat", b"9::9::9::9\n")
    archive = buf.getvalue()
    url = server.serve("/twice.zip", archive)
    with pytest.raises(SbrjobError, match=r"'ml-1m/ratings\.dat' appears twice in the archive"):
        dl.download("movielens-1m", str(tmp_path / "to"), url=url, sha256=sha(archive))
    assert not (tmp_path / "to" / "ml-1m").exists()
