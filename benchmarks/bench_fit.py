"""Time ``fit`` of a config through the project's CLI against a plain PyTorch loop, in one process.

Both sides train the same network (same initial weights), on the same batches (the data module's
loaders), with the same optimizer, and validate on the same split each epoch. The plain loop scales
the uint8 pixels to [0, 1] itself, as the model's input does. The Lightning side is the real
``python -m lit_mnist fit`` path (TensorBoard logger, checkpoints, progress lines), timed per epoch
by ``timing.EpochTimer``.

    python benchmarks/bench_fit.py --config configs/mlp.yaml --epochs 3 [--device cuda] [--memory]

Prints per-epoch times, their ratio (steady state: the first epoch is left out of the mean when
there are more than two; the plain loop runs before and after ``fit`` and counts with the mean), the
test accuracy of both, and peak memory. ``--memory`` also runs ``python -m lit_mnist fit --config ...``
for one epoch in a child process and reports its peak RSS. ``--json PATH`` also writes every figure
printed to PATH (``benchmarks/device_check.py`` reads it).

    python benchmarks/bench_fit.py --config configs/mlp.yaml --layers [--rounds 3] [--steps 1000] [--threads 1]

``--layers`` splits the cost of a training step instead, in four layers, each timed for ``--steps``
training steps per round, interleaved (every round runs every layer once, in turn, alternating the
order): a plain PyTorch loop; a bare ``LightningModule`` (the config's network and optimizer,
cross-entropy, nothing logged) in a bare ``Trainer`` (no logger, checkpoints, progress bar or
summary, no validation); the config's own model and data module in the same bare ``Trainer``; and the
full CLI. A step is the gap between two ``on_train_batch_start`` calls (``timing.StepTimes``, in every
Lightning layer) or two iterations of the plain loop; the first ``--warmup`` steps of each run are
left out. Prints a Markdown table: per layer the median ms/step over rounds (each round's median
step, range in brackets), its increment over the layer above and its ratio to the plain loop
(medians over rounds of the difference and the ratio within a round).

    python benchmarks/bench_fit.py --config configs/cnn.yaml --precisions 32-true bf16-mixed [--rounds 4] [--steps 60]

``--precisions`` times the full CLI at each ``--trainer.precision`` instead, in the same way.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import functools
import io
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import lightning
import lightning as L
import torch
import torch.nn.functional as F
from timing import EpochTimer, StepTimes, cpu_model

from lit_mnist.cli import LitMNISTCLI
from lit_mnist.models.classifier import MNIST_MEAN, MNIST_STD, MNISTClassifier


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _standardizes(model: MNISTClassifier, datamodule: Any) -> bool:
    """Whether the run standardizes its inputs (the model's setting)."""
    return bool(model.standardize)


def pixels(images: torch.Tensor, standardize: bool = False) -> torch.Tensor:
    """uint8 images as float ``[B, 1, H, W]`` in [0, 1], scaled by hand as a plain loop would."""
    x = images.reshape(len(images), 1, *images.shape[-2:]).float().div_(255)
    return x.sub_(MNIST_MEAN).div_(MNIST_STD) if standardize else x


@torch.no_grad()
def _accuracy(model: torch.nn.Module, loader, device: torch.device, standardize: bool) -> float:
    model.eval()
    correct = total = 0
    for images, labels in loader:
        x, y = pixels(images.to(device), standardize), labels.to(device)
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    model.train()
    return correct / total


def plain_loop(
    model: MNISTClassifier, datamodule, epochs: int, device: torch.device
) -> tuple[list[float], float]:
    """A hand-written loop over the data module's batches; per-epoch times and test accuracy."""
    standardize = _standardizes(model, datamodule)
    net = model.net.to(device)
    optimizer = model.optimizer(net.parameters())
    train = datamodule.train_dataloader()
    times = []
    for epoch in range(epochs):
        train.sampler.set_epoch(epoch)
        _sync(device)
        start = time.monotonic()
        for images, labels in train:
            x, y = (
                pixels(images.to(device, non_blocking=True), standardize),
                labels.to(device, non_blocking=True),
            )
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        if datamodule.val_size:
            _accuracy(net, datamodule.val_dataloader(), device, standardize)
        _sync(device)
        times.append(time.monotonic() - start)
    return times, _accuracy(net, datamodule.test_dataloader(), device, standardize)


def _steady(times: list[float]) -> float:
    return statistics.mean(times[1:] if len(times) > 2 else times)


class BareModule(L.LightningModule):
    """The least a LightningModule needs to train: a network, cross-entropy, an optimizer; nothing logged.

    Args:
        net: The network (images to logits).
        optimizer: A callable of the parameters that builds the optimizer.
        standardize: Standardize the [0, 1] pixels as the config's run does.
    """

    def __init__(
        self, net: torch.nn.Module, optimizer: Callable[..., torch.optim.Optimizer], standardize: bool
    ):
        super().__init__()
        self.net = net
        self.make_optimizer = optimizer
        self.standardize = standardize

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        return F.cross_entropy(self.net(pixels(images, self.standardize)), labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.parameters())


def _median_step_ms(starts: list[float], warmup: int) -> float:
    """The median gap between consecutive step starts after the first ``warmup`` steps, in ms."""
    kept = starts[warmup:]
    return 1e3 * statistics.median(b - a for a, b in itertools.pairwise(kept))


def _plain_steps(model: MNISTClassifier, datamodule, steps: int, device: torch.device) -> list[float]:
    standardize = _standardizes(model, datamodule)
    net = model.net.to(device)
    optimizer = model.optimizer(net.parameters())
    starts = []
    batches: Iterable = datamodule.train_dataloader()
    for _, (images, labels) in zip(range(steps), batches, strict=False):
        starts.append(time.perf_counter())
        x, y = pixels(images.to(device, non_blocking=True), standardize), labels.to(device, non_blocking=True)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    _sync(device)
    return starts


def _bare_trainer(steps: int, accelerator: str, timer: StepTimes) -> L.Trainer:
    return L.Trainer(
        accelerator=accelerator,
        devices=1,
        max_epochs=1,
        limit_train_batches=steps,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[timer],
    )


#: The four layers of ``--layers``, in the order they add to one another.
LAYERS = (
    "plain PyTorch loop",
    "bare LightningModule in a bare Trainer",
    "the project's module and data module in a bare Trainer",
    "the full CLI (`fit`)",
)


def _full_cli(cli_args: list[str], steps: int) -> list[float]:
    timer = StepTimes()
    cli = LitMNISTCLI(args=[*cli_args, "--trainer.limit_train_batches", str(steps)], run=False)
    cli.trainer.callbacks.append(timer)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return timer.starts


def layer_runs(
    cli_args: list[str], fresh: MNISTClassifier, datamodule, args: argparse.Namespace
) -> dict[str, Callable[[], list[float]]]:
    """The four ``LAYERS``, each a run of ``args.steps`` steps from ``fresh``'s weights returning the step starts."""
    device = torch.device(args.device)
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    standardize = _standardizes(fresh, datamodule)

    def plain() -> list[float]:
        return _plain_steps(copy.deepcopy(fresh), datamodule, args.steps, device)

    def bare() -> list[float]:
        model = copy.deepcopy(fresh)
        timer = StepTimes()
        module = BareModule(model.net, model.optimizer, standardize)
        _bare_trainer(args.steps, accelerator, timer).fit(
            module, train_dataloaders=datamodule.train_dataloader()
        )
        return timer.starts

    def ours() -> list[float]:
        timer = StepTimes()
        _bare_trainer(args.steps, accelerator, timer).fit(copy.deepcopy(fresh), datamodule=datamodule)
        return timer.starts

    def full() -> list[float]:
        return _full_cli(cli_args, args.steps)

    return dict(zip(LAYERS, (plain, bare, ours, full), strict=True))


def precision_runs(cli_args: list[str], args: argparse.Namespace) -> dict[str, Callable[[], list[float]]]:
    """The full CLI at each of ``args.precisions`` (``--trainer.precision``)."""
    return {
        f"the full CLI (`fit`), precision {precision}": functools.partial(
            _full_cli, [*cli_args, "--trainer.precision", precision], args.steps
        )
        for precision in args.precisions
    }


def interleaved(
    runs: dict[str, Callable[[], list[float]]], args: argparse.Namespace
) -> dict[str, list[float]]:
    """Median ms/step of every run in every round (in order, reversed every other round)."""
    names = list(runs)
    results: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names if round_ % 2 == 0 else reversed(names):
            with contextlib.redirect_stdout(io.StringIO()):  # the CLI's summary and progress lines
                starts = runs[name]()
            results[name].append(_median_step_ms(starts, args.warmup))
            print(
                f"round {round_ + 1}/{args.rounds} {name}: {results[name][-1]:.3f} ms/step", file=sys.stderr
            )
    return results


def _spread(values: list[float], digits: int = 3) -> str:
    median = f"{statistics.median(values):.{digits}f}"
    if len(values) == 1:
        return median
    return f"{median} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def layers_table(
    results: dict[str, list[float]], command: str, args: argparse.Namespace
) -> tuple[str, dict[str, Any]]:
    """The Markdown report of ``--layers`` or ``--precisions`` and its figures."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    hardware = torch.cuda.get_device_name() if args.device == "cuda" else cpu_model()
    what = "layer" if results.keys() == set(LAYERS) else "run"
    lines = [
        f"Measured {now} with `{command}` ({args.rounds} interleaved rounds of {args.steps} steps, "
        f"the first {args.warmup} of each run left out) on {hardware}, {torch.get_num_threads()} threads; "
        f"Python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}.",
        "",
        f"| {what} | median ms/step | increment over the {what} above | × the first {what} |",
        "|---|---|---|---|",
    ]
    figures: dict[str, Any] = {"runs": {}}
    names = list(results)
    first = results[names[0]]
    for previous, name in zip([None, *names], names, strict=False):
        values = results[name]
        figures["runs"][name] = {"ms_per_step": values}
        increment = ratio = "—"
        if previous is not None:
            diffs = [b - a for a, b in zip(results[previous], values, strict=True)]
            ratios = [b / a for a, b in zip(first, values, strict=True)]
            increment = f"{'+' if statistics.median(diffs) >= 0 else ''}{_spread(diffs)}"
            ratio = _spread(ratios, 2)
            figures["runs"][name].update(increment_ms=diffs, ratio_to_first=ratios)
        lines.append(f"| {name} | {_spread(values)} | {increment} | {ratio} |")
    if what == "layer":
        plain, bare, _, full = (results[name] for name in LAYERS)
        lightning_ms = [b - p for b, p in zip(bare, plain, strict=True)]
        own = [f - b for f, b in zip(full, bare, strict=True)]
        lines += [
            "",
            f"Lightning's own loop (bare Trainer over the plain loop): {_spread(lightning_ms)} ms/step; "
            f"this project's (full CLI over the bare Trainer): {_spread(own)} ms/step.",
        ]
        figures.update(lightning_ms=lightning_ms, project_ms=own)
    figures.update(
        hardware=hardware,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
        lightning=lightning.__version__,
        date=now,
    )
    return "\n".join(lines) + "\n", figures


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
    parser.add_argument("--layers", action="store_true", help="split a step's cost in four layers instead")
    parser.add_argument(
        "--precisions",
        nargs="+",
        default=None,
        metavar="PRECISION",
        help="time the full CLI at each of these trainer precisions (e.g. 32-true bf16-mixed), as --layers does",
    )
    parser.add_argument("--rounds", type=int, default=3, help="--layers: interleaved rounds (default 3)")
    parser.add_argument("--steps", type=int, default=1000, help="--layers: steps per layer and round")
    parser.add_argument("--warmup", type=int, default=20, help="--layers: first steps of a run left out")
    parser.add_argument("--out", type=Path, default=None, help="--layers: also write the table to this file")
    parser.add_argument(
        "cli_args", nargs="*", help="extra CLI overrides, e.g. --trainer.precision=bf16-mixed"
    )
    args = parser.parse_args()
    stepwise = args.layers or args.precisions
    if stepwise and (args.rounds < 1 or args.steps < args.warmup + 3 or args.warmup < 0):
        parser.error("--layers and --precisions need --rounds 1 or more and --steps at least --warmup + 3")
    if args.threads:
        torch.set_num_threads(args.threads)
    # Every layer computes on the same threads: the CLI's layer takes this as the user's setting.
    os.environ["OMP_NUM_THREADS"] = str(torch.get_num_threads())

    logs = tempfile.mkdtemp(prefix="bench_fit_")
    timer = EpochTimer()
    accelerator = "gpu" if args.device == "cuda" else "cpu"
    overrides = {
        "--config": args.config,
        "--trainer.max_epochs": "1" if stepwise else str(args.epochs),
        "--trainer.accelerator": accelerator,
        "--trainer.devices": "1",
        "--trainer.logger.init_args.save_dir": logs,
    }
    cli_args = [*(x for kv in overrides.items() for x in kv), *args.cli_args]
    cli = LitMNISTCLI(args=cli_args, run=False)
    if stepwise:
        if args.precisions:
            results = interleaved(precision_runs(cli_args, args), args)
        else:
            cli.datamodule.setup("fit")
            results = interleaved(layer_runs(cli_args, copy.deepcopy(cli.model), cli.datamodule, args), args)
        command = " ".join(["python", "benchmarks/bench_fit.py", *sys.argv[1:]])
        report, figures = layers_table(results, command, args)
        print(report, end="")
        if args.out:
            args.out.write_text(report)
        if args.json:
            args.json.write_text(
                json.dumps({"config": args.config, "cli_args": args.cli_args, **figures}, indent=1) + "\n"
            )
        return
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
