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
JOB_SERVER_DIR := $(CACHE)/flink/job-server
BEAM_VERSION := 2.77.0
# The live page's chart library and the API docs' viewer (npm), served by `beamline serve` from .cache/js.
JS_DIR := $(CACHE)/js
UPLOT_VERSION := 1.6.32
SWAGGER_UI_VERSION := 5.36.0
PYTEST_ARGS ?=

.DEFAULT_GOAL := help

.PHONY: help setup test-setup demo test test-fast test-unit lint format bench screenshot clean-state

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: $(VENV)/.installed $(CACHE)/kafka/.installed $(CACHE)/flink/.installed $(JOB_SERVER_DIR)/.attempted $(CACHE)/bin/prism $(JS_DIR)/.installed-$(UPLOT_VERSION)-$(SWAGGER_UI_VERSION) ## Create .venv; fetch Kafka and Flink jars, Prism, the page's JS (cached)

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

# Beam's Flink job server jar, tried once through Maven. Where the registry Maven uses does not serve
# it, the reason is written to UNAVAILABLE and set-up goes on: `beamline run --runner flink` then lets
# Beam fetch the jar itself, or takes BEAMLINE_FLINK_JOB_SERVER_JAR (docs/flink.md).
$(JOB_SERVER_DIR)/.attempted: infra/flink/job-server/pom.xml
	mkdir -p $(JOB_SERVER_DIR)
	if timeout 600 mvn -q -B -Dstyle.color=never -f infra/flink/job-server/pom.xml dependency:copy-dependencies \
	        -DoutputDirectory=$(CURDIR)/$(JOB_SERVER_DIR) -DincludeScope=runtime > $(JOB_SERVER_DIR)/maven.log 2>&1; then \
	    rm -f $(JOB_SERVER_DIR)/UNAVAILABLE; \
	else \
	    { date -u +%Y-%m-%dT%H:%M:%SZ; grep -m 1 ERROR $(JOB_SERVER_DIR)/maven.log; } > $(JOB_SERVER_DIR)/UNAVAILABLE; \
	    echo "setup: Beam's Flink job server jar is not available through Maven here (see $(JOB_SERVER_DIR)/UNAVAILABLE)"; \
	fi
	touch $@

$(CACHE)/bin/prism:
	mkdir -p $(CACHE)/bin
	GOBIN=$(CURDIR)/$(CACHE)/bin go install github.com/apache/beam/sdks/v2/go/cmd/prism@v$(BEAM_VERSION)

# Pinned npm packages vendored into .cache/js (no install scripts run); the browser fetches nothing elsewhere.
# Without npm the page still works, without its chart (it says so), and /docs is plain HTML.
$(JS_DIR)/.installed-$(UPLOT_VERSION)-$(SWAGGER_UI_VERSION):
	mkdir -p $(JS_DIR)
	if command -v npm >/dev/null; then \
	    npm install --prefix $(JS_DIR) --no-save --no-audit --no-fund --ignore-scripts \
	        uplot@$(UPLOT_VERSION) swagger-ui-dist@$(SWAGGER_UI_VERSION) && touch $@; \
	else echo "setup: no npm: the live page will have no chart and /docs no Swagger UI"; fi

# The browser test (tests/test_serve_page.py) drives Debian's Chromium through Playwright, which
# never downloads a browser of its own.
$(CACHE)/.chromium:
	command -v chromium >/dev/null || { \
	    if [ "$$(id -u)" = 0 ]; then apt-get update && apt-get install -y chromium; \
	    else sudo apt-get update && sudo apt-get install -y chromium; fi; }
	mkdir -p $(CACHE) && touch $@

test-setup: setup $(CACHE)/.chromium ## What `make test` needs: setup, plus Chromium for the browser test

demo: setup ## Start a local broker, produce sample events, run the inventory pipeline, query it, serve it
	$(VENV)/bin/beamline demo

test: test-setup ## Set up, then run the whole test suite (fails if no test ran)
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc

test-unit: $(VENV)/.installed ## Pure logic, the warehouse, the sandbox, in-process pipelines: no broker, Prism or Java (under a minute)
	$(PY) -m pytest -n 2 -m "not slow and not kafka and not services and not processes" $(PYTEST_ARGS); rc=$$?; \
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

screenshot: test-setup ## Refresh docs/serve-page.png from the browser test
	BEAMLINE_SCREENSHOT=$(CURDIR)/docs/serve-page.png $(PY) -m pytest -q tests/test_serve_page.py

clean-state: ## Stop the local services and delete local state (.beamline/)
	-$(VENV)/bin/beamline kafka stop
	-$(VENV)/bin/beamline flink stop
	-$(VENV)/bin/beamline prism stop
	-$(VENV)/bin/beamline workers stop
	rm -rf .beamline
