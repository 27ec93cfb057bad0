"""Fixtures and the gpu marker's skip; the helpers themselves are in ``helpers.py``.

The test session shares the cores as a DDP run does (``lit_mnist.threads``): pytest-xdist's workers
run side by side, so each one, and each ``python -m lit_mnist`` a test starts, computes on its
share (``OMP_NUM_THREADS``, which those processes read as the user's setting).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import run_cli, write_mnist

from lit_mnist import threads


@pytest.fixture(scope="session", autouse=True)
def share_of_the_cores() -> None:
    """Where tests run (each pytest-xdist worker, or the one pytest process): its share of the cores."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    threads.use(threads.user_threads() or max(1, threads.available_cores() // workers))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip the tests marked ``gpu`` where torch sees no CUDA device."""
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "data")


def _short_fit(logs: Path, config: str, *options: str) -> Path:
    """``config`` fitted for 80 steps of 64 real MNIST images; its last checkpoint."""
    result = run_cli(
        "fit", "--config", f"configs/{config}.yaml", *options, "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "80", "--trainer.limit_val_batches", "1",
        "--data.batch_size", "64", "--test_after_fit", "false",
        "--trainer.logger.init_args.save_dir", str(logs),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return logs / config / "version_0" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def mnist_mlp_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The "Practical 5" tutorial's MLP after 80 steps (about 90 % test accuracy)."""
    return _short_fit(tmp_path_factory.mktemp("serve_logs"), "mlp")


@pytest.fixture(scope="session")
def mnist_cnn_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small CNN (8 and 16 filters, 64 hidden units) after 80 steps.

    PyTorch's initialisation: from the tutorial's N(0, 0.01) a network this small learns little in 80 steps.
    """
    options = ("--model.init_args.channels", "[8, 16]", "--model.init_args.hidden_size", "64",
               "--model.init_args.init", "pytorch")  # fmt: skip
    return _short_fit(tmp_path_factory.mktemp("serve_logs"), "cnn", *options)
