"""``python -m lit_mnist`` end to end, as a user runs it: real processes on the vendored MNIST."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, SHORT_FIT, SHOW_WARNINGS, run_cli
from lightning.pytorch.callbacks import ModelSummary, ProgressBar

from lit_mnist.cli import LitMNISTCLI


def _logs(tmp: Path) -> tuple[str, ...]:
    return ("--trainer.logger.init_args.save_dir", str(tmp))


@pytest.fixture(scope="module")
def fitted(tmp_path_factory) -> tuple[Path, str]:
    """One short fit of configs/mlp.yaml; its log folder and output."""
    logs = tmp_path_factory.mktemp("logs")
    result = run_cli("fit", "--config", "configs/mlp.yaml", *SHORT_FIT, *_logs(logs))
    assert result.returncode == 0, result.stderr[-3000:]
    return logs, result.stdout


def test_fit_keeps_best_and_last_and_tests_the_best(fitted):
    logs, stdout = fitted
    checkpoints = logs / "mlp" / "version_0" / "checkpoints"
    assert (checkpoints / "last.ckpt").is_file()
    best = list(checkpoints.glob("best-*.ckpt"))
    assert len(best) == 1
    assert f"Testing the best checkpoint {best[0]}" in stdout
    accuracy = float(re.search(r"Test accuracy ([\d.]+) %", stdout).group(1))
    assert 50 < accuracy <= 100
    assert (logs / "mlp" / "version_0" / "config.yaml").is_file()


def test_output_to_a_file_is_a_few_lines_per_epoch(fitted):
    _, stdout = fitted
    assert "epoch 1/1 done in" in stdout
    assert "train/loss" in stdout and "val/acc" in stdout
    assert len(stdout.splitlines()) < 60


def test_test_and_predict_from_the_checkpoint(fitted):
    logs, _ = fitted
    ckpt = logs / "mlp" / "version_0" / "checkpoints" / "last.ckpt"
    test = run_cli(
        "test", "--config", "configs/mlp.yaml", "--ckpt_path", str(ckpt), *_logs(logs), env=SHOW_WARNINGS
    )
    assert test.returncode == 0, test.stderr[-3000:]
    assert "test/acc" in test.stdout
    predict = run_cli(
        "predict", "--config", "configs/mlp.yaml", "--ckpt_path", str(ckpt), *_logs(logs), env=SHOW_WARNINGS
    )
    assert predict.returncode == 0, predict.stderr[-3000:]
    for result in (test, predict):  # they write into a new version folder, and write no checkpoint
        assert "Warning" not in result.stderr and "dirpath has changed" not in result.stderr, result.stderr


def test_ckpt_path_last_resumes_the_previous_run(tmp_path):
    first = run_cli(
        "fit", "--config", "configs/mlp.yaml", *SHORT_FIT, "--test_after_fit", "false", *_logs(tmp_path)
    )
    assert first.returncode == 0, first.stderr[-3000:]
    last = tmp_path / "mlp" / "version_0" / "checkpoints" / "last.ckpt"
    resumed = run_cli(
        "fit", "--config", "configs/mlp.yaml", *SHORT_FIT, "--trainer.max_epochs", "2",
        "--test_after_fit", "false", "--ckpt_path", "last", *_logs(tmp_path),
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Resuming from {last}" in resumed.stdout
    assert "epoch 2/2 done" in resumed.stdout and "epoch 1/2 done" not in resumed.stdout
    assert not (tmp_path / "mlp" / "version_1").exists()


SUBCOMMANDS = ("fit", "validate", "test", "predict", "export", "tune", "serve")


def test_model_help_shows_what_each_parameter_means():
    result = run_cli("fit", "--model.help", "LinearClassifier")
    assert result.returncode == 0, result.stderr[-2000:]
    text = " ".join(result.stdout.split())
    assert "An affine map" in text
    assert "Features of each input (784 for MNIST images, 2 for the blobs)" in text
    assert "Start W from U[0, 1) and b at 0" in text


def test_help_and_print_config():
    help_ = run_cli("--help")
    assert help_.returncode == 0
    listed = help_.stdout.replace("\n", " ")
    for subcommand in SUBCOMMANDS:
        assert f" {subcommand} (" in listed or f" {subcommand}," in listed, subcommand
    printed = run_cli("fit", "--config", "configs/mlp.yaml", "--data.batch_size", "64", "--print_config")
    assert printed.returncode == 0, printed.stderr[-3000:]
    assert "class_path: lit_mnist.MLP" in printed.stdout
    assert "batch_size: 64" in printed.stdout
    assert "class_path: torch.optim.Adam" in printed.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--model.init_args.no_such_key", "1"), "no_such_key"),
        (("--data.batch_size", "abc"), "batch_size"),
        (("--config", "configs/does_not_exist.yaml"), "does_not_exist.yaml"),
        (("--config", "configs/cnn_drawn.yaml", "--trainer.callbacks.decay", "2"), "decay"),
    ],
    ids=["unknown-key", "wrong-type", "missing-config", "callback-out-of-range"],
)
def test_bad_arguments_exit_2_without_traceback(args, message):
    result = run_cli("fit", "--config", "configs/mlp.yaml", *args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_checkpoint_is_one_sentence(tmp_path):
    result = run_cli("test", "--config", "configs/mlp.yaml", "--ckpt_path", str(tmp_path / "nope.ckpt"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: Checkpoint file {tmp_path / 'nope.ckpt'} does not exist."


def test_what_the_cli_adds_to_the_trainer_is_in_print_config_and_configurable(tmp_path):
    printed = run_cli("fit", "--config", "configs/mlp.yaml", "--print_config")
    assert printed.returncode == 0, printed.stderr[-3000:]
    for added in ("lit_mnist.callbacks.KerasModelSummary", "lit_mnist.callbacks.LearningRateMonitor",
                  "lit_mnist.callbacks.PredictionWriter", "lit_mnist.callbacks.SameCheckpointOnEveryRank",
                  "lit_mnist.checkpoint.AtomicCheckpointIO"):  # fmt: skip
        assert f"class_path: {added}" in printed.stdout, added


def test_prediction_writer_filename_is_set_from_the_command_line(fitted):
    logs, _ = fitted
    ckpt = logs / "mlp" / "version_0" / "checkpoints" / "last.ckpt"
    writer = '{"class_path": "lit_mnist.callbacks.PredictionWriter", "init_args": {"filename": "mine.csv"}}'
    result = run_cli(
        "predict", "--config", "configs/mlp.yaml", "--ckpt_path", str(ckpt), *_logs(logs),
        "--trainer.callbacks", writer, "--trainer.limit_predict_batches", "1",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (written,) = logs.glob("mlp/version_*/mine.csv")
    assert len(written.read_text().splitlines()) == 1 + 1000  # the header and one batch


def test_several_machines_without_a_launcher_stop_at_once_with_one_sentence():
    result = run_cli(
        "fit", "--config", "configs/mlp.yaml", "--config", "configs/trainer/multinode.yaml", timeout=60
    )
    assert result.returncode == 1
    assert result.stderr.strip().startswith(
        "error: trainer.num_nodes is 2 but no launcher started this process"
    )
    assert len(result.stderr.strip().splitlines()) == 1 and "torchrun" in result.stderr


@pytest.mark.parametrize("command", ["export", "tune", "serve"])
def test_command_help_describes_every_option(command):
    """The commands outside LightningCLI have ``--help`` too, with a sentence for every option."""
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: lit_mnist {command}")
    options = re.split(r"\n  (?=--)", result.stdout.split("\noptions:\n", 1)[1])
    for option in options:
        name, _, text = option.strip().partition(" ")
        words = re.sub(r"\((required, )?type: .*\)|\s+", " ", text).strip()
        assert len(words.split()) >= 3, f"{command} {name} has no help text"


def test_export_takes_the_last_checkpoint_of_a_run(fitted, tmp_path):
    logs, _ = fitted
    result = run_cli(
        "export", "--ckpt_path", "last", "--run", "mlp", "--save_dir", str(logs),
        "--format", "torchscript", "--output", str(tmp_path / "mlp.pt"), "--check_count", "5",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "matches PyTorch" in result.stdout
    missing = run_cli("export", "--ckpt_path", "last", "--run", "nope", "--save_dir", str(logs),
                      "--format", "onnx", "--output", str(tmp_path / "x.onnx"))  # fmt: skip
    assert missing.returncode == 1
    assert (
        missing.stderr.strip()
        == f"error: --ckpt_path last: no last.ckpt under {logs / 'nope'}/version_*/checkpoints/."
    )


def test_importing_the_package_changes_nothing_in_the_process():
    """Environment, warning filters and log filters are the same before and after ``import lit_mnist``."""
    probe = """
