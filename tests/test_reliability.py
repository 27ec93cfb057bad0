"""What goes wrong, and what the user sees then: bad inputs, killed runs, hostile checkpoints.

Bad inputs run the CLI's ``main`` in this process (fast); the kill tests use real processes and SIGKILL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from helpers import REPO, SHORT_FIT, quiet_trainer, run_cli, write_idx, write_mnist

from lit_mnist import MLP, MNISTClassifier, MNISTDataModule
from lit_mnist.__main__ import main


class Payload:
    """Unpickling this creates a marker file: what a hostile checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A real checkpoint of the MLP, one of another model class, and broken and hostile ones."""
    tmp = tmp_path_factory.mktemp("ckpts")
    made = {}
    for config in ("mlp", "dropout"):
        result = run_cli(
            "fit", "--config", f"configs/{config}.yaml", *SHORT_FIT, "--test_after_fit", "false",
            "--trainer.logger.init_args.save_dir", str(tmp),
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        made[config] = tmp / config / "version_0" / "checkpoints" / "last.ckpt"
    good = made["mlp"].read_bytes()
    made["truncated"] = tmp / "truncated.ckpt"
    made["truncated"].write_bytes(good[: len(good) // 2])
    made["text"] = tmp / "notes.ckpt"
    made["text"].write_text("these are not the weights you are looking for")
    made["payload"] = tmp / "payload.ckpt"
    checkpoint = torch.load(made["mlp"], weights_only=True)
    checkpoint["hyper_parameters"]["extra"] = Payload(tmp / "MARKER")
    torch.save(checkpoint, made["payload"])
    made["marker"] = tmp / "MARKER"
    return made


def _main(capsys, *args: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_, pytest.MonkeyPatch.context() as patch:
        patch.setattr(sys, "argv", ["lit_mnist"])
        main(list(args))
    return exit_.value.code, capsys.readouterr().err


def _corrupt_data(tmp: Path, how: str) -> Path:
    data = write_mnist(tmp / "data")
    raw = data / "MNIST" / "raw"
    images = raw / "train-images-idx3-ubyte"
    if how == "labels-as-images":
        shutil.copy(raw / "train-labels-idx1-ubyte", images)
    elif how == "truncated":
        images.write_bytes(images.read_bytes()[:-300])
    elif how == "count-mismatch":
        write_idx(raw / "train-labels-idx1-ubyte", np.zeros(7))
    return data


FIT = ("fit", "--config", "configs/mlp.yaml")

# (id, arguments after `fit --config configs/mlp.yaml` or a full command, exit code, text in the message)
BAD_INPUTS = [
    ("unknown-key", (*FIT, "--model.init_args.no_such_key", "1"), 2, "no_such_key"),
    ("batch-size-abc", (*FIT, "--data.batch_size", "abc"), 2, 'Parser key "data.batch_size": Not of type PositiveInt: invalid literal for int() with base 10: \'abc\''),
    ("batch-size-negative", (*FIT, "--data.batch_size", "-1"), 2, 'Parser key "data.batch_size": Not of type PositiveInt: -1 does not conform to restriction v>0'),
    ("batch-size-zero", (*FIT, "--data.batch_size", "0"), 2, 'Parser key "data.batch_size": Not of type PositiveInt: 0 does not conform to restriction v>0'),
    ("missing-config", ("fit", "--config", "configs/nope.yaml"), 2, "configs/nope.yaml"),
    ("yaml-syntax", ("fit", "--config", "{tmp}/bad.yaml"), 2, "Problems parsing config"),
    ("missing-ckpt", ("test", "--config", "configs/mlp.yaml", "--ckpt_path", "{tmp}/nope.ckpt"), 1, "nope.ckpt does not exist"),
    ("val-size-too-large", (*FIT, "--data.val_size", "60000"), 1, "data.val_size is 60000 but the training set has only 60000 images"),
    ("augment-scale-reversed", (*FIT, "--data.augment.scale", "[1.2, 0.8]"), 1, "data.augment: scale must be (low, high) with 0 < low <= high, got (1.2, 0.8)."),
    ("val-size-negative", (*FIT, "--data.val_size", "-5"), 2, 'Parser key "data.val_size": Not of type NonNegativeInt: -5 does not conform to restriction v>=0'),
    ("data-dir-is-a-file", (*FIT, "--data.data_dir", "README.md"), 1, "data_dir README.md is a file, not a folder"),
    ("idx-labels-as-images", (*FIT, "--data.data_dir", "{labels-as-images}"), 1, "is not an MNIST images file: its magic number is 2049"),
    ("idx-truncated", (*FIT, "--data.data_dir", "{truncated}"), 1, "is truncated or corrupt"),
    ("idx-count-mismatch", (*FIT, "--data.data_dir", "{count-mismatch}"), 1, "has 120 images but"),
    ("log-dir-not-writable", (*FIT, "--trainer.logger.init_args.save_dir", "README.md/logs"), 1, "Cannot write to the log folder README.md/logs"),
    ("ckpt-truncated", ("test", "--config", "configs/mlp.yaml", "--ckpt_path", "{ckpt_truncated}"), 1, "is not a readable checkpoint"),
    ("ckpt-not-a-checkpoint", ("test", "--config", "configs/mlp.yaml", "--ckpt_path", "{ckpt_text}"), 1, "is not a readable checkpoint"),
    ("predict-dir-without-images", ("predict", "--config", "configs/mlp.yaml", "--ckpt_path", "{ckpt_mlp}", "--data.predict_dir", "{tmp}/notes"), 1, "No PNG or JPEG image to predict in"),
    ("ckpt-other-model", ("test", "--config", "configs/mlp.yaml", "--ckpt_path", "{ckpt_dropout}"), 1, "was saved from a lit_mnist.DropoutMLP model but the config asks for lit_mnist.MLP"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "code", "message"), [c[1:] for c in BAD_INPUTS], ids=[c[0] for c in BAD_INPUTS]
)
def test_bad_input_is_one_message_and_a_nonzero_exit(args, code, message, tmp_path, capsys, checkpoints):
    (tmp_path / "bad.yaml").write_text("model:\n  class_path: [oops\n")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "digits.txt").write_text("1 2 3")
    values = {"tmp": str(tmp_path)}
    for how in ("labels-as-images", "truncated", "count-mismatch"):
        if any(f"{{{how}}}" in a for a in args):
            values[how] = str(_corrupt_data(tmp_path, how))
    values.update({f"ckpt_{k}": str(v) for k, v in checkpoints.items()})
    args = [a.format_map(values) for a in args]
    before = sorted(p.name for p in REPO.iterdir())
    subcommand, *rest = args
    returned, stderr = _main(
        capsys, subcommand, "--trainer.logger.init_args.save_dir", str(tmp_path / "logs"), *rest
    )
    assert returned == code, stderr
    assert message in stderr.replace("\n", " ")
    assert "Traceback" not in stderr
    assert sorted(p.name for p in REPO.iterdir()) == before


def test_bad_input_in_a_real_process_prints_no_traceback(tmp_path):
    result = run_cli(*FIT, "--data.val_size", "-5")
    assert result.returncode == 2  # a value its type refuses: jsonargparse's error, made one line
    assert result.stderr.strip().splitlines()[-1] == (
        'error: Parser key "data.val_size": Not of type NonNegativeInt: -5 does not conform to restriction v>=0'
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("subcommand", ["test", "validate", "predict", "fit"])
def test_hostile_checkpoint_is_refused_on_every_cli_path(subcommand, checkpoints, capsys, tmp_path):
    code, stderr = _main(
        capsys, subcommand, "--config", "configs/mlp.yaml", "--ckpt_path", str(checkpoints["payload"]),
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    )  # fmt: skip
    assert code == 1
    assert f"Refusing to load {checkpoints['payload']}" in stderr
    assert not checkpoints["marker"].exists()


def test_hostile_checkpoint_is_refused_by_export(checkpoints, capsys, tmp_path):
    output = tmp_path / "model.onnx"
    code, stderr = _main(
        capsys,
        "export",
        "--ckpt_path",
        str(checkpoints["payload"]),
        "--format",
        "onnx",
        "--output",
        str(output),
    )
    assert code == 1
    assert f"Refusing to load {checkpoints['payload']}" in stderr
    assert not checkpoints["marker"].exists() and not output.exists()


def test_hostile_checkpoint_is_refused_by_serve(checkpoints):
    """In a real process: one sentence, exit 1, no server started, the payload never ran."""
    result = run_cli("serve", "--ckpt_path", str(checkpoints["payload"]), "--port", "8999", timeout=120)
    assert result.returncode == 1
    assert (
        result.stderr.strip().splitlines()[-1].startswith(f"error: Refusing to load {checkpoints['payload']}")
    )
    assert "Traceback" not in result.stderr and "Serving" not in result.stdout
    assert not checkpoints["marker"].exists()


def test_hostile_checkpoint_is_refused_by_load_from_checkpoint(checkpoints):
    with pytest.raises(Exception, match="Weights only load failed"):
        MNISTClassifier.load_from_checkpoint(checkpoints["payload"])
    assert not checkpoints["marker"].exists()


def test_diverging_loss_stops_within_the_epoch_and_keeps_the_last_good_checkpoint(tmp_path):
    # epoch 1 trains normally; a step schedule then multiplies the learning rate by 1e32 for epoch 2
    result = run_cli(
        *FIT, "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "50", "--trainer.limit_val_batches", "1",
        "--model.lr_scheduler.class_path", "torch.optim.lr_scheduler.MultiStepLR",
        "--model.lr_scheduler.init_args.milestones", "[1]", "--model.lr_scheduler.init_args.gamma", "1e32",
        "--trainer.logger.init_args.save_dir", str(tmp_path),
    )  # fmt: skip
    assert result.returncode == 1
    assert "Training stopped in epoch 2: the training loss became nan" in result.stderr
    assert "learning rate is probably too high (1e+29)" in result.stderr
    assert "Traceback" not in result.stderr
    checkpoints = tmp_path / "mlp" / "version_0" / "checkpoints"
    last = torch.load(checkpoints / "last.ckpt", weights_only=True)
    assert last["epoch"] == 0
    assert all(torch.isfinite(w).all() for w in last["state_dict"].values())
    assert [p.name[:12] for p in checkpoints.glob("best-*")] == ["best-epoch00"]


def _state(path: Path) -> dict[str, torch.Tensor]:
    """The checkpoint's weights: the moving average's and the model's own, one dict."""
    checkpoint = torch.load(path, weights_only=True)
    return {
        **checkpoint["state_dict"],
        **{f"current.{k}": v for k, v in checkpoint["current_model_state"].items()},
    }


