"""Augmentation: what each distortion does to a digit, its seeding, and that it is off unless asked for."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from helpers import REPO, SHORT_FIT, SHOW_WARNINGS, quiet_trainer, run_cli

from lit_mnist.cli import LitMNISTCLI
from lit_mnist.data import Augmentation, MNISTDataModule, batch_loader, load_mnist
from lit_mnist.errors import LitMNISTError

NONE = {"rotation": 0.0, "scale": (1.0, 1.0), "shear": 0.0, "translate": 0.0, "thickness": 0.0, "blur": 0.0}


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    images, _ = load_mnist(REPO / "data", train=False)
    return images[:64].unsqueeze(1)


def centre_of_mass(images: torch.Tensor) -> torch.Tensor:
    """``[B, 2]`` (row, column) of each image's ink."""
    x = images.float()[:, 0]
    rows = torch.arange(x.shape[1], dtype=torch.float32)
    total = x.sum(dim=(1, 2))
    return torch.stack([(x.sum(2) * rows).sum(1) / total, (x.sum(1) * rows).sum(1) / total], 1)


def test_no_distortion_gives_the_digits_back(digits: torch.Tensor) -> None:
    out = Augmentation(**NONE)(digits, (0, 0, 0, 0))
    assert out.dtype == torch.uint8 and out.shape == digits.shape
    assert torch.equal(out, digits)


def test_the_default_keeps_each_digit_centred_as_the_input_transform_centres_it(digits: torch.Tensor) -> None:
    """Every digit a model is given is centred by mass; the default draws no shift that would move it."""
    moved = (centre_of_mass(Augmentation()(digits, (0, 0, 0, 0))) - centre_of_mass(digits)).norm(dim=1)
    # rotation and shear turn a digit about the centre; a shift of 10 % moves one up to 4 pixels
    assert moved.max() < 1.5


def test_the_same_key_gives_the_same_batch_and_another_key_another(digits: torch.Tensor) -> None:
    augment = Augmentation(elastic=2.0)
    first = augment(digits, (7, 1, 3, 0))
    assert torch.equal(first, augment(digits, (7, 1, 3, 0)))
    for other in [(8, 1, 3, 0), (7, 2, 3, 0), (7, 1, 4, 0), (7, 1, 3, 1)]:
        assert not torch.equal(first, augment(digits, other)), other
    # each digit draws its own distortion: the same digit twice in a batch comes out two ways
    pair = augment(digits[:1].expand(2, -1, -1, -1).contiguous(), (0, 0, 0, 0))
    assert not torch.equal(pair[0], pair[1])


def test_augmentation_leaves_the_global_random_stream_alone(digits: torch.Tensor) -> None:
    torch.manual_seed(0)
    Augmentation(elastic=2.0)(digits, (1, 2, 3, 4))
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(after, torch.rand(3))


def test_rotation_turns_a_bar_by_at_most_the_bound() -> None:
    bar = torch.zeros(256, 1, 28, 28, dtype=torch.uint8)
    bar[:, :, 4:24, 13:15] = 255  # upright
    out = Augmentation(**{**NONE, "rotation": 30.0})(bar, (0, 0, 0, 0)).float()[:, 0]
    angles = []
    for image in out:
        rows, cols = torch.nonzero(image > 127, as_tuple=True)
        rows, cols = rows.float() - rows.float().mean(), cols.float() - cols.float().mean()
        # the principal axis of the ink, in degrees from upright
        angle = 0.5 * math.atan2(2 * (rows * cols).mean(), (rows**2).mean() - (cols**2).mean())
        angles.append(math.degrees(angle))
    assert max(abs(a) for a in angles) <= 31
    assert max(angles) > 20 and min(angles) < -20  # both ways, up to the bound


def test_translate_moves_the_ink_by_at_most_its_fraction(digits: torch.Tensor) -> None:
    out = Augmentation(**{**NONE, "translate": 0.1})(digits, (0, 0, 0, 0))
    shift = centre_of_mass(out) - centre_of_mass(digits)
    assert shift.abs().max() <= 0.1 * 28 + 0.5
    assert shift.abs().max() > 0.7 * 0.1 * 28


def test_thickness_makes_strokes_thicker_and_thinner(digits: torch.Tensor) -> None:
    many = digits.repeat(4, 1, 1, 1)
    out = Augmentation(**{**NONE, "thickness": 1.0})(many, (0, 0, 0, 0))
    ink_before = (many > 127).sum(dim=(1, 2, 3)).float()
    ratio = (out > 127).sum(dim=(1, 2, 3)).float() / ink_before
    assert ratio.max() > 1.5 and ratio.min() < 0.6


