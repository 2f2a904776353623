# AttnMel: `make demo` and `make test` are the whole set-up on a fresh clone.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATASET ?= synthetic
ROOT ?=
SWEEP ?= regularisers
RUN ?= runs/demo
ARGS ?=

ROOT_ARG := $(if $(ROOT),data.root=$(ROOT),)

.PHONY: install lint test test-precision test-slow test-browser test-slurm demo train evaluate report sweep bench bench-gpu clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	@touch $(STAMP)

lint: install
	$(BIN)/ruff check attnmel tests
	$(BIN)/lint-imports

# pytest-xdist: one worker per core (each with one torch thread, tests/conftest.py), a test file per worker so
# that module fixtures are built once; TEST_WORKERS=0 runs everything in this process (for pdb).
TEST_WORKERS ?= auto
test: install
	$(BIN)/python -m pytest -m "not slow and not browser and not slurm" -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

# The precision-sensitive tests (marker `precision`) as a CPU without bf16 runs them, then as one with bf16 units
# (emulated, so slower, where the CPU has none): `make test` covers only the kind of CPU it runs on.
test-precision: install
	ATTNMEL_BF16=off $(BIN)/python -m pytest -m "precision and not slow" -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)
	ATTNMEL_BF16=on $(BIN)/python -m pytest -m "precision and not slow" -q -n $(TEST_WORKERS) --dist loadfile $(ARGS)

test-slow: install
	$(BIN)/python -m pytest -m "slow and not slurm" -q $(ARGS)

# A single-node SLURM cluster on localhost (root: installs slurm-wlm + munge), the cluster tests, then the
# daemons stopped whatever the tests did.
SLURM_TEST_DIR ?= /tmp/attnmel-slurm
test-slurm: install
	.ci/slurm-cluster.sh install
	export SLURM_TEST_DIR=$(SLURM_TEST_DIR); .ci/slurm-cluster.sh start && \
	  SLURM_CONF=$(SLURM_TEST_DIR)/slurm.conf $(BIN)/python -m pytest -m slurm -q tests/sweep/test_sweep_slurm.py $(ARGS); \
	  rc=$$?; .ci/slurm-cluster.sh stop; exit $$rc

test-browser: install
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	$(BIN)/python -m pytest -m "browser" -q $(ARGS)

demo: install
	$(BIN)/attnmel demo --out runs/demo $(ARGS)

train: install
	$(BIN)/attnmel train --config experiments/$(DATASET).yaml $(ROOT_ARG) $(ARGS)

evaluate: install
	$(BIN)/attnmel evaluate $(RUN)

report: install
	$(BIN)/attnmel report $(RUN) --split test

sweep: install
	$(BIN)/attnmel sweep experiments/sweeps/$(SWEEP).yaml --dataset $(DATASET) $(ROOT_ARG) $(ARGS)

bench: install
	$(BIN)/python -m attnmel.bench $(ARGS)

# On a machine with a CUDA GPU: model (224 px, batch 32, fp32 vs bf16), a real train on an ISIC-sized
# generated set, and the report on 600 test images -> reports/bench/gpu.json (ARGS=--tiny: CPU smoke run).
bench-gpu: install
	$(BIN)/python -m attnmel.bench.gpu $(ARGS)

clean:
	rm -rf runs sweeps reports/bench reports/index.html .pytest_cache
