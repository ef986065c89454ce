# ddbpipe development tasks. Everything runs inside .venv and node_modules/, which the
# targets below create on first use and refresh when pyproject.toml or package-lock.json change.
#
#   make demo    export a 50,000-item sample table from DynamoDB Local, then verify it
#   make test    ruff, mypy and pytest against DynamoDB Local and moto's S3 server
#   make lint    ruff and mypy only
#   make bench   run every benchmarks/*.py script
#   make clean   remove .venv, node_modules, demo-out and caches

PYTHON ?= python3
NPM ?= npm
VENV ?= .venv
BIN := $(VENV)/bin

PY_STAMP := $(VENV)/.ddbpipe-installed
NPM_STAMP := node_modules/.ddbpipe-installed

# Paths that exist (git does not keep empty folders, e.g. benchmarks/ before its first script).
LINT_PATHS := $(wildcard pipeline cli tests tools benchmarks)
# mypy cannot follow the editable install's import hook (pipeline/ is installed as ddbpipe),
# so it checks the package through a tree of links named as it is installed.
TYPECHECK_DIR := build/typecheck
MYPY := rm -rf $(TYPECHECK_DIR) && mkdir -p $(TYPECHECK_DIR)/ddbpipe \
	&& ln -s $(CURDIR)/pipeline/* $(TYPECHECK_DIR)/ddbpipe/ \
	&& ln -s $(CURDIR)/cli $(TYPECHECK_DIR)/ddbpipe/cli \
	&& cd $(TYPECHECK_DIR) && $(CURDIR)/$(BIN)/mypy --config-file $(CURDIR)/pyproject.toml -p ddbpipe
BENCHMARKS := $(sort $(wildcard benchmarks/*.py))
PYTEST_ARGS ?=

# The demo, tests and benchmarks run only against local services: never pass a real AWS
# profile, credentials or endpoint from the caller's environment to anything make starts.
unexport AWS_PROFILE AWS_DEFAULT_PROFILE AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY \
	AWS_SESSION_TOKEN AWS_SECURITY_TOKEN AWS_ENDPOINT_URL AWS_ENDPOINT_URL_DYNAMODB \
	AWS_ENDPOINT_URL_S3

.PHONY: help setup demo test lint bench clean
.DEFAULT_GOAL := help

help:
	@echo "make demo   - set up, then export and verify a sample table from DynamoDB Local"
	@echo "make test   - set up, then ruff, mypy and pytest"
	@echo "make lint   - ruff and mypy"
	@echo "make bench  - run benchmarks/*.py"
	@echo "make clean  - remove .venv, node_modules, demo-out and caches"

setup: $(PY_STAMP) $(NPM_STAMP)

$(BIN)/python:
	@echo "$(PYTHON) -m venv $(VENV)"
	@$(PYTHON) -m venv $(VENV) || { \
	  echo "error: '$(PYTHON) -m venv' failed; on Debian/Ubuntu install python3-venv" >&2; \
	  rm -rf $(VENV); exit 1; }

$(PY_STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --disable-pip-version-check --quiet -e '.[dev]'
	@touch $@

$(NPM_STAMP): package.json package-lock.json
	$(NPM) ci --no-audit --no-fund --engine-strict=false
	@touch $@

demo: setup
	$(BIN)/python tools/demo.py

# Runs every check even when an earlier one fails, then fails if any did. pytest's exit
# code 5 ("no tests collected") is a failure too.
test: setup
	@status=0; \
	echo "+ ruff check $(LINT_PATHS)"; \
	$(BIN)/ruff check $(LINT_PATHS) || status=1; \
	echo "+ mypy -p ddbpipe"; \
	( $(MYPY) ) || status=1; \
	echo "+ pytest $(PYTEST_ARGS)"; \
	$(BIN)/pytest $(PYTEST_ARGS); code=$$?; \
	if [ $$code -eq 5 ]; then \
	  echo "error: pytest collected no tests" >&2; status=1; \
	elif [ $$code -ne 0 ]; then status=1; fi; \
	if [ $$status -ne 0 ]; then echo "make test: FAILED" >&2; fi; \
	exit $$status

lint: $(PY_STAMP)
	@status=0; \
	$(BIN)/ruff check $(LINT_PATHS) || status=1; \
	( $(MYPY) ) || status=1; \
	exit $$status

bench: setup
	@if [ -z "$(BENCHMARKS)" ]; then echo "no benchmarks/*.py scripts yet"; exit 0; fi; \
	for script in $(BENCHMARKS); do \
	  echo "+ $$script"; \
	  PYTHONPATH=".$${PYTHONPATH:+:$$PYTHONPATH}" $(BIN)/python $$script || exit 1; \
	done

clean:
	rm -rf $(VENV) node_modules demo-out build *.egg-info .pytest_cache .mypy_cache \
	  .ruff_cache .benchmarks
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
