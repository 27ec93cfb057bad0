"""``fit`` beside other work: each config alone and beside 1 and 2 CPU-bound processes, per thread policy.

    python benchmarks/busy.py [--configs mlp cnn ...] [--rounds 3] [--neighbours 0 1 2]
                              [--policies project default one-thread ...] [--batches 300] [--late]
                              [--out FILE]

Every run is ``python -m lit_mnist fit --config configs/<config>.yaml`` for one epoch of ``--batches``
training batches without validation, in a fresh process, timed by ``timing.EpochSeconds`` (the
epoch's wall time, not the process's start-up). A neighbour is ``python -c "while True: pass"``,
which this script starts just before a run and ends just after it. Each round runs every config
under every policy at every neighbour count, in turn, so that the machine's drift falls on all
cells alike.

A policy is what the process finds in its environment (``POLICIES``): ``project`` is nothing,
lit_mnist's own choice (``lit_mnist.threads``); ``default`` is what lit_mnist did before it chose
(PyTorch's thread count and GNU OpenMP's default wait, spelled out so that the project's choice
steps aside); the others are the candidates measured against them. Variables the user set
(``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT``) are removed
from every run first.

Prints a Markdown table: per config, policy and neighbour count the median seconds over the
rounds, its ratio to the config's "alone, default" median, and the worst ratio to the same policy's
alone run of the same round.
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import EPOCH_LINE, BenchmarkError, cpu_model, run_script, start_neighbours, stop_neighbours

REPO = Path(__file__).resolve().parents[1]
#: Every model config but ``linear_blobs`` (one batch of 2-D points per epoch: nothing to time).
CONFIGS = ("mlp", "dropout", "dense512", "scratch", "linear", "fc_sigmoid", "modern_mlp", "cnn", "speedrun")
#: What the user may have set, removed from every run so that only the policy's variables count.
USER_SETTINGS = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
CORES = len(os.sched_getaffinity(0))
#: name -> environment variables of the run.
POLICIES = {
    "project": {},
    "default": {"OMP_NUM_THREADS": str(CORES), "GOMP_SPINCOUNT": "300000"},
    "one-thread": {"OMP_NUM_THREADS": "1", "GOMP_SPINCOUNT": "300000"},
    "passive": {"OMP_NUM_THREADS": str(CORES), "OMP_WAIT_POLICY": "PASSIVE"},
    "spin-1000": {"OMP_NUM_THREADS": str(CORES), "GOMP_SPINCOUNT": "1000"},
    "spin-10000": {"OMP_NUM_THREADS": str(CORES), "GOMP_SPINCOUNT": "10000"},
}


def run_fit(
    config: str, batches: int, policy: str, neighbours: int, log_dir: str, late: bool = False
) -> float:
    """Seconds of one epoch of ``batches`` training batches, beside ``neighbours`` busy processes.

    The neighbours start before the command, or with ``late`` once it has printed the model's summary
    (when training starts, after the process chose its threads).
    """
    env = {k: v for k, v in os.environ.items() if k not in USER_SETTINGS}
    env.update(POLICIES[policy])
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "benchmarks"), env.get("PYTHONPATH", "")])
    command = [
        sys.executable, "-m", "lit_mnist", "fit", "--config", f"configs/{config}.yaml",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(batches),
        "--trainer.limit_val_batches", "0", "--test_after_fit", "false",
        "--trainer.logger.init_args.save_dir", log_dir, "--trainer.callbacks+=timing.EpochSeconds",
    ]  # fmt: skip
    busy = [] if late else start_neighbours(neighbours)
    lines: list[str] = []
    try:
        fit = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)  # fmt: skip
        assert fit.stdout is not None
        for line in fit.stdout:
            lines.append(line)
            if late and not busy and line.startswith("Non-trainable params"):
                busy = start_neighbours(neighbours)
        fit.wait()
    finally:
        stop_neighbours(busy)
    found = EPOCH_LINE.search("".join(lines))
    if fit.returncode != 0 or found is None:
        tail = [line.strip() for line in lines if line.strip()][-1:] or ["no output"]
        raise BenchmarkError(f"{config} under {policy} exited with {fit.returncode}: {tail[0]}")
    return float(found.group(2))


def table(times: dict[tuple[str, str, int], list[float]], args: argparse.Namespace) -> str:
    """The Markdown report of ``times`` ((config, policy, neighbours) -> seconds per round)."""
    import torch

    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Measured {now} with `python benchmarks/busy.py --rounds {args.rounds} --batches {args.batches}"
        f"{' --late' if args.late else ''}` "
        f"on {cpu_model()}, {CORES} cores; torch {torch.__version__}. Seconds of one epoch of "
        f"{args.batches} batches (median of {args.rounds} rounds); × default alone: that median over the "
        "config's alone run under `default`; worst × own alone: the largest ratio, over the rounds, to "
        "the same policy's alone run of the same round.",
        "",
        "| config | policy | neighbours | seconds | × default alone | worst × own alone |",
        "|---|---|---|---|---|---|",
    ]
    for config in args.configs:
        reference = times.get((config, "default", 0))
        for policy in args.policies:
            alone = times.get((config, policy, 0))
            for n in args.neighbours:
                runs = times.get((config, policy, n))
                if not runs:
                    continue
                median = statistics.median(runs)
                vs_default = f"{median / statistics.median(reference):.2f}" if reference else "—"
                worst = f"{max(t / a for t, a in zip(runs, alone, strict=False)):.2f}" if alone and n else "—"
                lines.append(f"| {config} | {policy} | {n} | {median:.2f} | {vs_default} | {worst} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), metavar="CONFIG")
    parser.add_argument("--policies", nargs="+", default=["default", "project"], metavar="POLICY",
                        help=f"of {', '.join(POLICIES)} (default: default project)")  # fmt: skip
    parser.add_argument("--neighbours", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batches", type=int, default=300, help="training batches per run (default 300)")
    parser.add_argument("--late", action="store_true",
                        help="start the neighbours when training starts, after the process chose its threads")  # fmt: skip
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown table to this file")
    args = parser.parse_args(argv)
    unknown = [c for c in args.configs if not (REPO / "configs" / f"{c}.yaml").exists()]
    unknown += [p for p in args.policies if p not in POLICIES]
    if unknown:
        raise BenchmarkError(f"unknown config or policy {unknown[0]!r}")
    if args.rounds < 1 or args.batches < 1 or any(n < 0 for n in args.neighbours):
        raise BenchmarkError("--rounds and --batches must be 1 or more, --neighbours 0 or more")
    if 0 not in args.neighbours:
        args.neighbours = [0, *args.neighbours]  # every ratio needs the alone run
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    times: dict[tuple[str, str, int], list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="busy_") as log_dir:
        for round_ in range(1, args.rounds + 1):
            for config in args.configs:
                for n in args.neighbours:
                    for policy in args.policies:
                        seconds = run_fit(config, args.batches, policy, n, log_dir, args.late)
                        times.setdefault((config, policy, n), []).append(seconds)
                        print(f"round {round_}/{args.rounds} {config} {policy} beside {n}: {seconds:.2f} s",
                              file=sys.stderr, flush=True)  # fmt: skip
    report = table(times, args)
    print(report, end="")
    if args.out is not None:
        args.out.write_text(report)


if __name__ == "__main__":
    run_script(main)