def test_blur_softens_each_digit_by_its_own_amount(digits: torch.Tensor) -> None:
    many = digits.repeat(4, 1, 1, 1)
    out = Augmentation(**{**NONE, "blur": 1.5})(many, (0, 0, 0, 0))
    grey = lambda x: ((x > 20) & (x < 200)).sum(dim=(1, 2, 3)).float()  # noqa: E731
    ratio = grey(out) / grey(many)
    assert ratio.max() > 2 and ratio.min() < 1.3  # from barely to strongly blurred
    ink = out.float().sum(dim=(1, 2, 3)) / many.float().sum(dim=(1, 2, 3))
    assert ink.min() > 0.9 and ink.max() < 1.05  # a blur moves ink, it does not add or remove it


def test_elastic_warps_the_digit_locally(digits: torch.Tensor) -> None:
    out = Augmentation(**{**NONE, "elastic": 2.0})(digits, (0, 0, 0, 0))
    assert not torch.equal(out, digits)
    shift = centre_of_mass(out) - centre_of_mass(digits)
    assert shift.abs().max() < 2.5  # smooth shifts of at most 2 pixels move no digit as a whole further
    ink = out.float().sum(dim=(1, 2, 3)) / digits.float().sum(dim=(1, 2, 3))
    assert ink.min() > 0.7 and ink.max() < 1.3


def test_scale_zooms_the_ink(digits: torch.Tensor) -> None:
    out = Augmentation(**{**NONE, "scale": (0.5, 0.5)})(digits, (0, 0, 0, 0))
    ratio = (out > 64).sum().item() / (digits > 64).sum().item()
    assert 0.2 < ratio < 0.33  # a quarter of the area


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"rotation": -1.0}, "rotation must be 0 or more degrees"),
        ({"scale": (1.2, 0.8)}, "scale must be (low, high) with 0 < low <= high"),
        ({"shear": 90.0}, "shear must be in [0, 90) degrees"),
        ({"translate": 2.0}, "translate must be in [0, 1]"),
        ({"thickness": -0.5}, "thickness must be in [0, 1]"),
        ({"blur": 9.0}, "blur must be in [0, 5] pixels"),
        ({"elastic_sigma": 0.0}, "elastic_sigma must be above 0"),
    ],
)
def test_bad_bounds_are_one_sentence(options: dict, message: str) -> None:
    with pytest.raises(
        LitMNISTError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")
    ):
        Augmentation(**options)


def test_cnn_drawn_is_the_tutorials_cnn_with_the_default_augmentation_and_a_moving_average() -> None:
    import yaml

    drawn, cnn = (yaml.safe_load((REPO / "configs" / f"{n}.yaml").read_text()) for n in ("cnn_drawn", "cnn"))
    augment = drawn["data"]["init_args"].pop("augment")
    [average] = drawn["trainer"].pop("callbacks+")
    assert drawn == cnn
    assert Augmentation(**{**augment, "scale": tuple(augment["scale"])}) == Augmentation()
    assert average["class_path"] == "lit_mnist.callbacks.EMAWeightAveraging"


def test_the_moving_average_is_lightnings_to_float_rounding(tiny_mnist: Path) -> None:
    from lightning.pytorch.callbacks import EMAWeightAveraging as LightningsAverage

    from lit_mnist import MLP
    from lit_mnist.callbacks import EMAWeightAveraging

    weights = []
    for callbacks in ([EMAWeightAveraging(decay=0.9)], [LightningsAverage(decay=0.9)], []):
        L.seed_everything(0)
        trainer = quiet_trainer(max_epochs=2, limit_train_batches=5, limit_val_batches=0, callbacks=callbacks)
        model = MLP()
        trainer.fit(model, datamodule=MNISTDataModule(data_dir=str(tiny_mnist), batch_size=8, val_size=20))
        weights.append(model.state_dict())  # the average, where there is one: it is the model at the end
    ours, lightnings, last = weights
    for key in last:
        torch.testing.assert_close(ours[key], lightnings[key], rtol=1e-5, atol=1e-7)
        assert not torch.equal(ours[key], last[key]), key


def test_cnn_drawns_checkpoints_hold_the_moving_average_that_the_commands_read(tmp_path: Path) -> None:
    from lit_mnist.checkpoint import load_model, read_checkpoint

    config = ("--config", "configs/cnn_drawn.yaml", "--model.init_args.channels", "[8, 16]",
              "--model.init_args.hidden_size", "64", "--model.init_args.init", "pytorch")  # fmt: skip
    fit = run_cli("fit", *config, *SHORT_FIT, "--test_after_fit", "false",
                  "--trainer.logger.init_args.save_dir", str(tmp_path), env=SHOW_WARNINGS)  # fmt: skip
    assert fit.returncode == 0, fit.stderr[-2000:]
    assert "WeightAveraging" not in fit.stderr  # its warning about sharding concerns no model here
    last = tmp_path / "cnn_drawn" / "version_0" / "checkpoints" / "last.ckpt"
    checkpoint = read_checkpoint(last)
    average, current = checkpoint["state_dict"], checkpoint["current_model_state"]
    assert any(not torch.equal(average[key], current[key]) for key in average)
    weights = load_model(last, checkpoint).state_dict()
    for key in average:
        assert torch.equal(weights[key], average[key]), key
    tested = run_cli("test", *config, "--ckpt_path", str(last), "--trainer.limit_test_batches", "2",
                     "--trainer.logger", "false", env=SHOW_WARNINGS)  # fmt: skip
    assert tested.returncode == 0, tested.stderr[-2000:]
    assert "WeightAveraging" not in tested.stderr  # the average is what test should read: no warning


