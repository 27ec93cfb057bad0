"""Integrated Gradients (``lit_mnist.models.attribution``) and the attributions of TensorBoard's worst errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import quiet_trainer
from lightning.pytorch.loggers import TensorBoardLogger
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_mnist import CNN, MLP, MNISTDataModule
from lit_mnist.callbacks import TensorBoardFigures
from lit_mnist.models.attribution import heat_map, integrated_gradients


@pytest.mark.parametrize("model_class", [MLP, CNN])
@pytest.mark.parametrize("standardize", [False, True])
def test_completeness_anywhere_and_the_models_mode_is_kept(model_class, standardize):
    """Maps sum to the score's difference from the blank image, also under inference_mode and no_grad."""
    torch.manual_seed(0)
    model = model_class(standardize=standardize).train()
    pixels = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8)
    pixels[:, :, :4] = 0  # blank rows
    maps = integrated_gradients(model, pixels, n_steps=64)
    assert model.training  # left as it was
    with torch.no_grad():
        model.eval()
        scores, blank = model(pixels), model(torch.zeros_like(pixels))
    target = scores.argmax(dim=-1)  # the default: the model's answer
    delta = (scores - blank).gather(1, target[:, None])[:, 0]
    torch.testing.assert_close(maps.sum(dim=(1, 2, 3)), delta, rtol=0.03, atol=0.02)
    assert maps.shape == pixels.shape and not maps[:, :, :4].any()
    with torch.inference_mode():
        inside = integrated_gradients(model, pixels, target, n_steps=64)
    with torch.no_grad():
        floats = integrated_gradients(model, pixels.float() / 255, target, n_steps=64)
    torch.testing.assert_close(inside, maps)
    torch.testing.assert_close(floats, maps, rtol=1e-4, atol=1e-6)  # the same map for the same image


def test_heat_map_colours():
    images = torch.zeros(1, 2, 2)
    images[0, 0, 0] = 1.0
    attributions = torch.tensor([[[0.0, 4.0], [-1.0, 0.0]]])
    rgb = heat_map(images, attributions)
    assert rgb.shape == (1, 3, 2, 2)
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.full((3,), 0.35))  # no attribution: the image, dimmed
    torch.testing.assert_close(rgb[0, :, 0, 1], torch.tensor([0.9, 0.16, 0.12]))  # the largest: red
    torch.testing.assert_close(rgb[0, :, 1, 0], 0.5 * torch.tensor([0.16, 0.43, 1.0]))  # a quarter: √¼ blue


def _worst_errors(folder: Path, tiny_mnist: Path, attributions: bool) -> np.ndarray:
    logger = TensorBoardLogger(folder, name="run", version=0)
    figures = TensorBoardFigures(attributions=attributions)
    trainer = quiet_trainer(max_epochs=1, logger=logger, callbacks=[figures])
    torch.manual_seed(0)
    trainer.fit(MLP(), MNISTDataModule(data_dir=str(tiny_mnist), batch_size=40, val_size=40))
    events = EventAccumulator(str(folder / "run" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    encoded = events.Images("val/worst_errors")[-1].encoded_image_string
    return np.asarray(Image.open(io.BytesIO(encoded)).convert("RGB"), dtype=np.int16)


def test_worst_errors_show_attributions_only_when_asked(tiny_mnist, tmp_path):
    grey = _worst_errors(tmp_path / "grey", tiny_mnist, attributions=False)
    coloured = _worst_errors(tmp_path / "coloured", tiny_mnist, attributions=True)
    assert grey.shape == coloured.shape

    def colour(picture: np.ndarray) -> int:
        return int((np.abs(picture[..., 0] - picture[..., 2]) > 60).sum())

    assert colour(grey) == 0 and colour(coloured) > 1000
