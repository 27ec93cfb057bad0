"""Where a config's training step spends its time: py-spy on ``python -m lit_mnist fit``, by part.

    python benchmarks/profile_fit.py --config configs/mlp.yaml [--batches 1000] [--rate 200]
                                     [--out FILE] [-- extra fit arguments]

Runs ``python -m lit_mnist fit --config CONFIG --data.val_size 0 --trainer.max_epochs 1
--trainer.limit_train_batches N --checkpoint.monitor null --test_after_fit false`` under
``py-spy record --nonblocking`` (a dev dependency) and sorts every sample taken inside Lightning's
training loop into the part of the step its deepest recognised frame belongs to (``PARTS``): the network's forward, the loss, the metric updates, autograd's
backward, the optimizer's kernels and its Python, ``zero_grad``, cutting and scaling the
batch, callbacks, and the rest of Lightning's loop. Prints a Markdown table of each part's share
and ms per step (the loop's wall time, measured by py-spy's sample count, over N).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: Samples whose stack holds this frame are inside Lightning's training loop.
LOOP = "advance (lightning/pytorch/loops/training_epoch_loop.py"
REST = "Lightning's loop, the rest"
OPTIMIZER_PYTHON = "optimizer Python (step, state, profiling hooks)"
#: (part, frame pattern): a sample counts for the part of its deepest frame that matches one (the
#: first pattern that matches that frame). Lightning's optimizer closure runs inside
#: ``Optimizer.step``: a sample with Lightning frames below the optimizer's is the loop's, not
#: the optimizer's.
PARTS = [
    ("network forward", r"\.forward \(lit_mnist/models/"),
    ("loss", r"compute_loss \(lit_mnist/"),
    (
        "metric updates (torchmetrics) and probabilities",
        r"_update_metrics \(lit_mnist/|probabilities \(lit_mnist/",
    ),
    ("autograd backward", r"^backward \(torch/autograd/__init__\.py"),
    ("hand-written update (scratch, linear)", r"\(lit_mnist/models/hand_sgd\.py"),
    ("optimizer kernels", r"^_(fused|multi_tensor|single_tensor)_\w+ \(torch/optim/"),
    ("optimizer's CUDA check", r"_accelerator_graph_capture_health_check \(torch/optim/"),
    ("zero_grad", r"zero_grad \(torch/optim/optimizer\.py"),
    (OPTIMIZER_PYTHON, r"\(torch/optim/"),
    ("batch: cut from the tensors (DataLoader, sampler)", r"__next__ \(lightning/pytorch/loops/fetchers\.py"),
    (
        "batch: transfer and scaling hooks",
        r"_apply_batch_transfer_handler \(lightning/|batch_to_device \(lightning/",
    ),
    ("callbacks' hooks", r"^_call_callback_hooks \(lightning/"),
]


def parse_raw(text: str) -> list[tuple[list[str], int]]:
    """py-spy ``--format raw`` lines (``frame;frame;... count``) as (frames root first, count)."""
    rows = []
    for line in text.splitlines():
        if line.strip():
            stack, count = line.rsplit(" ", 1)
            rows.append((stack.split(";"), int(count)))
    return rows


def split_by_part(rows: list[tuple[list[str], int]]) -> tuple[collections.Counter[str], int]:
    """Samples per part (``PARTS``, plus ``REST``) and the loop's total."""
    parts: collections.Counter[str] = collections.Counter()
    total = 0
    patterns = [(name, re.compile(pattern)) for name, pattern in PARTS]
    for frames, count in rows:
        inside = [i for i, frame in enumerate(frames) if LOOP in frame]
        if not inside:
            continue
        total += count
        below = frames[inside[-1] + 1 :]
        matches = (
            (depth, name)
            for depth in range(len(below) - 1, -1, -1)
            for name, pattern in patterns
            if pattern.search(below[depth])
        )
        depth, part = next(matches, (len(below), REST))
        if part == OPTIMIZER_PYTHON and any("(lightning/" in frame for frame in below[depth + 1 :]):
            part = REST
        parts[part] += count
    return parts, total


def table(parts: collections.Counter[str], total: int, seconds: float, batches: int) -> str:
    lines = ["| part of the training step | share | ms per step |", "|---|---|---|"]
    for name, count in parts.most_common():
        share = count / total
        lines.append(f"| {name} | {100 * share:.1f} % | {1000 * seconds * share / batches:.3f} |")
    lines.append(f"| **training loop** | 100 % | {1000 * seconds / batches:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/mlp.yaml")
    parser.add_argument("--batches", type=int, default=1000, help="training batches to profile")
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("fit_args", nargs="*", help="extra fit arguments, after --")
    args = parser.parse_args()
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        sys.exit("profile_fit.py needs py-spy: pip install py-spy (it is in the dev extra).")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.txt"
        fit = [sys.executable, "-m", "lit_mnist", "fit", "--config", args.config, "--data.val_size", "0"]
        fit += ["--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(args.batches)]
        fit += ["--checkpoint.monitor", "null", "--test_after_fit", "false"]
        fit += ["--trainer.default_root_dir", tmp, "--trainer.logger.init_args.save_dir", tmp, *args.fit_args]
        command = [
            py_spy,
            "record",
            "--nonblocking",
            "-r",
            str(args.rate),
            "-f",
            "raw",
            "-o",
            str(raw),
            "--",
            *fit,
        ]
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if result.returncode != 0 or not raw.exists():
            tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
            sys.exit(f"py-spy or fit failed ({result.returncode}): {tail[0]}")
        parts, total = split_by_part(parse_raw(raw.read_text()))
    if total == 0:
        sys.exit("py-spy took no sample inside the training loop: profile more --batches.")
    text = (
        f"{args.config}, {args.batches} training batches, {total} py-spy samples in the training loop "
        f"at {args.rate} Hz\n\n{table(parts, total, total / args.rate, args.batches)}"
    )
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
