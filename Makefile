# Two commands set everything up on a fresh machine: `make demo` and `make test`.
# Each creates (or reuses) the virtual environment in .venv by itself.

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

export PREFECT_SERVER_ANALYTICS_ENABLED ?= false

.PHONY: demo test lint bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/toolflows demo

test: $(STAMP)
	$(BIN)/ruff check flows blocks deployments tests bench
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check flows blocks deployments tests bench
	$(BIN)/ruff format --check flows blocks deployments tests bench

bench: $(STAMP)
	$(BIN)/python -m bench
