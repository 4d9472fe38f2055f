"""sbrjob: session-based next-item recommenders (GRU4Rec) trained and evaluated as batch jobs."""

import os

__version__ = "0.1.0"

# How sbrjob starts TensorFlow (set before it loads; a user's own values win): its C++ start-up
# chatter (CPU feature notes) is noise, real errors still show; oneDNN kernels, which TF turns on
# by itself only on some CPUs (AVX-512), make the numbers change with the machine and log past that
# level. TF_ENABLE_ONEDNN_OPTS=1 takes their speed (~14 %/step there, docs/train.md).
TF_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "TF_ENABLE_ONEDNN_OPTS": "0"}


def use_tf_env() -> None:
    """Set TF_ENV in this process's environment, keeping what the user has set; call before TF loads."""
    for name, value in TF_ENV.items():
        os.environ.setdefault(name, value)
