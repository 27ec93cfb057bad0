"""The benchmark scripts run end to end (tiny CPU versions; their real numbers are in the README)."""

from __future__ import annotations

import re
import subprocess
import sys

from conftest import REPO


def _run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_speedrun_cpu_smoke():
    out = _run(
        "speedrun.py", "--device", "cpu", "--seeds", "1", "--no-warmup", "--",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_test_batches", "2",
    )  # fmt: skip
    rows = re.findall(r"^\| (\d) \| ([\d.]+) s \| ([\d.]+) % \|$", out, re.MULTILINE)
    assert [seed for seed, _, _ in rows] == ["0"]
    assert all(0 < float(seconds) < 60 and 0 <= float(acc) <= 100 for _, seconds, acc in rows)
    assert "target (mean ≥ 99.0 %, each ≥ 98.9 %, ≤ 0.5 s): not met" in out


def test_bench_fit_cpu_smoke():
    out = _run(
        "bench_fit.py", "--config", "configs/mlp.yaml", "--epochs", "1", "--",
        "--trainer.limit_train_batches", "5",
    )  # fmt: skip
    lit, plain = (float(x) for x in re.search(r"lightning ([\d.]+) %, plain ([\d.]+) %", out).groups())
    assert re.search(r"ratio lightning/plain: [\d.]+", out)
    assert 0 <= lit <= 100 and plain > 80  # the plain loop trains a full epoch
