# Every target creates or reuses the local virtualenvs and Node packages it needs,
# so `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LEGACY_VENV := .venv-legacy
NODE_DIR := tests/node
# Pyodide for the run_code tool's wasm backend, installed beside the package that uses it.
WASM_DIR := mcp_guard/sandbox/wasm_runtime

.PHONY: install demo test lint typecheck unit bench security clean

install: $(VENV)/.installed $(WASM_DIR)/node_modules/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

# A downstream built on the 1.x SDK needs its own virtualenv: 1.x and 2.x cannot share one.
$(LEGACY_VENV)/.installed: tests/fixtures/legacy-requirements.txt
	$(PYTHON) -m venv $(LEGACY_VENV)
	$(LEGACY_VENV)/bin/pip install --quiet --upgrade pip
	$(LEGACY_VENV)/bin/pip install --quiet -r tests/fixtures/legacy-requirements.txt
	touch $@

$(WASM_DIR)/node_modules/.installed: $(WASM_DIR)/package.json $(WASM_DIR)/package-lock.json
	cd $(WASM_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

$(NODE_DIR)/node_modules/.installed: $(NODE_DIR)/package.json $(NODE_DIR)/package-lock.json
	cd $(NODE_DIR) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

demo: install $(NODE_DIR)/node_modules/.installed
	$(BIN)/python -m mcp_guard.demo

lint: install
	$(BIN)/ruff check mcp_guard tests
	$(BIN)/ruff format --check mcp_guard tests

typecheck: install
	$(BIN)/mypy

unit: install $(LEGACY_VENV)/.installed $(NODE_DIR)/node_modules/.installed
	$(BIN)/pytest

test: lint typecheck unit

# Only the tests marked attack or legitimate; prints one row per attack and fails on any bypass.
security: install $(LEGACY_VENV)/.installed $(NODE_DIR)/node_modules/.installed
	$(BIN)/pytest -m "attack or legitimate" --security-report -q

bench: install
	$(BIN)/python tests/bench/run.py

clean:
	rm -rf $(VENV) $(LEGACY_VENV) $(NODE_DIR)/node_modules $(WASM_DIR)/node_modules .mypy_cache .ruff_cache .pytest_cache
