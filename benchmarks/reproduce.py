"""Train every tutorial's config at its full length and write the reproduction table (Markdown).

    python benchmarks/reproduce.py                       # all configs, random seeds 0-2, on the CPU
    python benchmarks/reproduce.py --configs cnn modern_mlp --seeds 0 --accelerator gpu

Each run is ``python -m lit_mnist fit --config configs/<name>.yaml --seed_everything <seed> --threads
<threads>`` in its own process, which trains, keeps the best checkpoint by validation accuracy (the
last one where the config has no validation set) and tests it; the table
reports the mean ± standard deviation of those test accuracies, next to what the tutorial reports,
what its Keras code gives today (``docs/tutorials.md``) and the target, the higher of the two: the
mean must be at or above it. Arguments after ``--`` go to every
``fit``; ``--json PATH`` also writes the table's figures, run by run, to PATH. ``--keras`` also
runs the tutorial's own Keras code (``benchmarks/keras/<config>.py``, in ``vs_keras.py``'s
TensorFlow venv) with ``--seed`` set to each of the same seeds, at full length, on its first
``--keras-train-size`` training images (all 60,000 by default; 55,000 is the TF1 tutorial's split),
and adds the mean of its test accuracies: what the tutorial's code gives here over the same seeds
(``--keras-only``: that column alone, no ``fit``).
Not part of ``make test``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml
from timing import add_threads_argument, cpu_model, run_script
from vs_keras import keras_python, run_keras

REPO = Path(__file__).resolve().parents[1]

#: config: (tutorial, as docs/tutorials.md names it; what it reports; what its Keras code gives
#: today; the target) — the mean test accuracy over the seeds must be at or above the target, the
#: higher of what the tutorial reports and what its Keras code gives today.
TUTORIAL_NUMBERS = {
    "linear_blobs": ('"Chapter 3"', "loss ≈ 0.025", "99.80 %, loss 0.0268", 99.80),
    "linear": ('"What is TensorFlow?"', "— (a plot only)", "91.90 %", 91.90),
    "scratch": ('"A first look"', "0.82", "81.94 %", 82.00),
    "dropout": ("Musolesi's slides", "—", "97.71 %", 97.71),
    "mlp": ('"Practical 5"', "97.71 %", "97.46 %", 97.71),
    "dense512": ('"A first look"', "95.14 % (a leftover)", "98.24 %", 98.24),
    "fc_sigmoid": ('"What is TensorFlow?"', "97.86 %", "98.10 %", 98.10),
    "modern_mlp": ('"What is TensorFlow?"', "98.52 %", "98.58 %", 98.58),
    "cnn": ('"What is TensorFlow?"', "99.13 %", "99.26 %", 99.26),
}


def run(
    config: str, seed: int, accelerator: str, logs: Path, threads: int, cli_args: tuple[str, ...] = ()
) -> tuple[float, float, float]:
    """Test accuracy (%), test loss and wall time (s) of one full ``fit`` on ``threads`` CPU threads (``cli_args`` appended)."""
    command = [sys.executable, "-m", "lit_mnist", "fit", "--config", f"configs/{config}.yaml"]
    command += ["--seed_everything", str(seed), "--trainer.accelerator", accelerator]
    command += ["--threads", str(threads)]
    command += ["--trainer.logger.init_args.save_dir", str(logs), *cli_args]
    start = time.monotonic()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    wall = time.monotonic() - start
    if result.returncode != 0:
        raise SystemExit(f"{config} (seed {seed}) failed:\n{result.stderr[-3000:]}")
    # the CLI's own line after testing (Lightning's results table is drawn with rich when it is installed)
    found = re.search(r"^Test accuracy ([\d.]+) %, loss ([\d.]+)$", result.stdout, re.M)
    if found is None:
        raise SystemExit(f"{config} (seed {seed}) printed no test accuracy:\n{result.stdout[-3000:]}")
    return float(found.group(1)), float(found.group(2)), wall


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="*", default=list(TUTORIAL_NUMBERS))
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--accelerator", default="cpu")
    add_threads_argument(parser)
    parser.add_argument("--output", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--keras", action="store_true", help="also run the tutorial's Keras code, same seeds")
    parser.add_argument("--keras-only", action="store_true", help="with --keras: only the Keras code")
    parser.add_argument("--keras-train-size", type=int, default=60000, help="training images for --keras")
    parser.add_argument("--keras-venv", type=Path, default=REPO / "benchmarks" / ".keras-venv")
    parser.add_argument("cli_args", nargs="*", help="overrides for every fit, after --")
    args = parser.parse_args()
    python = keras_python(args.keras_venv) if args.keras or args.keras_only else None

    device = (
        torch.cuda.get_device_name() if args.accelerator == "gpu" else f"{cpu_model()} ({platform.machine()})"
    )
    lines = [
        f"Measured {datetime.date.today()} on {device} ({args.threads} threads), torch {torch.__version__}.",
        "",
        "| config | tutorial | tutorial reports | its Keras code today | target | lit_mnist test accuracy | epochs | wall time per run |"
        + (f" its Keras code, same seeds, {args.keras_train_size:,} images |" if python else ""),
        "|---|---|---|---|---|---|---|---|" + ("---|" if python else ""),
    ]
    print("\n".join(lines), flush=True)
    figures: dict = {"device": device, "torch": torch.__version__, "cli_args": args.cli_args, "configs": []}
    with tempfile.TemporaryDirectory() as logs:
        for config in args.configs:
            results = [
                run(config, seed, args.accelerator, Path(logs), args.threads, tuple(args.cli_args))
                for seed in ([] if args.keras_only else args.seeds)
            ]
            accs = [r[0] for r in results]
            tutorial, text, keras, target = TUTORIAL_NUMBERS[config]
            epochs = yaml.safe_load((REPO / "configs" / f"{config}.yaml").read_text())["trainer"][
                "max_epochs"
            ]
            lit, wall = "— (--keras-only)", 0.0
            if results:
                spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
                verdict = "met" if statistics.mean(accs) >= target else "**not met**"
                lit = f"{statistics.mean(accs):.2f}{spread} %"
                if config == "linear_blobs":
                    lit += f", loss {statistics.mean(r[1] for r in results):.4f}"
                lit += f" (n={len(accs)}): {verdict}"
                wall = statistics.mean(r[2] for r in results)
            row = f"| {config} | {tutorial} | {text} | {keras} | {target:.2f} % | {lit} | {epochs} | {wall:.0f} s |"
            keras_accs = []
            if python is not None and (REPO / "benchmarks" / "keras" / f"{config}.py").exists():
                extra = ("--train-size", str(args.keras_train_size))
                keras_accs = [
                    run_keras(python, config, epochs, (*extra, "--seed", str(s)))[1] for s in args.seeds
                ]
                keras_spread = f" ± {statistics.stdev(keras_accs):.2f}" if len(keras_accs) > 1 else ""
                row += f" {statistics.mean(keras_accs):.2f}{keras_spread} % (n={len(keras_accs)}) |"
            elif python is not None:
                row += " — |"
            lines.append(row)
            print(row, flush=True)
            runs = [
                {"seed": s, "test_acc": r[0], "test_loss": r[1], "wall_s": r[2]}
                for s, r in zip(args.seeds[: len(results)], results, strict=True)
            ]
            figures["configs"].append(
                {
                    "config": config,
                    "epochs": epochs,
                    "runs": runs,
                    "mean_test_acc": statistics.mean(accs) if accs else None,
                    "target": target,
                    "keras_test_acc": keras_accs,
                    "mean_wall_s": wall,
                }
            )
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    run_script(main)
