"""Shared fixtures: quiet TensorFlow, and paths to the real data in ../shared (skipped when absent)."""

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

from sbrjob import storage, use_tf_env

use_tf_env()  # TensorFlow as the CLI starts it

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def slow_cli(delay: float) -> str:
    """A `python -c` script running the sbrjob CLI with each training block `delay` s slower, so a
    test has time to kill it mid-epoch (the math is unchanged)."""
    return f"""
import sys, time
from sbrjob import train
init = train.Trainer.__init__
def slow_init(self, *args, **kwargs):
    init(self, *args, **kwargs)
    block = self.train_block
    def slow_block(*a):
        time.sleep({delay})
        return block(*a)
    self.train_block = slow_block
train.Trainer.__init__ = slow_init
from sbrjob.cli import run
sys.argv = ["sbrjob"] + sys.argv[1:]
run()
"""


def kill_9_when(script: str, args: list, env: dict, ready: Callable[[], bool], timeout: float = 240) -> None:
    """Run `python -c script ARGS` in the repository and kill -9 it as soon as `ready()` holds
    (polled every 20 ms); fails when the process ends before that."""
    proc = subprocess.Popen([sys.executable, "-c", script, *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None and not ready():
            time.sleep(0.02)
        assert proc.poll() is None, f"finished or died before the kill: {proc.stderr.read()[-2000:]}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()


def shared_path(*parts: str) -> Path:
    """A file under ../shared/data, or skip the test with a message when it is not there."""
    p = SHARED_DATA.joinpath(*parts)
    if not p.exists():
        pytest.skip(f"real data not available: {p} (see ../shared/data/README.md)")
    return p


def chain_sessions(n_sessions, n_items, seed):
    """Sessions walking a fixed ring i -> i+1: the next item is fully determined by the current one."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 9, n_sessions)
    session = np.repeat(np.arange(n_sessions), lengths)
    start = np.repeat(rng.integers(0, n_items, n_sessions), lengths)
    pos = np.arange(len(session)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    return session, ((start + pos) % n_items).astype(np.int32)


def _two_logical_cpus() -> None:
    """Split the CPU into 2 logical devices so MirroredStrategy tests run 2 real replicas.

    Must happen before TensorFlow initialises its devices, hence here at collection time.
    Single-device code keeps using /CPU:0 as before.
    """
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2)


_two_logical_cpus()


def load_split(data_dir, split: str):
    """One prepared split, read (and checksum-verified) the way every stage reads it."""
    from sbrjob.runs import Prepared

    return Prepared.open(str(data_dir)).load_split(split)


def load_items(data_dir):
    from sbrjob.runs import Prepared

    return Prepared.open(str(data_dir)).load_items()


def split_evaluators(cfg, valid_dir=None, test_dir=None) -> dict:
    """The evaluators `stages.train_stage` hands to `train.fit`: accuracy-only valid, full test."""
    from sbrjob.evaluate import Evaluator

    out = {}
    if valid_dir is not None:
        out["valid"] = Evaluator(str(valid_dir), cfg.eval, beyond_accuracy=False)
    if test_dir is not None:
        out["test"] = Evaluator(str(test_dir), cfg.eval)
    return out


# ---------------------------------------------------------------- a local GCS emulator


BUCKET = "sbrjob-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.WARNING)
    port = _free_port()
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    saved = {k: os.environ.get(k) for k in ("STORAGE_EMULATOR_HOST", "SBRJOB_CACHE")}
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    os.environ["SBRJOB_CACHE"] = str(tmp_path_factory.mktemp("gcs-cache"))
    yield server
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def gcs(emulator):
    """An empty bucket for each test."""
    storage.remove_tree(f"gs://{BUCKET}")
    return f"gs://{BUCKET}"


# ---------------------------------------------------------------- the CLI in-process


class CliResult:
    def __init__(self, exit_code: int, stdout: str, output: str, error: str = ""):
        self.exit_code, self.stdout, self.output, self.error = exit_code, stdout, output, error


def cli(*args) -> CliResult:
    """The CLI in-process as `cli.run` ends it: an SbrjobError is exit 2 with one `error:` line.
    `stdout` is the command's result; `output` is stdout and stderr (stage lines) together."""
    from typer.testing import CliRunner

    from sbrjob.cli import app
    from sbrjob.errors import SbrjobError

    result = CliRunner().invoke(app, [str(a) for a in args])
    if isinstance(result.exception, SbrjobError):
        error = f"error: {result.exception}"
        return CliResult(2, result.stdout, f"{result.output}{error}\n", error)
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return CliResult(result.exit_code, result.stdout, result.output)

