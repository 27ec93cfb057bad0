"""Every GPU figure of docs/benchmarks.md in one command, on a machine with one NVIDIA GPU (at most 8 min).

    PYTHONPATH=$PWD python3 benchmarks/device_check.py --out DIR          # on the GPU machine
    PYTHONPATH=$PWD python benchmarks/device_check.py --out DIR --smoke   # the same steps on CPU, tiny

Runs, in order, each step in its own process with its own time-out (a step that fails or runs out
of time is recorded with the end of its output, and the next one still runs):

1. ``pytest -m gpu tests/test_gpu.py`` (on a machine without CUDA its tests are skipped);
2. ``bench_fit.py --device cuda`` for ``configs/mlp.yaml`` and ``configs/cnn.yaml`` (3 epochs);
3. ``speedrun.py`` over 5 seeds, without and with ``--model.init_args.compile true``;
4. ``reproduce.py --configs cnn --accelerator gpu --seeds 0``.

Each benchmark writes its figures with ``--json``; this script gathers them, with the torch, CUDA
and cuDNN versions, the GPU's name and the date, into ``DIR/device_check.json`` and
``DIR/device_check.md``, and every step's output into ``DIR/device_check.log``. It writes nothing
else outside ``/tmp``: MNIST is copied to ``/tmp/lit_mnist_check/data``, logs, caches (Matplotlib,
Triton, inductor), pytest's folders and temporary files go under ``/tmp/lit_mnist_check``, and no
bytecode is written. Where ``jsonargparse`` is missing, it installs the wheels of
``.device-wheels/`` (``make device-wheels``) into ``/tmp/lit_mnist_check/site`` and runs again with
them on ``PYTHONPATH``. ``--smoke`` runs the same steps on the CPU on 300 training and 200 test
images, one epoch, 2 seeds and the ``eager`` compile backend (``tests/test_benchmarks.py`` runs it);
its time is mostly six Python start-ups importing torch and Lightning.
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import shutil
import struct
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

sys.dont_write_bytecode = True

REPO = Path(__file__).resolve().parents[1]
WORK = Path("/tmp/lit_mnist_check")
SITE = WORK / "site"
WHEELS = REPO / ".device-wheels"
#: Wall-time budget of all steps together, and what each step keeps back for the ones after it.
BUDGET_S, SMOKE_BUDGET_S = 480, 240
REEXEC = "LIT_MNIST_DEVICE_CHECK_REEXEC"


def ensure_jsonargparse() -> None:
    """Install ``.device-wheels/*.whl`` into ``SITE`` and run this script again if jsonargparse is missing."""
    try:
        import jsonargparse  # noqa: F401
    except ImportError:
        pass
    else:
        return
    wheels = sorted(WHEELS.glob("*.whl"))
    if os.environ.get(REEXEC) or not wheels:
        raise SystemExit(
            "error: jsonargparse is not importable and .device-wheels/ holds no wheels for it: run "
            "`make device-wheels` on a machine with pip access and carry .device-wheels/ along."
        )
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile"]
    pip += ["--no-cache-dir", "--upgrade", "--target", str(SITE), *map(str, wheels)]
    subprocess.run(pip, check=True)
    path = os.pathsep.join(p for p in (str(SITE), str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "PYTHONPATH": path, REEXEC: "1"})


def _idx_subset(archive: Path, target: Path, count: int) -> None:
    """Write the first ``count`` items of a gzipped IDX file, decompressed, to ``target``."""
    data = gzip.decompress(archive.read_bytes())
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    item = 1
    for dim in dims[1:]:
        item *= dim
    header = 4 + 4 * ndim
    target.write_bytes(
        data[:4] + struct.pack(">I", count) + data[8:header] + data[header : header + count * item]
    )


def prepare_data(smoke: bool) -> Path:
    """MNIST under ``WORK/data``: a copy of the vendored files, or the first 300/200 images for ``--smoke``."""
    raw = WORK / "data" / "MNIST" / "raw"
    shutil.rmtree(raw, ignore_errors=True)
    raw.mkdir(parents=True)
    for archive in sorted((REPO / "data" / "MNIST" / "raw").glob("*.gz")):
        if smoke:
            _idx_subset(archive, raw / archive.stem, 300 if archive.name.startswith("train") else 200)
        else:
            shutil.copy(archive, raw / archive.name)
    return raw.parents[1]


def steps(smoke: bool, data: Path, tmp: Path) -> list[tuple[str, list[str], float, Path | None]]:
    """``(name, command, time-out in s, JSON file the command writes)`` for every step, in order."""
    py = sys.executable
    device, accelerator = ("cpu", "cpu") if smoke else ("cuda", "gpu")
    data_args = ["--data.init_args.data_dir", str(data)]
    tiny = ["--data.init_args.val_size", "100", "--trainer.max_epochs", "1"] if smoke else []
    epochs = "1" if smoke else "3"
    seeds = "2" if smoke else "5"
    compile_ = "eager" if smoke else "true"  # smoke: dynamo traces, no code generation on 2 CPU cores
    speed = [py, "benchmarks/speedrun.py", "--device", device, "--seeds", seeds]
    speed += ["--no-warmup"] if smoke else []
    speed_tail = [*data_args, *(["--trainer.max_epochs", "1"] if smoke else [])]
    out = [
        ("gpu_tests", [py, "-m", "pytest", "-m", "gpu", "tests/test_gpu.py", "-q", "-p", "no:cacheprovider",
                       "--basetemp", str(tmp / "pytest"), "--junitxml", str(tmp / "gpu_tests.xml")], 150, None),
    ]  # fmt: skip
    for config in ("mlp", "cnn"):
        json_path = tmp / f"bench_fit_{config}.json"
        command = [py, "benchmarks/bench_fit.py", "--config", f"configs/{config}.yaml", "--epochs", epochs]
        command += ["--device", device, "--json", str(json_path), "--", *data_args, *tiny]
        out.append((f"bench_fit_{config}", command, 90, json_path))
    for name, extra, limit in (
        ("speedrun", [], 90),
        ("speedrun_compile", ["--model.init_args.compile", compile_], 150),
    ):
        json_path = tmp / f"{name}.json"
        out.append((name, [*speed, "--json", str(json_path), "--", *speed_tail, *extra], limit, json_path))
    json_path = tmp / "reproduce_cnn.json"
    command = [
        py,
        "benchmarks/reproduce.py",
        "--configs",
        "cnn",
        "--accelerator",
        accelerator,
        "--seeds",
        "0",
    ]
    out.append(
        ("reproduce_cnn", [*command, "--json", str(json_path), "--", *data_args, *tiny], 150, json_path)
    )
    return out


def _pytest_results(junit: Path) -> dict:
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    tests = {}
    for case in suite.iter("testcase"):
        outcome = "passed"
        for tag in ("failure", "error", "skipped"):
            if case.find(tag) is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
        tests[case.get("name")] = outcome
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "outcomes": tests}


def run_step(name: str, command: list[str], timeout: float, json_path: Path | None, env: dict, log) -> dict:
    """Run one step; its record: status (ok, failed, timeout), seconds, return code, figures, error tail."""
    record: dict = {"name": name, "command": command, "timeout_s": round(timeout)}
    start = time.monotonic()
    log.write(f"\n===== {name}: {' '.join(command)}\n")
    log.flush()
    try:
        result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        output, record["returncode"] = result.stdout + result.stderr, result.returncode
        record["status"] = "ok" if result.returncode == 0 else "failed"
    except subprocess.TimeoutExpired as err:
        output = "".join(x.decode() if isinstance(x, bytes) else x or "" for x in (err.stdout, err.stderr))
        record["status"], record["returncode"] = "timeout", None
    record["seconds"] = round(time.monotonic() - start, 2)
    log.write(output)
    log.flush()
    try:
        if name == "gpu_tests":
            record["results"] = _pytest_results(Path(command[command.index("--junitxml") + 1]))
        elif json_path is not None:
            record["results"] = json.loads(json_path.read_text())
    except (OSError, ValueError, ET.ParseError) as err:
        if record["status"] == "ok":
            record["status"] = "failed"
            output += f"\n(no figures: {err})"
    if record["status"] != "ok":
        record["error_tail"] = output[-3000:]
    return record


def versions() -> dict:
    import lightning
    import torch

    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "lightning": lightning.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_cores": os.cpu_count(),
        "machine": platform.machine(),
    }
    if torch.cuda.is_available():
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    return info


def _figures(step: dict) -> str:
    """The step's main figures in one table cell."""
    r = step.get("results")
    if not r:
        return "—"
    name = step["name"]
    if name == "gpu_tests":
        return f"{r['passed']} passed, {r['failures'] + r['errors']} failed, {r['skipped']} skipped"
    if name.startswith("bench_fit"):
        return (f"fit {r['lightning_steady_s']:.3f} s/epoch, plain {r['plain_steady_s']:.3f} s/epoch, "
                f"ratio {r['ratio']:.3f}; test acc {r['lightning_test_acc']:.2f} % / {r['plain_test_acc']:.2f} %")  # fmt: skip
    if name.startswith("speedrun"):
        return (f"{len(r['runs'])} seeds: fit {r['mean_fit_s']:.3f} s, test acc {r['mean_test_acc']:.2f} % "
                f"(min {r['min_test_acc']:.2f} %), target {'met' if r['target_met'] else 'not met'}")  # fmt: skip
    if name.startswith("reproduce"):
        return "; ".join(
            f"{c['config']}: {c['mean_test_acc']:.2f} % in {c['mean_wall_s']:.0f} s" for c in r["configs"]
        )
    return "—"


def markdown(report: dict) -> str:
    info = report["versions"]
    lines = [
        f"# Device check{' (smoke, CPU)' if report['smoke'] else ''}",
        "",
        f"{info['date']} · GPU {info['gpu'] or 'none'} · torch {info['torch']} · CUDA {info['cuda']} · "
        f"cuDNN {info['cudnn']} · Lightning {info['lightning']} · Python {info['python']} · "
        f"{info['cpu_cores']} CPU cores · {report['seconds']:.0f} s in all",
        "",
        "| step | status | seconds | figures |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {_figures(s)} |" for s in report["steps"]
    ]
    for step in report["steps"]:
        r = step.get("results") or {}
        if step["name"].startswith("speedrun") and r.get("runs"):
            lines += [
                "",
                f"{step['name']} ({' '.join(r['cli_args'])}):",
                "",
                "| seed | fit loop | test accuracy |",
                "|---|---|---|",
            ]
            lines += [
                f"| {run['seed']} | {run['fit_s']:.3f} s | {run['test_acc']:.2f} % |" for run in r["runs"]
            ]
        if step["name"] == "gpu_tests" and r.get("outcomes"):
            lines += ["", "GPU tests: " + ", ".join(f"{k} {v}" for k, v in r["outcomes"].items())]
        if step.get("error_tail"):
            lines += [
                "",
                f"{step['name']} {step['status']}; the end of its output:",
                "",
                "```",
                step["error_tail"][-1500:],
                "```",
            ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for device_check.json, .md and .log")
    parser.add_argument("--smoke", action="store_true", help="the same steps on the CPU at tiny sizes")
    args = parser.parse_args()
    ensure_jsonargparse()
    start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = WORK / "tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    data = prepare_data(args.smoke)
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(REPO)) if p)
    env = {
        **os.environ,
        "PYTHONPATH": path,
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONWARNINGS": "ignore",
        "TMPDIR": str(tmp),
        "MPLCONFIGDIR": str(WORK / "cache" / "matplotlib"),
        "TRITON_CACHE_DIR": str(WORK / "cache" / "triton"),
        "TORCHINDUCTOR_CACHE_DIR": str(WORK / "cache" / "inductor"),
        "XDG_CACHE_HOME": str(WORK / "cache"),
    }
    if args.smoke:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU path even on a machine with a GPU
    os.environ.update({k: env[k] for k in ("MPLCONFIGDIR", "TRITON_CACHE_DIR", "TORCHINDUCTOR_CACHE_DIR")})
    budget = SMOKE_BUDGET_S if args.smoke else BUDGET_S
    report: dict = {"smoke": args.smoke, "budget_s": budget, "versions": versions(), "steps": []}
    with (args.out / "device_check.log").open("w") as log:
        for name, command, limit, json_path in steps(args.smoke, data, tmp):
            left = budget - (time.monotonic() - start)
            if left < 10:
                report["steps"].append({"name": name, "command": command, "status": "skipped", "seconds": 0.0,
                                        "error_tail": f"not run: {budget} s budget spent"})  # fmt: skip
                continue
            step = run_step(name, command, min(limit, left), json_path, env, log)
            report["steps"].append(step)
            print(f"{name}: {step['status']} in {step['seconds']:.1f} s", flush=True)
    report["seconds"] = round(time.monotonic() - start, 1)
    (args.out / "device_check.json").write_text(json.dumps(report, indent=1) + "\n")
    summary = markdown(report)
    (args.out / "device_check.md").write_text(summary)
    print(summary)
    if any(step["status"] != "ok" for step in report["steps"]):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
