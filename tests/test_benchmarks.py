"""The benchmark scripts run end to end (tiny CPU versions; their real numbers are in docs/benchmarks.md)."""

from __future__ import annotations

import importlib
import json
import math
import py_compile
import re
import statistics
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import torch
from helpers import REPO


def _benchmark(name: str) -> Any:
    """The module of ``benchmarks/<name>.py``, imported as the script imports its neighbours."""
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(REPO / "benchmarks"))


def _run(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, f"benchmarks/{script}", *args], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_bench_fit_layers_smoke(tmp_path):
    """``--layers`` times the four layers in every round and prints each one's median and increment."""
    out = _run(
        "bench_fit.py", "--layers", "--config", "configs/mlp.yaml", "--rounds", "2", "--steps", "8",
        "--warmup", "2", "--threads", "1", "--json", str(tmp_path / "layers.json"),
    )  # fmt: skip
    rows = re.findall(r"^\| ([^|]+) \| ([\d.]+) \(([\d.]+)–([\d.]+)\) \| ([^|]+) \| ([^|]+) \|$", out, re.M)
    assert [row[0] for row in rows] == [
        "plain PyTorch loop",
        "bare LightningModule in a bare Trainer",
        "the project's module and data module in a bare Trainer",
        "the full CLI (`fit`)",
    ], out
    for _, median, low, high, _, _ in rows:
        assert 0 < float(low) <= float(median) <= float(high)
    assert rows[0][4] == rows[0][5] == "—"
    assert all(re.fullmatch(r"[+-][\d.]+ \([-\d.]+–[-\d.]+\)", r[4]) for r in rows[1:])
    assert all(re.fullmatch(r"[\d.]+ \([\d.]+–[\d.]+\)", r[5]) for r in rows[1:])
    assert re.search(r"^Lightning's own loop \(bare Trainer over the plain loop\): [-\d.]+ \(", out, re.M)
    assert "with `python benchmarks/bench_fit.py --layers --config configs/mlp.yaml --rounds 2" in out
    figures = json.loads((tmp_path / "layers.json").read_text())
    assert [len(layer["ms_per_step"]) for layer in figures["runs"].values()] == [2, 2, 2, 2]


def test_bench_fit_precisions_smoke():
    """``--precisions`` times the full CLI at each precision and gives each one's ratio to the first."""
    out = _run(
        "bench_fit.py", "--precisions", "32-true", "bf16-mixed", "--config", "configs/mlp.yaml",
        "--rounds", "1", "--steps", "6", "--warmup", "1",
    )  # fmt: skip
    rows = re.findall(
        r"^\| the full CLI \(`fit`\), precision (\S+) \| ([\d.]+) \| ([^|]+) \| ([^|]+) \|$", out, re.M
    )
    assert [row[0] for row in rows] == ["32-true", "bf16-mixed"], out
    (_, fp32, _, _), (_, bf16, increment, ratio) = rows
    assert float(increment) == pytest.approx(float(bf16) - float(fp32), abs=2e-3)
    assert float(ratio) == pytest.approx(float(bf16) / float(fp32), abs=1e-2)


@pytest.mark.slow
def test_vs_keras_lit_side_row(tmp_path):
    """The lit side of vs_keras.py runs for real (no TensorFlow) and its table row carries its numbers."""
    out_file = tmp_path / "vs_keras.md"
    out = _run(
        "vs_keras.py", "--lit-only", "--models", "linear", "--rounds", "2", "--epochs", "2", "--out", str(out_file),
        "--", "--trainer.limit_train_batches", "20",
    )  # fmt: skip
    row = re.search(
        r"^\| linear \| 0 \| 2 \| 200 \| — \| ([\d.]+) \(([\d.]+)–([\d.]+)\) \| — \| .* \| — \| ([\d.]+) \(",
        out,
        re.M,
    )
    assert row, out
    median, low, high, acc = (float(x) for x in row.groups())
    assert 0 < low <= median <= high < 30
    assert 50 < acc <= 100  # 2 × 20 batches of 200 images already put a linear model well above chance
    assert out_file.read_text() == out[out.index("Measured") :]
    assert re.search(r"on .+, \d+ cores; Python [\d.]+, torch ", out)


