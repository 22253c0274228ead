# The README's first two commands: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)  ## start the daemon in the foreground on its embedded defaults (SQLite, no external service)
	$(BIN)/fleetd daemon run

test: $(STAMP) lint  ## install what the tests need and run them
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check fleetd tests bench
	$(BIN)/ruff format --check fleetd tests bench

bench: $(STAMP)
	$(BIN)/python bench/cli_roundtrip.py
	$(BIN)/python bench/runs_query.py
	$(BIN)/python bench/failover_latency.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
