"""Print the pinned runtime requirements from pyproject.toml for one image flavour.

  cpu  the project's dependencies as they are (tensorflow-cpu on x86_64)
  gpu  tensorflow[and-cuda] (TensorFlow's own extra: CUDA and cuDNN come as wheels)
  tpu  tensorflow-tpu (pulls libtpu) for Cloud TPU VMs: its newest release on PyPI is 2.20.0

The images install these before copying the source so the dependency layer stays cached. The
TensorFlow wheels all ship the same `tensorflow` package and must never be installed side by side.
"""

import sys
import tomllib

GPU_TENSORFLOW = "tensorflow[and-cuda]==2.21.0"
TPU_TENSORFLOW = "tensorflow-tpu==2.20.0"

path = sys.argv[1]
flavour = sys.argv[2] if len(sys.argv) > 2 else "cpu"
project = tomllib.load(open(path, "rb"))["project"]
deps = list(project["dependencies"])
others = [d for d in deps if not d.startswith("tensorflow")]
if flavour == "gpu":
    deps = others + [GPU_TENSORFLOW]
elif flavour == "tpu":
    deps = others + [TPU_TENSORFLOW]
elif flavour != "cpu":
    sys.exit(f"unknown flavour {flavour!r}: use cpu, gpu or tpu")
print("\n".join(deps))
