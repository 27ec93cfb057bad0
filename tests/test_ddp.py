"""DDP with two CPU processes: metrics are synced across processes, not averaged by hand."""

from __future__ import annotations

import re

import pytest
from helpers import run_cli

pytestmark = pytest.mark.slow  # two DDP processes


def _test_acc(stdout: str) -> float:
    return float(re.search(r"test/acc\W+([\d.]+)", stdout).group(1))


def test_ddp_test_accuracy_equals_one_process_on_the_same_checkpoint(tmp_path):
    logs = ("--trainer.logger.init_args.save_dir", str(tmp_path))
    ddp = run_cli(
        "fit", "--config", "configs/mlp.yaml", "--config", "configs/trainer/ddp_cpu.yaml",
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "40", "--trainer.limit_val_batches", "2",
        *logs,
    )  # fmt: skip
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "distributed_backend=gloo" in ddp.stderr + ddp.stdout
    assert "All distributed processes registered. Starting with 2 processes" in ddp.stderr + ddp.stdout
    best = next((tmp_path / "mlp" / "version_0" / "checkpoints").glob("best-*.ckpt"))
    assert f"Testing the best checkpoint {best}" in ddp.stdout
    single = run_cli("test", "--config", "configs/mlp.yaml", "--ckpt_path", str(best), *logs)
    assert single.returncode == 0, single.stderr[-3000:]
    assert _test_acc(ddp.stdout) == _test_acc(single.stdout)
    assert ddp.stdout.count("Test accuracy") == 1
