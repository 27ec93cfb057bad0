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
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager, suppress
from datetime import datetime, timezone
from pathlib import Path

import litserve
import torch
from PIL import Image

from lit_mnist.data.mnist import load_mnist

REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(ckpt_path: str, max_batch_size: int, batch_timeout: float, workers: int):
    """The server in its own process group on 127.0.0.1; yields its port once ``/health`` answers."""
    port = _free_port()
    command = [
        sys.executable, "-m", "lit_mnist", "serve", "--ckpt_path", ckpt_path, "--port", str(port),
        "--accelerator", "cpu", "--max_batch_size", str(max_batch_size),
        "--batch_timeout", str(batch_timeout), "--workers", str(workers),
    ]  # fmt: skip
    with tempfile.TemporaryFile("w+") as log:
        process = subprocess.Popen(
            command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                if process.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"serve exited with {process.returncode}:\n{log.read()[-2000:]}")
                with suppress(OSError):
                    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    connection.request("GET", "/health")
                    if connection.getresponse().status == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit("serve did not answer /health within 180 s")
                time.sleep(0.3)
            yield port
        finally:
            for sig in (signal.SIGTERM, signal.SIGKILL):
                with suppress(ProcessLookupError):
                    os.killpg(process.pid, sig)
                with suppress(subprocess.TimeoutExpired):
                    process.wait(timeout=20)


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
        with server(args.ckpt_path, max_batch_size, args.batch_timeout, args.workers) as port:
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
