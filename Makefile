# The two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint bench clean ui

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The tests also build the k8s profile's step pods, which needs the k8s extra (dagster-k8s).
$(TEST_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,k8s]'
	touch $(TEST_STAMP)

demo: $(STAMP)
	$(BIN)/gdo demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check gdo_core gdo_assets dagster_project tests benchmarks

ui: $(STAMP)
	DAGSTER_HOME=$(abspath .gdo/dagster_home) $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1

clean:
	rm -rf .gdo
