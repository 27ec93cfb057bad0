"""Time ``fit`` of a config through the project's CLI against a plain PyTorch loop, in one process.

Both sides train the same network (same initial weights), on the same batches (the data module's
loaders and its on-device scaling), with the same optimizer, and validate on the same split each
epoch. The Lightning side is the real ``python -m lit_mnist fit`` path (TensorBoard logger,
checkpoints, progress lines), timed per epoch by ``lit_mnist.callbacks.EpochTimer``.

    python benchmarks/bench_fit.py --config configs/mlp.yaml --epochs 3 [--device cuda] [--memory]

Prints per-epoch times, their ratio (steady state: the first epoch is left out of the mean when
there are more than two; the plain loop runs before and after ``fit`` and counts with the mean), the test accuracy of both, and peak memory. ``--memory`` also runs
``python -m lit_mnist fit --config ...`` for one epoch in a child process and reports its peak RSS.
``--json PATH`` also writes every figure printed to PATH (``benchmarks/device_check.py`` reads it).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning
import torch
import torch.nn.functional as F

from lit_mnist.callbacks import EpochTimer
from lit_mnist.cli import LitMNISTCLI
from lit_mnist.models.classifier import MNISTClassifier


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def _accuracy(model: torch.nn.Module, loader, datamodule, device: torch.device) -> float:
    model.eval()
    correct = total = 0
    for batch in loader:
        x, y = datamodule.on_after_batch_transfer(datamodule.transfer_batch_to_device(batch, device, 0), 0)
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    model.train()
    return correct / total


def plain_loop(
    model: MNISTClassifier, datamodule, epochs: int, device: torch.device
) -> tuple[list[float], float]:
    """A hand-written loop over the data module's batches; per-epoch times and test accuracy."""
    net = model.net.to(device)
    optimizer = model.optimizer(net.parameters())
    train = datamodule.train_dataloader()
    times = []
    for epoch in range(epochs):
        train.sampler.set_epoch(epoch)
        _sync(device)
        start = time.monotonic()
        for batch in train:
            x, y = datamodule.on_after_batch_transfer(
                datamodule.transfer_batch_to_device(batch, device, 0), 0
            )
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if datamodule.val_size:
            _accuracy(net, datamodule.val_dataloader(), datamodule, device)
        _sync(device)
        times.append(time.monotonic() - start)
    return times, _accuracy(net, datamodule.test_dataloader(), datamodule, device)


def _steady(times: list[float]) -> float:
    return statistics.mean(times[1:] if len(times) > 2 else times)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/mlp.yaml")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--memory", action="store_true", help="also measure the peak RSS of a CLI fit")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's choice). On a 2-core machine 2 threads run small "
        "batches at either of two speeds, varying between and within runs; 1 thread is steady",
    )
    parser.add_argument(
        "cli_args", nargs="*", help="extra CLI overrides, e.g. --trainer.precision=bf16-mixed"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    logs = tempfile.mkdtemp(prefix="bench_fit_")
    timer = EpochTimer()
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    overrides = {
        "--config": args.config,
        "--trainer.max_epochs": str(args.epochs),
        "--trainer.accelerator": accelerator,
        "--trainer.devices": "1",
        "--trainer.logger.init_args.save_dir": logs,
    }
    cli = LitMNISTCLI(args=[*(x for kv in overrides.items() for x in kv), *args.cli_args], run=False)
    cli.trainer.callbacks.append(timer)
    fresh = copy.deepcopy(cli.model)
    device = torch.device(args.device)
    cli.datamodule.setup(None)
    # The plain loop runs before and after fit and counts with the mean of both, so that a machine
    # whose speed drifts during the run (shared cores) does not tilt the ratio.
    plain_before, _ = plain_loop(copy.deepcopy(fresh), cli.datamodule, args.epochs, device)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    lit_acc = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]["test/acc"]
    plain_after, plain_acc = plain_loop(fresh, cli.datamodule, args.epochs, device)

    lit_epoch = _steady(timer.epoch_times)
    plain_epoch = (_steady(plain_before) + _steady(plain_after)) / 2
    print(f"\nconfig {args.config}, {args.epochs} epochs, device {args.device}")
    print(f"torch {torch.__version__}, lightning {lightning.__version__}, python {platform.python_version()}")
    hardware = torch.cuda.get_device_name() if args.device == "cuda" else platform.machine()
    print(f"{hardware}, {torch.get_num_threads()} threads")
    print(f"lightning fit s/epoch: {' '.join(f'{t:.2f}' for t in timer.epoch_times)}  steady {lit_epoch:.3f}")
    for when, times in (("before", plain_before), ("after", plain_after)):
        print(
            f"plain loop    s/epoch: {' '.join(f'{t:.2f}' for t in times)}  steady {_steady(times):.3f} ({when} fit)"
        )
    print(f"ratio lightning/plain: {lit_epoch / plain_epoch:.3f}")
    print(f"test accuracy: lightning {100 * lit_acc:.2f} %, plain {100 * plain_acc:.2f} %")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {rss_mb:.0f} MB")
    figures = {
        "config": args.config,
        "epochs": args.epochs,
        "device": args.device,
        "hardware": hardware,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": lightning.__version__,
        "cli_args": args.cli_args,
        "lightning_epoch_s": timer.epoch_times,
        "lightning_steady_s": lit_epoch,
        "plain_before_epoch_s": plain_before,
        "plain_after_epoch_s": plain_after,
        "plain_steady_s": plain_epoch,
        "ratio": lit_epoch / plain_epoch,
        "lightning_test_acc": 100 * lit_acc,
        "plain_test_acc": 100 * plain_acc,
        "peak_rss_mb": rss_mb,
    }
    if args.device == "cuda":
        figures["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
        print(f"peak CUDA memory: {figures['peak_cuda_mb']:.0f} MB")
    if args.memory:
        with tempfile.TemporaryDirectory() as tmp:
            command = ["fit", "--config", args.config, "--trainer.max_epochs", "1"]
            command += ["--trainer.logger.init_args.save_dir", tmp]
            repo = Path(__file__).resolve().parents[1]
            subprocess.run(
                [sys.executable, "-m", "lit_mnist", *command], check=True, capture_output=True, cwd=repo
            )
        rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
        print(f"peak RSS of `python -m lit_mnist fit --config {args.config}` (1 epoch + test): {rss:.0f} MB")
        figures["cli_fit_peak_rss_mb"] = rss
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
