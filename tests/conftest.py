"""Shared test helpers: small IDX files written by the tests, and the CLI run as a subprocess."""

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
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049


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


@pytest.fixture
def tiny_mnist(tmp_path: Path) -> Path:
    return write_mnist(tmp_path / "data")


def run_cli(*args: str, cwd: Path = REPO, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m lit_mnist ARGS`` in a fresh process, output captured as text."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "lit_mnist", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def mnist_mlp_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seed-000 MLP fitted for 80 steps of 64 real MNIST images (about 90 % test accuracy)."""
    logs = tmp_path_factory.mktemp("serve_logs")
    result = run_cli(
        "fit", "--config", "configs/mlp.yaml", "--trainer.max_epochs", "1",
        "--trainer.limit_train_batches", "80", "--trainer.limit_val_batches", "1",
        "--data.batch_size", "64", "--test_after_fit", "false",
        "--trainer.logger.init_args.save_dir", str(logs),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return logs / "mlp" / "version_0" / "checkpoints" / "last.ckpt"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve_process(ckpt: Path, *args: str, timeout: float = 120) -> Iterator[str]:
    """``python -m lit_mnist serve`` on a free port of 127.0.0.1; yields its base URL once /health answers."""
    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [
        sys.executable,
        "-m",
        "lit_mnist",
        "serve",
        "--ckpt_path",
        str(ckpt),
        "--port",
        str(port),
        *args,
    ]
    with tempfile.TemporaryFile("w+") as log:
        # its own process group, so LitServe's worker processes are stopped with it
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise AssertionError(f"serve exited with {process.returncode}:\n{log.read()[-3000:]}")
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
                        if response.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise AssertionError(f"serve did not answer /health within {timeout} s")
                time.sleep(0.3)
            yield url
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
