# Quick start: `make train` trains the MLP of the "Practical 5" tutorial, `make test` runs the test suite.
# Both create .venv and install the project into it on first use (no network needed for MNIST).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: train test test-fast lint install clean device-wheels

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

train: $(STAMP)
	$(BIN)/python -m lit_mnist fit --config configs/mlp.yaml

# Two pytest workers (pytest-xdist), each taking whole files; most tests wait on child processes.
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadfile --durations=15

test: lint
	$(PYTEST)

# The inner loop: everything but the tests marked slow (real-MNIST training, notebooks, multi-process runs).
test-fast: lint
	$(PYTEST) -m "not slow" -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

# Wheels of what the GPU machine's Python 3.12 lacks, at this venv's versions, for
# benchmarks/device_check.py to install there (README "Device check"); .device-wheels/ is ignored.
DEVICE_WHEELS := .device-wheels
DEVICE_PACKAGES := jsonargparse docstring-parser typeshed-client
device-wheels:
	rm -rf $(DEVICE_WHEELS)
	$(BIN)/python -m pip download --quiet --disable-pip-version-check --no-deps --only-binary=:all: \
		--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
		--platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		--platform manylinux1_x86_64 -d $(DEVICE_WHEELS) \
		$$(for p in $(DEVICE_PACKAGES); do \
			echo "$$p==$$($(BIN)/python -c "import importlib.metadata as m; print(m.version('$$p'))")"; done)
	ls $(DEVICE_WHEELS)

clean:
	rm -rf lightning_logs .pytest_cache
