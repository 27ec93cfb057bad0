"""Each tutorial model's own Keras code against ``python -m lit_mnist fit`` on its config, interleaved.

    python benchmarks/vs_keras.py [--models mlp cnn ...] [--rounds 3] [--epochs N] [--out FILE]
                                  [--neighbours 0 1] [--lit-only] [-- extra lit_mnist fit arguments]

The Keras side is ``benchmarks/keras/<model>.py`` (the tutorials' code, see its docstrings), run in
a separate virtual environment with ``tensorflow==2.21.0`` that this script creates on first use
(``benchmarks/.keras-venv``, git-ignored; TensorFlow is never a project dependency). The lit side
is ``python -m lit_mnist fit --config configs/<model>.yaml --data.val_size 0
--trainer.max_epochs E --checkpoint.monitor null``, plus a callback (``timing.EpochSeconds``) that
prints each training epoch's wall time. Both train on all 60,000 images, each choosing its own
threads (TensorFlow's defaults; lit_mnist's ``--threads``), and test on the 10,000 test images. Each round runs, for every model and every count of
``--neighbours`` (default 0), Keras then lit, each beside that many CPU-bound processes
(``timing.neighbours``) started just before it and ended just after. Round ``r`` (from 1) seeds both
sides with ``r - 1`` (Keras' ``--seed``, lit's ``--seed_everything``), so the accuracies of three rounds
are those of random seeds 0, 1 and 2 (lit's ``-- --seed_everything N`` overrides it).

Printed per model and neighbour count: the steady s/epoch of each side (per run the median of the epochs after the
first; the table gives the median over rounds and the range), the median over rounds of the ratio
lit/Keras of the two runs of that round, both test accuracies (median over rounds and the range), and beside
neighbours how much they slow Keras itself (its median s/epoch over its median alone), as a Markdown
table with the date, the machine and the versions.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
from timing import EPOCH_LINE, BenchmarkError, cpu_model, neighbours, run_script

REPO = Path(__file__).resolve().parents[1]
TENSORFLOW = "tensorflow==2.21.0"
#: model -> (default epochs, batch size, target ratio lit/Keras).
MODELS = {
    "mlp": (3, 32, 0.8),
    "dropout": (3, 32, 0.8),
    "dense512": (3, 128, 0.8),
    "scratch": (4, 128, 0.8),
    "linear": (5, 200, 0.8),
    "fc_sigmoid": (3, 50, 0.8),
    "modern_mlp": (3, 100, 0.8),
    "cnn": (3, 50, 0.8),
}
#: The target ratio lit/Keras beside busy neighbours: the models whose steps are Python-bound keep
#: theirs, the others must not be slower than Keras.
BUSY_TARGETS = {"mlp": 0.8, "dropout": 0.8, "scratch": 0.8}
KERAS_ACC_LINE = re.compile(r"^vs_keras test_acc=([\d.]+)$", re.MULTILINE)
LIT_ACC_LINE = re.compile(r"^Test accuracy ([\d.]+) %", re.MULTILINE)


def keras_python(venv: Path) -> Path:
    """The TensorFlow venv's python, creating the venv (``python -m venv`` + pip) on first use."""
    python, stamp = venv / "bin" / "python", venv / f".installed-{TENSORFLOW}"
    if stamp.exists() and python.exists():
        return python
    print(f"Creating {venv} with {TENSORFLOW} (first use; a few minutes)", file=sys.stderr, flush=True)
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", TENSORFLOW],
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as err:
        raise BenchmarkError(f"could not create the TensorFlow venv {venv}: {err}") from None
    stamp.touch()
    return python


def _run(command: list[str], env: dict[str, str], what: str) -> str:
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise BenchmarkError(f"{what} exited with {result.returncode}: {tail[0]}")
    return result.stdout


def parse_run(output: str, accuracy_line: re.Pattern[str], what: str) -> tuple[list[float], float]:
    """Per-epoch seconds and the test accuracy (percent) from one run's output."""
    epochs = [(int(k), float(s)) for k, s, _ in EPOCH_LINE.findall(output)]
    found = accuracy_line.search(output)
    if not epochs or found is None:
        raise BenchmarkError(f"{what} printed no epoch times or no test accuracy")
    return [s for _, s in sorted(epochs)], float(found.group(1))


def steady(times: list[float]) -> float:
    """Median of the epochs after the first (the only epoch when there is one)."""
    return statistics.median(times[1:] or times)


