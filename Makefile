# The two entry points: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint bench clean ui chromium

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

test: $(TEST_STAMP) chromium
	$(BIN)/python -m pytest -q

# tests/test_ui_browser.py drives Debian's chromium headless through Playwright (the dev extra),
# never Playwright's own browser downloads. Installed once when /usr/bin/chromium is missing (sudo
# unless root); if that fails, make goes on and that test fails saying so.
chromium:
	@test -x /usr/bin/chromium || { \
	  sudo=$$([ "$$(id -u)" -eq 0 ] || echo sudo); \
	  apt="$$sudo env DEBIAN_FRONTEND=noninteractive apt-get"; \
	  $$apt install -y --no-install-recommends chromium \
	  || { $$apt update && $$apt install -y --no-install-recommends chromium; } \
	  || echo "make: could not install chromium (apt-get install -y chromium): tests/test_ui_browser.py will fail" >&2; }

lint: $(STAMP)
	$(BIN)/ruff check gdo_core gdo_assets dagster_project tests benchmarks

# The UI on the demo's instance. Settings (pool, model, data folder): GDO_SETTINGS when set, else
# ./gdo.toml when there is one, else the file `gdo demo` wrote (.gdo/gdo.toml).
ui: $(STAMP)
	@settings="$${GDO_SETTINGS:-}"; \
	for f in gdo.toml .gdo/gdo.toml; do [ -n "$$settings" ] || [ ! -f $$f ] || settings="$(CURDIR)/$$f"; done; \
	echo "make ui: settings file: $${settings:-none}"; \
	GDO_SETTINGS="$$settings" DAGSTER_HOME=$(abspath .gdo/dagster_home) $(BIN)/dagster dev -w workspace.yaml -h 127.0.0.1

clean:
	rm -rf .gdo
