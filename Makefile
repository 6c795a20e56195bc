# Each target creates .venv and installs the project through pyproject.toml when needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test lint format bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check --quiet --editable '.[dev]'
	touch $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/dicom_loading.py
	$(BIN)/python benchmarks/dicom_scan.py
	$(BIN)/python benchmarks/phantom_generation.py
	$(BIN)/python benchmarks/training_loop.py
	$(BIN)/python benchmarks/source_model.py
	$(BIN)/python benchmarks/augmentation_effect.py
	$(BIN)/python benchmarks/adaptation.py
	$(BIN)/python benchmarks/batch_throughput.py

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
