# Quickstart: `make demo` (text half on the bundled sample, offline) and `make test`.
VENV ?= .venv
PYTHON ?= python3
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
# Nothing in the demo or the tests may reach a model hub.
export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export DVC_NO_ANALYTICS := 1

.PHONY: demo test test-fast lint format bench exps setup setup-full setup-browser setup-wordnet clean image image-check check-bytes

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

# Debian's chromium for tests/test_plots_browser.py (the `dvc plots` pages and the map, opened
# offline), unless a Chromium is on PATH: apt-get as root, else through sudo. (Ubuntu's apt
# chromium is a snap shim that does not run in containers: put any chromium on PATH instead.)
BROWSERS := chromium chromium-browser google-chrome
setup-browser:
	@for b in $(BROWSERS); do command -v $$b >/dev/null 2>&1 && exit 0; done; \
	if [ "$$(id -u)" = 0 ]; then sudo=; \
	elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	else echo "setup-browser: no Chromium ($(BROWSERS)); as root: apt-get install chromium" >&2; exit 1; fi; \
	command -v apt-get >/dev/null 2>&1 || { \
		echo "setup-browser: no Chromium ($(BROWSERS)) and no apt-get: install one by hand" >&2; exit 1; }; \
	echo "setup-browser: installing chromium (apt-get)"; \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

# WordNet's data files for the lemma tests against NLTK (tests/test_wordnet.py; they skip
# without it): Debian's wordnet-base, no NLTK download. Best effort: never fails the target.
setup-wordnet:
	@[ -d /usr/share/wordnet ] || [ -d "$$HOME/nltk_data/corpora/wordnet" ] || { \
	if [ "$$(id -u)" = 0 ]; then sudo=; elif command -v sudo >/dev/null 2>&1; then sudo=sudo; \
	else echo "setup-wordnet: no WordNet data; the WordNet comparison tests will skip" >&2; exit 0; fi; \
	apt="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get -y -q"; \
	command -v apt-get >/dev/null 2>&1 && echo "setup-wordnet: installing wordnet-base (apt-get)" && \
	{ $$apt install wordnet-base >/dev/null || { $$apt update >/dev/null && $$apt install wordnet-base >/dev/null; }; } \
	|| echo "setup-wordnet: no WordNet data; the WordNet comparison tests will skip" >&2; }

test: setup-full setup-browser setup-wordnet
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

# The text half's outputs under several OpenBLAS kernels (features, clusters, map): the same md5s
# or exit 1. Sets OPENBLAS_CORETYPE per run itself; tests and CI leave the machine's setting alone.
check-bytes: setup
	$(BIN)/python -m benchmarks.check_bytes

# The container (README "GPU runs: the container"; deploy/image.sh): `make image` builds IMAGE
# with docker where a daemon answers, else buildah; BASE= another base (default: the Dockerfile's
# CUDA one); the CA bundle and PIP_CONF (a pip config file) go in as build secrets, not into the
# image (CA_BUNDLE= passes none). `make image-check` (root; installs buildah and mmdebstrap when
# missing) builds on a Debian trixie base made with mmdebstrap unless BASE= is given, then runs
# the demo inside the image on a fresh clone and compares the metrics with git's.
IMAGE ?=
BASE ?=
PIP_CONF ?=
CA_BUNDLE ?= $(wildcard /etc/ssl/certs/ca-certificates.crt)
IMAGE_ENV = IMAGE='$(IMAGE)' BASE='$(BASE)' PIP_CONF='$(PIP_CONF)' CA_BUNDLE='$(CA_BUNDLE)'
image:
	$(IMAGE_ENV) bash deploy/image.sh build

image-check:
	$(IMAGE_ENV) bash deploy/image.sh check

# Compare experiments: changed params and the cluster metrics (extra dvc args: make exps ARGS=-A).
exps: setup
	alien-hotels exps $(ARGS)

# DVC-cached outputs only (`dvc checkout` or `dvc repro` brings them back); metrics/, plots/ and the
# reports tracked by git are left alone.
clean:
	rm -rf data/interim data/processed data/edited dvc_plots \
		reports/cluster_map.html reports/cluster_map.png reports/edits reports/edit_tradeoff.png
