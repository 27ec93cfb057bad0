"""``configs/trainer/tpu.yaml`` without a TPU: PyTorch/XLA's CPU device against the ordinary CPU path.

    python benchmarks/xla_check.py [--models mlp cnn] [--batches 40] [--judged 15] [--out FILE]

PyTorch/XLA runs on its CPU device when ``PJRT_DEVICE=CPU``; a fit there goes through the code a
TPU does (Lightning's XLA accelerator, strategy, precision and checkpoint plugins, lazy XLA tensors
compiled into graphs, ``xm.reduce_gradients`` + ``optimizer.step`` + ``xm.mark_step``). This script
creates a separate virtual environment on first use (``benchmarks/.xla-venv``, git-ignored, about
7 GB; ``torch-xla`` and the torch it is built for are never project dependencies) with
``TORCH_XLA``, ``TORCH``, ``TORCHVISION`` and the project's other runtime dependencies at the
versions installed beside the Python that runs this script; the project itself comes from this
checkout (``PYTHONPATH``). In that environment, for each model:

1. ``python -m lit_mnist fit --config configs/<model>.yaml --config configs/trainer/tpu.yaml``
   exactly as a user types it (first model only). Lightning refuses it without a TPU, and the
   refusal is printed; should it ever run, it is the XLA run below.
2. The same with ``--trainer.accelerator`` set to ``XLAOnCPU`` below: Lightning's
   ``XLAAccelerator`` that reports the PJRT CPU device, so that everything after the
   availability check is Lightning's and PyTorch/XLA's own TPU code.
3. ``--config configs/trainer/cpu.yaml`` instead of ``tpu.yaml``: the ordinary CPU path, in the
   same environment (the same torch), so XLA is the only difference.
4. The CPU path again with ``OMP_NUM_THREADS=1``: the same computation summed in another order,
   which shows how far rounding alone moves this training.

Every run is one epoch of ``--batches`` training batches, 1 validation and 2 test batches (1,000
and 2,000 images; ``test_after_fit`` on the best checkpoint), with the CLI's logger, checkpoints,
figures and summary as they are; ``StepLoss`` prints each training step's loss. The cnn runs set
both dropouts to 0: XLA draws random numbers on its own device, so its dropout masks differ from
the CPU's. XLA and CPU agree when each of the first ``--judged`` steps' losses is within ``RTOL``
relative and the test accuracies are within ``ACC_POINTS`` points; later steps are shown, not
judged, because a loss spike makes the cnn's training amplify any rounding difference (the
``OMP_NUM_THREADS=1`` column shows the CPU drifting from itself the same way). With
``--every-config``, every ``configs/*.yaml`` as it is then fits 3 batches on XLA. The report, a
Markdown text with the date, the machine and the versions, goes to stdout (and ``--out``); the
exit status is 1 when a model does not agree.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.accelerators import XLAAccelerator

REPO = Path(__file__).resolve().parents[1]
#: The newest torch-xla on PyPI for CPython 3.11 on x86_64, and the torch (and its torchvision)
#: that its binary is built against; torch-xla does not declare torch as a dependency.
TORCH_XLA, TORCH, TORCHVISION = "torch-xla==2.9.0", "torch==2.9.0", "torchvision==0.24.0"
MODELS = ("mlp", "cnn")
#: Extra arguments of a model's runs (both devices).
MODEL_ARGS = {"cnn": ["--model.init_args.conv_dropout", "0", "--model.init_args.hidden_dropout", "0"]}
#: Largest accepted relative difference of a judged step's loss between the XLA and the CPU run.
RTOL = 1e-4
#: Largest accepted difference of the two runs' test accuracies, in percentage points.
ACC_POINTS = 2.0
STEP_LINE = re.compile(r"^xla_check step=(\d+) loss=(\S+)$", re.MULTILINE)
ACC_LINE = re.compile(r"^Test accuracy ([\d.]+) %", re.MULTILINE)


class XLAOnCPU(XLAAccelerator):
    """Lightning's ``XLAAccelerator`` on the one device of ``PJRT_DEVICE=CPU``.

    Lightning asks ``torch_xla._internal.tpu`` how many TPU devices there are (TPU chips on the PCI
    bus, times cores per chip from the TPU VM's metadata server), in ``is_available``,
    ``auto_device_count`` and the device parsing; without a TPU that is 0, or a connection error.
    This class answers those questions with PJRT's device, and leaves everything else to Lightning.
    """

    @staticmethod
    def is_available() -> bool:
        import torch_xla.runtime as xr

        return xr.device_type() == "CPU"

    @staticmethod
    def auto_device_count() -> int:
        return 1

    @staticmethod
    def parse_devices(devices: int | str | list[int]) -> int:
        if str(devices) not in ("1", "auto", "[0]"):
            raise ValueError(f"XLA's CPU device is one device, not devices={devices!r}")
        return 1

    @staticmethod
    def get_parallel_devices(devices: int | list[int]) -> list[torch.device]:
        return [torch.device("xla", 0)]


class StepLoss(L.Callback):
    """Prints ``xla_check step=<k> loss=<v>`` after every training step (``k`` from 1)."""

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: object, batch: object, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        print(f"xla_check step={trainer.global_step} loss={float(loss):.9g}", flush=True)


class CheckError(Exception):
    """A problem this script reports in one sentence."""


def _requirements() -> list[str]:
    """torch-xla, its torch and torchvision, and the project's other runtime dependencies, pinned."""
    pinned = {"torch": TORCH, "torchvision": TORCHVISION}
    try:
        dependencies = importlib.metadata.requires("lit_mnist") or []
    except importlib.metadata.PackageNotFoundError:
        raise CheckError("run this script with the Python that has lit_mnist installed") from None
    requirements = [TORCH_XLA]
    for requirement in (d for d in dependencies if "extra ==" not in d):
        name, extras = re.match(r"([A-Za-z0-9_.-]+)(\[[^\]]*\])?", requirement).groups()
        if name in pinned:
            requirements.append(pinned[name])
            continue
        try:
            requirements.append(f"{name}{extras or ''}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            requirements.append(requirement)
    return requirements


def xla_python(venv: Path) -> Path:
    """The torch-xla venv's python, creating the venv (``python -m venv`` + pip) on first use."""
    requirements = _requirements()
    python, stamp = venv / "bin" / "python", venv / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == "\n".join(requirements):
        return python
    print(f"Creating {venv} with {TORCH_XLA} and {TORCH} (first use; a few GB)", file=sys.stderr, flush=True)
    try:
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements],
            check=True,
        )
    except (OSError, subprocess.CalledProcessError) as err:
        raise CheckError(f"could not create the torch-xla venv {venv}: {err}") from None
    stamp.write_text("\n".join(requirements))
    return python


