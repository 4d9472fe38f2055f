"""Which tf.distribute strategy runs the job: the same command everywhere, the platform decides.

`train.strategy: auto` picks TPUStrategy when a TPU is configured (TPU_NAME, or a TPU resolver
finds one), MultiWorkerMirroredStrategy when TF_CONFIG lists more than one worker,
MirroredStrategy with more than one GPU, else the default strategy (one CPU or GPU).
"""

from __future__ import annotations

import json
import logging
import os

import tensorflow as tf

from sbrjob.errors import SbrjobError

log = logging.getLogger(__name__)


def _tf_config() -> dict:
    raw = os.environ.get("TF_CONFIG", "")
    if not raw:
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as err:
        raise SbrjobError(f"TF_CONFIG: not valid JSON ({err})") from None


def worker_count() -> int:
    cluster = _tf_config().get("cluster", {})
    return len(cluster.get("worker", [])) + len(cluster.get("chief", []))


def is_chief() -> bool:
    """True on the worker that writes checkpoints, metrics and summaries (the only one without TF_CONFIG)."""
    task = _tf_config().get("task", {})
    if not task:
        return True
    cluster = _tf_config().get("cluster", {})
    if "chief" in cluster:
        return task.get("type") == "chief"
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0


def task_id() -> str:
    task = _tf_config().get("task", {})
    return f"{task.get('type', 'worker')}_{task.get('index', 0)}"


def _tpu_configured() -> bool:
    return bool(os.environ.get("TPU_NAME") or os.environ.get("TPU_WORKER_HOSTNAMES")
                or os.path.exists("/dev/accel0") or os.path.exists("/dev/vfio/0"))


def choose(kind: str = "auto") -> str:
    """The strategy kind `auto` resolves to on this machine."""
    if kind != "auto":
        return kind
    if _tpu_configured():
        return "tpu"
    if worker_count() > 1:
        return "multi_worker"
    if len(tf.config.list_logical_devices("GPU")) > 1:
        return "mirrored"
    return "default"


_made: dict[str, tf.distribute.Strategy] = {}


def make_strategy(kind: str = "auto") -> tuple[tf.distribute.Strategy, str]:
    """(strategy, resolved kind). Mirrored uses every GPU, or every logical CPU when there is no GPU.

    One strategy per kind per process: a second MirroredStrategy over the same devices would reuse
    the first one's collective keys (a crash in `tune`, which trains several models in a process).
    """
    kind = choose(kind)
    if kind not in _made:
        _made[kind] = _new_strategy(kind)
    return _made[kind], kind


def _new_strategy(kind: str) -> tf.distribute.Strategy:
    if kind == "default":
        return tf.distribute.get_strategy()
    if kind == "mirrored":
        devices = tf.config.list_logical_devices("GPU") or tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in devices])
    if kind == "multi_worker":
        if worker_count() < 1:
            raise SbrjobError("train.strategy multi_worker: TF_CONFIG does not list any workers")
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "tpu":
        try:
            # "local" = the TPU attached to this TPU VM (an empty name would query GCE metadata instead)
            resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=os.environ.get("TPU_NAME") or "local")
            tf.config.experimental_connect_to_cluster(resolver)
            tf.tpu.experimental.initialize_tpu_system(resolver)
        except (ValueError, tf.errors.OpError) as err:
            raise SbrjobError(f"train.strategy tpu: no TPU reachable ({str(err).splitlines()[0][:200]})") from None
        return tf.distribute.TPUStrategy(resolver)
    raise SbrjobError(f"train.strategy: unknown strategy {kind!r}")
