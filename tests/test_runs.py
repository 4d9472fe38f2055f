"""Runs you can trust: a trained run is bound to its config and inputs, one writer at a time, and
every command that uses a run reads the run's own config (issue "Runs you can trust")."""

from __future__ import annotations

import ast
import fcntl
import gzip
import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sbrjob import runs, stages
from sbrjob.config import load_config
from sbrjob.errors import SbrjobError
from sbrjob.runs import Run

from conftest import cli

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")


def snapshot(root: Path) -> dict:
    """sha256 and inode of every file under data/ and shards/: what a rewrite would change."""
    out = {}
    for sub in ("data", "shards"):
        for p in sorted((root / sub).rglob("*")):
            if p.is_file():
                out[str(p.relative_to(root))] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_ino)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """configs/tiny trained for one epoch from a MovieLens-format copy of the sample (inputs we can edit)."""
    from sbrjob.sample import sample_dir

    root = tmp_path_factory.mktemp("runs")
    raw = root / "raw"
    raw.mkdir()
    for name in ("ratings.dat.gz", "movies.dat"):
        shutil.copy(Path(sample_dir()) / name, raw / name)
    sets = ["data.format=movielens", f"data.path={raw / 'ratings.dat.gz'}", f"data.items_path={raw / 'movies.dat'}",
            "train.epochs=1"]
    out = root / "run"
    result = cli("train", "-c", "tiny", "--set", f"output_dir={out}", *[a for s in sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    return out, sets


@pytest.fixture
def run_copy(trained, tmp_path):
    out, sets = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns(".lock"))
    return copy, [f"output_dir={copy}", *sets]


def set_args(sets: list[str]) -> list[str]:
    return [a for s in sets for a in ("--set", s)]


def recommendations(run: Path) -> list[str]:
    result = cli("recommend", "--run", run, "--items", "161,115", "-k", "5", "--json")
    assert result.exit_code == 0, result.output
    return [r["item_id"] for r in json.loads(result.stdout)["recommendations"]]


# ---------------------------------------------------------------- stages never rewrite a trained run


def test_evaluate_with_a_disagreeing_config_is_refused_and_changes_nothing(run_copy):
    run, sets = run_copy
    before, recs = snapshot(run), recommendations(run)
    result = cli("evaluate", "-c", "tiny", *set_args(sets + ["filter.min_item_support=40"]))
    assert result.exit_code == 2
    assert "filter.min_item_support: 2 -> 40" in result.output and "--run" in result.output
    assert snapshot(run) == before and recommendations(run) == recs
    # the run named by --run uses its own config; eval keys may change
    result = cli("evaluate", "--run", run, "--set", "eval.ties=standard")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["ties"] == "standard" and snapshot(run) == before


def test_train_with_another_session_gap_is_refused_before_writing(run_copy):
    run, sets = run_copy
    before, recs = snapshot(run), recommendations(run)
    result = cli("train", "-c", "tiny", *set_args(sets + ["sessions.gap=86400"]))
    assert result.exit_code == 2
    assert "sessions.gap: None -> 86400.0" in result.output and "--fresh" in result.output
    assert snapshot(run) == before and recommendations(run) == recs
    for command in ("prepare", "export"):  # no stage rewrites the run's data or shards
        assert cli(command, "-c", "tiny", *set_args(sets + ["sessions.gap=86400"])).exit_code == 2
    assert cli("train", "-c", "tiny", *set_args(sets), "--reexport").exit_code == 2
    assert snapshot(run) == before


def test_model_shape_change_is_refused_with_one_line(run_copy):
    run, sets = run_copy
    result = cli("train", "-c", "tiny", *set_args(sets + ["model.layers=[64]"]))
    assert result.exit_code == 2 and "model.layers: [32] -> [64]" in result.output


def test_fresh_moves_the_old_run_aside_and_starts_anew(run_copy):
    run, sets = run_copy
    old_metrics = (run / "metrics.json").read_text()
    result = cli("train", "-c", "tiny", *set_args(sets + ["sessions.gap=86400"]), "--fresh")
    assert result.exit_code == 0, result.output
    (attic,) = (run / "attic").iterdir()
    assert (attic / "metrics.json").read_text() == old_metrics and (attic / "checkpoints").is_dir()
    assert runs.Run(str(run)).saved_config().sessions.gap == 86400
    assert json.loads((run / "metrics.json").read_text())["config"]["sessions"]["gap"] == 86400


def test_a_finished_run_is_a_no_op_that_says_so(run_copy):
    run, sets = run_copy
    stamp = (run / "metrics.json").stat().st_mtime_ns
    result = cli("train", "-c", "tiny", *set_args(sets))
    assert result.exit_code == 0, result.output
    assert f"run {run} is complete: test MRR@20" in result.output and "resuming" not in result.output
    assert (run / "metrics.json").stat().st_mtime_ns == stamp


def test_inputs_count_by_content_not_by_path(run_copy, tmp_path):
    run, sets = run_copy
    ratings = Path(next(s for s in sets if s.startswith("data.path="))[len("data.path="):])
    # the same content at a new path: the run is still the same run
    moved = tmp_path / "moved.dat.gz"
    shutil.copy(ratings, moved)
    same = [s if not s.startswith("data.path=") else f"data.path={moved}" for s in sets]
    result = cli("train", "-c", "tiny", *set_args(same))
    assert result.exit_code == 0 and "is complete" in result.output, result.output
    # other content at the same path (half the users gone): refused, naming the key and file
    lines = gzip.decompress(ratings.read_bytes()).splitlines(keepends=True)
    moved.write_bytes(gzip.compress(b"".join(lines[: len(lines) // 2])))
    before = snapshot(run)
    result = cli("train", "-c", "tiny", *set_args(same))
    assert result.exit_code == 2 and f"data.path: the content of {moved} differs" in result.output
    assert snapshot(run) == before


def test_untrained_run_is_reprepared_when_its_input_content_changes(tmp_path):
    from sbrjob.sample import sample_dir

    ratings = tmp_path / "ratings.dat.gz"
    shutil.copy(Path(sample_dir()) / "ratings.dat.gz", ratings)
    cfg = load_config("tiny", [f"output_dir={tmp_path / 'run'}", "data.format=movielens", f"data.path={ratings}"])
    first, written = stages.prepare_stage(cfg)
    assert written and not stages.prepare_stage(cfg)[1]  # current: kept
    os.utime(ratings, ns=(time.time_ns(), time.time_ns()))  # touched, same content: still current
    assert not stages.prepare_stage(cfg)[1]
    lines = gzip.decompress(ratings.read_bytes()).splitlines(keepends=True)
    ratings.write_bytes(gzip.compress(b"".join(lines[::2])))
    second, written = stages.prepare_stage(cfg)
    assert written and second.digest != first.digest and second.manifest["splits"] != first.manifest["splits"]


# ---------------------------------------------------------------- one name for a run


def test_commands_name_a_run_by_run_dir_or_by_its_config(run_copy, monkeypatch):
    run, sets = run_copy
    monkeypatch.chdir(run.parent)  # a relative run directory, as `make demo` and the README use
    relative = cli("evaluate", "--run", run.name, "--checkpoint", "last")
    assert relative.exit_code == 0, relative.output
    assert runs.find_checkpoint(Run(run.name), "last") == f"{run.name}/checkpoints/last/" + \
        Path(runs.find_checkpoint(Run(str(run)), "last")).name
    by_run = cli("evaluate", "--run", run, "--checkpoint", "best")
    by_config = cli("evaluate", "-c", "tiny", *set_args(sets))
    assert by_run.exit_code == by_config.exit_code == 0, by_run.output + by_config.output
    assert json.loads(by_run.stdout) == json.loads(by_config.stdout)
    assert cli("baselines", "--run", run).exit_code == 0
    result = cli("evaluate", "--run", run.parent / "nothing")
    assert result.exit_code == 2 and "config.yaml: not found" in result.output
    assert cli("evaluate").exit_code == 2


def test_readme_commands_work_in_order_on_the_tiny_config(tmp_path):
    """The README's stage commands, as written, with the tiny config in place of MovieLens."""
    text = (REPO / "README.md").read_text()
    block = text.split("## The job in one command per stage", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    out = tmp_path / "movielens"
    commands = []
    for line in block.strip().splitlines():
        words = shlex.split(line.split("  #", 1)[0])
        assert words[0] == "sbrjob", line
        if words[1] == "download":  # needs the network; tested against a local server in test_download
            continue
        words = [w.replace("runs/movielens", str(out)) for w in words[1:]]
        fixed = []
        for w in words:  # the real data paths become the tiny sample's
            if w.startswith(("data.path=", "data.items_path=")):
                fixed.pop()
                continue
            fixed.append(w)
        if "--config" in fixed:
            i = fixed.index("--config")
            fixed[i + 1:i + 2] = ["tiny", "--set", f"output_dir={out}", "--set", "train.epochs=1"]
        if "--trials" in fixed:
            fixed[fixed.index("--trials") + 1] = "2"
        commands.append(fixed)
    assert [c[0] for c in commands] == ["train", "evaluate", "baselines", "recommend", "export-model", "tune"]
    for words in commands:
        if words[0] == "recommend":
            words[words.index("--items") + 1] = "161, Synthetic Movie 115, 254"
        result = cli(*words)
        assert result.exit_code == 0, f"{' '.join(words)}: {result.output[-2000:]}"
    assert (out / "eval_test.json").exists() and (out / "comparison.md").exists()
    assert (out / "saved_model").is_dir() and (out / "tune" / "best.yaml").exists()


# ---------------------------------------------------------------- one writer per run


SLOW_TRAIN = r"""
import sys, time
from sbrjob import train
block = train.Trainer._block
init = train.Trainer.__init__
def slow_init(self, *a, **k):
    init(self, *a, **k)
    fn = self.train_block
    self.train_block = lambda *b: (time.sleep(0.2), fn(*b))[1]
train.Trainer.__init__ = slow_init
from sbrjob.cli import run
sys.argv = ["sbrjob"] + sys.argv[1:]
run()
"""


def lock_is_held(path: Path) -> bool:
    if not path.exists():
        return False
    with open(path) as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def test_a_second_process_on_a_run_in_use_is_refused_at_once(tmp_path):
    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "-c", SLOW_TRAIN, "train", "-c", "tiny", "--set", f"output_dir={out}"],
                             cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not lock_is_held(out / ".lock") and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.05)
        assert lock_is_held(out / ".lock"), first.stderr.read() if first.poll() is not None else "no lock"
        for extra in ([], ["--set", "train.lr=0.05"]):  # same config, and another one
            second = subprocess.run([sys.executable, "-m", "sbrjob", "train", "-c", "tiny", "--set",
                                     f"output_dir={out}", *extra], cwd=REPO, env=ENV, capture_output=True,
                                    text=True, timeout=120)
            assert second.returncode == 2, second.stderr
            assert re.search(rf"error: {re.escape(str(out))} is in use: `sbrjob train` \(pid {first.pid} ",
                             second.stderr), second.stderr
            assert "Traceback" not in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert first.poll() is None  # the first run goes on undisturbed
    finally:
        first.kill()
        first.wait()
    # a killed holder leaves no stale lock behind (the kernel drops fcntl locks)
    assert not lock_is_held(out / ".lock")
    assert cli("prepare", "-c", "tiny", "--set", f"output_dir={out}").exit_code == 0


@pytest.fixture
def preconditions(monkeypatch):
    """The emulator ignores `ifGenerationMatch`; teach it the one GCS rule the lock relies on:
    an upload with ifGenerationMatch=0 fails with 412 when the object exists."""
    from http import HTTPStatus

    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    upload = objects._multipart_upload

    def guarded(request, response, storage):
        if request.query.get("ifGenerationMatch") == ["0"]:
            name = request.query.get("name", [request.data["meta"].get("name")])[0]
            try:
                storage.get_file_obj(request.params["bucket_name"], name)
            except NotFound:
                pass
            else:
                response.status = HTTPStatus.PRECONDITION_FAILED
                return None
        return upload(request, response, storage)

    monkeypatch.setattr(objects, "_multipart_upload", guarded)


def test_gs_lock_is_a_precondition_object_with_a_documented_override(gcs, preconditions):
    run = Run(f"{gcs}/locked-run")
    from sbrjob import storage

    assert storage.create_exclusive(f"{gcs}/x", "a") and not storage.create_exclusive(f"{gcs}/x", "b")
    assert storage.read_text(f"{gcs}/x") == "a"

    assert storage.create_exclusive(run.lock_path, json.dumps({"command": "train", "pid": 1, "host": "elsewhere",
                                                                "since": "2026-01-01T00:00:00"}))
    with pytest.raises(SbrjobError, match=r"is in use: `sbrjob train` \(pid 1 on elsewhere.*--break-lock"):
        with run.lock("train"):
            pass
    with run.lock("train", break_lock=True):  # the stale lock of a killed job is removed
        assert json.loads(storage.read_text(run.lock_path))["pid"] == os.getpid()
    assert not storage.exists(run.lock_path)  # released on exit


# ---------------------------------------------------------------- the training loop and its hooks


def test_a_hook_stops_training_and_the_run_counts_as_complete(tmp_path):
    calls = []

    def stop_after_first(epoch, record):
        calls.append(epoch)
        return "enough" if epoch == 1 else None

    cfg = load_config("tiny", [f"output_dir={tmp_path / 'run'}", "train.epochs=3"])
    metrics, complete = stages.train_stage(cfg, on_epoch_end=stop_after_first)
    assert not complete and calls == [1] and [e["epoch"] for e in metrics["epochs"]] == [1]
    assert metrics["stopped"] == "enough" and metrics["status"] == "done" and metrics["test"]["events"] > 0
    again, complete = stages.train_stage(cfg, on_epoch_end=stop_after_first)
    assert complete and calls == [1] and again["epochs"] == metrics["epochs"]


def test_early_stopping_hook_counts_epochs_without_improvement():
    hook = stages.early_stopping("mrr@20", patience=2)
    values = [0.1, 0.3, 0.2, 0.25, 0.29]
    stops = [hook(e + 1, {"valid": {"mrr@20": v}}) for e, v in enumerate(values)]
    assert stops[:3] == [None, None, None] and "no better valid mrr@20 for 2 epoch(s)" in stops[3]
    assert stages.early_stopping("mrr@20", 1)(1, {"train_loss": 1.0}) is None  # no validation: never stops


# ---------------------------------------------------------------- the import graph


def _imports(path: Path) -> set[str]:
    """sbrjob modules a module imports, at any depth of its code (function-level imports count too)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sbrjob"):
            if node.module == "sbrjob":
                out |= {f"sbrjob.{a.name}" for a in node.names}
            else:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("sbrjob")}
    return out


def test_no_import_cycle_and_the_training_loop_imports_no_stage():
    pkg = REPO / "sbrjob"
    graph = {f"sbrjob.{p.stem}": {m for m in _imports(p) if (pkg / f"{m.split('.')[-1]}.py").exists()
                                  or m.startswith("sbrjob.sample")}
             for p in pkg.glob("*.py")}
    graph = {k: {m for m in v if m in graph} - {k} for k, v in graph.items()}
    seen, stack = set(), []

    def visit(node):
        if node in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(node):] + [node]))
        if node in seen:
            return
        stack.append(node)
        for m in graph[node]:
            visit(m)
        stack.pop()
        seen.add(node)

    for node in graph:
        visit(node)
    stage_modules = {"sbrjob.stages", "sbrjob.prepare", "sbrjob.export", "sbrjob.evaluate", "sbrjob.baselines",
                     "sbrjob.tune", "sbrjob.cli"}
    assert not graph["sbrjob.train"] & stage_modules, graph["sbrjob.train"]
    assert not graph["sbrjob.evaluate"] & {"sbrjob.train", "sbrjob.stages"}
