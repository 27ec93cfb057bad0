"""Train every tutorial's config at its full length and write the reproduction table (Markdown).

    python benchmarks/reproduce.py                       # all configs, random seeds 0-2, on the CPU
    python benchmarks/reproduce.py --configs cnn modern_mlp --seeds 0 --accelerator gpu

Each run is ``python -m lit_mnist fit --config configs/<name>.yaml --seed_everything <seed>`` in its
own process, which trains, keeps the best checkpoint by validation accuracy and tests it; the table
reports the mean ± standard deviation of those test accuracies, next to what the tutorial reports
and what its Keras code gives today (``docs/tutorials.md``). Arguments after ``--`` go to every
``fit``; ``--json PATH`` also writes the table's figures, run by run, to PATH. Not part of
``make test``.
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

REPO = Path(__file__).resolve().parents[1]

#: config: (tutorial, as docs/tutorials.md names it; what it reports; what its Keras code gives
#: today) — the port must reach the higher of the two within 0.3 points.
TUTORIAL_NUMBERS = {
    "linear_blobs": ('"Chapter 3"', "loss ≈ 0.025", "99.80 %, loss 0.0268"),
    "linear": ('"What is TensorFlow?"', "— (a plot only)", 91.90),
    "scratch": ('"A first look"', "0.82", 81.94),
    "dropout": ("Musolesi's slides", "—", 97.71),
    "mlp": ('"Practical 5"', "97.71 %", 97.46),
    "dense512": ('"A first look"', "95.14 % (a leftover)", 98.24),
    "fc_sigmoid": ('"What is TensorFlow?"', "97.86 %", 98.10),
    "modern_mlp": ('"What is TensorFlow?"', "98.52 %", 98.58),
    "cnn": ('"What is TensorFlow?"', "99.13 %", 99.26),
}


def run(
    config: str, seed: int, accelerator: str, logs: Path, cli_args: tuple[str, ...] = ()
) -> tuple[float, float, float]:
    """Test accuracy (%), test loss and wall time (s) of one full ``fit`` (``cli_args`` appended)."""
    command = [sys.executable, "-m", "lit_mnist", "fit", "--config", f"configs/{config}.yaml"]
    command += ["--seed_everything", str(seed), "--trainer.accelerator", accelerator]
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
    parser.add_argument("--output", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("cli_args", nargs="*", help="overrides for every fit, after --")
    args = parser.parse_args()

    device = torch.cuda.get_device_name() if args.accelerator == "gpu" else f"{platform.machine()} CPU"
    lines = [
        f"Measured {datetime.date.today()} on {device} ({torch.get_num_threads()} threads), torch {torch.__version__}.",
        "",
        "| config | tutorial | tutorial reports | its Keras code today | lit_mnist test accuracy | epochs | wall time per run |",
        "|---|---|---|---|---|---|---|",
    ]
    print("\n".join(lines), flush=True)
    figures: dict = {"device": device, "torch": torch.__version__, "cli_args": args.cli_args, "configs": []}
    with tempfile.TemporaryDirectory() as logs:
        for config in args.configs:
            results = [
                run(config, seed, args.accelerator, Path(logs), tuple(args.cli_args)) for seed in args.seeds
            ]
            accs = [r[0] for r in results]
            spread = f" ± {statistics.stdev(accs):.2f}" if len(accs) > 1 else ""
            mean = f"{statistics.mean(accs):.2f}{spread} %"
            if config == "linear_blobs":
                mean += f", loss {statistics.mean(r[1] for r in results):.4f}"
            tutorial, text, keras = TUTORIAL_NUMBERS[config]
            epochs = yaml.safe_load((REPO / "configs" / f"{config}.yaml").read_text())["trainer"][
                "max_epochs"
            ]
            wall = statistics.mean(r[2] for r in results)
            keras_today = keras if isinstance(keras, str) else f"{keras:.2f} %"
            row = f"| {config} | {tutorial} | {text} | {keras_today} | {mean} (n={len(accs)}) | {epochs} | {wall:.0f} s |"
            lines.append(row)
            print(row, flush=True)
            runs = [
                {"seed": s, "test_acc": r[0], "test_loss": r[1], "wall_s": r[2]}
                for s, r in zip(args.seeds, results, strict=True)
            ]
            figures["configs"].append(
                {
                    "config": config,
                    "epochs": epochs,
                    "runs": runs,
                    "mean_test_acc": statistics.mean(accs),
                    "mean_wall_s": wall,
                }
            )
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
