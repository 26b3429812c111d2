# Quickstart: `make demo` (text half on the bundled sample, offline) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
# Nothing in the demo or the tests may reach a model hub.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export DVC_NO_ANALYTICS := 1

.PHONY: demo test test-fast lint format bench exps setup setup-full clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# The text half only: quick to set up.
$(VENV)/.installed-base: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e .
	touch $@

# Everything: the torch stack (captioning, editing), Ray and the test tools.
$(VENV)/.installed-full: pyproject.toml | $(VENV)/bin/python
	$(BIN)/pip install -q -e ".[ml,test,ray]"
	touch $@ $(VENV)/.installed-base

setup: $(VENV)/.installed-base
setup-full: $(VENV)/.installed-full

demo: setup
	@test -d data/raw || dvc pull -q -r bundled data.dvc
	dvc repro
	alien-hotels summary
	@echo "Open reports/cluster_map.html (interactive map) and reports/clusters.md."

test: setup-full
	$(BIN)/python -m pytest

test-fast: setup-full
	$(BIN)/python -m pytest -m "not slow"

lint: setup-full
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup-full
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: setup-full
	$(BIN)/python -m benchmarks

# Compare experiments: changed params and the cluster metrics (extra dvc args: make exps ARGS=-A).
exps: setup
	alien-hotels exps $(ARGS)

# DVC-cached outputs only (`dvc checkout` or `dvc repro` brings them back); metrics/, plots/ and the
# reports tracked by git are left alone.
clean:
	rm -rf data/interim data/processed data/edited dvc_plots \
		reports/cluster_map.html reports/cluster_map.png reports/edits reports/edit_tradeoff.png