# with augmentation and configs/cnn_drawn.yaml's moving average of the weights on: the distortions and
# the average, too, must come out the same after a resume
KILL_FIT = (*FIT, "--trainer.max_epochs", "3", "--trainer.limit_train_batches", "300", "--trainer.limit_val_batches", "1",
            "--test_after_fit", "false", "--data.augment.rotation", "20",
            "--trainer.callbacks+=lit_mnist.callbacks.EMAWeightAveraging")  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    logs = tmp_path_factory.mktemp("uninterrupted")
    result = run_cli(*KILL_FIT, "--trainer.logger.init_args.save_dir", str(logs))
    assert result.returncode == 0, result.stderr[-2000:]
    return logs / "mlp" / "version_0" / "checkpoints" / "last.ckpt"


@pytest.mark.slow
@pytest.mark.parametrize("delay", [0.0, 0.6], ids=["at-epoch-boundary", "mid-epoch"])
def test_sigkill_then_resume_gives_the_uninterrupted_weights(delay, tmp_path, uninterrupted):
    logs = ("--trainer.logger.init_args.save_dir", str(tmp_path))
    last = tmp_path / "mlp" / "version_0" / "checkpoints" / "last.ckpt"
    process = subprocess.Popen(
        [sys.executable, "-m", "lit_mnist", *KILL_FIT, *logs], cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not last.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    completed = torch.load(last, weights_only=True)["epoch"] + 1
    resumed = run_cli(*KILL_FIT, "--ckpt_path", "last", *logs)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"Resuming from {last}" in resumed.stdout
    epochs_run = [
        int(line.split()[1].split("/")[0]) for line in resumed.stdout.splitlines() if " done in " in line
    ]
    assert epochs_run == list(range(completed + 1, 4)), "completed epochs were lost or redone"
    expected, got = _state(uninterrupted), _state(last)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key


def test_checkpoint_writes_are_atomic_under_sigkill(tmp_path):
    """A kill while a checkpoint is written leaves the previous file whole, never half of the new one.

    Lightning's own writer is only atomic when the system temporary folder shares the checkpoint's
    file system; the CLI uses AtomicCheckpointIO, which writes beside the target and renames it.
    """
    target = tmp_path / "last.ckpt"
    writer = (
        "import sys, torch\n"
        "from lit_mnist.checkpoint import AtomicCheckpointIO\n"
        "io = AtomicCheckpointIO()\n"
        "for i in range(1000):\n"
        "    io.save_checkpoint({'step': i, 'w': torch.full((20_000_000,), float(i))}, sys.argv[1])\n"
    )
    for delay in (0.3, 0.7, 1.1):
        process = subprocess.Popen([sys.executable, "-c", writer, str(target)])
        deadline = time.monotonic() + 60
        while not target.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(delay)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
        checkpoint = torch.load(target, weights_only=True)
        assert torch.all(checkpoint["w"] == float(checkpoint["step"]))


@pytest.fixture
def full_disk(tmp_path):
    """A 600 kB tmpfs: too small for one checkpoint of the MLP (1.6 MB)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if (
        os.geteuid() != 0
        or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=600k", "tmpfs", str(mount)]).returncode
    ):
        pytest.skip("mounting a small tmpfs needs root")
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_disk_full_names_the_checkpoint(full_disk):
    result = run_cli(*FIT, *SHORT_FIT, "--trainer.logger.init_args.save_dir", str(full_disk))
    assert result.returncode == 1
    last = full_disk / "mlp" / "version_0" / "checkpoints"
    assert f"error: cannot use {last}/" in result.stderr
    assert "No space left on device" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(last.glob(".*partial"))


def _fit_weights(data_dir: Path, seed: int) -> dict[str, torch.Tensor]:
    L.seed_everything(seed)
    model = MLP()
    trainer = quiet_trainer(max_epochs=2, deterministic=True)
    trainer.fit(model, MNISTDataModule(data_dir=str(data_dir), batch_size=8, val_size=20))
    return {**model.state_dict(), "val/acc": trainer.callback_metrics["val/acc"]}


def test_same_seed_same_numbers_other_seed_other_numbers(tiny_mnist):
    first, again, other = (_fit_weights(tiny_mnist, s) for s in (0, 0, 1))
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)
