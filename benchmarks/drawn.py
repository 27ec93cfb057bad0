"""Accuracy on handwriting the models never trained on: another data set's digits, as files and drawn with the pen.

    python benchmarks/drawn.py                                   # every MNIST config, augmentation off and on, seeds 0-2
    python benchmarks/drawn.py --configs mlp cnn --seeds 0 --pen 20

The digits are scikit-learn's ``load_digits``: the 1,797 test digits of the UCI "Optical Recognition
of Handwritten Digits" data set (E. Alpaydin and C. Kaynak, 1998; CC BY 4.0), written by 13 people
on forms and collected and prepared apart from MNIST: 32 × 32 bitmaps counted in 4 × 4 blocks, so
8 × 8 pixels of 17 grey levels. No model trains on them. Each is written as a PNG file (dark ink on white, with a margin of paper, as a scan) and read back with
``load_image_folder``, exactly as ``predict --data.predict_dir`` and ``serve`` read a user's file.

For every config, augmentation setting (``off``: ``--data.augment null``; ``on``: the default
``Augmentation``, ``--data.augment {}``; ``cnn_drawn`` is ``cnn`` with it on and a moving average
of its weights, so its ``off`` is that average alone) and seed, the script trains
``python -m lit_mnist fit --config configs/<config>.yaml --seed_everything <seed> --threads <threads>``
into ``--runs`` (a run already there, with its ``done`` file, is not trained again), then scores the
run's best checkpoint on MNIST's test set and on the independent digits. With ``--pen N`` it also
serves every run's checkpoint (``python -m lit_mnist serve``), opens the page in Debian's Chromium
(Playwright) and draws ``N`` of the digits (an equal number of each class) with the mouse, one
stroke along each branch of the digit's skeleton (scikit-image's ``skeletonize``), as a person traces
it; every model's answer is read from the page. The table gives the median over the seeds, and
the lowest and highest; a second table the independent digits class by class (median). Not part
of ``make test``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from timing import BenchmarkError, add_threads_argument, cpu_model, run_script

from lit_mnist.checkpoint import load_model, read_checkpoint
from lit_mnist.data.images import load_image_folder
from lit_mnist.data.mnist import load_mnist
from lit_mnist.models import MNISTClassifier

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers import CHROMIUM, CHROMIUM_ARGS, draw, running  # noqa: E402  (the tests' helpers, not part of the package)

#: Every config of an MNIST model: the tutorials' and ``cnn_drawn``.
CONFIGS = ["linear", "scratch", "dropout", "mlp", "dense512", "fc_sigmoid", "modern_mlp", "cnn", "cnn_drawn"]
#: White paper around each 8 × 8 digit, in pixels.
MARGIN = 2
#: The page's drawing pad is 280 × 280; a digit's skeleton, on a 28 × 28 grid, is drawn 10 times larger.
PAD_SCALE = 10
#: The skeleton is found on the prepared digit enlarged this many times, for smoother strokes.
UPSCALE = 4

Stroke = list[tuple[float, float]]


def independent_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 1,797 digits as dark-on-white uint8 ``[N, 12, 12]`` pictures, and their labels.

    Each 8 × 8 digit gets a 2-pixel margin of white paper, as a scan of a digit on a form has.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    ink = np.pad(np.round(digits.images * 255 / 16), ((0, 0), (MARGIN, MARGIN), (MARGIN, MARGIN)))
    return (255 - ink).astype(np.uint8), digits.target.astype(np.int64)


def prepared(pictures: np.ndarray, folder: Path) -> torch.Tensor:
    """The pictures written as PNG files in ``folder`` and read back as ``predict_dir`` reads them."""
    for i, picture in enumerate(pictures):
        Image.fromarray(picture).save(folder / f"{i:05d}.png")
    images, names = load_image_folder(folder)
    if len(names) != len(pictures):
        raise BenchmarkError(f"only {len(names)} of the {len(pictures)} digit files could be read back")
    return images


def pen_digits(labels: np.ndarray, count: int) -> list[int]:
    """Indices of ``count`` digits, the first ones of each class in turn (0, 1, …, 9, 0, 1, …)."""
    per_class = [list(np.flatnonzero(labels == d)) for d in range(10)]
    return [per_class[i % 10][i // 10] for i in range(count)]


def strokes(digit: np.ndarray) -> list[Stroke]:
    """Pen strokes (pad pixels) along the skeleton of a prepared uint8 ``[28, 28]`` digit.

    Each stroke follows the skeleton from an end (or, for a loop, anywhere) until it runs out
    of unvisited pixels; the next starts at the next unvisited end.
    """
    from skimage.morphology import skeletonize
    from skimage.transform import resize

    big = resize(digit.astype(np.float32) / 255, (28 * UPSCALE, 28 * UPSCALE), order=1)
    pixels = {(int(r), int(c)) for r, c in zip(*np.nonzero(skeletonize(big > 0.4)), strict=True)}

    def neighbours(p: tuple[int, int]) -> list[tuple[int, int]]:
        r, c = p
        near = [(r + dr, c + dc) for dr in (-1, 0, 1) for dc in (-1, 0, 1) if dr or dc]
        return sorted((q for q in near if q in pixels), key=lambda q: abs(q[0] - r) + abs(q[1] - c))

    visited: set[tuple[int, int]] = set()
    out: list[Stroke] = []
    for start in sorted(pixels, key=lambda p: (len(neighbours(p)) != 1, p)):
        if start in visited:
            continue
        path, here = [start], start
        visited.add(start)
        while step := [q for q in neighbours(here) if q not in visited]:
            here = step[0]
            visited.add(here)
            path.append(here)
        if len(path) >= UPSCALE:  # skip specks
            scale = PAD_SCALE / UPSCALE
            out.append(
                [((c + 0.5) * scale, (r + 0.5) * scale) for r, c in [*path[:: UPSCALE // 2], path[-1]]]
            )
    return out


def draw_on_page(url: str, drawings: list[list[Stroke]], names: list[str]) -> list[dict[str, int]]:
    """Each drawing drawn with the mouse on the page at ``url``: every model's answer, by name."""
    from playwright.sync_api import sync_playwright

    answers = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1240, "height": 900})
            page.goto(f"{url}/")
            for drawing in drawings:
                page.click("#clear")
                draw(page, drawing)
                page.wait_for_selector('#answers[data-done="1"]', timeout=60_000)
                answers.append({n: int(page.text_content(f'[data-model="{n}"] .label')) for n in names})
        finally:
            browser.close()
    return answers