def run_keras(
    python: Path, model: str, epochs: int, extra: tuple[str, ...] = ()
) -> tuple[list[float], float]:
    """Per-epoch seconds and test accuracy of ``benchmarks/keras/<model>.py`` (``extra``: its other options)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow")
    command = [str(python), f"benchmarks/keras/{model}.py", "--epochs", str(epochs), *extra]
    return parse_run(_run(command, env, f"keras {model}"), KERAS_ACC_LINE, f"keras {model}")


def run_lit(model: str, epochs: int, extra: list[str], log_dir: str) -> tuple[list[float], float]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "benchmarks"), env.get("PYTHONPATH", "")])
    command = [
        sys.executable, "-m", "lit_mnist", "fit", "--config", f"configs/{model}.yaml",
        "--data.val_size", "0", "--trainer.max_epochs", str(epochs),
        # no validation: keep the final weights (test_after_fit tests them)
        "--checkpoint.monitor", "null", "--checkpoint.filename", "epoch{epoch:02d}",
        "--trainer.logger.init_args.save_dir", log_dir,
        "--trainer.callbacks+=timing.EpochSeconds", *extra,
    ]  # fmt: skip
    return parse_run(_run(command, env, f"lit_mnist {model}"), LIT_ACC_LINE, f"lit_mnist {model}")


def _spread(values: list[float], digits: int = 2) -> str:
    if not values:
        return "—"
    median = f"{statistics.median(values):.{digits}f}"
    if len(values) == 1:
        return median
    return f"{median} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def _versions(python: Path | None) -> str:
    import torch

    parts = [
        f"Python {platform.python_version()}",
        f"torch {torch.__version__}",
        f"lightning {L.__version__}",
    ]
    if python is not None:
        out = subprocess.run(
            [str(python), "-c", "import tensorflow as t, keras as k; print(t.__version__, k.__version__)"],
            capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        ).stdout.split()  # fmt: skip
        if len(out) == 2:
            parts += [f"TensorFlow {out[0]}", f"Keras {out[1]}"]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    if commit.returncode == 0:
        parts.append(f"lit_mnist {commit.stdout.strip()}")
    return ", ".join(parts)


def table(results: dict[tuple[str, int], dict[str, Any]], rounds: int, python: Path | None) -> str:
    """The Markdown report of the measured ``results`` (per model and neighbour count: epochs and per-round runs)."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Measured {now} with `python benchmarks/vs_keras.py` ({rounds} interleaved rounds, round r with random seed r − 1, "
        f"all 60,000 training images, each side choosing its own threads) on {cpu_model()}, {os.cpu_count()} cores; "
        f"{_versions(python)}.",
        "",
        "| model | neighbours | epochs | batch | Keras s/epoch | lit_mnist s/epoch | ratio lit/Keras | target | Keras test acc | lit_mnist test acc | Keras × its alone |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (model, n), r in results.items():
        keras, lit = r["keras"], r["lit"]
        ratios = [steady(li[0]) / steady(ke[0]) for ke, li in zip(keras, lit, strict=False)]
        target = MODELS[model][2] if n == 0 else BUSY_TARGETS.get(model, 1.0)
        met = "—" if not ratios else ("met" if statistics.median(ratios) <= target else "not met")
        alone = results.get((model, 0), {}).get("keras")
        slowed = "—"
        if n and keras and alone:
            slowed = f"{statistics.median(steady(t) for t, _ in keras) / statistics.median(steady(t) for t, _ in alone):.2f}"
        lines.append(
            f"| {model} | {n} | {r['epochs']} | {MODELS[model][1]} | {_spread([steady(t) for t, _ in keras])} "
            f"| {_spread([steady(t) for t, _ in lit])} | {_spread(ratios)} | ≤ {target}: {met} "
            f"| {_spread([a for _, a in keras])} % | {_spread([a for _, a in lit])} % | {slowed} |".replace(
                "| — % ", "| — "
            )
        )
        if r["failed"]:
            lines.append(f"| {model} failed: {r['failed']} | | | | | | | | | | |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--models", nargs="+", default=list(MODELS), metavar="MODEL", help=f"of {', '.join(MODELS)}"
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved Keras/lit rounds (default 3)")
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs of every run (default: per model, 3 to 5)"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table to this file")
    parser.add_argument("--lit-only", action="store_true", help="run only the lit_mnist side (no TensorFlow)")
    parser.add_argument(
        "--neighbours", nargs="+", type=int, default=[0], metavar="N",
        help="run each round beside each of these counts of CPU-bound processes (default: 0)",
    )  # fmt: skip
    parser.add_argument("--keras-venv", type=Path, default=REPO / "benchmarks" / ".keras-venv")
    args = parser.parse_args(argv)
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        raise BenchmarkError(f"unknown model {unknown[0]!r}: choose from {', '.join(MODELS)}")
    if args.rounds < 1 or (args.epochs is not None and args.epochs < 1) or min(args.neighbours) < 0:
        raise BenchmarkError("--rounds and --epochs must be 1 or more, --neighbours 0 or more")
    return args, extra


def main(argv: list[str] | None = None) -> None:
    args, extra = parse_args(sys.argv[1:] if argv is None else argv)
    python = None if args.lit_only else keras_python(args.keras_venv)
    results = {
        (m, n): {"epochs": args.epochs or MODELS[m][0], "keras": [], "lit": [], "failed": ""}
        for m in args.models
        for n in args.neighbours
    }
    with tempfile.TemporaryDirectory(prefix="vs_keras_") as log_dir:
        for round_ in range(1, args.rounds + 1):
            for (model, n), r in results.items():
                if r["failed"]:
                    continue
                try:
                    if python is not None:
                        with neighbours(n):
                            r["keras"].append(
                                run_keras(python, model, r["epochs"], ("--seed", str(round_ - 1)))
                            )
                    with neighbours(n):
                        seed = ["--seed_everything", str(round_ - 1)]
                        r["lit"].append(run_lit(model, r["epochs"], [*seed, *extra], log_dir))
                except BenchmarkError as err:
                    r["failed"] = str(err)
                    print(f"round {round_} {model} beside {n}: {err}", file=sys.stderr, flush=True)
                    continue
                keras = f"Keras {steady(r['keras'][-1][0]):.3f} s/epoch, " if python is not None else ""
                print(
                    f"round {round_}/{args.rounds} {model} beside {n}: {keras}lit {steady(r['lit'][-1][0]):.3f} s/epoch",
                    file=sys.stderr, flush=True,
                )  # fmt: skip
    report = table(results, args.rounds, python)
    print(report, end="")
    if args.out is not None:
        args.out.write_text(report)
    if any(r["failed"] for r in results.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    run_script(main)
