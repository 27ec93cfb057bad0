"""What distorting one training batch costs: lit_mnist's ``Augmentation`` against kornia and torchvision.

    python benchmarks/augment_cost.py

Times the distortion of one 50-digit uint8 batch (the CNN's batch) on one thread, median of
repeated calls: ``Augmentation`` (every distortion) against the per-digit affine transform of
kornia (``kornia.augmentation.RandomAffine``, when installed) and of torchvision
(``transforms.v2.RandomAffine``, which draws one distortion per call, so one call per digit).
What it costs per epoch is ``benchmarks/ab_fit.py --b "--data.augment {}"``. Not part of
``make test``.
"""

from __future__ import annotations

import datetime
import platform
import statistics
import time
from collections.abc import Callable

import torch
from timing import cpu_model, run_script

from lit_mnist.data import Augmentation


def per_batch_ms(distort: Callable[[], object], repeats: int = 300) -> float:
    """Median milliseconds of ``distort()`` over ``repeats`` calls (after one warm-up)."""
    distort()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        distort()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def distortion_alone() -> list[str]:
    """Table rows: milliseconds to distort one batch of 50 digits, each library on one thread."""
    torch.set_num_threads(1)
    images = torch.randint(0, 256, (50, 1, 28, 28), dtype=torch.uint8)
    ours = Augmentation()
    rows = [
        f"| lit_mnist `Augmentation` (per digit) | {per_batch_ms(lambda: ours(images, (0, 0, 0, 0))):.2f} |"
    ]
    try:
        import kornia.augmentation as K

        affine = K.RandomAffine(15.0, (0.1, 0.1), (0.85, 1.15), (-10.0, 10.0, -10.0, 10.0), p=1.0)
        rows.append(
            f"| kornia `RandomAffine` (per digit), affine only | {per_batch_ms(lambda: affine(images.float())):.2f} |"
        )
    except ImportError:
        rows.append("| kornia | not installed |")
    from torchvision.transforms import v2

    affine_v2 = v2.RandomAffine(15.0, (0.1, 0.1), (0.85, 1.15), (-10.0, 10.0, -10.0, 10.0))
    loop = per_batch_ms(lambda: [affine_v2(image) for image in images], repeats=50)
    rows.append(f"| torchvision `v2.RandomAffine`, one call per digit, affine only | {loop:.2f} |")
    return rows


def main() -> None:
    print(
        f"Measured {datetime.datetime.now():%Y-%m-%d %H:%M} on {cpu_model()} ({platform.machine()}), "
        f"torch {torch.__version__}.\n"
    )
    print("| distorting one batch of 50 digits, one thread | ms |\n|---|---|")
    print("\n".join(distortion_alone()))


if __name__ == "__main__":
    run_script(main)