#: ``fit`` options for augmentation ``off`` and ``on`` (the default ``Augmentation``).
AUGMENT_ARGS = {"off": ["--data.augment", "null"], "on": ["--data.augment", "{}"]}


def trained(config: str, augment: str, seed: int, runs: Path, accelerator: str, threads: int) -> Path:
    """The checkpoint the run kept, trained now unless ``runs`` has it already."""
    folder = runs / f"{config}-{augment}-seed{seed}"
    done = folder / "done"
    if not done.exists():
        command = [sys.executable, "-m", "lit_mnist", "fit", "--config", f"configs/{config}.yaml"]
        command += ["--seed_everything", str(seed), "--trainer.accelerator", accelerator]
        command += ["--threads", str(threads)]
        command += ["--trainer.logger.init_args.save_dir", str(folder), "--test_after_fit", "false"]
        command += AUGMENT_ARGS[augment]
        print(f"training {folder.name}", file=sys.stderr, flush=True)
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
        if result.returncode != 0:
            raise BenchmarkError(f"{folder.name} failed: {result.stderr.strip().splitlines()[-1]}")
        done.write_text(" ".join(command[1:]) + "\n")
    # the one checkpoint besides last.ckpt: the best by validation accuracy, or the last epoch's
    kept = [p for p in folder.glob("*/version_*/checkpoints/*.ckpt") if p.name != "last.ckpt"]
    if len(kept) != 1:
        raise BenchmarkError(f"{folder} should hold one checkpoint besides last.ckpt, it holds {len(kept)}")
    return kept[0]


def predictions(model: MNISTClassifier, images: torch.Tensor) -> torch.Tensor:
    """The label ``model`` gives each of ``images``."""
    return torch.cat([model.predict(chunk) for chunk in images.split(1000)])


def by_class(predicted: torch.Tensor, labels: torch.Tensor) -> list[float]:
    """Percent of each class's digits (0 to 9) labelled right."""
    return [100 * (predicted[labels == d] == d).float().mean().item() for d in range(10)]


