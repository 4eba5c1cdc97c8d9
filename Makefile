# Beamline developer commands. `make help` lists them.
#
# Everything fetched (Python packages, Kafka jars, Prism) lands in .venv/ and
# .cache/; stamp files make a second `make setup` do no network work.

SHELL := /bin/bash
PYTHON_BOOTSTRAP ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CACHE := .cache
BENCH_VENV := $(CACHE)/bench-venv
BEAM_VERSION := 2.77.0
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help setup demo test test-fast test-unit lint format bench clean-state

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: $(VENV)/.installed $(CACHE)/kafka/.installed $(CACHE)/flink/.installed $(CACHE)/bin/prism ## Create .venv; fetch Kafka and Flink jars and Prism (cached)

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-confluent.txt setup.py
	test -x $(PY) || $(PYTHON_BOOTSTRAP) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	$(PY) -m pip install -q --no-deps -e . --config-settings editable_mode=compat
	touch $@

$(CACHE)/kafka/.installed: infra/kafka/pom.xml
	rm -rf $(CACHE)/kafka/libs
	mvn -q -B -f infra/kafka/pom.xml dependency:copy-dependencies \
	    -DoutputDirectory=$(CURDIR)/$(CACHE)/kafka/libs -DincludeScope=runtime
	touch $@

$(CACHE)/flink/.installed: infra/flink/pom.xml
	rm -rf $(CACHE)/flink/libs
	mvn -q -B -f infra/flink/pom.xml dependency:copy-dependencies \
	    -DoutputDirectory=$(CURDIR)/$(CACHE)/flink/libs -DincludeScope=runtime
	touch $@

$(CACHE)/bin/prism:
	mkdir -p $(CACHE)/bin
	GOBIN=$(CURDIR)/$(CACHE)/bin go install github.com/apache/beam/sdks/v2/go/cmd/prism@v$(BEAM_VERSION)

demo: setup ## Start a local broker, produce sample events, run the inventory pipeline, query it
	$(VENV)/bin/beamline demo

test: setup ## Set up, then run the whole test suite (fails if no test ran)
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-unit: $(VENV)/.installed ## Pure logic, the warehouse, the sandbox, in-process pipelines: no broker, Prism or Java (under a minute)
	$(PY) -m pytest -n 2 -m "not slow and not kafka and not services" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-fast: setup ## Run the fast tier only (skips tests marked slow)
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

lint: $(VENV)/.installed ## ruff (lint + format), the import layers (import-linter) and the types (mypy)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/mypy

format: setup ## Apply ruff formatting and safe fixes
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# The streaming benchmark's Quix Streams baseline lives in a virtualenv of its own:
# quixstreams pins confluent-kafka below the version .venv pins.
$(BENCH_VENV)/.installed: requirements-bench.txt
	rm -rf $(BENCH_VENV)
	$(PYTHON_BOOTSTRAP) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install -q --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install -q -r requirements-bench.txt
	touch $@

bench: setup ## Run the benchmarks and rewrite bench/RESULTS.md (installs requirements-bench.txt first)
	@$(MAKE) --no-print-directory $(BENCH_VENV)/.installed || \
	    echo "bench: could not install requirements-bench.txt; the Quix Streams baseline will be skipped"
	$(PY) -m bench

clean-state: ## Stop the local broker and delete local state (.beamline/)
	-$(VENV)/bin/beamline kafka stop
	-$(VENV)/bin/beamline flink stop
	rm -rf .beamline
