"""Two settings of ``fit`` against each other, interleaved: what an option costs per epoch.

    python benchmarks/ab_fit.py --b "--data.augment {}"                           # augmentation, the CNN
    python benchmarks/ab_fit.py --configs mlp cnn --b "--model.init_args.init pytorch" --rounds 5

Each round runs, for every config, ``python -m lit_mnist fit --config configs/<config>.yaml`` for
``--epochs`` epochs of ``--batches`` batches with the options ``--a`` and then ``--b`` (the order
alternates from round to round), each timed by ``timing.EpochSeconds`` as ``vs_keras.py`` runs
lit_mnist; a run's time is the median of its epochs after the first. Printed: each setting's median
s/epoch over the rounds and the median (and range) of the rounds' ratios b / a. Not part of
``make test``.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import statistics
import tempfile

import torch
from timing import cpu_model, run_script
from vs_keras import run_lit, steady


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="*", default=["cnn"])
    parser.add_argument("--a", default="", help="fit options of setting a (one string; default: none)")
    parser.add_argument("--b", required=True, help="fit options of setting b (one string)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()

    print(
        f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {cpu_model()} ({platform.machine()}), "
        f"torch {torch.__version__}; {args.rounds} rounds of {args.epochs} epochs of {args.batches} batches; "
        f"a: `{args.a}`, b: `{args.b}`.\n"
    )
    settings = {"a": shlex.split(args.a), "b": shlex.split(args.b)}
    times: dict[tuple[str, str], list[float]] = {}
    ratios: dict[str, list[float]] = {config: [] for config in args.configs}
    with tempfile.TemporaryDirectory() as logs:
        for round_ in range(args.rounds):
            for config in args.configs:
                got = {}
                for setting in ("a", "b") if round_ % 2 == 0 else ("b", "a"):
                    extra = ["--trainer.limit_train_batches", str(args.batches), *settings[setting]]
                    got[setting] = steady(run_lit(config, args.epochs, extra, logs)[0])
                    times.setdefault((config, setting), []).append(got[setting])
                ratios[config].append(got["b"] / got["a"])
                print(f"round {round_ + 1} {config}: a {got['a']:.3f} s, b {got['b']:.3f} s", flush=True)
    print("\n| config | a: s/epoch | b: s/epoch | b / a (median of rounds, range) |")
    print("|---|---|---|---|")
    for config in args.configs:
        a, b, r = times[(config, "a")], times[(config, "b")], ratios[config]
        print(
            f"| {config} | {statistics.median(a):.3f} | {statistics.median(b):.3f} | "
            f"{statistics.median(r):.3f} ({min(r):.3f}–{max(r):.3f}) |"
        )


if __name__ == "__main__":
    run_script(main)
