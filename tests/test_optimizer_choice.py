"""The optimizer's implementation chosen by where it runs, and configs/trainer/tpu.yaml on every model config.

The XLA side itself runs in ``benchmarks/xla_check.py`` (it needs torch-xla, which is no project dependency).
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

import pytest
import torch
import yaml
from helpers import REPO, quiet_trainer, run_cli

from lit_mnist import MLP
from lit_mnist.__main__ import main
from lit_mnist.checkpoint import AtomicXLACheckpointIO
from lit_mnist.cli import LitMNISTCLI
from lit_mnist.data import batch_loader, load_mnist
from lit_mnist.errors import LitMNISTError

MODEL_CONFIGS = sorted(p.name for p in (REPO / "configs").glob("*.yaml"))


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """64 real test digits as float images in [0, 1], and their labels."""
    images, labels = load_mnist(REPO / "data", train=False)
    return images[:64].unsqueeze(1).float() / 255, labels[:64]


@pytest.mark.parametrize(("config", "optimizer"), [("mlp.yaml", "Adam"), ("fc_sigmoid.yaml", "SGD")])
def test_a_config_that_leaves_fused_unset_trains_fused_on_the_cpu(config, optimizer, tiny_mnist, tmp_path):
    args = ["--config", f"configs/{config}", "--data.init_args.data_dir", str(tiny_mnist)]
    args += ["--data.init_args.val_size", "40", "--trainer.limit_val_batches", "0"]
    args += ["--trainer.accelerator", "cpu", "--trainer.max_steps", "1", "--trainer.logger", "false"]
    args += ["--checkpoint.monitor", "null", "--trainer.default_root_dir", str(tmp_path)]
    cli = LitMNISTCLI(args=args, run=False)
    assert cli.config.model.init_args.optimizer.init_args.fused is None
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    (built,) = cli.trainer.optimizers
    assert type(built).__name__ == optimizer
    assert built.defaults["fused"] is True


def test_an_explicit_fused_false_is_kept(digits):
    x, y = digits
    model = MLP(hidden_sizes=[32], optimizer=functools.partial(torch.optim.Adam, lr=1e-3, fused=False))
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(model, batch_loader(x, y, batch_size=32))
    assert trainer.optimizers[0].defaults["fused"] is False


def test_bf16_mixed_with_gradient_clipping_runs_unfused_and_clips(digits):
    """Lightning refuses to clip for a fused optimizer under mixed precision; the model then picks the unfused one.

    One SGD step with lr 1 moves the weights by exactly the clipped gradient, whose norm is the clip value.
    """
    x, y = digits
    torch.manual_seed(0)
    model = MLP(hidden_sizes=[32], optimizer=functools.partial(torch.optim.SGD, lr=1.0))
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    trainer = quiet_trainer(max_steps=1, precision="bf16-mixed", gradient_clip_val=0.01)
    trainer.fit(model, batch_loader(x, y, batch_size=64))
    assert not trainer.optimizers[0].defaults["fused"]
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close((after - before).norm(), torch.tensor(0.01), rtol=1e-3, atol=0)


def test_an_explicit_fused_true_that_cannot_clip_is_one_sentence(digits):
    x, y = digits
    model = MLP(hidden_sizes=[32], optimizer=functools.partial(torch.optim.SGD, lr=0.1, fused=True))
    trainer = quiet_trainer(max_steps=1, precision="bf16-mixed", gradient_clip_val=1.0)
    with pytest.raises(LitMNISTError, match=r"fused is true, but Lightning does not clip gradients"):
        trainer.fit(model, batch_loader(x, y, batch_size=32))


@pytest.mark.parametrize("config", MODEL_CONFIGS)
def test_tpu_yaml_composes_with_every_model_config(config, capsys):
    args = ["fit", "--config", f"configs/{config}", "--config", "configs/trainer/tpu.yaml", "--print_config"]
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["trainer"]["accelerator"] == "tpu"
    assert printed["trainer"]["plugins"] == [{"class_path": "lit_mnist.checkpoint.AtomicXLACheckpointIO"}]
    optimizer = printed["model"]["init_args"].get("optimizer")
    if isinstance(optimizer, dict):  # the models that take an optimizer leave its implementation to the model
        assert optimizer["init_args"].get("fused") is None


def test_the_xla_checkpoint_writer_saves_cpu_tensors_atomically(tmp_path: Path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    AtomicXLACheckpointIO().save_checkpoint({"step": 3, "w": torch.arange(4.0)}, target)
    loaded = torch.load(target, weights_only=True)
    assert loaded["step"] == 3 and torch.equal(loaded["w"], torch.arange(4.0))
    assert [p.name for p in target.parent.iterdir()] == ["last.ckpt"]


def test_tpu_yaml_without_torch_xla_is_one_sentence(tmp_path):
    if importlib.util.find_spec("torch_xla") is not None:
        pytest.skip("torch-xla is installed here")
    result = run_cli(
        "fit", "--config", "configs/scratch.yaml", "--config", "configs/trainer/tpu.yaml",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: Requirement 'torch_xla")
    assert "Traceback" not in result.stderr
