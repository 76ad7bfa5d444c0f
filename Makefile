# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates (or reuses) the virtual environment in .venv by itself.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test lint bench lock system-deps

# pyproject.toml declares the supported ranges; constraints.txt pins what is installed here.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/toolflows demo

test: $(STAMP) system-deps
	$(BIN)/ruff check flows blocks deployments tests bench
	$(BIN)/python -m pytest

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
	$(BIN)/ruff check flows blocks deployments tests bench
	$(BIN)/ruff format --check flows blocks deployments tests bench

bench: $(STAMP)
	$(BIN)/python -m bench

# Re-pin constraints.txt to the newest versions within pyproject's ranges.
lock:
	rm -rf $(VENV)-lock && $(PYTHON) -m venv $(VENV)-lock
	$(VENV)-lock/bin/python -m pip install --quiet --disable-pip-version-check ".[test]"
	{ sed -n '/^#/p' constraints.txt; $(VENV)-lock/bin/python -m pip freeze --exclude toolflows; } > constraints.new
	mv constraints.new constraints.txt && rm -rf $(VENV)-lock
