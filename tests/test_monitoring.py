"""TensorBoard figures, prediction CSVs, own images, export and the model summary.

One short CLI fit on the real MNIST makes the run and checkpoint that most tests read.
"""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from helpers import REPO, SHORT_FIT, free_port, quiet_trainer, run_cli
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities.model_summary import ModelSummary
from PIL import Image, ImageDraw
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lit_mnist import MLP, DropoutMLP, MNISTDataModule
from lit_mnist.__main__ import main as cli_main
from lit_mnist.callbacks import LineProgressBar, TensorBoardFigures, keras_summary
from lit_mnist.data import load_mnist
from lit_mnist.data.images import load_image_folder, mnist_digit
from lit_mnist.errors import LitMNISTError

DATA = REPO / "data"
IMAGE_TAGS = {
    "train/samples",
    "val/confusion_matrix",
    "val/worst_errors",
    "test/confusion_matrix",
    "test/worst_errors",
}
SCALAR_TAGS = {"train/loss", "train/acc", "val/loss", "val/acc", "test/acc", "lr-Adam"}
FIT_ARGS = ("fit", "--config", "configs/mlp.yaml", *SHORT_FIT)


@dataclass
class Run:
    logs: Path
    version_dir: Path
    ckpt: Path
    stdout: str


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    logs = tmp_path_factory.mktemp("logs")
    result = run_cli(*FIT_ARGS, "--trainer.logger.init_args.save_dir", str(logs))
    assert result.returncode == 0, result.stderr[-3000:]
    version_dir = logs / "mlp" / "version_0"
    return Run(logs, version_dir, version_dir / "checkpoints" / "last.ckpt", result.stdout)


def _get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.load(response)