def test_keras_scripts_compile_without_tensorflow(tmp_path):
    scripts = sorted((REPO / "benchmarks" / "keras").glob("*.py"))
    names = {p.stem for p in scripts}
    assert {"mlp", "dropout", "dense512", "scratch", "linear", "fc_sigmoid", "modern_mlp", "cnn"} <= names
    for script in scripts:
        py_compile.compile(str(script), cfile=str(tmp_path / f"{script.stem}.pyc"), doraise=True)


def test_vs_keras_refuses_an_unknown_model():
    result = subprocess.run(
        [sys.executable, "benchmarks/vs_keras.py", "--lit-only", "--models", "resnet"],
        cwd=REPO, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().startswith("error: unknown model 'resnet'")
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_device_check_smoke_records_every_step_with_its_figures(tmp_path):
    """``device_check.py --smoke``: every step ran on the CPU, ok, and its figures reached the JSON and the Markdown."""
    result = subprocess.run(
        [sys.executable, "benchmarks/device_check.py", "--smoke", "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    report = json.loads((tmp_path / "device_check.json").read_text())
    steps = {step["name"]: step for step in report["steps"]}
    assert list(steps) == [
        "gpu_tests",
        "bench_fit_mlp",
        "bench_fit_cnn",
        "speedrun",
        "speedrun_compile",
        "reproduce_cnn",
    ]
    assert all(step["status"] == "ok" and step["seconds"] > 0 for step in steps.values())
    assert report["smoke"] is True and report["versions"]["torch"] and report["versions"]["date"]
    gpu = steps["gpu_tests"]["results"]
    assert gpu["tests"] == gpu["skipped"] >= 4 and gpu["failures"] == gpu["errors"] == 0  # no CUDA here
    for name in ("bench_fit_mlp", "bench_fit_cnn"):
        r = steps[name]["results"]
        assert r["device"] == "cpu" and len(r["lightning_epoch_s"]) == 1 and r["ratio"] > 0
        assert 0 <= r["lightning_test_acc"] <= 100 and 0 <= r["plain_test_acc"] <= 100
    assert steps["bench_fit_mlp"]["results"]["plain_test_acc"] > 20  # the plain loop trains: above chance
    for name in ("speedrun", "speedrun_compile"):
        r = steps[name]["results"]
        assert [run["seed"] for run in r["runs"]] == [0, 1] and all(run["fit_s"] > 0 for run in r["runs"])
        assert r["target_met"] is False  # 300 images, one epoch
    log = (tmp_path / "device_check.log").read_text()
    assert len(re.findall(r"^ratio lightning/plain: [\d.]+$", log, re.M)) == 2  # the scripts' own reports
    rows = re.findall(r"^\| (\d) \| ([\d.]+) s \| ([\d.]+) % \|$", log, re.M)
    assert [seed for seed, _, _ in rows] == ["0", "1"] * 2
    assert all(0 < float(seconds) < 60 and 0 <= float(acc) <= 100 for _, seconds, acc in rows)
    assert log.count("target (mean ≥ 99.0 %, each ≥ 98.9 %, ≤ 0.5 s): not met") == 2
    assert steps["speedrun_compile"]["results"]["cli_args"][-2:] == ["--model.init_args.compile", "eager"]
    (cnn,) = steps["reproduce_cnn"]["results"]["configs"]
    assert cnn["config"] == "cnn" and 0 <= cnn["runs"][0]["test_acc"] <= 100
    summary = (tmp_path / "device_check.md").read_text()
    assert (
        "| bench_fit_cnn | ok |" in summary
        and f"ratio {steps['bench_fit_cnn']['results']['ratio']:.3f}" in summary
    )
    assert "===== reproduce_cnn" in log


def test_profile_fit_sorts_samples_into_parts_by_their_deepest_known_frame():
    profile_fit = _benchmark("profile_fit")
    loop = "fit (x.py:1);_TrainingEpochLoop.advance (lightning/pytorch/loops/training_epoch_loop.py:352)"
    step = f"{loop};Adam.step (torch/optim/adam.py:227);Closure.__call__ (lightning/pytorch/loops/optimization/automatic.py:146)"
    raw = "\n".join(
        [
            f"{step};MNISTClassifier.forward (lit_mnist/models/classifier.py:95);Linear.forward (torch/nn/modules/linear.py:134) 5",
            f"{step};Closure.closure (lightning/pytorch/loops/optimization/automatic.py:131) 2",
            f"{loop};Adam.step (torch/optim/adam.py:248);_fused_adam (torch/optim/adam.py:879) 3",
            f"{loop};Adam.step (torch/optim/adam.py:222) 1",
            f"{loop};Optimizer.zero_grad (torch/optim/optimizer.py:1047) 4",
            f"{loop};_call_callback_hooks (lightning/pytorch/trainer/call.py:227);ModelCheckpoint.on_train_batch_end (lightning/pytorch/callbacks/model_checkpoint.py:300) 6",
            "main (lit_mnist/cli.py:311);Trainer.test (lightning/pytorch/trainer/trainer.py:700) 50",
        ]
    )
    parts, total = profile_fit.split_by_part(profile_fit.parse_raw(raw))
    assert total == 21  # the 50 samples outside the training loop do not count
    assert parts == {
        "network forward": 5,
        "Lightning's loop, the rest": 2,  # Lightning's closure, inside Adam.step
        "optimizer kernels": 3,
        "optimizer Python (step, state, profiling hooks)": 1,
        "zero_grad": 4,
        "callbacks' hooks": 6,
    }
    assert "| network forward | 23.8 % | 0.238 |" in profile_fit.table(parts, total, 0.021, 21)


def test_profile_fit_names_the_lightning_functions_that_run_their_own_python():
    profile_fit = _benchmark("profile_fit")
    loop = "fit (x.py:1);_TrainingEpochLoop.advance (lightning/pytorch/loops/training_epoch_loop.py:352)"
    hooks = f"{loop};_call_callback_hooks (lightning/pytorch/trainer/call.py:227)"
    raw = "\n".join(
        [
            f"{hooks};_GeneratorContextManager.__enter__ (contextlib.py:137) 4",
            f"{hooks};LineProgressBar.on_train_batch_end (lit_mnist/callbacks.py:66) 3",
            f"{hooks};ModelCheckpoint.on_train_batch_end (lightning/pytorch/callbacks/model_checkpoint.py:300) 2",
            f"{loop};is_param_in_hook_signature (lightning/pytorch/utilities/signature_utils.py:29);getfullargspec (inspect.py:1356) 5",
            f"{loop} 1",
            f"{loop};Adam.step (torch/optim/adam.py:248);_fused_adam (torch/optim/adam.py:879) 7",
        ]
    )
    functions, total = profile_fit.lightning_functions(profile_fit.parse_raw(raw))
    assert total == 22
    assert functions == {
        "_call_callback_hooks (lightning/pytorch/trainer/call.py)": 4,  # contextlib, for the profiler
        "ModelCheckpoint.on_train_batch_end (lightning/pytorch/callbacks/model_checkpoint.py)": 2,
        "is_param_in_hook_signature (lightning/pytorch/utilities/signature_utils.py)": 5,
        "_TrainingEpochLoop.advance (lightning/pytorch/loops/training_epoch_loop.py)": 1,
    }  # our progress bar's 3 and the optimizer kernels' 7 are not Lightning's own
    text = profile_fit.table(functions, total, 0.022, 22, "Lightning function", rows=2)
    assert text.splitlines()[2:] == [
        "| is_param_in_hook_signature (lightning/pytorch/utilities/signature_utils.py) | 22.7 % | 0.227 |",
        "| _call_callback_hooks (lightning/pytorch/trainer/call.py) | 18.2 % | 0.182 |",
        "| **training loop** | 100 % | 1.000 |",
    ]


def test_profile_fit_smoke():
    out = _run(
        "profile_fit.py",
        "--config",
        "configs/linear.yaml",
        "--batches",
        "60",
        "--rate",
        "100",
        "--lightning",
        "3",
    )
    parts, functions = out.split("| Lightning function (its own Python and the helpers it calls) |")
    shares = [float(x) for x in re.findall(r"^\| [^*|][^|]* \| ([\d.]+) % \| [\d.]+ \|$", parts, re.M)]
    assert shares and abs(sum(shares) - 100) < 1, out
    assert re.search(r"^\| \*\*training loop\*\* \| 100 % \| [\d.]+ \|$", parts, re.M), out
    named = re.findall(r"^\| (\S+) \(lightning/[\w/]+\.py\) \| ([\d.]+) % \|", functions, re.M)
    assert len(named) <= 3 and sum(float(share) for _, share in named) < 100, out  # few samples: maybe none


def test_drawn_reads_the_independent_digits_as_predict_dir_does(tmp_path):
    drawn = _benchmark("drawn")
    pictures, labels = drawn.independent_digits()
    assert pictures.shape == (1797, 12, 12) and pictures.dtype == np.uint8
    assert sorted(set(labels.tolist())) == list(range(10))
    assert (pictures[:, :2] == 255).all() and (pictures[:, 2:10, 2:10] < 128).any(
        axis=(1, 2)
    ).all()  # ink on paper
    images = drawn.prepared(pictures[:20], tmp_path)
    assert images.shape == (20, 28, 28) and images.dtype == torch.uint8
    for image in images:  # as MNIST: the ink fits a 20 × 20 box, stretched to (nearly) full contrast
        rows, cols = image.nonzero(as_tuple=True)
        assert rows.max() - rows.min() < 20 and cols.max() - cols.min() < 20 and image.max() > 200
    chosen = drawn.pen_digits(labels, 20)
    assert [int(labels[i]) for i in chosen] == list(range(10)) * 2 and len(set(chosen)) == 20


def test_drawn_scores_each_class_of_digits_on_its_own():
    drawn = _benchmark("drawn")
    labels = torch.tensor([0, 0, 1, 1, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    predicted = torch.tensor([0, 3, 1, 1, 1, 7, 2, 3, 4, 5, 6, 7, 8, 3])
    assert drawn.by_class(predicted, labels) == [50.0, 75.0, *[100.0] * 7, 0.0]


def test_drawn_strokes_follow_the_skeleton():
    drawn = _benchmark("drawn")
    bar = np.zeros((28, 28), np.uint8)
    bar[4:24, 13:15] = 255  # a "1": one upright stroke
    (stroke,) = drawn.strokes(bar)
    xs, ys = [x for x, _ in stroke], [y for _, y in stroke]
    assert max(xs) - min(xs) < 15 and abs(statistics.mean(xs) - 140) < 10  # pad pixels: 10 per MNIST pixel
    assert min(ys) < 60 and max(ys) > 220
    ring = np.zeros((28, 28), np.uint8)
    rows, cols = np.ogrid[:28, :28]
    ring[(abs(np.hypot(rows - 14, cols - 14) - 8) < 1.5)] = 255  # a "0": one closed loop
    strokes = drawn.strokes(ring)
    assert len(strokes) == 1 and len(strokes[0]) > 20
    (x0, y0), (x1, y1) = strokes[0][0], strokes[0][-1]
    assert math.hypot(x1 - x0, y1 - y0) < 30  # it comes back round to its start


def test_augment_cost_times_the_distortion_alone():
    rows = _benchmark("augment_cost").distortion_alone()
    assert rows[0].startswith("| lit_mnist `Augmentation`")
    assert all(re.search(r"\| [\d.]+ \|$", row) or "not installed" in row for row in rows)


def test_ab_fit_times_both_settings_and_their_ratio():
    out = _run(
        "ab_fit.py", "--configs", "linear", "--rounds", "1", "--batches", "3",
        "--b", "--model.init_args.lr 0.1",
    )  # fmt: skip
    a, b, ratio = (
        float(x) for x in re.search(r"^\| linear \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) ", out, re.M).groups()
    )
    assert a > 0 and b > 0 and 0.2 < ratio < 5
