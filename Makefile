# sbrjob: `make demo` runs the whole job on the embedded synthetic sample; `make test` runs the tests.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN ?= runs/tiny

.PHONY: install test smoke demo bench clean

install: $(BIN)/sbrjob

$(BIN)/sbrjob: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[dev]"
	touch $@

test: install
	$(BIN)/python -m pytest -q

# The CLI end to end on a tiny CPU shard, asserting on its outputs.
smoke: install
	bash scripts/smoke.sh

demo: install
	$(BIN)/sbrjob train --config tiny
	$(BIN)/sbrjob evaluate --config tiny
	$(BIN)/sbrjob baselines --config tiny
	$(BIN)/sbrjob recommend --run $(RUN) --items 161,115,254 -k 5

bench: install
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf runs .pytest_cache