def spread(values: list[float], fmt: str) -> str:
    """``median (lowest–highest)``, or the one value."""
    if len(values) == 1:
        return fmt.format(values[0])
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}–{fmt.format(max(values))})"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--configs", nargs="*", default=CONFIGS)
    parser.add_argument("--augment", nargs="*", choices=["off", "on"], default=["off", "on"])
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument(
        "--runs", type=Path, default=REPO / "lightning_logs" / "drawn", help="where runs are kept"
    )
    parser.add_argument("--pen", type=int, default=20, help="digits drawn on the page (0: none)")
    parser.add_argument("--accelerator", default="cpu")
    add_threads_argument(parser)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    args = parser.parse_args()
    if args.pen and not CHROMIUM.exists():
        raise BenchmarkError(f"{CHROMIUM} is absent (apt-get install chromium), or pass --pen 0")

    pictures, digit_labels = independent_digits()
    with tempfile.TemporaryDirectory() as folder:
        independent = prepared(pictures, Path(folder))
    test_images, test_labels = load_mnist(REPO / "data", train=False)
    runs = {
        (config, augment, seed): trained(config, augment, seed, args.runs, args.accelerator, args.threads)
        for config in args.configs
        for augment in args.augment
        for seed in args.seeds
    }
    scores: dict[tuple[str, str, int], dict[str, float]] = {}
    independent_labels = torch.from_numpy(digit_labels)
    for key, ckpt in runs.items():
        model = load_model(ckpt, read_checkpoint(ckpt))
        on_independent = predictions(model, independent)
        scores[key] = {
            "mnist": 100 * (predictions(model, test_images) == test_labels).float().mean().item(),
            "independent": 100 * (on_independent == independent_labels).float().mean().item(),
            "independent_by_class": by_class(on_independent, independent_labels),
        }
    if args.pen:
        chosen = pen_digits(digit_labels, args.pen)
        drawings = [strokes(independent[i].numpy()) for i in chosen]
        names = {key: f"{key[0]}-{key[1]}-{key[2]}" for key in runs}
        entries = [f"{names[key]}={ckpt}" for key, ckpt in runs.items()]
        started = time.monotonic()
        with running("--ckpt_path", f"[{', '.join(entries)}]", timeout=300) as server:
            answers = draw_on_page(server.url, drawings, list(names.values()))
        print(f"drew {len(drawings)} digits in {time.monotonic() - started:.0f} s", file=sys.stderr)
        for key, name in names.items():
            right = int(sum(a[name] == digit_labels[i] for a, i in zip(answers, chosen, strict=True)))
            scores[key]["pen"] = right

    print(
        f"Measured {datetime.date.today()} on {cpu_model()} ({platform.machine()}), torch {torch.__version__}, "
        f"lightning {version('lightning')}; seeds {', '.join(map(str, args.seeds))}; the independent set: "
        f"{len(pictures)} digits; drawn with the pen: {args.pen}.\n"
    )
    pen = f" | drawn with the pen (of {args.pen})" if args.pen else ""
    print(f"| config | augmentation | MNIST test | independent digits{pen} |")
    print("|---|---|---|---" + ("|---|" if args.pen else "|"))
    for config in args.configs:
        for augment in args.augment:
            got = [scores[(config, augment, seed)] for seed in args.seeds]
            row = f"| {config} | {augment} | {spread([g['mnist'] for g in got], '{:.2f} %')} | "
            row += spread([g["independent"] for g in got], "{:.1f} %")
            if args.pen:
                row += " | " + spread([g["pen"] for g in got], "{:.0f}")
            print(row + " |", flush=True)
    print("\nThe independent digits, class by class:\n")
    print("| config | augmentation | " + " | ".join(map(str, range(10))) + " |")
    print("|---|---|" + "---|" * 10)
    for config in args.configs:
        for augment in args.augment:
            got = [scores[(config, augment, seed)]["independent_by_class"] for seed in args.seeds]
            cells = [f"{statistics.median(g[d] for g in got):.0f} %" for d in range(10)]
            print(f"| {config} | {augment} | " + " | ".join(cells) + " |", flush=True)
    if args.json:
        figures = [{"config": c, "augment": a, "seed": s, **v} for (c, a, s), v in scores.items()]
        args.json.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    run_script(main)
