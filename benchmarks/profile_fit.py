"""Where a config's training step spends its time: py-spy on ``python -m lit_mnist fit``, by part.

    python benchmarks/profile_fit.py --config configs/mlp.yaml [--batches 1000] [--rate 200]
                                     [--lightning K] [--out FILE] [--raw FILE] [-- extra fit arguments]

Runs ``python -m lit_mnist fit --config CONFIG --data.val_size 0 --trainer.max_epochs 1
--trainer.limit_train_batches N --checkpoint.monitor null --test_after_fit false`` under
``py-spy record --nonblocking`` (a dev dependency) and sorts every sample taken inside Lightning's
training loop into the part of the step its deepest recognised frame belongs to (``PARTS``): the
network's forward, the loss, the metric updates, autograd's backward, the optimizer's kernels and
its Python, ``zero_grad``, cutting and scaling the batch, callbacks, and the rest of Lightning's
loop. Prints a Markdown table of each part's share and ms per step (that share of the epoch's wall
time, timed by ``timing.EpochSeconds``, over N). ``--lightning K`` adds the K Lightning functions whose own Python
(and the helpers it calls, such as ``contextlib`` or ``inspect``) takes the most of the loop
(``lightning_functions``); ``--raw`` keeps py-spy's samples (``frame;frame;... count`` lines).
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from timing import EPOCH_LINE

REPO = Path(__file__).resolve().parents[1]
#: Samples whose stack holds this frame are inside Lightning's training loop.
LOOP = "advance (lightning/pytorch/loops/training_epoch_loop.py"
REST = "Lightning's loop, the rest"
OPTIMIZER_PYTHON = "optimizer Python (step, state, profiling hooks)"
CALLBACKS = "callbacks' hooks"
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
    (CALLBACKS, r"^_call_callback_hooks \(lightning/"),
]


def parse_raw(text: str) -> list[tuple[list[str], int]]:
    """py-spy ``--format raw`` lines (``frame;frame;... count``) as (frames root first, count).

    A line that does not end in a count (a frame name with a line break in it) is left out.
    """
    rows = []
    for line in text.splitlines():
        stack, _, count = line.strip().rpartition(" ")
        if stack and count.isdigit():
            rows.append((stack.split(";"), int(count)))
    return rows


def _part(below: list[str], patterns: list[tuple[str, re.Pattern[str]]]) -> tuple[str, int]:
    """The part of the step a sample belongs to, and the depth of the frame that decided it."""
    matches = (
        (depth, name)
        for depth in range(len(below) - 1, -1, -1)
        for name, pattern in patterns
        if pattern.search(below[depth])
    )
    depth, part = next(matches, (len(below), REST))
    if part == OPTIMIZER_PYTHON and any("(lightning/" in frame for frame in below[depth + 1 :]):
        part = REST
    return part, depth


def _loop_samples(rows: list[tuple[list[str], int]]):
    """(frames below the training loop's frame, the loop's frame, count) of every sample inside the loop."""
    for frames, count in rows:
        inside = [i for i, frame in enumerate(frames) if LOOP in frame]
        if inside:
            yield frames[inside[-1] + 1 :], frames[inside[-1]], count


def split_by_part(rows: list[tuple[list[str], int]]) -> tuple[collections.Counter[str], int]:
    """Samples per part (``PARTS``, plus ``REST``) and the loop's total."""
    parts: collections.Counter[str] = collections.Counter()
    total = 0
    patterns = [(name, re.compile(pattern)) for name, pattern in PARTS]
    for below, _, count in _loop_samples(rows):
        total += count
        parts[_part(below, patterns)[0]] += count
    return parts, total


def lightning_functions(rows: list[tuple[list[str], int]]) -> tuple[collections.Counter[str], int]:
    """Samples of Lightning's own Python per Lightning function, and the loop's total.

    A sample of ``REST`` or of the callbacks' part counts for the deepest Lightning frame of its
    stack, which is running its own code or the helpers it calls (``contextlib``, ``inspect``,
    ``nn.Module.__setattr__``...); samples inside a callback's or the model's own code (``lit_mnist``)
    do not count.
    """
    functions: collections.Counter[str] = collections.Counter()
    total = 0
    patterns = [(name, re.compile(pattern)) for name, pattern in PARTS]
    for below, loop, count in _loop_samples(rows):
        total += count
        if _part(below, patterns)[0] not in (REST, CALLBACKS):
            continue
        depths = [i for i, frame in enumerate(below) if "(lightning/" in frame]
        if depths and any("(lit_mnist/" in frame for frame in below[depths[-1] + 1 :]):
            continue
        frame = below[depths[-1]] if depths else loop
        functions[re.sub(r":\d+\)$", ")", frame)] += count
    return functions, total


def table(
    parts: collections.Counter[str],
    total: int,
    seconds: float,
    batches: int,
    what: str = "part of the training step",
    rows: int | None = None,
) -> str:
    """Markdown: each of the ``rows`` largest ``parts`` (all by default), its share of ``total`` and ms per step."""
    lines = [f"| {what} | share | ms per step |", "|---|---|---|"]
    for name, count in parts.most_common(rows):
        share = count / total
        lines.append(f"| {name} | {100 * share:.1f} % | {1000 * seconds * share / batches:.3f} |")
    lines.append(f"| **training loop** | 100 % | {1000 * seconds / batches:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/mlp.yaml")
    parser.add_argument(
        "--batches", type=int, default=1000, help="training batches to profile (at most one epoch's)"
    )
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this file")
    parser.add_argument(
        "--lightning",
        type=int,
        default=0,
        metavar="N",
        help="also list the N Lightning functions that cost most",
    )
    parser.add_argument("--raw", type=Path, default=None, help="also keep py-spy's raw samples in this file")
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
        fit += ["--trainer.default_root_dir", tmp, "--trainer.logger.init_args.save_dir", tmp]
        fit += ["--trainer.callbacks+=timing.EpochSeconds", *args.fit_args]
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
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "benchmarks")])}
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
        epochs = EPOCH_LINE.findall(result.stdout)
        if result.returncode != 0 or not raw.exists() or not epochs:
            tail = (result.stderr.strip() or result.stdout.strip()).splitlines()[-1:] or ["no output"]
            sys.exit(f"py-spy or fit failed ({result.returncode}): {tail[0]}")
        samples = parse_raw(raw.read_text())
        if args.raw:
            shutil.copyfile(raw, args.raw)
    parts, total = split_by_part(samples)
    if total == 0:
        sys.exit("py-spy took no sample inside the training loop: profile more --batches.")
    # over every epoch run (more with -- --trainer.max_epochs N); fewer than --batches in a short epoch
    seconds, batches = sum(float(e[1]) for e in epochs), sum(int(e[2]) for e in epochs)
    text = (
        f"{args.config}, {batches} training batches in {seconds:.2f} s, {total} py-spy samples in "
        f"the training loop at {args.rate} Hz\n\n{table(parts, total, seconds, batches)}"
    )
    if args.lightning:
        functions, _ = lightning_functions(samples)
        what = "Lightning function (its own Python and the helpers it calls)"
        text += f"\n\n{table(functions, total, seconds, batches, what, args.lightning)}"
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
