"""What the tests share: tiny IDX files, the CLI as a subprocess, a quiet Trainer, one short fit, a server."""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: Debian's Chromium, which the browser tests and benchmarks/drawn.py drive with Playwright.
CHROMIUM = Path("/usr/bin/chromium")
#: As root Chromium needs --no-sandbox; the rest stop it calling outside hosts on a machine without internet.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049

#: One pen stroke on the page's drawing pad: (x, y) points in the pad's pixels.
Stroke = list[tuple[float, float]]


def draw(page: Any, strokes: list[Stroke]) -> None:
    """Draw ``strokes`` with the mouse on the serve page's pad (a Playwright page)."""
    box = page.locator("#pad").bounding_box()
    for stroke in strokes:
        page.mouse.move(box["x"] + stroke[0][0], box["y"] + stroke[0][1])
        page.mouse.down()
        for x, y in stroke[1:]:
            page.mouse.move(box["x"] + x, box["y"] + y, steps=2)
        page.mouse.up()


#: One short fit for ``run_cli("fit", "--config", ..., *SHORT_FIT)``: one epoch of 40 batches,
#: 2 validation and 2 test batches. Later arguments override it (``--trainer.max_epochs 2``).
SHORT_FIT = (
    "--trainer.max_epochs", "1",
    "--trainer.limit_train_batches", "40",
    "--trainer.limit_val_batches", "2",
    "--trainer.limit_test_batches", "2",
)  # fmt: skip


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array as an IDX file (images if 3-D, labels if 1-D)."""
    magic = IMAGES_MAGIC if array.ndim == 3 else LABELS_MAGIC
    header = struct.pack(">I", magic) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def write_mnist(root: Path, n_train: int = 120, n_test: int = 40, seed: int = 0) -> Path:
    """A tiny MNIST in torchvision's layout under ``root``; returns ``root``."""
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte", rng.integers(0, 256, (n, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", np.arange(n) % 10)
    return root


#: ``run_cli``'s ``env`` for a command whose warnings the test reads, as a user would see them.
SHOW_WARNINGS: dict[str, str | None] = {"PYTHONWARNINGS": None}


def run_cli(
    *args: str, cwd: Path = REPO, timeout: float = 300, env: dict[str, str | None] | None = None
) -> subprocess.CompletedProcess:
    """``python -m lit_mnist ARGS`` in a fresh process, output captured as text.

    ``env`` adds variables to the test's environment (a ``None`` value removes one).
    """
    changes = env or {}
    env = {k: v for k, v in {**os.environ, "PYTHONWARNINGS": "ignore", **changes}.items() if v is not None}
    return subprocess.run(
        [sys.executable, "-m", "lit_mnist", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class ReportThreads(L.Callback):
    """Prints ``threads rank=R count=N`` with each process's ``torch.get_num_threads()`` when fit starts.

    For a ``python -m lit_mnist`` run by a test: ``--trainer.callbacks+=helpers.ReportThreads`` with
    ``tests/`` on ``PYTHONPATH`` (``TESTS_ON_PATH``).
    """

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import torch

        # one write, so that the lines of processes sharing the pipe do not interleave
        sys.stdout.write(f"threads rank={trainer.global_rank} count={torch.get_num_threads()}\n")
        sys.stdout.flush()


#: ``run_cli``'s ``env`` for a command that names a class of this folder (``helpers.ReportThreads``).
TESTS_ON_PATH = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")])}


def quiet_trainer(**kwargs: Any) -> L.Trainer:
    """A CPU Trainer that writes and prints nothing (no logger, checkpoints, progress bar or summary)."""
    defaults: dict[str, Any] = {
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "accelerator": "cpu",
    }
    return L.Trainer(**{**defaults, **kwargs})


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    """A ``serve`` process started by ``running``: its base URL and what it has printed so far."""

    url: str
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@contextmanager
def running(*args: str, timeout: float = 120) -> Iterator[Server]:
    """``python -m lit_mnist serve ARGS`` in a child process on a free port of 127.0.0.1.

    Yields the ``Server`` once ``/health`` answers, and stops the server and its LitServe workers
    (its own process group) on exit.

    Args:
        *args: ``serve``'s options, ``--ckpt_path`` included (``--port`` is added).
        timeout: Seconds to wait for ``/health``.

    Raises:
        RuntimeError: The server exited or did not answer in time; the message ends with its output.
    """
    port = free_port()
    command = [sys.executable, "-m", "lit_mnist", "serve", *args, "--port", str(port)]
    with tempfile.TemporaryDirectory() as folder:
        log = Path(folder) / "serve.log"
        with log.open("w") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        server = Server(f"http://127.0.0.1:{port}", log)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    raise RuntimeError(f"serve exited with {process.returncode}:\n{server.output()[-3000:]}")
                with suppress(OSError), urllib.request.urlopen(f"{server.url}/health", timeout=2) as response:
                    if response.status == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"serve did not answer {server.url}/health within {timeout} s")
                time.sleep(0.3)
            yield server
        finally:
            for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, None)):
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                try:
                    process.wait(timeout=wait)
                    break
                except subprocess.TimeoutExpired:
                    pass
            with suppress(ProcessLookupError):  # a worker left behind by the server
                os.killpg(process.pid, signal.SIGKILL)
