# Two commands matter: `make demo` and `make test`. Both bootstrap what they need.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
APT_TOOLS := rsync wrk nginx
GITLAB_CI_LOCAL := .tools/node_modules/.bin/gitlab-ci-local
# Pinned: 4.74+ crash on Node 20 (FIELD_NOTES).
GITLAB_CI_LOCAL_VERSION := 4.73.0
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONDONTWRITEBYTECODE := 1

FACTORY := $(BIN)/factory
REGISTRY := registry/mlflow.db

.PHONY: demo test venv tools apt-tools registry bench clean

venv: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

# System tools (apt) that tests and benchmarks drive as real processes; each package provides the
# command of the same name. As root apt-get runs directly, otherwise through sudo (tests/test_makefile.py).
tools: apt-tools
	@test "$$($(GITLAB_CI_LOCAL) --version 2>/dev/null)" = "$(GITLAB_CI_LOCAL_VERSION)" || \
	  (mkdir -p .tools && cd .tools && npm install --silent --no-audit --no-fund gitlab-ci-local@$(GITLAB_CI_LOCAL_VERSION))

apt-tools:
	@missing=""; for t in $(APT_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq $$missing >/dev/null; \
	fi

# The example MLflow registry (sqlite + artifacts under registry/), trained and registered once.
registry: $(REGISTRY)

$(REGISTRY): examples/train.py $(STAMP)
	rm -rf registry
	$(BIN)/python examples/train.py --registry registry

# The whole factory on the example models.yaml: validate -> render -> build -> test -> manifests.
demo: venv $(REGISTRY)
	$(FACTORY) validate
	$(FACTORY) routes
	$(FACTORY) render -o build
	$(FACTORY) build --all
	$(FACTORY) test --all
	$(FACTORY) manifests --all --proxy
	$(FACTORY) summary

test: venv tools
	$(BIN)/python -m pytest -n 2 -q

# Every benchmark, each printing its side-by-side comparison (see BENCHMARKS.md); ~10 minutes.
bench: venv tools $(REGISTRY)
	$(BIN)/python -m bench.render
	$(BIN)/python -m bench.serving
	$(BIN)/python -m bench.sizing
	$(BIN)/python -m bench.proxy --duration 3 --runs 7
	$(BIN)/python -m bench.slowloris --duration 3 --runs 3

clean:
	rm -rf build factory-state registry .pytest_cache .hypothesis