def test_the_cli_turns_it_on_with_one_option_and_prints_it() -> None:
    base = ["--config", str(REPO / "configs" / "mlp.yaml"), "--trainer.logger", "false"]
    assert LitMNISTCLI(args=base, run=False).datamodule.augment is None
    on = LitMNISTCLI(args=[*base, "--data.augment.rotation", "20"], run=False).datamodule.augment
    assert on == Augmentation(rotation=20.0)


class Recorder(L.Callback):
    """Keeps every training batch the model gets."""

    def __init__(self) -> None:
        self.batches: list[torch.Tensor] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.append(batch[0].clone())


def _fit_batches(data: MNISTDataModule, epochs: int = 2) -> list[torch.Tensor]:
    from lit_mnist import MLP

    recorder = Recorder()
    trainer = quiet_trainer(
        max_epochs=epochs, limit_train_batches=3, limit_val_batches=0, callbacks=[recorder]
    )
    trainer.fit(MLP(), datamodule=data)
    return recorder.batches


def test_training_batches_are_distorted_by_seed_epoch_and_batch(tiny_mnist: Path) -> None:
    options = {"data_dir": str(tiny_mnist), "batch_size": 8, "val_size": 20, "shuffle_seed": 5}
    plain = _fit_batches(MNISTDataModule(**options))
    augment = Augmentation()
    seen = _fit_batches(MNISTDataModule(**options, augment=augment))
    again = _fit_batches(MNISTDataModule(**options, augment=augment))
    assert len(seen) == len(plain) == 6
    for i, (raw, got) in enumerate(zip(plain, seen, strict=True)):
        epoch, index = divmod(i, 3)
        assert torch.equal(got, augment(raw, (5, epoch, index, 0)))
        assert torch.equal(got, again[i])


class LoaderBatches(L.LightningDataModule):
    """The training batches of an ``MNISTDataModule``'s loader as they are, with none of its hooks."""

    def __init__(self, data: MNISTDataModule) -> None:
        super().__init__()
        self.data = data

    def setup(self, stage: str) -> None:
        self.data.setup("fit")

    def train_dataloader(self):
        images, labels = self.data.splits["train"]
        seed = torch.initial_seed()
        return batch_loader(
            images, labels, batch_size=self.data.batch_size, shuffle=self.data.shuffle, seed=seed
        )


TUTORIAL_CONFIGS = ["mlp", "dropout", "dense512", "scratch", "linear", "fc_sigmoid", "modern_mlp", "cnn"]


@pytest.mark.parametrize("config", TUTORIAL_CONFIGS)
def test_without_augmentation_every_tutorial_config_trains_on_the_loaders_batches(
    config: str, tmp_path: Path
) -> None:
    """Bit-identical weights to training on the batches the loader cuts, untouched."""
    args = [
        "--config", str(REPO / "configs" / f"{config}.yaml"),
        "--trainer.max_steps", "4", "--trainer.limit_val_batches", "0", "--trainer.logger", "false",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false",
    ]  # fmt: skip
    weights = []
    for plain in (False, True):
        cli = LitMNISTCLI(args=args, run=False)  # seeds as the config says, then builds the model
        assert cli.datamodule.augment is None
        data = LoaderBatches(cli.datamodule) if plain else cli.datamodule
        cli.trainer.fit(cli.model, datamodule=data)
        assert cli.trainer.global_step == 4
        weights.append(cli.model.state_dict())
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_a_checkpoint_of_an_augmented_run_reads_as_data(tiny_mnist: Path, tmp_path: Path) -> None:
    from lit_mnist import MLP
    from lit_mnist.checkpoint import read_checkpoint

    data = MNISTDataModule(
        data_dir=str(tiny_mnist), batch_size=8, val_size=20, augment=Augmentation(rotation=5.0)
    )
    trainer = quiet_trainer(
        max_epochs=1, limit_train_batches=2, limit_val_batches=0, default_root_dir=tmp_path
    )
    trainer.fit(MLP(), datamodule=data)
    path = tmp_path / "run.ckpt"
    trainer.save_checkpoint(path)
    saved = read_checkpoint(path)["datamodule_hyper_parameters"]["augment"]
    assert Augmentation(**saved) == Augmentation(rotation=5.0)


def test_the_stroke_width_is_max_pool2ds_dilation_and_erosion() -> None:
    import torch.nn.functional as F

    from lit_mnist.data.augment import _dilated

    x = torch.rand(7, 1, 28, 28) * 255
    assert torch.equal(_dilated(x), F.max_pool2d(x, 3, stride=1, padding=1))
    assert torch.equal(-_dilated(-x), -F.max_pool2d(-x, 3, stride=1, padding=1))
