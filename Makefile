# The README's first two commands: `make run` and `make test`. Everything they need is installed here.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench bench-tools agents clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)  ## start the daemon in the foreground on its embedded defaults (SQLite, no external service)
	$(BIN)/fleetd daemon run

# Two workers, one test file each at a time (a module's tests share its daemon): most tests wait on
# processes and sockets, so two cores run the suite in about half the time.
test: $(STAMP) agents lint  ## install what the tests need and run them
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

# The pinned real agent CLIs (npm + an Aider venv) in the git-ignored .cache/agents, for the
# real-program integration tests. Idempotent; without node it says so and those tests skip.
agents:
	bash scripts/install-agents.sh

lint: $(STAMP)
	$(BIN)/ruff check fleetd tests bench
	$(BIN)/ruff format --check fleetd tests bench

bench: $(STAMP)
	$(BIN)/python bench/cli_roundtrip.py
	$(BIN)/python bench/idle.py
	$(BIN)/python bench/runs_query.py
	$(BIN)/python bench/stats_query.py
	$(BIN)/python bench/failover_latency.py
	$(BIN)/python bench/dispatch.py
	$(BIN)/python bench/fire_lag.py
	$(BIN)/python bench/gateway.py
	$(BIN)/python bench/no_room.py

# What the benchmarks compare with (ccusage for bench/ingest.py) in the git-ignored .cache/bench; never part of `test`.
bench-tools:
	bash scripts/install-bench.sh

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
