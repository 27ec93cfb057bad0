"""The CNN's faster CPU layers compute what the plain PyTorch layers compute, and still export."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import run_cli, write_mnist
from torch import nn

from lit_mnist.__main__ import main as cli_main
from lit_mnist.models.cnn import cnn_network
from lit_mnist.models.mlp import MaskDropout

#: float32: channels-last convolutions sum the same products in another order.
TOL = {"atol": 1e-5, "rtol": 1e-5}
#: Weight and bias gradients sum B·H·W products each (3,136 here): float32 rounding grows with that.
GRAD_TOL = {"atol": 1e-4, "rtol": 1e-4}


def reference_cnn() -> nn.Sequential:
    """The "What is TensorFlow?" tutorial's CNN written out with plain layers (the indices are those of cnn_network)."""
    layers: list[nn.Module] = []
    for i, (c_in, c_out) in enumerate([(1, 32), (32, 64), (64, 128)]):
        layers += [
            nn.Conv2d(c_in, c_out, 3, padding="same", bias=False),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
        ]
        if i < 2:
            layers.append(nn.Dropout(0.2))
    layers += [
        nn.Flatten(),
        nn.Linear(128 * 4 * 4, 625, bias=False),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(625, 10, bias=False),
    ]
    return nn.Sequential(*layers)


def test_mask_dropout_eval_is_identity_and_train_drops_p() -> None:
    p, n = 0.2, 200_000
    drop = MaskDropout(p)
    x = torch.ones(n, requires_grad=True)
    assert drop.eval()(x) is x
    out = drop.train()(x)
    dropped = float((out == 0).float().mean())
    # Binomial(n, p) / n has standard deviation sqrt(p(1-p)/n) ≈ 0.0009; allow 6 of them.
    assert abs(dropped - p) < 6 * math.sqrt(p * (1 - p) / n)
    survivors = out[out != 0]
    torch.testing.assert_close(survivors, torch.full_like(survivors, 1 / (1 - p)))
    out.sum().backward()
    torch.testing.assert_close(x.grad, (out != 0).float() / (1 - p))
    assert MaskDropout(0.0).train()(x) is x
    assert not MaskDropout(1.0).train()(x).any()


def test_cnn_network_computes_the_plain_network() -> None:
    torch.manual_seed(0)
    fast, reference = cnn_network(), reference_cnn()
    assert isinstance(fast[3], MaskDropout)
    assert fast[4].weight.is_contiguous(memory_format=torch.channels_last)
    reference.load_state_dict(fast.state_dict())  # strict: same keys and shapes
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(fast.eval()(x), reference.eval()(x), **TOL)


def test_cnn_network_gradients_match_without_dropout() -> None:
    torch.manual_seed(0)
    fast = cnn_network(conv_dropout=0.0, hidden_dropout=0.0).train()
    reference = reference_cnn()
    reference.load_state_dict(fast.state_dict())
    for layer in reference:
        if isinstance(layer, nn.Dropout):
            layer.p = 0.0
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8)
    for net in (fast, reference):
        nn.functional.cross_entropy(net(x), y).backward()
    for (name, got), expected in zip(fast.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(got.grad, expected.grad, **GRAD_TOL, msg=name)


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A two-step ``fit`` of the shipped CNN config on a tiny MNIST: its data folder and last.ckpt."""
    root = tmp_path_factory.mktemp("cnn")
    data, logs = write_mnist(root / "data"), root / "logs"
    result = run_cli("fit", "--config", "configs/cnn.yaml", "--data.data_dir", str(data),
                     "--data.val_size", "0", "--trainer.max_steps", "2", "--trainer.limit_test_batches", "0",
                     "--trainer.logger.init_args.save_dir", str(logs))  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (ckpt,) = logs.glob("*/version_0/checkpoints/last.ckpt")
    return data, ckpt


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_cnn_checkpoint_exports(cnn_run: tuple[Path, Path], tmp_path: Path, fmt: str, capsys) -> None:
    data, ckpt = cnn_run
    output = tmp_path / f"cnn.{fmt}"
    cli_main(["export", "--ckpt_path", str(ckpt), "--format", fmt, "--output", str(output),
              "--data_dir", str(data)])  # fmt: skip
    assert "matches PyTorch" in capsys.readouterr().out
    assert output.stat().st_size > 0
