# trimaran developer entry points. Every target creates .venv itself, so a fresh machine with
# Python 3.11+ and make is enough.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP_RUN := $(VENV)/.installed-run
STAMP_TEST := $(VENV)/.installed-test
PYTEST_ARGS ?=
# Test processes (pytest-xdist): 2 fits the 2-core machines the time budgets are set on; the real-
# process tests spend much of their time waiting on their nodes. PYTEST_WORKERS=0 runs in one process.
PYTEST_WORKERS ?= 2

.PHONY: run test test-quick fuzz sim chaos bench typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Re-install only when the package metadata changes.
$(STAMP_RUN): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(STAMP_TEST): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(STAMP_RUN)

# `make run UP_ARGS="--base-port 34000 --data-dir /tmp/d"` passes flags to `trimaran up`. `exec`:
# no shell stays between make and `trimaran up` (a shell would not pass SIGTERM on), so a kill of
# make's pid (GNU make hands SIGTERM to its recipe) or of the pid the banner shows stops the cluster.
UP_ARGS ?=
run: $(STAMP_RUN)
	exec $(BIN)/trimaran up $(UP_ARGS)

test: $(STAMP_TEST)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

# The unit and property tests only (no real nodes, no long sweeps): the edit-test loop, < 1 minute.
test-quick: $(STAMP_TEST)
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) -m "not slow" $(PYTEST_ARGS)

# A longer run of the fuzz tests (every decoder of outside bytes: client and peer frames, log
# entries at apply) than the 150 examples each gets in `make test`.
FUZZ_EXAMPLES ?= 5000
fuzz: $(STAMP_TEST)
	TRIMARAN_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest tests -k fuzz $(PYTEST_ARGS)

# A long simulation sweep, beyond what CI runs.
sim: $(STAMP_TEST)
	$(BIN)/trimaran simulate --seeds 1..5000 --jobs 2

# Chaos on real processes (tests/chaos): kill -9, SIGSTOP and restarts under KV, job and chat load,
# CHAOS_RUNS runs of CHAOS_SECONDS each, a new fault schedule each run (its seed is in the test id;
# TRIMARAN_CHAOS_SEED=N replays one). `make test` runs one of 10 seconds.
CHAOS_SECONDS ?= 300
CHAOS_RUNS ?= 3
chaos: $(STAMP_TEST)
	for run in $$(seq $(CHAOS_RUNS)); do \
		TRIMARAN_CHAOS_SECONDS=$(CHAOS_SECONDS) $(BIN)/python -m pytest tests/chaos -v $(PYTEST_ARGS) || exit 1; \
	done

bench: $(STAMP_TEST)
	$(BIN)/python benchmarks/raft_core.py

typecheck: $(STAMP_TEST)
	$(BIN)/python -m mypy src/trimaran

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .hypothesis
