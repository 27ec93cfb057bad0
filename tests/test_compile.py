"""``compile=True`` (``torch.compile`` with its default inductor backend, C++ on the CPU) trains like eager mode."""

from __future__ import annotations

import lightning as L
import pytest
import torch
import torch._dynamo
from helpers import quiet_trainer, run_cli
from torch._dynamo.utils import counters

from lit_mnist import MLP, MNISTDataModule

pytestmark = pytest.mark.slow  # inductor compiles C++


class _Losses(L.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(outputs["loss"].item())


def _fit(data, compile: bool) -> tuple[list[float], MLP]:
    L.seed_everything(0)
    model = MLP(hidden_sizes=[16], compile=compile)
    datamodule = MNISTDataModule(data_dir=str(data), batch_size=20, val_size=0)
    losses = _Losses()
    trainer = quiet_trainer(max_steps=6, devices=1, callbacks=[losses])
    trainer.fit(model, datamodule=datamodule)
    return losses.losses, model


def test_compiled_network_trains_like_the_eager_one(tiny_mnist):
    eager_losses, eager = _fit(tiny_mnist, compile=False)
    torch._dynamo.reset()
    counters.clear()
    compiled_losses, compiled = _fit(tiny_mnist, compile=True)
    # dynamo captured and compiled the network's graph (0 if compile silently did nothing)
    assert counters["stats"]["unique_graphs"] >= 1
    assert counters["frames"]["ok"] >= 1
    assert len(compiled_losses) == len(eager_losses) == 6
    # inductor fuses and reorders float32 arithmetic; six steps of Adam keep it within 1e-4
    torch.testing.assert_close(compiled_losses, eager_losses, rtol=1e-4, atol=1e-6)
    assert compiled.state_dict().keys() == eager.state_dict().keys()  # in place: checkpoint keys unchanged
    for key, value in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[key], value, rtol=1e-4, atol=1e-5)


def test_an_unknown_compile_backend_is_refused_in_one_line(tiny_mnist, tmp_path):
    result = run_cli("fit", "--config", "configs/mlp.yaml", "--model.init_args.compile", "nonsense",
                     "--data.init_args.data_dir", str(tiny_mnist), "--trainer.logger.init_args.save_dir", str(tmp_path))  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(
            "error: model.compile is 'nonsense', not a torch.compile backend: use true, false or one of aot_eager, eager, "
        )
    )
    assert "Traceback" not in result.stderr
