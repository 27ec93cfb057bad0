"""The thread count (``lit_mnist.threads``) reaches every kind of process lit_mnist starts, and the user's wins.

Each process reports what it computes with through ``helpers.ReportThreads`` (``torch.get_num_threads()``
when fit starts, on every rank).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from helpers import SHORT_FIT, TESTS_ON_PATH, run_cli

from lit_mnist import threads

#: No setting of the user's: the project decides.
UNSET = {"OMP_NUM_THREADS": None}
REPORT = "--trainer.callbacks+=helpers.ReportThreads"


@contextmanager
def busy(count: int) -> Iterator[None]:
    """``count`` CPU-bound neighbours for the duration of the block."""
    loops = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.3)
        yield
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()


def _threads(output: str) -> dict[int, int]:
    """Each rank's ``torch.get_num_threads()`` at fit start (``helpers.ReportThreads``)."""
    return {int(r): int(n) for r, n in re.findall(r"threads rank=(\d+) count=(\d+)", output)}


def _shown(*args: str, **env: str | None) -> int:
    """The ``threads`` that ``fit ... --print_config`` shows."""
    result = run_cli("fit", *args, "--print_config", env={**UNSET, **env})
    assert result.returncode == 0, result.stderr[-2000:]
    return int(re.search(r"^threads: (\d+)$", result.stdout, re.M).group(1))


def _fit(data: Path, *args: str, **env: str | None) -> dict[int, int]:
    result = run_cli(
        "fit", "--config", "configs/mlp.yaml", "--data.data_dir", str(data), "--data.val_size", "20",
        "--data.batch_size", "10", *SHORT_FIT, "--test_after_fit", "false", "--trainer.logger", "false",
        "--trainer.default_root_dir", str(data), REPORT, *args,
        env={**TESTS_ON_PATH, **env},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return _threads(result.stdout)


def test_print_config_shows_the_idle_cores():
    cores = threads.available_cores()
    assert 1 <= _shown("--config", "configs/mlp.yaml") <= cores
    with busy(cores):  # every core taken: one thread, not a pool that waits for its slowest member
        assert _shown("--config", "configs/cnn.yaml") == 1
    # DDP's two CPU processes share the cores.
    ddp = _shown("--config", "configs/cnn.yaml", "--config", "configs/trainer/ddp_cpu.yaml")
    assert 1 <= ddp <= max(1, cores // 2)


def test_the_users_setting_wins():
    assert _shown("--config", "configs/mlp.yaml", OMP_NUM_THREADS="3") == 3
    assert _shown("--config", "configs/cnn.yaml", "--threads", "2", OMP_NUM_THREADS="3") == 2


def test_fit_computes_on_the_threads_chosen(tiny_mnist):
    """All cores busy: one thread; a pytest worker's share reaches its processes (``--threads``: below)."""
    data = tiny_mnist
    with busy(threads.available_cores()):
        assert _fit(data, **UNSET) == {0: 1}
    # this test's own process (a pytest-xdist worker) hands its share to the processes it starts
    assert _fit(data) == {0: int(os.environ["OMP_NUM_THREADS"])}


def test_the_test_suites_workers_share_the_cores():
    """Each pytest-xdist worker computes on its share (``conftest.py``), and hands it to its processes."""
    import torch

    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    share = max(1, threads.available_cores() // workers)
    assert torch.get_num_threads() == int(os.environ["OMP_NUM_THREADS"]) == share


@pytest.mark.slow  # two DDP processes
def test_ddp_processes_on_the_cpu_take_the_same_count(tiny_mnist):
    """Lightning's DDP launcher keeps the count, and the process it starts takes the same.

    ``--threads`` beats the environment's ``OMP_NUM_THREADS`` in both processes, so neither falls
    back to what it inherits.
    """
    ddp = ("--config", "configs/trainer/ddp_cpu.yaml")
    assert _fit(tiny_mnist, *ddp, "--threads", "2", OMP_NUM_THREADS="1") == {0: 2, 1: 2}


@pytest.mark.slow  # an Optuna study
def test_tunes_trials_take_the_count(tiny_mnist, tmp_path):
    result = run_cli(
        "tune", "--config", "configs/mlp.yaml", "--n_trials", "1", "--search", "configs/search/mlp.yaml",
        "--data.data_dir", str(tiny_mnist), "--data.val_size", "20", *SHORT_FIT, "--threads", "1",
        "--trainer.logger.init_args.save_dir", str(tmp_path), REPORT, env={**TESTS_ON_PATH, **UNSET},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert _threads(result.stdout) == {0: 1}


def test_busy_cores_sees_a_busy_neighbour():
    before = threads.busy_cores(0.5)
    with busy(1):
        during = threads.busy_cores(0.5)
    assert during >= min(before + 0.4, threads.available_cores() - 0.2), (before, during)
