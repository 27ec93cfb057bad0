"""Throughput and latency of ``python -m lit_mnist serve``, with LitServe's batching and without.

For each ``--max_batch_sizes`` value the script starts the server in a child process on a free
port of 127.0.0.1, and from this process sends ``--requests`` ``POST /predict`` requests from
``--clients`` concurrent clients (threads, one keep-alive connection each), after ``--warmup``
requests that are not counted. Each request is one MNIST test digit as a PNG (``--input png``,
decoded and prepared by the server) or as JSON pixels (``--input pixels``). Every answer is checked
(status 200 and a label). Prints a Markdown table: predictions per second, p50 and p99 latency.

    python benchmarks/bench_serve.py --ckpt_path lightning_logs/mlp/version_0/checkpoints/last.ckpt \\
        --requests 3000 --clients 16 --max_batch_sizes 64 1
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import platform
import statistics
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import litserve
import torch
from PIL import Image

from lit_mnist.data.mnist import load_mnist
from lit_mnist.serve import running

REPO = Path(__file__).resolve().parents[1]


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


def load(
    port: int, payloads: list[tuple[bytes, str]], requests: int, clients: int
) -> tuple[float, list[float], int]:
    """Send ``requests`` requests from ``clients`` threads; the wall time, each latency (s), the failures."""
    latencies: list[float] = []
    failures = [0]
    lock = threading.Lock()
    counter = iter(range(requests))

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while True:
            with lock:
                i = next(counter, None)
            if i is None:
                break
            body, content_type = payloads[i % len(payloads)]
            start = time.perf_counter()
            try:
                connection.request("POST", "/predict", body, {"Content-Type": content_type})
                response = connection.getresponse()
                answer = response.read()
                ok = response.status == 200 and "label" in json.loads(answer)
            except (OSError, http.client.HTTPException, ValueError):
                ok = False
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt_path", required=True, help="checkpoint to serve")
    parser.add_argument(
        "--requests", type=int, default=3000, help="counted requests per setting (default 3000)"
    )
    parser.add_argument("--warmup", type=int, default=200, help="uncounted requests first (default 200)")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (default 16)")
    parser.add_argument("--max_batch_sizes", type=int, nargs="+", default=[64, 1], help="settings (64 1)")
    parser.add_argument("--batch_timeout", type=float, default=0.005, help="LitServe batch timeout (0.005)")
    parser.add_argument("--workers", type=int, default=1, help="inference workers (default 1)")
    parser.add_argument("--input", choices=("png", "pixels"), default="png", help="request body (png)")
    args = parser.parse_args()
    if not (0 < args.requests <= 1_000_000 and 0 < args.clients <= 256 and 0 <= args.warmup <= 100_000):
        parser.error("--requests must be 1…1,000,000, --clients 1…256 and --warmup 0…100,000")

    payloads = bodies(args.input)
    rows = []
    for max_batch_size in args.max_batch_sizes:
        options = ["--accelerator", "cpu", "--max_batch_size", str(max_batch_size)]
        options += ["--batch_timeout", str(args.batch_timeout), "--workers", str(args.workers)]
        with running(args.ckpt_path, *options, timeout=180) as url:
            port = int(url.rsplit(":", 1)[1])
            if args.warmup:
                load(port, payloads, args.warmup, args.clients)
            wall, latencies, failures = load(port, payloads, args.requests, args.clients)
        q = (
            statistics.quantiles(latencies, n=100, method="inclusive")
            if len(latencies) > 1
            else latencies * 99
        )
        rows.append((max_batch_size, args.requests / wall, 1000 * q[49], 1000 * q[98], failures))

    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    print(
        f"{when}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, torch {torch.__version__}, LitServe {litserve.__version__}; "
        f"{args.requests} {args.input} requests from {args.clients} clients, batch_timeout {args.batch_timeout} s, "
        f"{args.workers} worker(s)\n"
    )
    print("| max_batch_size | predictions/s | p50 latency (ms) | p99 latency (ms) | failed |")
    print("|---:|---:|---:|---:|---:|")
    for max_batch_size, rate, p50, p99, failures in rows:
        print(f"| {max_batch_size} | {rate:,.0f} | {p50:.1f} | {p99:.1f} | {failures} |")
    if any(row[-1] for row in rows):
        raise SystemExit("some requests failed")


if __name__ == "__main__":
    main()
