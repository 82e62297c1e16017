# superres-pipeline: the two commands a new user needs are `make run` and `make test`.
# Both create .venv when missing and install what is needed; both are idempotent.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# `make run DATE=YYYY-MM-DD N=8 SCALE=2`: empty values fall back to the DAG's defaults.
DATE   ?=
N      ?=
SCALE  ?=

.PHONY: help setup system-deps run test test-fast lint up down notify bench

help:
	@echo "make run    run the main job on the embedded defaults"
	@echo "make test   lint and run the test suite"
	@echo "make test-fast  the tests that need no JVM, browser or DAG run (the loop while working)"
	@echo "make up     start Airflow (UI on :8080), the notifier and the offline Picsum source"
	@echo "make down   stop what make up started"
	@echo "make bench  performance measurements -> benchmarks/results/latest.json (BENCH_ARGS=--help)"

$(PY):
	@$(PYTHON) -c 'import sys; v = sys.version_info[:2]; assert v == (3, 11), f"Python 3.11 is required, found {v[0]}.{v[1]}"'
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the requirements or the package metadata change.
# torch is installed first and pinned exactly, so nothing can pull the CUDA build.
$(STAMP): requirements.txt pyproject.toml | $(PY)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

system-deps:
	@scripts/system_deps.sh $(if $(WITH_BROWSER),--with-browser,)

setup: $(STAMP) system-deps

run: setup
	$(PY) -m superres.orchestration.localrun $(if $(DATE),--date "$(DATE)") $(if $(N),--n "$(N)") $(if $(SCALE),--scale "$(SCALE)")

up: setup
	$(PY) -m superres.orchestration.stack up

down:
	@if [ -x $(PY) ]; then $(PY) -m superres.orchestration.stack down; fi

notify: $(STAMP)
	$(PY) -m superres.orchestration.notify --date $(DATE)

lint: $(STAMP)
	$(PY) -m ruff check .

test: WITH_BROWSER=1
test: setup lint
	$(PY) -m pytest

# Every test that needs no JVM, no browser and no DAG run (markers spark, e2e, browser).
test-fast: setup lint
	$(PY) -m pytest -q -m "not spark and not e2e and not browser"

# `make bench [BENCH_ARGS="--images 16 --dag-n 16 64"]`: every performance measurement, one process tree.
BENCH_ARGS ?=
bench: setup
	$(PY) -m benchmarks.run $(BENCH_ARGS)
