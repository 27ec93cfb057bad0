"""Does a small model train faster on one intra-op CPU thread than on PyTorch's default?

Runs ``python -m lit_mnist fit`` on each config (all 60,000 images, as ``vs_keras.py`` does) with
``OMP_NUM_THREADS=1`` and with the default thread count, interleaved over ``--rounds`` rounds, and
prints the steady s/epoch of each and their median ratio as a Markdown table.

    python benchmarks/threads.py --models mlp scratch --rounds 3 --epochs 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

import torch
from vs_keras import MODELS, run_lit, steady  # benchmarks/ is the script's folder, first on sys.path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["mlp", "scratch"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    default = torch.get_num_threads()
    times: dict[str, dict[int, list[float]]] = {m: {1: [], default: []} for m in args.models}
    with tempfile.TemporaryDirectory(prefix="threads_") as log_dir:
        for round_ in range(1, args.rounds + 1):
            for model in args.models:
                for threads in (1, default):
                    os.environ["OMP_NUM_THREADS"] = str(threads)
                    epoch_times, _ = run_lit(model, args.epochs, [], log_dir)
                    times[model][threads].append(steady(epoch_times))
                    print(f"round {round_} {model} {threads} thread(s): {times[model][threads][-1]:.3f} s/epoch",
                          file=sys.stderr, flush=True)  # fmt: skip
    print(f"| config | 1 thread (s/epoch) | {default} threads (s/epoch) | median ratio 1 / {default} |")
    print("|---|---|---|---|")
    for model, by_threads in times.items():
        one, many = by_threads[1], by_threads[default]
        ratio = statistics.median(a / b for a, b in zip(one, many, strict=True))
        print(f"| {model} | {statistics.median(one):.2f} | {statistics.median(many):.2f} | {ratio:.2f} |")


if __name__ == "__main__":
    main()
