"""The private details of other libraries that ``lit_mnist/internals.py`` relies on, checked against them.

Each test fails when the library changes the detail, so that the one module using it is mended.
"""

from __future__ import annotations

from pathlib import Path

import torch
from helpers import SHORT_FIT, run_cli

from lit_mnist.internals import saved_class_path


def test_lightningcli_saves_the_model_class_path_in_the_checkpoint(tmp_path: Path) -> None:
    result = run_cli(
        "fit", "--config", "configs/dropout.yaml", *SHORT_FIT, "--trainer.limit_train_batches", "2",
        "--test_after_fit", "false", "--trainer.logger.init_args.save_dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    path = tmp_path / "dropout" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    assert saved_class_path(checkpoint) == "lit_mnist.DropoutMLP"
    assert saved_class_path({"hyper_parameters": {}}) is None
