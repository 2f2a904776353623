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

.PHONY: install lint test test-slow test-browser demo train evaluate report sweep bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,lint]'
	@touch $(STAMP)

lint: install
	$(BIN)/ruff check attnmel tests
	$(BIN)/lint-imports

test: install
	$(BIN)/python -m pytest -m "not slow and not browser" -q $(ARGS)

test-slow: install
	$(BIN)/python -m pytest -m "slow" -q $(ARGS)

test-browser: install
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)
	$(BIN)/python -m pytest -m "browser" -q $(ARGS)

demo: install
	$(BIN)/attnmel demo --out runs/demo $(ARGS)

train: install
	$(BIN)/attnmel train --config experiments/$(DATASET).yaml $(ROOT_ARG) $(ARGS)

evaluate: install
	$(BIN)/attnmel evaluate $(RUN) --split test

report: install
	$(BIN)/attnmel report $(RUN) --split test

sweep: install
	$(BIN)/attnmel sweep experiments/sweeps/$(SWEEP).yaml --dataset $(DATASET) $(ROOT_ARG) $(ARGS)

bench: install
	$(BIN)/python -m attnmel.bench $(ARGS)

clean:
	rm -rf runs sweeps reports/bench reports/index.html .pytest_cache
