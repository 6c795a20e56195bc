# Each target creates .venv and installs the project through pyproject.toml when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint format bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --quiet --editable '.[dev,bench]'
	touch $(STAMP)

# Two simulated hospitals and a head-CT site, trained, compared, adapted and validated:
# everything goes to demo/ (about 5 minutes on 2 cores). `.venv/bin/medadapt demo --help`.
demo: $(STAMP)
	$(BIN)/medadapt demo --out demo

# Every test: what CI runs (.ci/run). Two workers (pytest-xdist), each file's tests on one;
# `$(BIN)/python -m pytest` alone runs them in one process.
test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup

# The development loop: every module, without the tests that train a model, build a wheel or
# run pip (marked slow; tests/conftest.py fails a test outside that mark that does any of it).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -n 2 --dist loadgroup

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Every benchmark, side by side on this machine; writes benchmarks/RESULTS.md and
# benchmarks/results/, whose header says how long it took from nothing. The adaptation
# section's 15 pair-seeds and the transfer section's 10 are kept as they finish, so an
# interrupted run resumes. bench-quick: every table in a few minutes, written to
# build/bench-quick (its figures are a smoke check, not results).
bench: $(STAMP)
	$(BIN)/python benchmarks/suite.py

bench-quick: $(STAMP)
	$(BIN)/python benchmarks/suite.py --quick

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
