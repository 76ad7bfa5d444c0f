# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates (or reuses) the virtual environment in .venv by itself.

VENV ?= .venv
LOWEST_VENV ?= .venv-lowest
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
LOWEST_STAMP := $(LOWEST_VENV)/.installed-stamp

# The fast suite: the pure core and the flow tests that need one local Prefect API and
# nothing else (no browser, PostgreSQL, worker or benchmark): runs, retries, the paid-once
# cache, limits, artifacts, events, deployments, served cancels, result storage (local,
# fsspec, S3 through prefect-aws), the httpx/httpcore transport and a run's suspension.
FAST_TESTS := tests/core tests/test_flow_providers.py tests/test_paid_runs.py \
	tests/test_method_flows.py tests/test_batch.py tests/test_reporting.py \
	tests/test_pipelines.py tests/test_storage.py tests/test_s3.py \
	tests/test_download_pipeline.py tests/test_hostile_runs.py \
	tests/test_suspend_fallback.py

# Test files run in parallel, the longest first (tests/conftest.py). Most of the long ones
# wait on jobs and servers more than they compute, so more workers than cores pay off.
TEST_WORKERS ?= 4
PARALLEL := -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test test-lowest lint bench lock system-deps

# pyproject.toml declares the supported ranges; constraints.txt pins what is installed here.
# The wheels are downloaded once into $(VENV)/wheelhouse and installed from there:
# tests/test_install.py installs the built toolflows wheel into a fresh venv from
# the same folder (pip keeps no cache of its own here).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip download --quiet --disable-pip-version-check -d $(VENV)/wheelhouse \
	  -r constraints.txt setuptools wheel
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-index \
	  --find-links $(VENV)/wheelhouse -c constraints.txt -e ".[test]"
	touch $@

# constraints-lowest.txt pins the lowest versions of those ranges, for test-lowest.
$(LOWEST_STAMP): pyproject.toml constraints-lowest.txt
	test -x $(LOWEST_VENV)/bin/python || $(PYTHON) -m venv $(LOWEST_VENV)
	$(LOWEST_VENV)/bin/python -m pip install --quiet --disable-pip-version-check \
	  -c constraints-lowest.txt -e ".[test]"
	touch $@

demo: $(STAMP)
	$(BIN)/toolflows demo

test: $(STAMP) system-deps
	$(BIN)/ruff check flows blocks deployments tests bench testkit
	$(BIN)/python -m pytest $(PARALLEL)

# The fast suite against the lowest supported versions (constraints-lowest.txt).
test-lowest: $(LOWEST_STAMP)
	$(LOWEST_VENV)/bin/python -m pytest $(PARALLEL) $(FAST_TESTS)

# The browser test drives Debian's Chromium; the scale-out test runs PostgreSQL.
system-deps:
	@missing=""; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else \
	    echo "missing system packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check flows blocks deployments tests bench testkit
	$(BIN)/ruff format --check flows blocks deployments tests bench testkit

bench: $(STAMP)
	$(BIN)/python -m bench

# Re-pin constraints.txt to the newest versions within pyproject's ranges.
lock:
	rm -rf $(VENV)-lock && $(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install --quiet --disable-pip-version-check ".[test]"
	{ sed -n '/^#/p' constraints.txt; $(VENV)-lock/bin/python -m pip freeze --exclude toolflows; } > constraints.new
	mv constraints.new constraints.txt && rm -rf $(VENV)-lock
