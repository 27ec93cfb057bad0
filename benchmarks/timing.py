"""What the benchmark scripts time ``fit`` with (per epoch, per step) and the CPU they name in their tables."""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Timer


def _synchronize(module: L.LightningModule) -> None:
    """Wait for the module's device, so that wall-clock times include its queued work."""
    if module.device.type == "cuda":
        torch.cuda.synchronize(module.device)


class EpochTimer(Timer):
    """Lightning's ``Timer`` plus the wall time of each training epoch (validation included).

    Times are taken after the accelerator has finished its queued work, so they are honest on GPU.
    ``time_elapsed("train")`` is the fit loop's wall time, from ``on_train_start`` to ``on_train_end``.

    Args:
        **kwargs: Lightning ``Timer``'s arguments (``duration``, ``interval``, ``verbose``).
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.epoch_times: list[float] = []
        self._epoch_start = 0.0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _synchronize(pl_module)
        super().on_train_start(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _synchronize(pl_module)
        super().on_train_end(trainer, pl_module)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _synchronize(pl_module)
        self._epoch_start = time.monotonic()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        _synchronize(pl_module)
        self.epoch_times.append(time.monotonic() - self._epoch_start)
        super().on_train_epoch_end(trainer, pl_module)


#: The line ``EpochSeconds`` (and, without the batches, the Keras scripts) print after each training epoch.
EPOCH_LINE = re.compile(r"^epoch=(\d+) seconds=([\d.]+)(?: batches=(\d+))?$", re.MULTILINE)


class EpochSeconds(EpochTimer):
    """``EpochTimer`` that also prints ``epoch=<k> seconds=<s> batches=<n>`` (``EPOCH_LINE``) after each
    training epoch.

    For a ``python -m lit_mnist fit`` run by another script: ``--trainer.callbacks+=timing.EpochSeconds``
    with ``benchmarks/`` on ``PYTHONPATH``.
    """

    def __init__(self) -> None:  # no arguments: the CLI's saved config cannot hold Timer's enum
        super().__init__()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if trainer.is_global_zero:
            seconds, batches = self.epoch_times[-1], trainer.num_training_batches
            print(f"epoch={trainer.current_epoch + 1} seconds={seconds:.6f} batches={batches}", flush=True)


class StepTimes(L.Callback):
    """``time.perf_counter()`` at every ``on_train_batch_start``: the gaps between them are whole steps.

    A gap holds everything the loop does for one batch (fetching it, the hooks, forward, backward,
    the optimizer, metrics), and none of the epoch's start or end. It does not wait for the device:
    on a GPU the gaps measure how fast steps are queued, which in a steady state is how fast they run.
    """

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.starts.append(time.perf_counter())


def cpu_model() -> str:
    """The CPU's model name as ``/proc/cpuinfo`` gives it (``lscpu``'s "Model name")."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


#: What a busy neighbour runs: one core's worth of pure Python, as long as it is left running.
BUSY_LOOP = "while True: pass"


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    """``--threads``: the CPU threads of every ``fit`` a benchmark starts (default: every core)."""
    parser.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count(),
        help="CPU threads of every fit (default: every core, however busy the machine): a seed fixes the "
        "weights only for a given thread count",
    )


def start_neighbours(count: int) -> list[subprocess.Popen]:
    """``count`` CPU-bound processes (``BUSY_LOOP``) that run until they are killed."""
    return [subprocess.Popen([sys.executable, "-c", BUSY_LOOP]) for _ in range(count)]


def stop_neighbours(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
        process.wait()


@contextmanager
def neighbours(count: int) -> Iterator[None]:
    """``count`` busy processes (``start_neighbours``) for the duration of the block."""
    processes = start_neighbours(count)
    try:
        yield
    finally:
        stop_neighbours(processes)


class BenchmarkError(Exception):
    """A problem a benchmark script reports in one sentence."""


def run_script(main: Callable[[], None]) -> None:
    """Run a benchmark script's ``main``: a ``BenchmarkError`` prints ``error: <sentence>.`` and exits 1."""
    try:
        main()
    except BenchmarkError as err:
        print(f"error: {err}.", file=sys.stderr)
        raise SystemExit(1) from None
