"""Throughput and latency of ``python -m lit_mnist serve`` with several models, without and with attributions.

The script starts the server with every ``--ckpt_path`` (each request is answered by all of them)
in a child process on a free port of 127.0.0.1 (``running`` from ``tests/helpers.py``, imported by
path), and from this process sends ``POST /predict`` requests from ``--clients`` concurrent clients
(threads, one keep-alive connection each): ``--requests`` plain ones, then ``--explained_requests``
with ``?explain=1`` (each model's Integrated Gradients map too), each setting after ``--warmup``
requests that are not counted. Each request is one MNIST test digit as a PNG (``--input png``,
decoded and prepared by the server) or as JSON pixels (``--input pixels``). Every answer is
checked (status 200, every model's label, and the maps when asked). Prints the machine, the
versions and a Markdown table: requests per second, p50 and p99 latency.

``--completeness N`` measures instead, in this process, how closely the maps of the first ``N``
test digits add up (Integrated Gradients' completeness) for each ``--steps`` value: the sum of a
digit's map against ``f(x) - f(blank)``, the model's score for its answer on the digit minus its
score on the blank image, and the time per digit on one thread.

    python benchmarks/bench_serve.py --ckpt_path lightning_logs/mlp/version_0/checkpoints/last.ckpt \\
        lightning_logs/dropout/version_0/checkpoints/last.ckpt lightning_logs/cnn/version_0/checkpoints/last.ckpt
    python benchmarks/bench_serve.py --ckpt_path ... --completeness 1000 --steps 16 32 64
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import shlex
import statistics
import sys
import threading
import time
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

import torch
from PIL import Image
from timing import cpu_model

from lit_mnist.checkpoint import load_model, read_checkpoint
from lit_mnist.data.mnist import load_mnist
from lit_mnist.models.attribution import integrated_gradients
from lit_mnist.serve import parse_checkpoints

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from helpers import running  # noqa: E402  (the tests' helper, not part of the package)


def bodies(kind: str, count: int = 256) -> list[tuple[bytes, str]]:
    """``count`` MNIST test digits as request bodies with their content type."""
    images = load_mnist(REPO / "data", train=False)[0][:count].numpy()
    if kind == "pixels":
        return [(json.dumps({"pixels": d.tolist()}).encode(), "application/json") for d in images]
    out = []
    for digit in images:
        buffer = io.BytesIO()
        Image.fromarray(digit).save(buffer, "PNG")
        out.append((buffer.getvalue(), "image/png"))
    return out


def answered(body: bytes, models: int, explain: bool) -> bool:
    """Whether an answer holds every model's label (and map, when asked)."""
    found = json.loads(body).get("models", [])
    return len(found) == models and all("label" in m and ("attribution" in m) == explain for m in found)


def load(
    port: int, payloads: list[tuple[bytes, str]], requests: int, clients: int, models: int, explain: bool
) -> tuple[float, list[float], int]:
    """Send ``requests`` requests from ``clients`` threads; the wall time, each latency (s), the failures."""
    path = "/predict?explain=1" if explain else "/predict"
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body, content_type = payloads[i % len(payloads)]
            start = time.perf_counter()
            try:
                connection.request("POST", path, body, {"Content-Type": content_type})
                response = connection.getresponse()
                answer = response.read()
                ok = response.status == 200 and answered(answer, models, explain)
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            mine.append(time.perf_counter() - start)
            if not ok:
                with lock:
                    failures[0] += 1
        connection.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return time.perf_counter() - start, latencies, failures[0]


