# Two commands matter: `make demo` and `make test`. Both bootstrap what they need.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
UV_INSTALL := $(BIN)/uv pip install --quiet --compile-bytecode --native-tls --python $(BIN)/python
APT_TOOLS := rsync wrk nginx git
GITLAB_CI_LOCAL := .tools/node_modules/.bin/gitlab-ci-local
# Pinned: 4.74+ crash on Node 20 (FIELD_NOTES).
GITLAB_CI_LOCAL_VERSION := 4.73.0
export BENTOML_DO_NOT_TRACK := true
export MLFLOW_DISABLE_TELEMETRY := true
export PYTHONDONTWRITEBYTECODE := 1

# Docker: an engine already on the default socket (a laptop's) is used as it is; otherwise the project runs
# its own on a socket of its own (never the default one, which other tools probe), with a registry on
# 127.0.0.1:5000. `make engine` installs and starts them as root; elsewhere image tests skip, saying why.
ENGINE_SOCKET := /run/model-factory/docker.sock
DOCKER_HOST ?= $(shell [ -S /var/run/docker.sock ] && echo unix:///var/run/docker.sock || echo unix://$(ENGINE_SOCKET))
export DOCKER_HOST
ENGINE_APT := docker.io docker-registry debootstrap
ENGINE_COMMANDS := dockerd docker-registry debootstrap
POLICY_RC := /usr/sbin/policy-rc.d
# Where demo and tests push (models.yaml names the production registry).
LOCAL_IMAGE_REGISTRY := 127.0.0.1:5000/model-factory

FACTORY := $(BIN)/factory
REGISTRY := registry/mlflow.db

.PHONY: demo test venv tools apt-tools engine apt-engine registry bench clean

venv: $(STAMP)

# pip installs only the pinned `uv`; uv installs the lock (faster than pip: bench/venvs.py; the same uv builds the
# serving venvs and images). --native-tls: the system's CA store, as pip trusts it, so TLS-inspecting proxies work.
# --compile-bytecode, as pip does: with PYTHONDONTWRITEBYTECODE (above) nothing would ever write the .pyc files.
# A venv that `python -m venv` left half made (Debian without python3.11-venv: no pip in it) is removed, not reused.
$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found: the factory" \
	  "runs on Python 3.11; install it (Debian: apt-get install python3.11 python3.11-venv; elsewhere: uv python" \
	  "install 3.11) or name one: make PYTHON=/path/to/python3.11" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); exit 1; }
	$(BIN)/pip install --quiet "$$(grep '^uv==' requirements.lock)"
	$(UV_INSTALL) -r requirements.lock
	$(UV_INSTALL) --no-deps -e .
	touch $@

# System tools (apt) that tests and benchmarks drive as real processes; each package provides the
# command of the same name. As root apt-get runs directly, otherwise through sudo (tests/test_makefile.py).
# npm keeps its cache and logs in ~/.npm: where HOME cannot be written it fails, saying only that its logs could not be.
tools: apt-tools
	@test "$$($(GITLAB_CI_LOCAL) --version 2>/dev/null)" = "$(GITLAB_CI_LOCAL_VERSION)" || \
	  (mkdir -p .tools && cd .tools && npm install --loglevel=error --no-audit --no-fund \
	    gitlab-ci-local@$(GITLAB_CI_LOCAL_VERSION)) || \
	  { echo "make tools: npm could not install gitlab-ci-local $(GITLAB_CI_LOCAL_VERSION) into .tools/ (its error is" \
	    "above); where HOME is not writable, set npm_config_cache to a writable folder" >&2; exit 1; }

apt-tools:
	@missing=""; for t in $(APT_TOOLS); do command -v $$t >/dev/null || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  if [ -n "$$SUDO" ] && ! command -v sudo >/dev/null; then \
	    echo "make apt-tools: missing:$$missing; not root and no sudo: as root run" \
	      "apt-get install -y$$missing" >&2; exit 1; fi; \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 update -qq && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq $$missing >/dev/null; \
	fi

# Engine, registry and base image (built once from Debian packages, reused while its recipe is unchanged).
engine: venv
	@if [ "$$(id -u)" = 0 ] && [ "$(DOCKER_HOST)" = "unix://$(ENGINE_SOCKET)" ]; then \
	  $(MAKE) -s --no-print-directory apt-engine; fi
	$(BIN)/python -m factory.engine up $$PPID

# Installing docker.io must not start Debian's dockerd on the default socket (its postinst runs
# `invoke-rc.d docker start`): a policy-rc.d answering 101 (action forbidden) holds every service start
# during the install, then whatever policy was there before is put back (tests/test_makefile.py).
apt-engine:
	@missing=""; for t in $(ENGINE_COMMANDS); do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing: $(ENGINE_APT)"; \
	  if [ -e $(POLICY_RC) ]; then mv $(POLICY_RC) $(POLICY_RC).model-factory; fi; \
	  printf '#!/bin/sh\n# model-factory: no service starts while the engine packages install\nexit 101\n' \
	    > $(POLICY_RC) && chmod 755 $(POLICY_RC); \
	  env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 update -qq && \
	  env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 install -y -qq --no-install-recommends \
	    $(ENGINE_APT) >/dev/null; status=$$?; \
	  rm -f $(POLICY_RC); \
	  if [ -e $(POLICY_RC).model-factory ]; then mv $(POLICY_RC).model-factory $(POLICY_RC); fi; \
	  exit $$status; \
	fi

# The example MLflow registry (sqlite + artifacts under registry/), trained and registered once.
registry: $(REGISTRY)

$(REGISTRY): examples/train.py $(STAMP)
	rm -rf registry
	$(BIN)/python examples/train.py --registry registry

# The whole factory on the example models.yaml: validate -> render -> build -> test -> manifests.
demo: export FACTORY_IMAGE_REGISTRY ?= $(LOCAL_IMAGE_REGISTRY)
demo: venv engine $(REGISTRY)
	$(FACTORY) validate
	$(FACTORY) routes
	$(FACTORY) render -o build
	$(FACTORY) build --all --proxy
	$(FACTORY) test --all
	$(FACTORY) manifests --all --proxy
	$(FACTORY) summary

# As root (CI) image tests must run: an engine that cannot start fails them instead of skipping.
test: venv tools engine
	FACTORY_REQUIRE_ENGINE=$$( [ "$$(id -u)" = 0 ] && echo 1 ) $(BIN)/python -m pytest -n 2 -q

# Every benchmark, each printing its side-by-side comparison (see BENCHMARKS.md); ~15 minutes.
bench: venv tools $(REGISTRY)
	$(BIN)/python -m bench.render
	$(BIN)/python -m bench.serving
	$(BIN)/python -m bench.latency
	$(BIN)/python -m bench.native
	$(BIN)/python -m bench.row_costs
	$(BIN)/python -m bench.flavors
	$(BIN)/python -m bench.compiled
	$(BIN)/python -m bench.conversions
	$(BIN)/python -m bench.isolation
	$(BIN)/python -m bench.sizing
	$(BIN)/python -m bench.early_stop
	$(BIN)/python -m bench.load_client
	$(BIN)/python -m bench.native_bound
	$(BIN)/python -m bench.proxy --duration 3 --runs 7
	$(BIN)/python -m bench.slowloris --duration 3 --runs 3
	$(BIN)/python -m bench.proxy_memory

clean:
	-test -x $(BIN)/python && $(BIN)/python -m factory.engine down
	rm -rf build factory-state registry .pytest_cache .hypothesis