def _versions(python: Path) -> str:
    code = (
        "import platform, torch, torch_xla, lightning; "
        "print(f'Python {platform.python_version()}, torch {torch.__version__}, "
        "torch-xla {torch_xla.__version__}, lightning {lightning.__version__}')"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return f"{out}, lit_mnist {commit.stdout.strip()}" if commit.returncode == 0 else out


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def fit(
    python: Path,
    model: str,
    trainer_args: list[str],
    batches: int,
    log_dir: str,
    as_configured: bool = False,
    **env_vars: str,
) -> str:
    """One short fit in the torch-xla venv (with ``MODEL_ARGS`` unless ``as_configured``): its output."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PJRT_DEVICE", "OMP_NUM_THREADS")}
    env.update(PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "benchmarks")]), **env_vars)
    command = [
        str(python), "-m", "lit_mnist", "fit", "--config", f"configs/{model}.yaml", *trainer_args,
        *([] if as_configured else MODEL_ARGS.get(model, [])),
        "--trainer.max_epochs", "1", "--trainer.limit_train_batches", str(batches),
        "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "2",
        "--trainer.logger.init_args.save_dir", log_dir, "--trainer.callbacks+=xla_check.StepLoss",
    ]  # fmt: skip
    what = f"{model} with {' '.join(trainer_args)} {' '.join(f'{k}={v}' for k, v in env_vars.items())}"
    start = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    print(
        f"{what}: exit {result.returncode} after {time.monotonic() - start:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    output = result.stdout + result.stderr
    if result.returncode != 0:
        raise CheckError(f"{what} exited with {result.returncode}: {_last_line(output)}")
    return output


def parse_fit(output: str, what: str) -> tuple[list[float], float]:
    """Per-step training losses and the test accuracy (percent) from one fit's output."""
    steps = sorted((int(k), float(v)) for k, v in STEP_LINE.findall(output))
    found = ACC_LINE.search(output)
    if not steps or found is None:
        raise CheckError(f"{what} printed no step losses or no test accuracy: {_last_line(output)}")
    return [v for _, v in steps], float(found.group(1))


def _last_line(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _relative(a: list[float], b: list[float], what: str) -> list[float]:
    if len(a) != len(b):
        raise CheckError(f"{what}: {len(a)} steps against {len(b)}")
    return [abs(x - y) / abs(y) for x, y in zip(a, b, strict=True)]


def check_model(python: Path, model: str, batches: int, log_dir: str, refusal: list[str]) -> dict:
    """XLA, CPU and one-thread CPU runs of ``model``; ``refusal`` gets what ``tpu.yaml`` as typed did."""
    tpu = ["--config", "configs/trainer/tpu.yaml"]
    xla_args = [*tpu, "--trainer.accelerator", '{"class_path": "xla_check.XLAOnCPU"}']
    xla_output = None
    if not refusal:
        try:
            xla_output = fit(python, model, tpu, batches, log_dir, PJRT_DEVICE="CPU")
            refusal.append("it ran")
        except CheckError as err:
            if "can not run on your system" not in str(err):
                raise
            refusal.append(str(err).split(": ", 1)[1])
    if xla_output is None:
        xla_output = fit(python, model, xla_args, batches, log_dir, PJRT_DEVICE="CPU")
    cpu_args = ["--config", "configs/trainer/cpu.yaml"]
    xla = parse_fit(xla_output, f"{model} on XLA")
    cpu = parse_fit(fit(python, model, cpu_args, batches, log_dir), f"{model} on the CPU")
    one = parse_fit(
        fit(python, model, cpu_args, batches, log_dir, OMP_NUM_THREADS="1"), f"{model} on 1 thread"
    )
    return {
        "xla": xla,
        "cpu": cpu,
        "one": one,
        "rel": _relative(xla[0], cpu[0], model),
        "rel_one": _relative(one[0], cpu[0], model),
    }


def every_config(python: Path, log_dir: str) -> dict[str, str]:
    """``ok`` or the error of a 3-batch XLA fit of each ``configs/*.yaml`` as it is (dropout included)."""
    xla_args = [
        "--config",
        "configs/trainer/tpu.yaml",
        "--trainer.accelerator",
        '{"class_path": "xla_check.XLAOnCPU"}',
    ]
    status = {}
    for config in sorted(p.stem for p in (REPO / "configs").glob("*.yaml")):
        try:
            parse_fit(
                fit(python, config, xla_args, 3, log_dir, as_configured=True, PJRT_DEVICE="CPU"), config
            )
            status[config] = "ok"
        except CheckError as err:
            status[config] = f"failed ({err})"
    return status


def agrees(r: dict, judged: int) -> bool:
    return max(r["rel"][:judged]) <= RTOL and abs(r["xla"][1] - r["cpu"][1]) <= ACC_POINTS


def report(
    results: dict[str, dict],
    refusal: list[str],
    batches: int,
    judged: int,
    every: dict[str, str],
    python: Path,
) -> str:
    """The Markdown report: setting, the refusal, a table of steps and the verdict per model."""
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Measured {now} with `python benchmarks/xla_check.py` on {_cpu_model()}, {os.cpu_count()} cores; "
        f"{_versions(python)}. Each run: one epoch of {batches} training batches, 1,000 validation and "
        f"2,000 test images. Agreement: each of the first {judged} steps' losses within {RTOL:g} relative, "
        f"test accuracies within {ACC_POINTS:g} points.",
        "",
        f"`tpu.yaml` as typed, `PJRT_DEVICE=CPU`: {refusal[0] if refusal else 'not run'}",
    ]
    for model, r in results.items():
        rel, rel_one, n = r["rel"], r["rel_one"], len(r["rel"])
        accuracies = f"XLA {r['xla'][1]:.2f} %, CPU {r['cpu'][1]:.2f} %, CPU on 1 thread {r['one'][1]:.2f} %"
        lines += [
            "",
            f"**{model}** ({' '.join(MODEL_ARGS.get(model, [])) or 'the config as it is'}): "
            f"{'agree' if agrees(r, judged) else 'DO NOT AGREE'}. Largest relative difference of XLA from the "
            f"CPU {max(rel[:judged]):.1e} in steps 1–{min(judged, n)}, {max(rel):.1e} in all {n}; of the CPU on "
            f"1 thread from the CPU {max(rel_one[:judged]):.1e} and {max(rel_one):.1e}. Test accuracy {accuracies}.",
            "",
            "| step | loss, XLA | loss, CPU | XLA vs CPU | CPU on 1 thread vs CPU |",
            "|---|---|---|---|---|",
        ]
        # the first steps, every fifth, the last, and where each comparison first exceeds 1e-6
        onsets = {next((k for k, d in enumerate(diffs) if d > 1e-6), n) for diffs in (rel, rel_one)}
        lines += [
            f"| {k + 1} | {r['xla'][0][k]:.7f} | {r['cpu'][0][k]:.7f} | {rel[k]:.1e} | {rel_one[k]:.1e} |"
            for k in range(n)
            if k < 3 or (k + 1) % 5 == 0 or k == n - 1 or k in onsets
        ]
    if every:
        listed = ", ".join(f"{config} {status}" for config, status in every.items())
        lines += [
            "",
            f"Every model config with `tpu.yaml` on XLA's CPU device, 3 training batches: {listed}.",
        ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS, metavar="MODEL")
    parser.add_argument("--batches", type=int, default=40, help="training batches of every run (default 40)")
    parser.add_argument("--judged", type=int, default=15, help="steps held to the tolerance (default 15)")
    parser.add_argument(
        "--every-config", action="store_true", help="also fit every configs/*.yaml on XLA for 3 batches"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown report to this file")
    parser.add_argument("--venv", type=Path, default=REPO / "benchmarks" / ".xla-venv")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.judged < 1:
        raise CheckError("--batches and --judged must be 1 or more")
    python = xla_python(args.venv)
    results: dict[str, dict] = {}
    refusal: list[str] = []
    with tempfile.TemporaryDirectory(prefix="xla_check_") as log_dir:
        for model in args.models:
            results[model] = check_model(python, model, args.batches, log_dir, refusal)
        every = every_config(python, log_dir) if args.every_config else {}
    text = report(results, refusal, args.batches, args.judged, every, python)
    print(text, end="")
    if args.out is not None:
        args.out.write_text(text)
    if not all(agrees(r, args.judged) for r in results.values()) or any(v != "ok" for v in every.values()):
        raise SystemExit(1)


if __name__ == "__main__":
    try:
        main()
    except CheckError as err:
        print(f"error: {err}.", file=sys.stderr)
        raise SystemExit(1) from None
