"""Time one step of the "What is TensorFlow?" CNN on the CPU, variant by variant, in a plain PyTorch loop.

Every variant is the same network (``cnn_network``'s layers and the same initial weights),
trained with the shipped config's RMSprop on the same real MNIST batches of 50; only how the
layers compute (or in which precision) differs. Variants run interleaved (each round times every variant once, in
turn, for ``--steps`` steps) and the table shows the median ms/step over the rounds: the machine
is shared and its speed drifts from minute to minute, so only ratios measured interleaved in
one sitting mean anything, not the absolute figures.

    PYTHONPATH=$PWD python benchmarks/cnn_cpu.py [--rounds 3] [--steps 40] [--threads 2] [--profile]

``--profile`` then profiles the default variant (``cnn_network()``) with ``torch.profiler``: the
forward / backward / optimizer split and the top kernels.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lit_mnist.data.mnist import ensure_mnist_files, load_mnist
from lit_mnist.models import KerasRMSprop
from lit_mnist.models.cnn import cnn_network
from lit_mnist.models.mlp import MaskDropout

REPO = Path(__file__).resolve().parents[1]


class PadPool(nn.Module):
    """2×2 max-pooling 'same' as zero padding to even sides + ``MaxPool2d(2)`` (valid after ReLU)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if h % 2 or w % 2:
            x = F.pad(x, (0, w % 2, 0, h % 2))
        return F.max_pool2d(x, 2)


def plain_cnn() -> nn.Sequential:
    """``cnn_network()`` with plain layers: NCHW weights and ``nn.Dropout`` (the same initial weights)."""
    net = cnn_network().to(memory_format=torch.contiguous_format)
    for i, layer in enumerate(net):
        if isinstance(layer, MaskDropout):
            net[i] = nn.Dropout(layer.p)
    return net


def variant(base: nn.Sequential, mask: bool, pool_pad: bool = False) -> nn.Sequential:
    """A copy of ``base`` (same weights) with the chosen layers swapped in."""
    net = copy.deepcopy(base)
    for i, layer in enumerate(net):
        if mask and type(layer) is nn.Dropout:
            net[i] = MaskDropout(layer.p)
        elif pool_pad and isinstance(layer, nn.MaxPool2d):
            net[i] = PadPool()
    return net


def make_variants(base: nn.Sequential) -> dict[str, tuple[nn.Sequential, bool, str]]:
    """Name -> (network, channels-last input, setting: "", "flush denormals", "oneDNN off" or "bf16 autocast")."""
    cl = torch.channels_last

    def default() -> nn.Sequential:
        return variant(base, True).to(memory_format=cl)

    return {
        "baseline (nn.Conv2d, nn.Dropout, NCHW)": (variant(base, False), False, ""),
        "channels_last (weights and input)": (variant(base, False).to(memory_format=cl), True, ""),
        "MaskDropout alone (NCHW)": (variant(base, True), False, ""),
        "default = cnn_network(): channels_last weights + MaskDropout": (default(), False, ""),
        "default + zero-pad pooling": (
            variant(base, True, pool_pad=True).to(memory_format=cl),
            False,
            "",
        ),
        "default + flush denormals": (default(), False, "flush denormals"),
        "default + oneDNN off": (default(), False, "oneDNN off"),
        "default + bf16 autocast": (default(), False, "bf16 autocast"),
    }


def batches(count: int, batch_size: int = 50) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The first ``count`` batches of a fixed shuffle of the real MNIST training images, scaled."""
    ensure_mnist_files(REPO / "data")  # decompresses the vendored .gz files once
    images, labels = load_mnist(REPO / "data", train=True)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))
    out = []
    for i in range(count):
        idx = order[i * batch_size : (i + 1) * batch_size]
        out.append((images[idx].unsqueeze(1).float() / 255, labels[idx]))
    return out


def make_step(
    net: nn.Module, channels_last: bool, bf16: bool = False
) -> Callable[[torch.Tensor, torch.Tensor], None]:
    """One training step; ``bf16`` runs the forward and the loss under ``torch.autocast("cpu", torch.bfloat16)``
    as Lightning's ``precision: bf16-mixed`` does (weights, gradients and optimizer stay float32)."""
    optimizer = KerasRMSprop(net.parameters(), lr=0.001, rho=0.9, eps=1e-7)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def time_steps(step, data, setting: str = "") -> float:
    """Mean ms/step of ``step`` over ``data`` under ``setting`` ("flush denormals", "oneDNN off")."""
    torch.set_flush_denormal(setting == "flush denormals")
    with torch.backends.mkldnn.flags(enabled=setting != "oneDNN off"):
        start = time.perf_counter()
        for x, y in data:
            step(x, y)
        elapsed = time.perf_counter() - start
    torch.set_flush_denormal(False)
    return elapsed / len(data) * 1e3


def profile(step, data) -> None:
    from torch.profiler import ProfilerActivity, record_function
    from torch.profiler import profile as torch_profile

    net_step = step
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for x, y in data:
            with record_function("step"):
                net_step(x, y)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    parser.add_argument("--steps", type=int, default=40, help="timed steps per variant per round")
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads (default 2)")
    parser.add_argument("--only", default="", help="comma-separated substrings of variant names to run")
    parser.add_argument("--profile", action="store_true", help="profile the default variant afterwards")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = plain_cnn()
    variants = make_variants(base)
    if args.only:
        keys = [k.strip() for k in args.only.split(",")]
        variants = {
            n: v for n, v in variants.items() if n.startswith("baseline") or any(k in n for k in keys)
        }
    data = batches(args.steps)
    steps = {
        name: make_step(net.train(), cl, bf16=setting == "bf16 autocast")
        for name, (net, cl, setting) in variants.items()
    }
    for name, step in steps.items():  # warm-up: allocator, oneDNN primitive caches, optimizer state
        time_steps(step, data[:5], variants[name][2])
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, step in steps.items():
            results[name].append(time_steps(step, data, variants[name][2]))
    base_ms = statistics.median(next(iter(results.values())))
    print(
        f"torch {torch.__version__}, {args.threads} threads, batch 50, RMSprop, {args.steps} steps x "
        f"{args.rounds} interleaved rounds (shared machine: compare ratios, not absolute ms)\n"
    )
    print("| variant | median ms/step | all rounds | vs baseline |")
    print("|---|---|---|---|")
    for name, times in results.items():
        med = statistics.median(times)
        print(f"| {name} | {med:.2f} | {' '.join(f'{t:.1f}' for t in times)} | {med / base_ms:.2f} |")
    if args.profile:
        default = make_step(cnn_network().train(), False)
        time_steps(default, data[:5])
        print("\ndefault variant (cnn_network()), forward / backward / optimizer, median ms:\n")
        profile_split(cnn_network().train(), data)
        print("torch.profiler, by self CPU time:\n")
        profile(default, data)


def profile_split(net: nn.Module, data) -> None:
    """Median ms of forward, backward and optimizer step of ``net`` over ``data``."""
    optimizer = KerasRMSprop(net.parameters(), lr=0.001, rho=0.9, eps=1e-7)
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": []}
    for x, y in data:
        t0 = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2), strict=True):
            parts[key].append(value * 1e3)
    print(" | ".join(f"{k} {statistics.median(v):.2f} ms" for k, v in parts.items()) + "\n")


if __name__ == "__main__":
    main()