def completeness(ckpt_paths: list[str], count: int, steps: list[int]) -> None:
    """Print how closely the maps of ``count`` test digits add up, per model and number of steps."""
    torch.set_num_threads(1)  # as in a serve worker
    images = load_mnist(REPO / "data", train=False)[0][:count].unsqueeze(1)
    print("| model | steps | ms per digit | median abs(sum - Δ) | p99 | max | within 5 % of abs(Δ) + 0.1 |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, path in parse_checkpoints(ckpt_paths, "lightning_logs").items():
        model = load_model(path, read_checkpoint(path))
        with torch.no_grad():
            scores, blank = model(images), model(torch.zeros_like(images))
        answers = scores.argmax(dim=1)
        delta = (scores - blank).gather(1, answers[:, None])[:, 0]
        for n in steps:
            start = time.perf_counter()
            maps = torch.cat(
                [
                    integrated_gradients(model, x, t, n)
                    for x, t in zip(images.split(64), answers.split(64), strict=True)
                ]
            )
            ms = 1000 * (time.perf_counter() - start) / count
            error = (maps.sum(dim=(1, 2, 3)) - delta).abs()
            within = int((error <= 0.05 * delta.abs() + 0.1).sum())  # the tolerance of tests/test_serve.py
            q = error.quantile(torch.tensor([0.5, 0.99]))
            print(
                f"| {name} | {n} | {ms:.1f} | {q[0]:.3f} | {q[1]:.3f} | {error.max():.3f} | {within:,} of {count:,} |"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", nargs="+", required=True, help="checkpoints to serve side by side")
    parser.add_argument("--requests", type=int, default=3000, help="counted plain requests (default 3000)")
    parser.add_argument(
        "--explained_requests", type=int, default=500, help="counted requests with explain=1 (default 500)"
    )
    parser.add_argument("--warmup", type=int, default=100, help="uncounted requests per setting (100)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--max_batch_size", type=int, default=64, help="serve --max_batch_size (64)")
    parser.add_argument("--batch_timeout", type=float, default=0.005, help="serve --batch_timeout (0.005)")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers (default 1)")
    parser.add_argument("--input", choices=("png", "pixels"), default="png", help="request body (png)")
    parser.add_argument("--completeness", type=int, default=0, help="measure the maps of N digits instead")
    parser.add_argument(
        "--steps", type=int, nargs="+", default=[16, 32, 64], help="steps to measure (16 32 64)"
    )
    args = parser.parse_args()
    if args.completeness:
        print(f"python {shlex.join(sys.argv)}\n")
        print(
            f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M UTC}; {cpu_model()}; torch {torch.__version__}, Captum {version('captum')}; {args.completeness} test digits\n"
        )
        completeness(args.ckpt_path, args.completeness, args.steps)
        return
    counts = (args.requests, args.explained_requests)
    if not (
        all(0 <= n <= 1_000_000 for n in counts) and 0 < args.clients <= 256 and 0 <= args.warmup <= 100_000
    ):
        parser.error(
            "--requests and --explained_requests must be 0…1,000,000, --clients 1…256, --warmup 0…100,000"
        )

    payloads = bodies(args.input)
    models = len(args.ckpt_path)
    options = ["--ckpt_path", "[" + ", ".join(args.ckpt_path) + "]", "--accelerator", "cpu"]
    options += ["--max_batch_size", str(args.max_batch_size), "--batch_timeout", str(args.batch_timeout)]
    options += ["--workers", str(args.workers)]
    rows = []
    with running(*options, timeout=180) as server:
        for explain, requests in ((False, args.requests), (True, args.explained_requests)):
            if not requests:
                continue
            if args.warmup:
                load(server.port, payloads, args.warmup, args.clients, models, explain)
            wall, latencies, failures = load(server.port, payloads, requests, args.clients, models, explain)
            q = (
                statistics.quantiles(latencies, n=100, method="inclusive")
                if len(latencies) > 1
                else latencies * 99
            )
            rows.append((explain, requests, requests / wall, 1000 * q[49], 1000 * q[98], failures))
        names = server.output().split("Serving ", 1)[-1].split(" on http", 1)[0]

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(f"python {shlex.join(sys.argv)}\n")
    print(
        f"{when}; {cpu_model()}, {os.cpu_count()} CPUs; Python {platform.python_version()}, torch "
        f"{torch.__version__}, LitServe {version('litserve')}, Captum {version('captum')}; serving {names}; "
        f"{args.input} requests from {args.clients} clients, max_batch_size {args.max_batch_size}, batch_timeout "
        f"{args.batch_timeout} s, {args.workers} worker(s), {args.warmup} warm-up requests per row\n"
    )
    print(
        f"| attributions | requests | requests/s ({models} models each) | p50 latency (ms) | p99 latency (ms) | failed |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for explain, requests, rate, p50, p99, failures in rows:
        print(
            f"| {'yes' if explain else 'no'} | {requests:,} | {rate:,.1f} | {p50:.1f} | {p99:.1f} | {failures} |"
        )
    if any(row[-1] for row in rows):
        raise SystemExit("some requests failed")


if __name__ == "__main__":
    main()
