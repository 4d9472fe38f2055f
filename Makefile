# sbrjob: `make demo` runs the whole job on the embedded synthetic sample; `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/tiny
IMAGE ?= sbrjob:latest
ARGS ?= train --config tiny

.PHONY: install test test-beam lint smoke demo bench gpu-bench docker-build docker-run docker-ci clean

install: $(BIN)/sbrjob

$(BIN)/sbrjob: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

test: install
	$(BIN)/python -m pytest -q

# The Beam tests (tests/test_beam.py) in their own venv: apache-beam[gcp] pins protobuf<7 and
# pyarrow<26 (pyproject's `beam` extra), so it does not share the main venv's resolution.
BEAM_VENV ?= .venv-beam
$(BEAM_VENV)/bin/pytest: pyproject.toml
	$(PY) -m venv $(BEAM_VENV)
	$(BEAM_VENV)/bin/pip install -q --upgrade pip
	$(BEAM_VENV)/bin/pip install -q -e ".[dev,beam]"
	touch $@

test-beam: $(BEAM_VENV)/bin/pytest
	$(BEAM_VENV)/bin/python -m pytest -q tests/test_beam.py tests/test_beam_runner.py

lint: install
	$(BIN)/ruff check sbrjob tests benchmarks scripts

# The CLI end to end on a tiny CPU shard, asserting on its outputs.
smoke: install
	bash scripts/smoke.sh

demo: install
	$(BIN)/sbrjob train --config tiny
	$(BIN)/sbrjob evaluate --run $(RUN)
	$(BIN)/sbrjob baselines --run $(RUN)
	$(BIN)/sbrjob recommend --run $(RUN) --items 161,115,254 -k 5

# Every benchmark with its default setting; the figures in BENCHMARKS.md come from these.
# Full-scale YOOCHOOSE prepare needs `$(BIN)/python benchmarks/gen_yoochoose.py /tmp/yoochoose-clicks-synth.dat` first.
bench: install
	$(BIN)/python benchmarks/bench_prepare.py --cases ml1m
	$(BIN)/python benchmarks/bench_export.py
	$(BIN)/python benchmarks/bench_train.py --quick
	$(BIN)/python benchmarks/bench_evaluate.py

# Training speed in the GPU image (docker/Dockerfile.gpu, built if missing) within 5 minutes: one
# JSON line to benchmarks/results/train_gpu.json. Without a GPU: `make gpu-bench GPU=0` (CPU).
gpu-bench:
	GPU=$(or $(GPU),auto) bash scripts/gpu_bench.sh

# The CPU image (docker/Dockerfile): Docker when an engine answers, else podman with a locally
# bootstrapped debian:bookworm base (see scripts/container_ci.sh). GPU: docker/Dockerfile.gpu.
docker-build:
	IMAGE=$(IMAGE) bash scripts/container_ci.sh build

# e.g. make docker-run ARGS="train --config movielens --set data.path=gs://BUCKET/ml-1m/ratings.dat"
docker-run:
	IMAGE=$(IMAGE) bash scripts/container_ci.sh run $(ARGS)

# What CI runs: build, then `--help` and `train --config tiny` in the image, asserting on the output.
docker-ci: install
	IMAGE=$(IMAGE) bash scripts/container_ci.sh ci

clean:
	rm -rf runs .pytest_cache
