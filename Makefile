# Quick start: `make train` trains the seed-000 MLP, `make test` runs the test suite.
# Both create .venv and install the project into it on first use (no network needed for MNIST).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test test-fast lint install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/python -m lit_mnist fit --config configs/mlp.yaml

test: lint
	$(BIN)/python -m pytest

# The inner loop: everything but the tests marked slow (real-MNIST training, notebooks, multi-process runs).
test-fast: lint
	$(BIN)/python -m pytest -m "not slow" -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf lightning_logs .pytest_cache