def test_tensorboard_server_serves_the_runs_scalars_and_images(run: Run, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}/data/plugin"
    log = (tmp_path / "tensorboard.log").open("w")
    server = subprocess.Popen(
        [str(Path(sys.executable).with_name("tensorboard")), "--logdir", str(run.logs),
         "--host", "127.0.0.1", "--port", str(port), "--load_fast", "false"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    scalars: dict = {}
    images: dict = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and server.poll() is None:
            try:
                scalars = _get_json(f"{base}/scalars/tags").get("mlp/version_0", {})
                images = _get_json(f"{base}/images/tags").get("mlp/version_0", {})
            except OSError:
                pass
            if scalars.keys() >= SCALAR_TAGS and images.keys() >= IMAGE_TAGS:
                break
            time.sleep(0.5)
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
    server_log = (tmp_path / "tensorboard.log").read_text()[-2000:]
    assert scalars.keys() >= SCALAR_TAGS, f"scalars served: {sorted(scalars)}\n{server_log}"
    assert images.keys() >= IMAGE_TAGS, f"images served: {sorted(images)}\n{server_log}"


def test_event_files_hold_the_figures_and_the_graph(run: Run) -> None:
    events = EventAccumulator(str(run.version_dir), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert set(tags["images"]) >= IMAGE_TAGS
    assert set(tags["scalars"]) >= SCALAR_TAGS
    assert tags["graph"]
    samples = events.Images("train/samples")
    assert len(samples) == 1 and samples[0].step == 0
    worst = events.Images("val/worst_errors")[-1]
    assert worst.step == 40 and worst.width > worst.height > 100


def test_fit_prints_a_keras_like_summary(run: Run) -> None:
    assert re.search(r"net\.1 \(Linear\)\s+\(None, 128\)\s+100,480", run.stdout)
    assert "Total params: 136,074" in run.stdout
    table = run.stdout[run.stdout.index('Model: "MLP"') : run.stdout.index("Total params")]
    assert "metrics" not in table and "net.5 (Linear)" in table


def test_dropout_model_summary_counts_like_keras() -> None:
    model = DropoutMLP()
    summary = ModelSummary(model, max_depth=2)
    assert summary.total_parameters == 101_770
    counts = dict(zip(summary.layer_names, summary.param_nums, strict=True))
    assert (counts["net.1"], counts["net.4"]) == (100_480, 1_290)
    table = keras_summary(model)
    assert re.search(r"net\.3 \(MaskDropout\)\s+\(None, 128\)\s+0", table)
    assert "Total params: 101,770" in table and "Non-trainable params: 0" in table


def _written_csv(stdout: str) -> list[dict[str, str]]:
    match = re.search(r"Wrote (\d+) predictions to (.+\.csv)", stdout)
    assert match, stdout[-2000:]
    with open(match.group(2), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == int(match.group(1))
    return rows


def _probs(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([[float(row[f"prob_{k}"]) for k in range(10)] for row in rows])


def test_predict_writes_a_csv_of_probabilities(run: Run) -> None:
    result = run_cli(
        "predict", "--config", "configs/mlp.yaml", "--ckpt_path", str(run.ckpt),
        "--trainer.logger.init_args.save_dir", str(run.logs),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    rows = _written_csv(result.stdout)
    _, labels = load_mnist(DATA, train=False)
    assert len(rows) == len(labels)
    assert list(rows[0]) == ["index", "label", *(f"prob_{k}" for k in range(10)), "true_label"]
    probs = _probs(rows)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert [int(r["label"]) for r in rows] == probs.argmax(axis=1).tolist()
    assert [int(r["index"]) for r in rows] == list(range(len(labels)))
    assert [int(r["true_label"]) for r in rows] == labels.tolist()
    accuracy = (probs.argmax(axis=1) == labels.numpy()).mean()
    assert accuracy > 0.5


def _draw_seven(size: tuple[int, int], ink: object, paper: object, mode: str) -> Image.Image:
    image = Image.new(mode, size, paper)
    w, h = size
    ImageDraw.Draw(image).line(
        [(0.25 * w, 0.2 * h), (0.75 * w, 0.2 * h), (0.45 * w, 0.85 * h)],
        fill=ink,
        width=max(2, min(w, h) // 8),
    )
    return image


def _own_images(folder: Path) -> list[str]:
    """Three digit images and two bad files in ``folder``; returns the good files' names."""
    folder.mkdir()
    _draw_seven((200, 300), 0, 255, "L").save(folder / "a_dark_on_light.png")
    _draw_seven((41, 37), (250, 250, 250), (5, 5, 5), "RGB").save(folder / "b_light_on_dark.png")
    _draw_seven((640, 480), (20, 20, 70), (225, 215, 195), "RGB").save(folder / "c_photo.jpg", quality=90)
    (folder / "d_empty.png").write_bytes(b"")
    (folder / "e_notes.txt").write_text("not an image\n")
    return ["a_dark_on_light.png", "b_light_on_dark.png", "c_photo.jpg"]


def test_predict_own_images_skips_bad_files(run: Run, tmp_path: Path) -> None:
    names = _own_images(tmp_path / "digits")
    result = run_cli(
        "predict", "--config", "configs/mlp.yaml", "--ckpt_path", str(run.ckpt),
        "--trainer.logger.init_args.save_dir", str(run.logs), "--data.predict_dir", str(tmp_path / "digits"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    warned = [line for line in result.stderr.splitlines() if "d_empty.png" in line or "e_notes.txt" in line]
    assert len(warned) == 1 and "d_empty.png" in warned[0] and "e_notes.txt" in warned[0]
    rows = _written_csv(result.stdout)
    assert [r["file"] for r in rows] == names
    assert [int(r["index"]) for r in rows] == [0, 1, 2]
    assert "true_label" not in rows[0]
    probs = _probs(rows)
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert [int(r["label"]) for r in rows] == probs.argmax(axis=1).tolist()


def test_predict_folder_without_images_is_one_error_line(run: Run, tmp_path: Path) -> None:
    folder = tmp_path / "junk"
    folder.mkdir()
    (folder / "empty.png").write_bytes(b"")
    (folder / "readme.txt").write_text("no digits here\n")
    result = run_cli(
        "predict", "--config", "configs/mlp.yaml", "--ckpt_path", str(run.ckpt),
        "--trainer.logger.init_args.save_dir", str(run.logs), "--data.predict_dir", str(folder),
    )  # fmt: skip
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: No PNG or JPEG image") and str(folder) in last


def test_own_images_become_mnist_like_digits() -> None:
    dark_on_light = mnist_digit(_draw_seven((200, 300), 0, 255, "L"))
    light_on_dark = mnist_digit(_draw_seven((200, 300), (255, 255, 255), (0, 0, 0), "RGB"))
    photo = mnist_digit(_draw_seven((200, 300), (30, 30, 80), (220, 210, 190), "RGB"))
    for digit in (dark_on_light, light_on_dark, photo):
        assert digit.dtype == np.uint8 and digit.shape == (28, 28)
        assert digit.max() == 255 and digit[:3].max() == 0 and digit[:, :3].max() == 0
        rows, cols = np.nonzero(digit)
        assert max(rows.max() - rows.min(), cols.max() - cols.min()) + 1 in (20, 21)
        mass = digit.astype(float) / digit.sum()
        centre = ((mass.sum(1) * np.arange(28)).sum(), (mass.sum(0) * np.arange(28)).sum())
        np.testing.assert_allclose(centre, (13.5, 13.5), atol=1.0)
    # Shifting a digit by one pixel changes it by about 10 on average.
    assert np.abs(dark_on_light.astype(int) - light_on_dark.astype(int)).mean() < 2
    assert np.abs(dark_on_light.astype(int) - photo.astype(int)).mean() < 2
    assert mnist_digit(Image.new("RGB", (30, 30), "white")).max() == 0


def test_image_folder_loading(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    names = _own_images(tmp_path / "digits")
    (tmp_path / "digits" / ".hidden").write_text("ignored")
    (tmp_path / "digits" / "sub").mkdir()
    with caplog.at_level("WARNING", logger="lit_mnist"):
        images, found = load_image_folder(tmp_path / "digits")
    assert found == names and images.dtype == torch.uint8 and images.shape == (3, 28, 28)
    assert [r.getMessage() for r in caplog.records if "d_empty.png, e_notes.txt" in r.getMessage()]
    assert len(caplog.records) == 1
    (tmp_path / "empty").mkdir()
    with pytest.raises(LitMNISTError, match="No PNG or JPEG image"):
        load_image_folder(tmp_path / "empty")


def test_predict_proba_and_predict_take_numpy_and_tensors() -> None:
    torch.manual_seed(0)
    model = DropoutMLP()
    images, _ = load_mnist(DATA, train=False)
    batch = images[:8].numpy()
    probs = model.predict_proba(batch)
    assert probs.shape == (8, 10) and model.training
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(8))
    torch.testing.assert_close(model.predict_proba(torch.from_numpy(batch).float()[:, None] / 255), probs)
    torch.testing.assert_close(model.predict_proba(batch.astype(np.float64) / 255), probs)
    with pytest.raises(ValueError, match=r"uint8 pixels \(0…255\) or floating-point pixels in \[0, 1\]"):
        model.predict_proba(batch.astype(np.float64))  # 0…255 as floats: said, not guessed
    torch.testing.assert_close(model.predict_proba(batch[0]), probs[:1])
    assert torch.equal(model.predict(batch), probs.argmax(dim=1))
    model.eval()
    with torch.no_grad():
        expected = model(torch.from_numpy(batch).float()[:, None] / 255).softmax(dim=1)
    torch.testing.assert_close(probs, expected)
    for bad in (np.zeros((2, 32, 32)), np.zeros((2, 3, 28, 28)), np.zeros(784)):
        with pytest.raises(ValueError, match=r"\[N, 28, 28\]"):
            model.predict_proba(bad)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_export_round_trip(run: Run, tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture) -> None:
    output = tmp_path / f"model.{fmt}"
    cli_main(["export", "--ckpt_path", str(run.ckpt), "--format", fmt, "--output", str(output),
              "--data_dir", str(DATA)])  # fmt: skip
    assert "matches PyTorch" in capsys.readouterr().out
    model = MLP.load_from_checkpoint(run.ckpt, map_location="cpu").eval()
    images, _ = load_mnist(DATA, train=False)
    x = images[-7:, None].float() / 255
    with torch.no_grad():
        expected = model(x).numpy()
    if fmt == "onnx":
        session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
        got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    else:
        with torch.no_grad():
            got = torch.jit.load(str(output))(x).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=0)


def test_export_refuses_bad_input(run: Run, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    existing = tmp_path / "model.onnx"
    existing.write_text("keep me")
    cases = {
        "does not exist": ["--ckpt_path", str(tmp_path / "none.ckpt"), "--format", "onnx",
                           "--output", str(tmp_path / "a.onnx")],
        "--overwrite": ["--ckpt_path", str(run.ckpt), "--format", "onnx", "--output", str(existing)],
    }  # fmt: skip
    for expected, args in cases.items():
        with pytest.raises(SystemExit) as exit_info:
            cli_main(["export", *args])
        assert exit_info.value.code == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err
    assert existing.read_text() == "keep me"
    # An option's value of the wrong kind is jsonargparse's error and exit 2, as for every command.
    with pytest.raises(SystemExit) as exit_info:
        cli_main(
            ["export", "--ckpt_path", str(run.ckpt), "--format", "tflite", "--output", str(tmp_path / "a")]
        )
    assert exit_info.value.code == 2
    assert "tflite" in capsys.readouterr().err


@pytest.mark.parametrize("logger", ["csv", "none"])
def test_fit_without_tensorboard(
    tmp_path: Path, logger: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    if logger == "csv":
        logger_args = ["--trainer.logger", "lightning.pytorch.loggers.CSVLogger",
                       "--trainer.logger.init_args.save_dir", str(tmp_path)]  # fmt: skip
    else:
        logger_args = ["--trainer.logger=false", "--checkpoint.dirpath", str(tmp_path / "checkpoints")]
    args = [*FIT_ARGS, *logger_args]
    args[args.index("--trainer.limit_train_batches") + 1] = "5"
    monkeypatch.chdir(REPO)
    cli_main(args)
    assert "Test accuracy" in capsys.readouterr().out
    assert not list(tmp_path.rglob("events.out.tfevents.*"))
    if logger == "csv":
        (metrics,) = tmp_path.rglob("metrics.csv")
        header = metrics.read_text().splitlines()[0].split(",")
        assert {"lr-Adam", "val/acc", "test/acc"} <= set(header)


def test_validation_figures_every_n_epochs_and_the_last(tiny_mnist: Path, tmp_path: Path) -> None:
    logger = TensorBoardLogger(tmp_path, name="run", version=0)
    trainer = quiet_trainer(max_epochs=5, logger=logger, callbacks=[TensorBoardFigures(every_n_epochs=2)])
    data = MNISTDataModule(data_dir=str(tiny_mnist), batch_size=40, val_size=40)  # 2 steps per epoch
    trainer.fit(MLP(), data)
    events = EventAccumulator(str(tmp_path / "run" / "version_0"), size_guidance={"images": 0})
    events.Reload()
    assert [image.step for image in events.Images("val/confusion_matrix")] == [4, 8, 10]


@pytest.mark.parametrize(("lines_per_epoch", "at"), [(4, [10, 20, 30]), (3, [13, 26])])
def test_line_progress_bar_prints_at_each_part_of_the_epoch(
    lines_per_epoch: int, at: list[int], tiny_mnist: Path, capsys: pytest.CaptureFixture
) -> None:
    """40 batches: a line after each 40 // lines_per_epoch batches but the last part's, then the epoch's metrics."""
    model = MLP()
    data = MNISTDataModule(data_dir=str(tiny_mnist), batch_size=2, val_size=40)
    bar = LineProgressBar(lines_per_epoch=lines_per_epoch)
    quiet_trainer(max_epochs=2, enable_progress_bar=True, callbacks=[bar]).fit(model, data)
    lines = capsys.readouterr().out.splitlines()
    for epoch in (1, 2):
        progress = [line for line in lines if line.startswith(f"epoch {epoch}/2: ")]
        assert [re.match(r"epoch \d/2: (\d+)/40 batches, [\d.]+ s$", line)[1] for line in progress] == [
            str(n) for n in at
        ]
        (done,) = [line for line in lines if line.startswith(f"epoch {epoch}/2 done in ")]
        assert re.search(r"train/acc 0\.\d{4}  train/loss \d+\.\d{4}  val/acc 0\.\d{4}  val/loss", done), done