import importlib, json, logging, os, subprocess, sys, warnings
# Import every library lit_mnist imports first: their own import-time changes are not ours.
listed = subprocess.run([sys.executable, "-c", "import sys, lit_mnist.cli, lit_mnist.export; "
    "print(' '.join(sorted({m.split('.')[0] for m in sys.modules if not m.startswith('lit_mnist')})))"],
    capture_output=True, text=True, check=True).stdout.split()
for name in listed:
    try:
        importlib.import_module(name)
    except Exception:
        pass
def state():
    loggers = {n: len(l.filters) for n, l in logging.root.manager.loggerDict.items()
               if isinstance(l, logging.Logger) and l.filters}
    return dict(os.environ), [str(f) for f in warnings.filters], loggers
before = state()
import lit_mnist, lit_mnist.cli, lit_mnist.callbacks, lit_mnist.checkpoint, lit_mnist.export
print(json.dumps(before == state()))
lit_mnist.cli.configure_process()
once = state()
lit_mnist.cli.configure_process()
print(json.dumps(once == state() and once != before))
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split() == ["true", "true"]


@pytest.mark.parametrize(
    ("flag", "kind"), [("enable_progress_bar", ProgressBar), ("enable_model_summary", ModelSummary)]
)
def test_a_trainer_flag_set_false_turns_its_default_callback_off(flag, kind, tmp_path):
    cli = LitMNISTCLI(
        args=["--config", str(REPO / "configs" / "mlp.yaml"), f"--trainer.{flag}", "false",
              "--trainer.logger", "false", "--trainer.default_root_dir", str(tmp_path)],
        run=False,
    )  # fmt: skip
    assert not any(isinstance(c, kind) for c in cli.trainer.callbacks)
    others = {ProgressBar, ModelSummary} - {kind}
    assert all(any(isinstance(c, other) for c in cli.trainer.callbacks) for other in others)


def test_enable_checkpointing_false_fits_and_writes_no_checkpoint(tmp_path):
    result = run_cli("fit", "--config", "configs/mlp.yaml", *SHORT_FIT, *_logs(tmp_path),
                     "--trainer.enable_checkpointing", "false")  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "mlp" / "version_0").is_dir()
    assert not list(tmp_path.rglob("*.ckpt"))
